//! The HTTP API (axum): routes, middleware, Swagger UI.

pub mod error;
pub mod form;
pub mod guard;
pub mod health;
pub mod observe;
pub mod openapi;
pub mod openapi_schemas;
pub mod orders;
pub mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::application::health::Readiness;
use crate::application::orders::OrderService;

use error::ApiError;
pub use guard::{ApiKeys, Bounds, DataGuard};

#[derive(Clone, axum::extract::FromRef)]
pub struct AppState {
    pub orders: Arc<OrderService>,
    pub readiness: Arc<Readiness>,
    pub keys: ApiKeys,
    /// The live page's streams: their cap and the shared poller.
    pub live: Arc<ui::LiveFeed>,
}

impl AppState {
    pub fn new(orders: Arc<OrderService>, readiness: Arc<Readiness>) -> Self {
        Self {
            orders,
            readiness,
            keys: ApiKeys::default(),
            live: ui::LiveFeed::new(Bounds::default().max_streams),
        }
    }

    pub fn with_keys(mut self, keys: ApiKeys) -> Self {
        self.keys = keys;
        self
    }

    pub fn with_stream_cap(mut self, max_streams: usize) -> Self {
        self.live = ui::LiveFeed::new(max_streams);
        self
    }
}

/// The whole API, with its bounds.
pub fn router(state: AppState, bounds: &Bounds) -> Router {
    let request_id = HeaderName::from_static(orders::REQUEST_ID_HEADER);
    let keys = state.keys.clone();
    let metrics = observe::RequestMetrics::default();
    // The data: counted, in-flight limit, keys required (when configured),
    // timeout, in one middleware (`guard::admit`).
    let data = Router::new()
        .route("/api/orders", post(orders::place_order))
        .route("/api/order/{id}", get(orders::get_order))
        .route("/api/order/{id}/events", get(orders::order_events))
        .route("/api/orders/{user_id}", get(orders::list_orders))
        .route("/api/methods", get(orders::methods))
        .route("/ui/stream", get(ui::stream))
        .route_layer(axum::middleware::from_fn_with_state(
            DataGuard::new(keys.clone(), bounds, metrics.clone()),
            guard::admit,
        ));
    // The rest: counted.
    let rest = Router::new()
        .merge(ops_routes(keys))
        .route("/ui", get(ui::page))
        .route("/", get(|| async { Redirect::temporary("/ui") }))
        .route(
            "/swagger/index.html",
            get(|| async { Redirect::permanent("/swagger-ui/") }),
        )
        .route(
            "/swagger",
            get(|| async { Redirect::permanent("/swagger-ui/") }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            observe::track,
        ));
    let api = data
        .merge(rest)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    let routes = Router::new()
        .merge(
            SwaggerUi::new("/swagger-ui").url("/api-docs/openapi.json", openapi::ApiDoc::openapi()),
        )
        .merge(api)
        .fallback(not_found);
    // Around the whole router, once: `Router::layer` would wrap every route in
    // each layer (a boxed service per layer and route), and every request
    // clones and drops its route's whole stack (a tenth of the service's CPU
    // at capacity; docs/performance.md, the twenty-third session).
    let outer = ServiceBuilder::new()
        .map_request(guard::sanitize_request_id)
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(TraceLayer::new_for_http().make_span_with(observe::request_span))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }))
        .layer(DefaultBodyLimit::max(form::MAX_BODY_BYTES))
        .service(routes);
    Router::new().fallback_service(outer)
}

/// `/health` (open), `/ready` (its checks shown only to a caller with a key,
/// when keys protect the operations endpoints) and `/metrics` (a key needed
/// then), in any router whose state holds the readiness checks.
fn ops_routes<S>(keys: ApiKeys) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Readiness>: axum::extract::FromRef<S>,
{
    let ready = Router::new()
        .route("/ready", get(health::ready))
        .route_layer(axum::middleware::from_fn_with_state(
            keys.clone(),
            guard::mark_details,
        ));
    let metrics = Router::new()
        .route("/metrics", get(observe::prometheus))
        .route_layer(axum::middleware::from_fn_with_state(
            keys,
            guard::require_key_for_ops,
        ));
    Router::new()
        .route("/health", get(health::health))
        .merge(ready)
        .merge(metrics)
}

/// The operations endpoints alone, for a component that does not serve the
/// API (OPS_PORT).
pub fn ops_router(readiness: Arc<Readiness>, keys: ApiKeys) -> Router {
    ops_routes(keys)
        .route_layer(axum::middleware::from_fn_with_state(
            observe::RequestMetrics::default(),
            observe::track,
        ))
        .fallback(not_found)
        .with_state(readiness)
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
    .into_response()
}

/// Serves `app` on `listener` until `shutdown`, then lets in-flight requests finish (up to `grace`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: tokio_util::sync::CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let drain = shutdown.clone();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(async move { drain.cancelled().await });
    tokio::select! {
        r = server => r.map_err(Into::into),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("HTTP requests still in flight after the grace period; closing");
            Ok(())
        }
    }
}
