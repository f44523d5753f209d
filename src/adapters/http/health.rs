//! `/health` (the process is alive) and `/ready` (its dependencies answer).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::application::health::Readiness;

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct HealthBody {
    #[schema(example = "ok")]
    pub status: String,
}

/// Liveness: answers while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = HealthBody)))]
pub async fn health() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".into(),
    })
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ReadyBody {
    /// `ready`, `not_ready` or `draining`.
    #[schema(example = "ready")]
    pub status: String,
    /// Each dependency: `ok` or what is wrong with it.
    pub checks: BTreeMap<String, String>,
    /// The dependencies that failed, named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Readiness: PostgreSQL, Kafka and MongoDB reachable, and not shutting down.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadyBody),
        (status = 503, description = "A dependency is unreachable, or the process is draining", body = ReadyBody),
    )
)]
pub async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, Json<ReadyBody>) {
    let report = readiness.check().await;
    let checks: BTreeMap<String, String> = report
        .checks
        .iter()
        .map(|(name, r)| {
            (
                name.to_string(),
                r.as_ref()
                    .map(|_| "ok".to_string())
                    .unwrap_or_else(|e| e.clone()),
            )
        })
        .collect();
    let failing: Vec<&str> = report
        .checks
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| *n)
        .collect();
    let (code, status, message) = if report.draining {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            Some("shutting down".to_string()),
        )
    } else if failing.is_empty() {
        (StatusCode::OK, "ready", None)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            Some(format!("not ready: {}", failing.join(", "))),
        )
    };
    (
        code,
        Json(ReadyBody {
            status: status.into(),
            checks,
            message,
        }),
    )
}
