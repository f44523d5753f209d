//! The order store: orders placed by the API, and the queries over them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{NewOrder, Order, OrderId, UserId};

use super::errors::StoreError;
use super::saga::LogEntry;

/// An idempotency key claimed by a request, with a fingerprint of the request.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub key: String,
    pub request: NewOrder,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug)]
pub enum PlaceOutcome {
    Created(Order),
    /// The idempotency key was used before with the same request: its order.
    Replayed(Order),
    /// The idempotency key was used before with a different request.
    KeyConflict,
}

#[derive(Debug, Clone)]
pub struct OrderPage {
    pub total: u64,
    pub orders: Vec<Order>,
}

/// Orders and their status, with the saga log written in the same transaction.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Stores a PROCESSING order and its first log entry (the `order_created`
    /// event with the `order-created` message) atomically: all or nothing.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached,
    /// [`StoreError::Overloaded`] when too many orders already wait to be stored.
    async fn place(
        &self,
        order: &Order,
        correlation_id: &str,
        idempotency: Option<&IdempotencyClaim>,
        entry: &LogEntry,
    ) -> Result<PlaceOutcome, StoreError>;
    /// One order, `None` when there is none with that id.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached,
    /// [`StoreError::Other`] when the stored row cannot be read.
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError>;
    /// A user's orders, newest first (ties broken by insertion order), and their true count.
    ///
    /// # Errors
    /// As [`OrderStore::get`].
    async fn list_for_user(
        &self,
        user: &UserId,
        offset: u64,
        limit: u32,
    ) -> Result<OrderPage, StoreError>;
    /// The most recently placed orders, newest first, whoever placed them.
    ///
    /// # Errors
    /// As [`OrderStore::get`].
    async fn recent(&self, limit: u32) -> Result<Vec<Order>, StoreError>;
    /// How many orders are PROCESSING (their saga has not settled them yet).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn processing_count(&self) -> Result<u64, StoreError>;
    /// Whether the store answers (readiness).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when it does not.
    async fn ping(&self) -> Result<(), StoreError>;
}
