//! The tower layer every gRPC call passes through, on both sides: it records
//! the call's method, status code and duration in [`crate::metrics`], and
//! (when traces are on) wraps the call in its client or server span, with
//! the W3C trace context injected into the request's metadata on the client
//! side and taken out of it on the server side.
//!
//! It sits on the HTTP/2 request, under tonic's codec, so one layer serves
//! every service and every generated client alike.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument as _;

use crate::metrics::{Grpc, metrics};

/// Records each call on the server side.
pub fn server() -> ObserveLayer {
    ObserveLayer {
        side: &metrics().grpc_server,
        server: true,
    }
}

/// Records each call on the client side.
pub fn client() -> ObserveLayer {
    ObserveLayer {
        side: &metrics().grpc_client,
        server: false,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ObserveLayer {
    side: &'static Grpc,
    server: bool,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: *self,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, RB> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let span = crate::trace::span::grpc(self.layer.server, &method);
        if self.layer.server {
            crate::trace::continue_from(&span, request.headers());
            crate::trace::record_trace_id(&span);
        } else {
            crate::trace::inject(&span, request.headers_mut());
        }
        let started = Instant::now();
        let call = span.in_scope(|| self.inner.call(request));
        let layer = self.layer;
        let future_span = span.clone();
        let call = async move {
            let result = call.await;
            let code = match &result {
                // An error status comes in the headers (a trailers-only
                // answer); an answer with a body carries its status in the
                // trailers, which a unary call only sends on success.
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes())),
                Err(_) => Code::Unavailable,
            };
            // A path that no service serves is a caller's mistake or a
            // scan; one label for all of them keeps the series bounded.
            let method = if layer.server && code == Code::Unimplemented {
                "unknown"
            } else {
                method.as_str()
            };
            layer.side.record(method, code, started.elapsed());
            span.record("rpc.grpc.status_code", code as i32);
            if code != Code::Ok {
                crate::trace::span::failed(&span);
            }
            result
        };
        Box::pin(call.instrument(future_span))
    }
}
