//! The relay: drains the outboxes. Messages go to the broker, saga events to
//! the event log. The two loops are independent, so a MongoDB outage delays
//! the event log but never the saga, and a broker outage never loses an event.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ports::{EventLog, MessagePublisher, Outbox, OutboxKind, RelayError};

#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Rows per transaction.
    pub batch_size: u32,
    /// Longest wait for a notification before looking again anyway.
    pub idle_poll: Duration,
    /// Least time between two partial batches of events (messages go at once).
    pub events_gather: Duration,
    /// Message loops side by side: one reads and sends while another waits for acks.
    pub message_workers: usize,
    /// Longest pause after a failure (pauses double from 50 ms up to this).
    pub max_backoff: Duration,
    /// How often the backlog gauges (`ordersaga_outbox_backlog`) are refreshed.
    pub backlog_interval: Duration,
    /// How long a message handed straight from this process's writers to its
    /// relay keeps its outbox row from every relay's scan; zero: no hand-off.
    pub hand_off_lease: Duration,
}

impl RelaySettings {
    pub const DEFAULT_MESSAGE_WORKERS: usize = 2;
    pub const DEFAULT_HAND_OFF_LEASE: Duration = Duration::from_secs(5);
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_poll: Duration::from_millis(500),
            events_gather: Duration::from_millis(50),
            message_workers: Self::DEFAULT_MESSAGE_WORKERS,
            max_backoff: Duration::from_secs(5),
            backlog_interval: Duration::from_secs(5),
            hand_off_lease: Self::DEFAULT_HAND_OFF_LEASE,
        }
    }
}

pub struct Relay {
    outbox: Arc<dyn Outbox>,
    publisher: Arc<dyn MessagePublisher>,
    event_log: Arc<dyn EventLog>,
    settings: RelaySettings,
}

impl Relay {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        publisher: Arc<dyn MessagePublisher>,
        event_log: Arc<dyn EventLog>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            outbox,
            publisher,
            event_log,
            settings,
        }
    }

    /// Publishes one batch of pending messages; returns how many went out.
    pub async fn relay_messages_once(&self) -> Result<usize, RelayError> {
        self.outbox
            .relay_messages(self.settings.batch_size, self.publisher.as_ref())
            .await
    }

    /// Copies one batch of pending events to the event log; returns how many.
    pub async fn relay_events_once(&self) -> Result<usize, RelayError> {
        self.outbox
            .relay_events(self.settings.batch_size, self.event_log.as_ref())
            .await
    }

    /// Runs the loops until `shutdown`; each drains what is pending before it
    /// returns (until a pass finds nothing). Messages have `message_workers` loops, so the next batch is
    /// read and sent while one waits for the broker's acknowledgement. Order
    /// between them does not matter: an order has one message in flight at a
    /// time (each follows the reply to the one before), and should a retried
    /// command overtake its first attempt, the orchestrator ignores the reply
    /// to the stale attempt.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let messages: Vec<_> = (0..self.settings.message_workers.max(1))
            .map(|_| {
                let relay = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { relay.drain_loop(OutboxKind::Messages, shutdown).await })
            })
            .collect();
        let messages = futures::future::join_all(messages);
        let events = {
            let relay = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { relay.drain_loop(OutboxKind::Events, shutdown).await })
        };
        let gauges = {
            let relay = self.clone();
            tokio::spawn(async move { relay.backlog_loop(shutdown).await })
        };
        let _ = tokio::join!(messages, events, gauges);
    }

    /// Keeps the backlog gauges current; a failed count leaves the last value.
    async fn backlog_loop(&self, shutdown: CancellationToken) {
        loop {
            for kind in [OutboxKind::Messages, OutboxKind::Events] {
                match self.outbox.backlog(kind).await {
                    Ok(n) => {
                        metrics::gauge!(crate::metrics::OUTBOX_BACKLOG, "kind" => kind.as_str())
                            .set(n as f64)
                    }
                    Err(e) => {
                        tracing::debug!(outbox = kind.as_str(), error = %e, "cannot count the backlog")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.backlog_interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn drain_loop(&self, kind: OutboxKind, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = match kind {
                OutboxKind::Messages => self.relay_messages_once().await,
                OutboxKind::Events => self.relay_events_once().await,
            };
            match result {
                Ok(n) => {
                    metrics::counter!(crate::metrics::OUTBOX_RELAYED, "kind" => kind.as_str())
                        .increment(n as u64);
                    backoff = Duration::from_millis(50);
                    if n as u32 >= self.settings.batch_size {
                        continue; // more may be waiting
                    }
                    if shutdown.is_cancelled() {
                        if n == 0 {
                            return;
                        }
                        // Once more, until a pass finds nothing: it also
                        // tidies up after the last batch (sent rows deleted).
                        continue;
                    }
                    let gather = match kind {
                        OutboxKind::Messages => Duration::ZERO,
                        OutboxKind::Events => self.settings.events_gather,
                    };
                    tokio::select! {
                        _ = async {
                            tokio::time::sleep(gather).await;
                            self.outbox.wait_for_work(kind, self.settings.idle_poll).await
                        } => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(outbox = ?kind, error = %e, retry_in_ms = backoff.as_millis() as u64, "relay batch failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
        }
    }
}
