//! The relay: follows the saga log. Its messages go to the broker, its events
//! to the event log. The two feeds are independent, so an event log outage delays
//! the event log but never the saga, and a broker outage never loses an event.
//!
//! The log is append-only: a relay never deletes or marks rows. It follows a
//! feed from a position kept in memory, moved once the broker (or the event
//! log) has what it read, and records that position in the store when it
//! renews its lease (every third of it) and at shutdown: one write a second
//! or so per feed, however many rows go. One relay at
//! a time holds a feed; relays in other processes wait, and take over when a
//! holder's lease ends (its process died), from the recorded position. What
//! was sent after it goes again: the consumers drop messages they have seen
//! (by the saga's state) and the event log drops event ids it has.
//!
//! A read finds only rows of transactions older than every one still running
//! (see `SagaLog`); when committed rows wait behind such a transaction, the
//! relay reads again at the next wake-up or 5 ms later, whichever comes
//! first (doubling to 80 ms while they wait), instead of the idle poll: the
//! transaction in the way may be one that wakes nobody (another process's,
//! a relay's own position write). Under load the wake-ups come first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ports::{
    EventLog, Feed, LogBatch, LogPosition, LogRow, MessagePublisher, RelayError, SagaLog,
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelaySettings {
    /// Rows read per batch.
    pub batch_size: u32,
    /// Longest wait for a notification before looking again anyway.
    pub idle_poll: Duration,
    /// Least time between two partial batches of events (messages go at once).
    pub events_gather: Duration,
    /// Longest pause after a failure (pauses double from 50 ms up to this).
    pub max_backoff: Duration,
    /// How often the backlog gauges (`ordersaga_outbox_backlog`) are refreshed.
    pub backlog_interval: Duration,
    /// How long a relay holds a feed without reading it again; when its
    /// process dies, another relay takes the feed over after this.
    pub lease: Duration,
}

impl RelaySettings {
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_poll: Duration::from_millis(500),
            events_gather: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            backlog_interval: Duration::from_secs(5),
            lease: Self::DEFAULT_LEASE,
        }
    }
}

/// First pause before reading again rows the horizon held back; it doubles
/// while they stay held, up to `HELD_BACK_MAX` (or the idle poll).
const HELD_BACK_FIRST: Duration = Duration::from_millis(5);
const HELD_BACK_MAX: Duration = Duration::from_millis(80);

pub struct Relay {
    log: Arc<dyn SagaLog>,
    publisher: Arc<dyn MessagePublisher>,
    event_log: Arc<dyn EventLog>,
    settings: RelaySettings,
    /// Who holds a feed, to the other relays.
    id: Uuid,
    /// Where this relay is in each feed it holds.
    feeds: Mutex<HashMap<Feed, Following>>,
}

/// A feed this relay holds: how far it has relayed, and when it last
/// renewed its lease (and recorded its position).
#[derive(Debug, Clone, Copy)]
struct Following {
    position: LogPosition,
    claimed: Instant,
}

/// What one pass over a feed did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Another relay holds the feed.
    Held,
    /// Rows read and relayed (messages or events among them), the position
    /// moved past them; `held_back`: committed rows wait behind a running
    /// transaction.
    Relayed {
        rows: usize,
        sent: usize,
        held_back: bool,
    },
}

