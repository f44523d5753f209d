//! What operators see of the API: a span per request carrying its
//! correlation id (the `X-Request-Id`, which also travels with the order's
//! Kafka messages), request metrics, and the `/metrics` endpoint.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Span;

use super::orders::REQUEST_ID_HEADER;
use crate::metrics;

/// The span every request runs in. `order_id` is filled in by the handlers
/// that know it.
pub fn request_span(req: &Request) -> Span {
    let correlation_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        correlation_id = %correlation_id,
        order_id = tracing::field::Empty,
    )
}

/// Names the order in the current request's span (and so in its log lines).
pub fn record_order_id(id: impl std::fmt::Display) {
    Span::current().record("order_id", tracing::field::display(id));
}

/// Counts and times every request by route template (not raw path, so ids do
/// not explode the label set) and status.
pub async fn track(req: Request, next: Next) -> Response {
    measured(req, async |req| next.run(req).await).await
}

/// Answers `req` with `answer`, counted and timed as `track` does: for a
/// middleware that does more around the same request (`guard::admit`).
pub async fn measured(req: Request, answer: impl AsyncFnOnce(Request) -> Response) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = answer(req).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    ::metrics::counter!(metrics::HTTP_REQUESTS, &labels).increment(1);
    ::metrics::histogram!(metrics::HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format (see docs/operations.md)", content_type = "text/plain", body = String),
        (status = 401, description = "API keys are configured (and OPS_REQUIRE_KEY) and the request has no valid key", body = super::error::ErrorBody),
    )
)]
pub async fn prometheus() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
        .into_response()
}
