//! Every error the API returns, as JSON naming the problem.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::application::AppError;
use crate::domain::FieldError;

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable kind: `invalid_fields`, `bad_request`, `not_found`, `conflict`,
    /// `unsupported_media_type`, `payload_too_large`, `method_not_allowed`, `unavailable`, `overloaded`, `internal`.
    #[schema(example = "invalid_fields")]
    pub error: String,
    /// What went wrong, for people.
    #[schema(example = "value: must be greater than 0")]
    pub message: String,
    /// The fields at fault, when the problem is in the request's fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldProblem>,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema, PartialEq, Eq)]
pub struct FieldProblem {
    #[schema(example = "value")]
    pub field: String,
    #[schema(example = "must be greater than 0")]
    pub message: String,
}

impl From<&FieldError> for FieldProblem {
    fn from(e: &FieldError) -> Self {
        Self {
            field: e.field.to_owned(),
            message: e.message.clone(),
        }
    }
}

/// An error response: a status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds for a `Retry-After` header, when the client should come back later.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                message: message.into(),
                fields: vec![],
            },
            retry_after: None,
        }
    }

    pub fn field(status: StatusCode, error: &str, field: FieldError) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                message: field.to_string(),
                fields: vec![(&field).into()],
            },
            retry_after: None,
        }
    }

    pub fn bad_request(field: &'static str, message: impl Into<String>) -> Self {
        Self::field(
            StatusCode::BAD_REQUEST,
            "bad_request",
            FieldError::new(field, message),
        )
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::InvalidFields(fields) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: ErrorBody {
                    error: "invalid_fields".into(),
                    message: fields
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                    fields: fields.iter().map(Into::into).collect(),
                },
                retry_after: None,
            },
            AppError::Rejected(field) => {
                ApiError::field(StatusCode::BAD_REQUEST, "bad_request", field)
            }
            AppError::NotFound { what, id } => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} {id} not found"),
            ),
            AppError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            AppError::Unavailable { dependency, detail } => {
                tracing::warn!(dependency, %detail, "dependency unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("{dependency} is unavailable; try again shortly"),
                )
            }
            AppError::Overloaded(message, retry_after) => ApiError {
                retry_after: Some(retry_after),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
            },
            AppError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
