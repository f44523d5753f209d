//! Use cases behind the HTTP API: place, get and list orders, read an order's events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{Duration, SubsecRound, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::domain::{FieldError, NewOrder, Order, OrderId, SagaEventKind, UserId};

use super::error::AppError;
use super::messages::{MessageType, OrderCreated, OutboundMessage, Topic};
use super::ports::{
    EventLog, EventRecord, IdempotencyClaim, LogEntry, NewEvent, OrderPage, OrderStore,
    PlaceOutcome,
};

/// Most orders one page may hold.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub struct OrderService {
    store: Arc<dyn OrderStore>,
    events: Arc<dyn EventLog>,
    idempotency_ttl: Duration,
    admission: Arc<Admission>,
}

/// Admission control: new orders are refused (503, `Retry-After`) while
/// `limit` or more orders are PROCESSING. Past what the saga settles per
/// second, a queue of accepted orders only grows, and orders that wait
/// longer than the step deadlines get canceled; a refused client can retry.
/// The count is PostgreSQL's, refreshed by `Admission::run`, plus the orders
/// this process accepted since.
pub struct Admission {
    /// 0: no limit.
    limit: u64,
    processing: AtomicU64,
}

/// PROCESSING orders at which new ones are refused, unless configured otherwise.
pub const DEFAULT_MAX_PROCESSING: u64 = 1000;

/// Seconds a refused client is told to wait.
const RETRY_AFTER_SECS: u32 = 1;

impl Admission {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            processing: AtomicU64::new(0),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(0)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn admit(&self) -> Result<(), AppError> {
        let processing = self.processing.load(Ordering::Relaxed);
        if self.limit > 0 && processing >= self.limit {
            return Err(AppError::Overloaded(
                format!(
                    "{processing} orders are still being validated (the limit is {}, API_MAX_PROCESSING); retry later",
                    self.limit
                ),
                RETRY_AFTER_SECS,
            ));
        }
        Ok(())
    }

    /// Keeps the count current until `shutdown`; a failed count keeps the last one.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn OrderStore>,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            match store.processing_count().await {
                Ok(n) => self.processing.store(n, Ordering::Relaxed),
                Err(e) => tracing::debug!(error = %e, "cannot count PROCESSING orders"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// A placed order, and whether this request created it or replayed an earlier one.
#[derive(Debug)]
pub struct Placed {
    pub order: Order,
    pub created: bool,
}

impl OrderService {
    pub fn new(
        store: Arc<dyn OrderStore>,
        events: Arc<dyn EventLog>,
        idempotency_ttl: Duration,
    ) -> Self {
        Self {
            store,
            events,
            idempotency_ttl,
            admission: Arc::new(Admission::unlimited()),
        }
    }

    /// The same service, refusing new orders as `admission` says.
    pub fn with_admission(mut self, admission: Arc<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// Stores the order as PROCESSING with its `order-created` message in the
    /// outbox, in one transaction. With an idempotency key, a repeat of the same
    /// request returns the first order; a different request with that key is a conflict.
    pub async fn place(
        &self,
        new: NewOrder,
        correlation_id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Placed, AppError> {
        // Microseconds: what PostgreSQL keeps, so the response matches later reads.
        let now = Utc::now().trunc_subsecs(6);
        let claim = match idempotency_key {
            None => None,
            Some(key) => {
                if key.is_empty()
                    || key.len() > MAX_IDEMPOTENCY_KEY_LEN
                    || !key.bytes().all(|b| (0x20..=0x7e).contains(&b))
                {
                    return Err(AppError::Rejected(FieldError::new(
                        "Idempotency-Key",
                        format!(
                            "must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
                        ),
                    )));
                }
                Some(IdempotencyClaim {
                    key: key.to_owned(),
                    request: new.clone(),
                    expires_at: now + self.idempotency_ttl,
                })
            }
        };
        self.admission.admit()?;
        let order = Order::place(OrderId::new(), new, now);
        let payload = OrderCreated {
            order_id: order.id,
            user_id: order.user_id.clone(),
            value: order.value,
            installment: order.installment.get(),
            method: order.method,
            created_at: order.created_at,
        };
        let message = OutboundMessage::new(
            Uuid::new_v4(),
            Topic::OrdersCreated,
            order.id,
            MessageType::OrderCreated,
            correlation_id,
            &payload,
        );
        let event = NewEvent::new(
            order.id,
            SagaEventKind::OrderCreated,
            json!({
                "value": order.value,
                "user_id": order.user_id,
                "installment": order.installment,
                "method": order.method,
                "correlation_id": correlation_id,
            }),
            now,
        );
        let entry = LogEntry::with_message(event, message);
        match self
            .store
            .place(&order, correlation_id, claim.as_ref(), &entry)
            .await?
        {
            PlaceOutcome::Created(order) => {
                ::metrics::counter!(crate::metrics::ORDERS_PLACED).increment(1);
                self.admission.processing.fetch_add(1, Ordering::Relaxed);
                Ok(Placed {
                    order,
                    created: true,
                })
            }
            PlaceOutcome::Replayed(order) => Ok(Placed {
                order,
                created: false,
            }),
            PlaceOutcome::KeyConflict => Err(AppError::Conflict(
                "Idempotency-Key was already used with a different order form".into(),
            )),
        }
    }

    pub async fn get(&self, id: OrderId) -> Result<Order, AppError> {
        self.store.get(id).await?.ok_or_else(|| AppError::NotFound {
            what: "order",
            id: id.to_string(),
        })
    }

    /// A page of the user's orders, newest first; `limit` is capped at [`MAX_PAGE_SIZE`].
    pub async fn list(
        &self,
        user: &UserId,
        offset: u64,
        limit: u32,
    ) -> Result<(u32, OrderPage), AppError> {
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        Ok((limit, self.store.list_for_user(user, offset, limit).await?))
    }

    /// The most recently placed orders (at most [`MAX_PAGE_SIZE`]), newest first.
    pub async fn recent(&self, limit: u32) -> Result<Vec<Order>, AppError> {
        Ok(self.store.recent(limit.clamp(1, MAX_PAGE_SIZE)).await?)
    }

    /// The order's saga timeline from the event log.
    pub async fn events(&self, id: OrderId) -> Result<Vec<EventRecord>, AppError> {
        self.get(id).await?;
        Ok(self.events.for_order(id).await?)
    }
}
