//! The stub user directory: `GET /api/user/{id}` → `{"user_id","is_valid"}`,
//! where a user is invalid when its id contains `invalid` (the reference's rule).

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserRecord {
    pub user_id: String,
    pub is_valid: bool,
}

pub fn router() -> Router {
    Router::new().route("/api/user/{id}", get(user)).route(
        "/health",
        get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
    )
}

async fn user(Path(id): Path<String>) -> Json<UserRecord> {
    let is_valid = !id.contains("invalid");
    Json(UserRecord {
        user_id: id,
        is_valid,
    })
}
