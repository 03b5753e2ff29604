//! The tower stack around every route: request ids, tracing named after the
//! matched route, panic safety, and load shedding.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use allezon_core::{Error, ErrorKind};
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::MatchedPath;
use axum::response::IntoResponse;
use http::{HeaderValue, Request};
use tower::{BoxError, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// Requests in flight beyond this are refused at once with 503: clients give
/// up after 200 ms, so queueing past this point only serves dead requests.
const MAX_IN_FLIGHT: usize = 4096;

/// Wraps `router` in the gateway's middleware.
pub fn layer(router: Router) -> Router {
    let x_request_id = http::HeaderName::from_static("x-request-id");
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(
                x_request_id.clone(),
                Counter::default(),
            ))
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    let route =
                        crate::http_metrics::route_label(req.extensions().get::<MatchedPath>());
                    tracing::debug_span!("http", method = %req.method(), route)
                }),
            )
            .layer(PropagateRequestIdLayer::new(x_request_id))
            .layer(axum::middleware::from_fn(crate::http_metrics::record))
            .layer(CatchPanicLayer::custom(|_| {
                ApiError(Error::internal("handler panicked")).into_response()
            }))
            .layer(HandleErrorLayer::new(|err: BoxError| async move {
                allezon_core::metrics::metrics().http.shed.inc();
                ApiError(Error::new(
                    ErrorKind::Unavailable,
                    format!("overloaded: {err}"),
                ))
            }))
            .load_shed()
            .concurrency_limit(MAX_IN_FLIGHT),
    )
}

/// Request ids from a process-wide counter: unique per process, cheap, and
/// easy to grep for in logs.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = self.0.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&id.to_string())
            .ok()
            .map(RequestId::new)
    }
}
