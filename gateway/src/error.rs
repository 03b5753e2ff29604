//! The one HTTP error response: a status from [`allezon_core::Error`] and a
//! JSON body `{"error": "..."}` that tells the client what it can act on.

use allezon_core::{Error, ErrorKind};
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self(err)
    }
}

/// A failed call to a backend. The gateway validated the request before
/// calling, so whatever went wrong is on our side, not the client's: a
/// transport failure (say an HTTP/2 GOAWAY, which tonic reports as
/// RESOURCE_EXHAUSTED) must never reach the client as a 413.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let err = Error::from_status(&status);
        let kind = match err.kind() {
            ErrorKind::InvalidInput | ErrorKind::DeadlineExceeded => err.kind(),
            _ => ErrorKind::Unavailable,
        };
        Self(Error::new(kind, err.message().to_owned()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.http_status();
        // Server-side failures are logged in full but told to the client
        // only as far as the client can act on them.
        let message = match self.0.kind() {
            ErrorKind::Internal => {
                tracing::error!(error = %self.0, "internal error");
                "internal error".to_owned()
            }
            ErrorKind::Unavailable | ErrorKind::DeadlineExceeded => {
                // Debug, not warn: refusals come by the thousand a second
                // exactly when the process is short of CPU (overload, an
                // outage, shedding on lag), and writing a line each made it
                // shorter. The cause is logged once where it is noticed
                // (the readiness conditions, the service and broker
                // watches), and every refusal is counted in
                // allezon_http_requests_total and allezon_tags_total.
                tracing::debug!(error = %self.0, "backend unavailable");
                "temporarily unavailable, retry later".to_owned()
            }
            _ => self.0.message().to_owned(),
        };
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            // Overload and outages pass; a client that honours this comes
            // back when it is likely to be served.
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// A body that could not be read: too large, or the connection broke.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    let kind = if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        ErrorKind::PayloadTooLarge
    } else {
        ErrorKind::InvalidInput
    };
    ApiError(Error::new(
        kind,
        format!("invalid `body`: {}", rejection.body_text()),
    ))
}
