//! The stub user directory (`ordersaga user-api`, and `all` unless
//! `USER_API_STUB=false`): `GET /api/user/{id}` → `{"user_id","is_valid"}`,
//! where a user is invalid when its id contains `invalid` (the reference's
//! rule). It answers in the format the client adapter reads.

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};

use crate::adapters::user_api::UserRecord;

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
