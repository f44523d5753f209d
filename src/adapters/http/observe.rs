//! What operators see of the API: a span per request carrying its
//! correlation id (the `X-Request-Id`, which also travels with the order's
//! Kafka messages), request metrics, and the `/metrics` endpoint.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ::metrics::{Counter, Histogram};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
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
pub async fn track(State(metrics): State<RequestMetrics>, req: Request, next: Next) -> Response {
    measured(&metrics, req, async |req| next.run(req).await).await
}

/// Answers `req` with `answer`, counted and timed as `track` does: for a
/// middleware that does more around the same request (`guard::admit`).
pub async fn measured(
    metrics: &RequestMetrics,
    req: Request,
    answer: impl AsyncFnOnce(Request) -> Response,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let response = answer(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics.record(&method, route, response.status(), started.elapsed());
    response
}

/// The request metrics' handles by route template, method and status, each
/// made on the first such request: later ones record without building their
/// labels (three owned strings) and finding them in the recorder's registry,
/// which cost 3 % of the service's CPU at capacity (docs/performance.md, the
/// twenty-third session). Only requests that matched a route are counted, so
/// the routes and methods are the router's, and the statuses the API's few.
#[derive(Clone, Default)]
pub struct RequestMetrics(Arc<RwLock<HashMap<String, Vec<Handles>>>>);

struct Handles {
    method: Method,
    status: StatusCode,
    requests: Counter,
    duration: Histogram,
}

impl Handles {
    fn record(&self, took: Duration) {
        self.requests.increment(1);
        self.duration.record(took.as_secs_f64());
    }
}

impl RequestMetrics {
    fn record(&self, method: &Method, route: &str, status: StatusCode, took: Duration) {
        let find = |routes: &HashMap<String, Vec<Handles>>| {
            routes
                .get(route)
                .and_then(|hs| hs.iter().find(|h| h.status == status && h.method == method))
                .map(|h| h.record(took))
        };
        if find(&self.0.read().unwrap_or_else(PoisonError::into_inner)).is_some() {
            return;
        }
        let mut routes = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if find(&routes).is_some() {
            return; // made meanwhile
        }
        let labels = [
            ("method", method.to_string()),
            ("route", route.to_owned()),
            ("status", status.as_u16().to_string()),
        ];
        let made = Handles {
            method: method.clone(),
            status,
            requests: ::metrics::counter!(metrics::HTTP_REQUESTS, &labels),
            duration: ::metrics::histogram!(metrics::HTTP_DURATION, &labels),
        };
        made.record(took);
        routes.entry(route.to_owned()).or_default().push(made);
    }
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

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[test]
    fn each_route_method_and_status_is_its_own_series_counted_through_its_kept_handles() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let requests = RequestMetrics::default();
        let ms = Duration::from_millis(1);
        ::metrics::with_local_recorder(&recorder, || {
            for _ in 0..3 {
                requests.record(&Method::POST, "/api/orders", StatusCode::CREATED, ms);
            }
            requests.record(&Method::POST, "/api/orders", StatusCode::BAD_REQUEST, ms);
            requests.record(&Method::GET, "/api/order/{id}", StatusCode::OK, ms);
        });
        let text = handle.render();
        for series in [
            r#"ordersaga_http_requests_total{method="POST",route="/api/orders",status="201"} 3"#,
            r#"ordersaga_http_requests_total{method="POST",route="/api/orders",status="400"} 1"#,
            r#"ordersaga_http_requests_total{method="GET",route="/api/order/{id}",status="200"} 1"#,
            r#"ordersaga_http_request_duration_seconds_count{method="POST",route="/api/orders",status="201"} 3"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        // One set of handles per series, made once.
        let kept = requests.0.read().unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept["/api/orders"].len(), 2);
    }
}
