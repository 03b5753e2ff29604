//! The tower stack around every route: request ids, tracing named after the
//! matched route, panic safety, and load shedding.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use allezon_core::{Error, ErrorKind};
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::MatchedPath;
use axum::response::IntoResponse;
use std::time::Duration;

use http::{HeaderValue, Request};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::error::ApiError;

/// How long a request body may take to arrive (a tag is a few hundred
/// bytes, a debug body at most a few MB).
const BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests in flight beyond this are refused at once with 503: clients give
/// up after 200 ms, so queueing past this point only serves dead requests.
/// At the all-in-one's 17,000 to 28,000 tags/s, 1,024 in flight is 40 to
/// 60 ms of queue; 4,096 was 240 ms under 6,000 connections (p50 350 ms:
/// every request served too late), measured with `scripts/overload.sh`.
const MAX_IN_FLIGHT: usize = 1024;

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
                TraceLayer::new_for_http()
                    .make_span_with(http_span)
                    .on_request(())
                    .on_response(record_status)
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(x_request_id))
            // A body that trickles in holds a request slot: it gets this
            // long in all, then the request fails (4xx) and frees it.
            .layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
            .map_request(|request: Request<_>| request.map(axum::body::Body::new))
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
            // One limit for the whole server: `Router::layer` wraps every
            // route (and method) on its own, and a plain concurrency limit
            // would give each its own slots.
            .layer(GlobalConcurrencyLimitLayer::new(MAX_IN_FLIGHT)),
    )
}

/// The request's server span (nothing while traces are off), continuing
/// the caller's trace when it sent `traceparent`.
fn http_span<B>(request: &Request<B>) -> Span {
    if !allezon_core::telemetry::enabled() {
        return Span::none();
    }
    // No route for a path no route matched: the span is named by the method.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| crate::http_metrics::route_label(Some(path)));
    let span = allezon_core::trace::span::http_server(request.method().as_str(), route);
    allezon_core::trace::continue_from(&span, request.headers());
    allezon_core::trace::record_trace_id(&span);
    span
}

fn record_status<B>(response: &http::Response<B>, latency: Duration, span: &Span) {
    // Inside the request's span: with traces on, the line carries its
    // trace id.
    tracing::debug!(status = response.status().as_u16(), ?latency, "answered");
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        allezon_core::trace::span::failed(span);
    }
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
