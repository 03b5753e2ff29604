//! HTTP series of the REST API, recorded in the tower stack rather than in
//! the handlers, so every answer counts: errors, 404s and shed requests too.

use std::time::Instant;

use allezon_core::metrics::{HttpLabels, RouteLabels, metrics};
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;

use crate::routes::ROUTES;

/// The route template as a label: one of ours, or `unmatched` (a 404), so a
/// scan of random paths cannot grow the series.
pub fn route_label(path: Option<&MatchedPath>) -> &'static str {
    path.and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()))
        .copied()
        .unwrap_or("unmatched")
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::POST => "POST",
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// Leaves the in-flight gauge when the request ends, answered or dropped by
/// a client that gave up.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics().http.in_flight.inc();
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().http.in_flight.dec();
    }
}

pub async fn record(request: Request, next: Next) -> Response {
    let route = route_label(request.extensions().get::<MatchedPath>());
    let method = method_label(request.method());
    let started = Instant::now();
    let in_flight = InFlight::enter();
    let response = next.run(request).await;
    drop(in_flight);
    let http = &metrics().http;
    http.requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    http.duration
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}
