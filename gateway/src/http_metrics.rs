//! HTTP series of the REST API, recorded around the routes rather than in
//! the handlers (`stack::Edge`), so every answer counts: errors, 404s and
//! shed requests too.

use std::time::Duration;

use allezon_core::metrics::{HttpLabels, RouteLabels, metrics};
use axum::extract::MatchedPath;
use http::Method;

use crate::routes::ROUTES;

/// The route label of a request no route matched (a 404).
pub const UNMATCHED: &str = "unmatched";

/// The route template as a label: one of ours, or [`UNMATCHED`], so a scan
/// of random paths cannot grow the series.
pub fn route_label(path: Option<&MatchedPath>) -> &'static str {
    path.and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()))
        .copied()
        .unwrap_or(UNMATCHED)
}

pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::POST => "POST",
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// Counts one answer and observes how long it took.
pub fn record(route: &'static str, method: &'static str, status: u16, took: Duration) {
    let http = &metrics().http;
    http.requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status,
        })
        .inc();
    http.duration
        .get_or_create(&RouteLabels { route })
        .observe(took.as_secs_f64());
}
