//! The one middleware around every route ([`Edge`]): load shedding, request
//! ids, a deadline for the request body, the request's server span, the
//! HTTP metrics, and panic safety.
//!
//! It is one hand-written service rather than a tower stack of eight
//! layers (tower-http's request id, trace, body timeout and panic layers,
//! `from_fn` metrics, load shedding over a global concurrency limit): each
//! of those boxed or cloned something per request, armed a timer for every
//! body, or took a semaphore. This one keeps their behaviour, and the
//! all-in-one used 8 to 18 % less CPU per tag with it than with the stack
//! under wrk at 64 connections, in three alternating pairs (README, "Where
//! the time goes, and what changed").

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use allezon_core::{Error, ErrorKind};
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::MatchedPath;
use axum::response::{IntoResponse, Response};
use futures::FutureExt as _;
use http::{HeaderName, HeaderValue, Request};
use http_body::{Frame, SizeHint};
use tower::{BoxError, Service};
use tracing::{Instrument as _, Span};

use crate::error::ApiError;
use crate::http_metrics;

/// How long a request body may take to arrive, from the request's start (a
/// tag is a few hundred bytes, a debug body at most a few MB).
const BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// Requests in flight beyond this are refused at once with 503: clients give
/// up after 200 ms, so queueing past this point only serves dead requests.
/// At the all-in-one's 17,000 to 28,000 tags/s, 1,024 in flight is 40 to
/// 60 ms of queue; 4,096 was 240 ms under 6,000 connections (p50 350 ms:
/// every request served too late), measured with `scripts/overload.sh`.
const MAX_IN_FLIGHT: usize = 1024;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps every route of `router` in [`Edge`]. The slots are shared by all
/// routes: `Router::layer` wraps each route (and method) on its own, so a
/// limit kept per route would multiply.
pub fn layer(router: Router) -> Router {
    wrap(router, Arc::new(Shared::default()))
}

/// [`layer`] with the slots given, so that a test can read them.
fn wrap(router: Router, shared: Arc<Shared>) -> Router {
    router.layer(tower::layer::layer_fn(move |inner| Edge {
        inner,
        shared: Arc::clone(&shared),
    }))
}

/// What every route's [`Edge`] shares: the slots in use, and the counter
/// request ids are drawn from (unique per process, cheap, easy to grep).
#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    next_id: AtomicU64,
}

/// One request slot, given back when the request ends, answered or dropped
/// by a client that gave up.
struct Slot(Arc<Shared>);

impl Slot {
    fn take(shared: &Arc<Shared>) -> Option<Self> {
        if shared.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        allezon_core::metrics::metrics().http.in_flight.inc();
        Some(Self(Arc::clone(shared)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        allezon_core::metrics::metrics().http.in_flight.dec();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Edge<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Routes are always ready; shedding happens per request in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let route = http_metrics::route_label(request.extensions().get::<MatchedPath>());
        let method = http_metrics::method_label(request.method());
        // A client's own id is kept, so its logs and ours line up.
        let id = match request.headers().get(&X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = HeaderValue::from(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
                request
                    .headers_mut()
                    .insert(X_REQUEST_ID.clone(), id.clone());
                id
            }
        };
        let span = http_span(&request, route);
        let Some(slot) = Slot::take(&self.shared) else {
            allezon_core::metrics::metrics().http.shed.inc();
            let response = ApiError(Error::new(
                ErrorKind::Unavailable,
                format!("overloaded: more than {MAX_IN_FLIGHT} requests in flight"),
            ))
            .into_response();
            return Box::pin(std::future::ready(Ok(answered(
                response, route, method, started, id, &span,
            ))));
        };
        // A body that trickles in holds a slot: it gets until this deadline
        // in all, then reading it fails (a 4xx) and the slot is freed.
        let deadline = tokio::time::Instant::from_std(started + BODY_TIMEOUT);
        let request = request.map(|body| Body::new(Deadline::new(body, deadline)));
        // The inner service may be a clone that is not ready yet; routes
        // always are, and `oneshot` keeps that honest.
        let inner = self.inner.clone();
        let handled = async move {
            use tower::ServiceExt as _;
            inner.oneshot(request).await
        };
        let recorded = span.clone();
        Box::pin(
            async move {
                let response = match AssertUnwindSafe(handled).catch_unwind().await {
                    Ok(Ok(response)) => response,
                    Ok(Err(err)) => {
                        let err: BoxError = err.into();
                        ApiError(Error::internal(format!("request failed: {err}"))).into_response()
                    }
                    Err(_) => ApiError(Error::internal("handler panicked")).into_response(),
                };
                drop(slot);
                Ok(answered(response, route, method, started, id, &recorded))
            }
            .instrument(span),
        )
    }
}

/// Records the answer in the metrics and the span, and gives it the
/// request's id.
fn answered(
    mut response: Response,
    route: &'static str,
    method: &'static str,
    started: Instant,
    id: HeaderValue,
    span: &Span,
) -> Response {
    let status = response.status();
    let latency = started.elapsed();
    http_metrics::record(route, method, status.as_u16(), latency);
    // Inside the request's span: with traces on, the line carries its
    // trace id.
    tracing::debug!(status = status.as_u16(), ?latency, "answered");
    if !span.is_none() {
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            allezon_core::trace::span::failed(span);
        }
    }
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}

/// The request's server span (nothing while traces are off), continuing
/// the caller's trace when it sent `traceparent`.
fn http_span<B>(request: &Request<B>, route: &'static str) -> Span {
    if !allezon_core::telemetry::enabled() {
        return Span::none();
    }
    // No route for a path no route matched: the span is named by the method.
    let route = (route != http_metrics::UNMATCHED).then_some(route);
    let span = allezon_core::trace::span::http_server(request.method().as_str(), route);
    allezon_core::trace::continue_from(&span, request.headers());
    allezon_core::trace::record_trace_id(&span);
    span
}

/// The body has until `deadline` to arrive in full. The timer is armed only
/// when the body is not there yet: a tag's body nearly always arrives with
/// its headers, and arming (and cancelling) a timer per request costs more
/// than reading it.
struct Deadline<B> {
    body: B,
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    fn new(body: B, deadline: tokio::time::Instant) -> Self {
        Self {
            body,
            deadline,
            timer: None,
        }
    }
}

/// The error a body past its deadline ends with; the handlers answer it
/// with a 4xx that names the body.
#[derive(Debug)]
struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test fails by panicking

