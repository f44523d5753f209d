//! The user directory the user validator asks.

use async_trait::async_trait;

use crate::domain::UserId;

use super::errors::UserDirectoryError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Valid,
    Invalid,
}

/// The user directory.
#[async_trait]
pub trait UserDirectory: Send + Sync {
    /// Whether `user` may place orders.
    ///
    /// # Errors
    /// [`UserDirectoryError`] when the directory cannot answer (down, too
    /// slow, an answer it cannot read, or its circuit is open).
    async fn check(&self, user: &UserId) -> Result<UserStatus, UserDirectoryError>;
}
