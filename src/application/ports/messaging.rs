//! The message broker: publishing (outbound) and handling what consumers receive (inbound).

use async_trait::async_trait;

use crate::application::messages::{InboundMessage, OutboundMessage};

use super::errors::{HandleError, PublishError};

/// The message broker, outbound.
#[async_trait]
pub trait MessagePublisher: Send + Sync {
    /// Publishes every message and waits for the broker's acknowledgement of
    /// all of them.
    ///
    /// # Errors
    /// [`PublishError`] when any message was not acknowledged (some may have
    /// gone out: publish them all again; consumers drop the copies).
    async fn publish(&self, messages: &[OutboundMessage]) -> Result<(), PublishError>;
    /// Sets a message aside on the dead-letter topic, with why.
    ///
    /// # Errors
    /// [`PublishError`] when the broker did not acknowledge it.
    async fn dead_letter(&self, message: &InboundMessage, error: &str) -> Result<(), PublishError>;
    /// Whether the broker answers (readiness).
    ///
    /// # Errors
    /// [`PublishError`] when it does not.
    async fn ping(&self) -> Result<(), PublishError>;
}

/// Something that handles messages from the broker (inbound port).
#[async_trait]
pub trait MessageHandler: Send + Sync {
    /// Handles one message; the error decides what the consumer does next.
    ///
    /// # Errors
    /// [`HandleError::Poison`] (dead-letter it), [`HandleError::Unavailable`]
    /// (retry until the dependency is back), [`HandleError::Failed`] (retry a
    /// few times, then dead-letter).
    async fn handle(&self, message: &InboundMessage) -> Result<(), HandleError>;
}