impl Relay {
    pub fn new(
        log: Arc<dyn SagaLog>,
        publisher: Arc<dyn MessagePublisher>,
        event_log: Arc<dyn EventLog>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            log,
            publisher,
            event_log,
            settings,
            id: Uuid::new_v4(),
            feeds: Mutex::default(),
        }
    }

    /// Reads one batch of `feed`, delivers it, and moves the position past it
    /// (recording it when it is due, see the module's notes).
    pub async fn pass(&self, feed: Feed) -> Result<Pass, RelayError> {
        let Some(mut f) = self.hold(feed).await? else {
            return Ok(Pass::Held);
        };
        let LogBatch { rows, held_back } = self
            .log
            .read_log(feed, f.position, self.settings.batch_size)
            .await?;
        let sent = match rows.last() {
            None => 0,
            Some(last) => {
                let last = last.position;
                let sent = self.deliver(feed, &rows).await?;
                f.position = last;
                sent
            }
        };
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(feed, f);
        Ok(Pass::Relayed {
            rows: rows.len(),
            sent,
            held_back,
        })
    }

    /// This relay's place in `feed`, claiming the feed (or renewing its
    /// lease, recording the position) when that is due. `None`: another
    /// relay holds it.
    async fn hold(&self, feed: Feed) -> Result<Option<Following>, RelayError> {
        let known = self
            .feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&feed)
            .copied();
        match known {
            Some(f) if f.claimed.elapsed() < self.settings.lease / 3 => Ok(Some(f)),
            _ => self.record(feed).await,
        }
    }

    /// Claims or renews `feed`, recording the position this relay has got to.
    async fn record(&self, feed: Feed) -> Result<Option<Following>, RelayError> {
        let known = self
            .feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&feed)
            .copied();
        let claimed = Instant::now();
        let stored = self
            .log
            .claim_feed(
                feed,
                self.id,
                self.settings.lease,
                known.map(|f| f.position),
            )
            .await;
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        match stored {
            Ok(Some(stored)) => {
                let f = Following {
                    position: known.map_or(stored, |k| k.position),
                    claimed,
                };
                feeds.insert(feed, f);
                Ok(Some(f))
            }
            Ok(None) => {
                if known.is_some() {
                    tracing::warn!(
                        feed = feed.as_str(),
                        "another relay took this feed over; it goes on from the recorded position"
                    );
                }
                feeds.remove(&feed);
                Ok(None)
            }
            Err(e) => {
                // Unsure whether the store kept it: claim again before the next read.
                feeds.remove(&feed);
                Err(e.into())
            }
        }
    }

    /// Records where this relay has got to in every feed it holds (at shutdown).
    pub async fn checkpoint(&self) {
        let held: Vec<Feed> = self
            .feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for feed in held {
            if let Err(e) = self.record(feed).await {
                tracing::warn!(feed = feed.as_str(), error = %e, "cannot record the feed's position; its rows since will go again");
            }
        }
    }

    /// Hands the rows' messages to the broker, or their events to the event log.
    async fn deliver(&self, feed: Feed, rows: &[LogRow]) -> Result<usize, RelayError> {
        match feed {
            Feed::Messages => {
                let messages: Vec<_> = rows.iter().filter_map(|r| r.message.clone()).collect();
                if !messages.is_empty() {
                    self.publisher.publish(&messages).await?;
                }
                Ok(messages.len())
            }
            Feed::Events => {
                let events: Vec<_> = rows.iter().filter_map(|r| r.event.clone()).collect();
                if !events.is_empty() {
                    self.event_log.append(&events).await?;
                }
                Ok(events.len())
            }
        }
    }

    /// Runs both feeds until `shutdown`; each drains what is pending before
    /// it returns (until a pass finds nothing).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let feeds = Feed::ALL.map(|feed| {
            let (relay, shutdown) = (self.clone(), shutdown.clone());
            tokio::spawn(async move { relay.follow(feed, shutdown).await })
        });
        let gauges = {
            let relay = self.clone();
            tokio::spawn(async move { relay.backlog_loop(shutdown).await })
        };
        let _ = tokio::join!(futures::future::join_all(feeds), gauges);
        self.checkpoint().await;
    }

    /// Keeps the backlog gauges current (after this relay's position in a
    /// feed it holds, else the recorded one); a failed count leaves the last value.
    async fn backlog_loop(&self, shutdown: CancellationToken) {
        loop {
            for feed in Feed::ALL {
                let position = self
                    .feeds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&feed)
                    .map(|f| f.position);
                match self.log.backlog(feed, position).await {
                    Ok(n) => {
                        metrics::gauge!(crate::metrics::OUTBOX_BACKLOG, "kind" => feed.as_str())
                            .set(n as f64)
                    }
                    Err(e) => {
                        tracing::debug!(feed = feed.as_str(), error = %e, "cannot count the backlog")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.backlog_interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn follow(&self, feed: Feed, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut held_pause = HELD_BACK_FIRST;
        loop {
            match self.pass(feed).await {
                Ok(Pass::Relayed {
                    rows,
                    sent,
                    held_back,
                }) => {
                    metrics::counter!(crate::metrics::OUTBOX_RELAYED, "kind" => feed.as_str())
                        .increment(sent as u64);
                    backoff = Duration::from_millis(50);
                    if rows as u32 >= self.settings.batch_size {
                        continue; // more may be waiting
                    }
                    if shutdown.is_cancelled() && rows == 0 {
                        return;
                    }
                    if rows > 0 && shutdown.is_cancelled() {
                        continue; // drain what is left
                    }
                    let gather = match feed {
                        Feed::Messages => Duration::ZERO,
                        Feed::Events => self.settings.events_gather,
                    };
                    // Rows held back by a running transaction: look again soon.
                    let wait = if held_back {
                        let pause = held_pause.min(self.settings.idle_poll);
                        held_pause = (held_pause * 2).min(HELD_BACK_MAX);
                        pause
                    } else {
                        held_pause = HELD_BACK_FIRST;
                        self.settings.idle_poll
                    };
                    tokio::select! {
                        _ = async {
                            tokio::time::sleep(gather).await;
                            self.log.wait_for_work(feed, wait).await
                        } => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Ok(Pass::Held) => {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    // Another relay follows this feed; be ready to take over.
                    tokio::select! {
                        _ = self.log.wait_for_work(feed, self.settings.idle_poll) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(feed = feed.as_str(), error = %e, retry_in_ms = backoff.as_millis() as u64, "relay batch failed; will retry");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::ports::fakes::{
        MemoryBroker as Broker, MemoryEvents as Events, MemoryLog,
    };

    /// An empty log, a broker and an event log, in memory.
    fn ports() -> (Arc<MemoryLog>, Arc<Broker>, Arc<Events>) {
        (Arc::default(), Arc::default(), Arc::default())
    }

    fn relay(log: &Arc<MemoryLog>, broker: &Arc<Broker>, events: &Arc<Events>) -> Relay {
        Relay::new(
            log.clone(),
            broker.clone(),
            events.clone(),
            RelaySettings {
                batch_size: 2,
                ..RelaySettings::default()
            },
        )
    }

    #[tokio::test]
    async fn each_feed_delivers_its_part_of_the_rows_and_moves_past_them() {
        let (log, broker, events) = ports();
        log.push(true);
        log.push(false);
        log.push(true);
        let relay = relay(&log, &broker, &events);
        // Two rows a batch: the first holds one message, the second the other.
        assert_eq!(
            relay.pass(Feed::Messages).await.unwrap(),
            Pass::Relayed {
                rows: 2,
                sent: 1,
                held_back: false
            }
        );
        assert_eq!(
            relay.pass(Feed::Messages).await.unwrap(),
            Pass::Relayed {
                rows: 1,
                sent: 1,
                held_back: false
            }
        );
        assert_eq!(
            relay.pass(Feed::Messages).await.unwrap(),
            Pass::Relayed {
                rows: 0,
                sent: 0,
                held_back: false
            }
        );
        assert_eq!(broker.sent.lock().unwrap().len(), 2);
        // The events feed has its own position: every row is an event.
        assert_eq!(log.position(Feed::Events), LogPosition(0, 0));
        while relay.pass(Feed::Events).await.unwrap()
            != (Pass::Relayed {
                rows: 0,
                sent: 0,
                held_back: false,
            })
        {}
        assert_eq!(events.events.lock().unwrap().len(), 3);
        // Recorded when due (caught up, a moment after the last record), and at shutdown.
        relay.checkpoint().await;
        assert_eq!(log.position(Feed::Events), LogPosition(1, 3));
        assert_eq!(log.position(Feed::Messages), LogPosition(1, 3));
    }

    #[tokio::test]
    async fn a_batch_the_broker_refused_is_read_again_and_nothing_is_skipped() {
        let (log, broker, events) = ports();
        log.push(true);
        let relay = relay(&log, &broker, &events);
        broker.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(relay.pass(Feed::Messages).await.is_err());
        assert_eq!(
            log.position(Feed::Messages),
            LogPosition(0, 0),
            "the position stays"
        );
        broker
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            relay.pass(Feed::Messages).await.unwrap(),
            Pass::Relayed {
                rows: 1,
                sent: 1,
                held_back: false
            }
        );
        assert_eq!(broker.sent.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_feed_another_relay_holds_is_left_to_it() {
        let (log, broker, events) = ports();
        log.push(true);
        let first = relay(&log, &broker, &events);
        let second = relay(&log, &broker, &events);
        assert!(matches!(
            first.pass(Feed::Messages).await.unwrap(),
            Pass::Relayed { .. }
        ));
        assert_eq!(second.pass(Feed::Messages).await.unwrap(), Pass::Held);
        assert_eq!(broker.sent.lock().unwrap().len(), 1, "sent once");
    }
}