    use axum::routing::post;
    use futures::StreamExt as _;
    use tower::ServiceExt as _;

    use super::*;

    fn app() -> Router {
        layer(Router::new().route("/ok", post(|body: Bytes| async move { body })))
    }

    fn post_to(path: &str, body: Body) -> Request<Body> {
        Request::post(path).body(body).unwrap()
    }

    async fn body_of(answer: Response) -> Bytes {
        axum::body::to_bytes(answer.into_body(), 1 << 16)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_request_id_is_kept_or_given() {
        let mut request = post_to("/ok", Body::empty());
        request
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("client-7"));
        let answer = app().oneshot(request).await.unwrap();
        assert_eq!(answer.headers()["x-request-id"], "client-7");

        let app = app();
        let first = app
            .clone()
            .oneshot(post_to("/ok", Body::empty()))
            .await
            .unwrap();
        let second = app.oneshot(post_to("/ok", Body::empty())).await.unwrap();
        let id = |answer: &Response| -> u64 {
            answer.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(id(&second), id(&first) + 1);
    }

    async fn panics() -> http::StatusCode {
        panic!("a handler bug")
    }

    /// A panicking handler answers a JSON 500, and its slot is given back.
    #[tokio::test]
    async fn a_panic_is_a_json_500_and_frees_its_slot() {
        let shared = Arc::new(Shared::default());
        let app = wrap(
            Router::new().route("/panics", post(panics)),
            Arc::clone(&shared),
        );
        let answer = app
            .oneshot(post_to("/panics", Body::empty()))
            .await
            .unwrap();
        assert_eq!(answer.status(), 500);
        let error: serde_json::Value = serde_json::from_slice(&body_of(answer).await).unwrap();
        // Internal errors are not described to clients.
        assert_eq!(error["error"], "internal error");
        assert_eq!(shared.in_flight.load(Ordering::Acquire), 0);
    }

    /// A body that is all there is read at once; one that stops arriving
    /// fails at the deadline.
    #[tokio::test]
    async fn a_body_gets_until_its_deadline() {
        let answer = app()
            .oneshot(post_to("/ok", Body::from("a tag")))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(&body_of(answer).await[..], b"a tag");

        // Never ends: the first chunk, then nothing.
        let trickle = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from("{\"ti"))])
            .chain(futures::stream::pending());
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let body = Body::new(Deadline::new(Body::from_stream(trickle), deadline));
        let read = axum::body::to_bytes(body, 1 << 16).await;
        let err = read.unwrap_err();
        assert!(err.to_string().contains("did not arrive"), "{err}");
        assert!(tokio::time::Instant::now() >= deadline);
    }
}
