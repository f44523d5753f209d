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
#[utoipa::path(get, path = "/health", tag = "operations", security(()), responses((status = 200, body = HealthBody)))]
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
    /// Each dependency: `ok` or what is wrong with it (empty for a caller
    /// without an API key, when keys protect the operations endpoints).
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
    // Open; with keys configured, its checks show only to a caller with one.
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Ready", body = ReadyBody),
        (status = 503, description = "A dependency is unreachable, or the process is draining", body = ReadyBody),
    )
)]
pub async fn ready(
    State(readiness): State<Arc<Readiness>>,
    details: Option<axum::Extension<super::guard::SeesDetails>>,
) -> (StatusCode, Json<ReadyBody>) {
    let report = readiness.check().await;
    let sees_details = details.is_none_or(|axum::Extension(d)| d.0);
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
    if !sees_details {
        // The raw error texts say what runs where: only for callers with a key.
        return (
            code,
            Json(ReadyBody {
                status: status.into(),
                checks: BTreeMap::new(),
                message: None,
            }),
        );
    }
    (
        code,
        Json(ReadyBody {
            status: status.into(),
            checks,
            message,
        }),
    )
}
