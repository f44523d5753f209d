//! The one error type use cases return; the HTTP adapter maps it to responses.

use crate::domain::FieldError;

use super::ports::{EventLogError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Fields missing or malformed.
    #[error("invalid fields: {}", list(.0))]
    InvalidFields(Vec<FieldError>),
    /// A well-formed request the rules refuse (e.g. a method/installment pair).
    #[error("{0}")]
    Rejected(FieldError),
    #[error("{what} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// A dependency the request needs is down.
    #[error("{dependency} unavailable: {detail}")]
    Unavailable {
        dependency: &'static str,
        detail: String,
    },
    /// Too much work is waiting: come back after `retry_after_secs`.
    #[error("{0}")]
    Overloaded(String, u32),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => AppError::Unavailable {
                dependency: "the order store",
                detail,
            },
            StoreError::Overloaded(detail) => {
                AppError::Overloaded(format!("{detail}; retry shortly"), 1)
            }
            StoreError::Other(e) => AppError::Internal(e),
        }
    }
}

impl From<EventLogError> for AppError {
    fn from(e: EventLogError) -> Self {
        match e {
            EventLogError::Unavailable(detail) => AppError::Unavailable {
                dependency: "the event log",
                detail,
            },
            EventLogError::Other(e) => AppError::Internal(e),
        }
    }
}
