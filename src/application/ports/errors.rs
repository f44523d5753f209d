//! Why a port's call failed, and what each failure means for the caller.

/// A storage failure: the store is unreachable (retry later) or something else went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Too much work is already waiting for the store: try again shortly.
    #[error("store overloaded: {0}")]
    Overloaded(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl StoreError {
    /// The same failure once more, for another of the calls it failed at
    /// once (the decisions of one transaction): same kind, same message.
    pub fn again(&self) -> Self {
        match self {
            StoreError::Unavailable(d) => StoreError::Unavailable(d.clone()),
            StoreError::Overloaded(d) => StoreError::Overloaded(d.clone()),
            StoreError::Other(e) => StoreError::Other(anyhow::anyhow!("{e:#}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
#[error("broker: {0}")]
pub struct PublishError(pub String);

#[derive(Debug, thiserror::Error)]
#[error("user directory unavailable: {0}")]
pub struct UserDirectoryError(pub String);

/// Why a relay batch did not go through; the rows stay for the next try.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    EventLog(#[from] EventLogError),
}

/// Why handling a message failed, which decides what the consumer does next.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be handled: dead-letter it now.
    #[error("poison message: {0}")]
    Poison(String),
    /// A dependency is down: retry the same message (with backoff) until it is back.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// Something else failed: retry a bounded number of times, then dead-letter.
    #[error(transparent)]
    Failed(anyhow::Error),
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => HandleError::Unavailable(format!("the store: {d}")),
            StoreError::Overloaded(d) => {
                HandleError::Unavailable(format!("the store is busy: {d}"))
            }
            StoreError::Other(e) => HandleError::Failed(e),
        }
    }
}

impl From<PublishError> for HandleError {
    fn from(e: PublishError) -> Self {
        HandleError::Unavailable(e.to_string())
    }
}
