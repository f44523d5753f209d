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
//!
//! The messages its own process commits reach the relay without a read:
//! while it holds the messages feed, the store hands them over after each
//! commit (`SagaLog::take_committed`) and the relay sends them at once. It
//! reads the log `catch_up` (250 ms) after such a send, to move its position
//! past their rows (skipping them: it remembers what it sent) and to find
//! the rows of other processes, which it also reads at once when the store
//! says some were committed (a NOTIFY). One read then stands for every
//! commit of those 250 ms, where there was a read per commit. Whatever goes
//! wrong between the hand-over and the read (a refused send, a lost lease,
//! a crash) leaves the rows to a read, like any other; a message that both
//! the read and the hand-over caught goes twice, and the consumers drop the
//! copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ports::{
    Committed, EventLog, Feed, LogBatch, LogPosition, LogRow, MessagePublisher, RelayError, SagaLog,
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelaySettings {
    /// Rows read per batch.
    pub batch_size: u32,
    /// Longest wait for a notification before looking again anyway.
    pub idle_poll: Duration,
    /// Least time between two partial batches of events (messages go at once).
    pub events_gather: Duration,
    /// How long after sending messages its own process handed over the relay
    /// reads the log past them (the read that moves its position and finds
    /// what other processes wrote).
    pub catch_up: Duration,
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
    /// A quarter of a second: at 100 orders/s the feeds' reads scanned the
    /// log 16 times a second, where 50 ms made it 57 (each read a statement
    /// PostgreSQL pays for, and a smaller insert into the event log).
    /// Messages do not wait for it (they go as handed over); the event log
    /// trails the saga by up to this much more (docs/performance.md).
    pub const DEFAULT_GATHER: Duration = Duration::from_millis(250);
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_poll: Duration::from_millis(500),
            events_gather: Self::DEFAULT_GATHER,
            catch_up: Self::DEFAULT_GATHER,
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

/// How long the relay remembers a message it sent as handed over, waiting
/// for the read that finds its row (which then skips it). A read held back
/// longer than this by a running transaction sends the message again; the
/// consumers drop the copy.
const SENT_EARLY_KEPT: Duration = Duration::from_secs(30);

pub struct Relay {
    log: Arc<dyn SagaLog>,
    publisher: Arc<dyn MessagePublisher>,
    event_log: Arc<dyn EventLog>,
    settings: RelaySettings,
    /// Who holds a feed, to the other relays.
    id: Uuid,
    /// Where this relay is in each feed it holds.
    feeds: Mutex<HashMap<Feed, Following>>,
    /// Messages sent as handed over (`hand_over`) whose rows no read has
    /// reached yet.
    sent_early: Mutex<SentEarly>,
}

/// Messages sent as handed over, and when each went; each is forgotten when
/// a read reaches its row, or after `SENT_EARLY_KEPT` (a read held back that
/// long by a running transaction, or one that passed the row just before
/// its hand-over came).
#[derive(Default)]
struct SentEarly {
    at: HashMap<Uuid, Instant>,
    pruned: Option<Instant>,
}

impl SentEarly {
    fn record(&mut self, ids: impl Iterator<Item = Uuid>) {
        let now = Instant::now();
        self.at.extend(ids.map(|id| (id, now)));
        // At most once a second, however many hand-overs come.
        if self
            .pruned
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.at
                .retain(|_, at| now.duration_since(*at) < SENT_EARLY_KEPT);
            self.pruned = Some(now);
        }
    }
}

/// A feed this relay holds: how far it has relayed, and when it last
/// renewed its lease (and recorded its position).
#[derive(Debug, Clone, Copy)]
struct Following {
    position: LogPosition,
    claimed: Instant,
}

/// What one `hand_over` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOver {
    /// Messages sent.
    pub sent: usize,
    /// Messages were committed that were not handed over: a read finds them.
    pub unhanded: bool,
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
            sent_early: Mutex::default(),
        }
    }

    /// Sends the messages this process's writers committed and handed over
    /// (`SagaLog::take_committed`) while this relay holds the messages feed,
    /// without reading them back; the read that later reaches their rows
    /// skips them. Messages handed over while another relay holds the feed
    /// are left to its read.
    pub async fn hand_over(&self) -> Result<HandOver, RelayError> {
        let Committed { messages, unhanded } = self.log.take_committed();
        if messages.is_empty() || self.hold(Feed::Messages).await?.is_none() {
            return Ok(HandOver { sent: 0, unhanded });
        }
        // A failure leaves them to the read: their rows are in the log.
        self.publisher.publish(&messages).await?;
        self.sent_early
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(messages.iter().map(|m| m.message_id));
        Ok(HandOver {
            sent: messages.len(),
            unhanded,
        })
    }

    /// Messages sent as handed over that no read has reached yet.
    #[cfg(test)]
    fn sent_early_count(&self) -> usize {
        self.sent_early
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .at
            .len()
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
                // Not what went already as handed over (forgotten once its row is read).
                let (messages, early): (Vec<_>, Vec<_>) = {
                    let sent = self.sent_early.lock().unwrap_or_else(|e| e.into_inner());
                    rows.iter()
                        .filter_map(|r| r.message.as_ref())
                        .partition(|m| !sent.at.contains_key(&m.message_id))
                };
                let n = messages.len();
                if n > 0 {
                    let messages: Vec<_> = messages.into_iter().cloned().collect();
                    self.publisher.publish(&messages).await?;
                }
                let mut sent = self.sent_early.lock().unwrap_or_else(|e| e.into_inner());
                for m in &early {
                    sent.at.remove(&m.message_id);
                }
                Ok(n)
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

    /// Follows `feed` until `shutdown`. The messages feed first sends what
    /// its own process handed over, and reads the log only when that is due:
    /// `catch_up` after such a send, when messages were committed that were
    /// not handed over, or after the idle poll. The events feed reads at
    /// every wake-up, at most once per `events_gather`.
    async fn follow(&self, feed: Feed, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut held_pause = HELD_BACK_FIRST;
        let mut read_at = Instant::now();
        loop {
            if feed == Feed::Messages {
                match self.hand_over().await {
                    Ok(HandOver { sent, unhanded }) => {
                        metrics::counter!(crate::metrics::OUTBOX_RELAYED, "kind" => feed.as_str())
                            .increment(sent as u64);
                        if unhanded {
                            read_at = Instant::now();
                        } else if sent > 0 {
                            // The read that moves past them: soon, not at once,
                            // so that one read passes many hand-overs.
                            read_at = read_at.min(Instant::now() + self.settings.catch_up);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot send the messages handed over; the read sends them");
                        read_at = Instant::now();
                    }
                }
                let now = Instant::now();
                if now < read_at && !shutdown.is_cancelled() {
                    tokio::select! {
                        _ = self.log.wait_for_work(feed, read_at - now) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
            }
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
                    // Rows held back by a running transaction: look again soon.
                    let wait = if held_back {
                        let pause = held_pause.min(self.settings.idle_poll);
                        held_pause = (held_pause * 2).min(HELD_BACK_MAX);
                        pause
                    } else {
                        held_pause = HELD_BACK_FIRST;
                        self.settings.idle_poll
                    };
                    match feed {
                        // The loop's top waits, for a hand-over or the next read.
                        Feed::Messages => read_at = Instant::now() + wait,
                        Feed::Events => {
                            tokio::select! {
                                _ = async {
                                    tokio::time::sleep(self.settings.events_gather).await;
                                    self.log.wait_for_work(feed, wait).await
                                } => {}
                                _ = shutdown.cancelled() => {}
                            }
                        }
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
                    read_at = Instant::now();
                }
                Err(e) => {
                    tracing::warn!(feed = feed.as_str(), error = %e, retry_in_ms = backoff.as_millis() as u64, "relay batch failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    read_at = Instant::now();
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

    #[tokio::test]
    async fn messages_handed_over_go_at_once_and_the_read_that_reaches_them_skips_them() {
        let (log, broker, events) = ports();
        log.push_handed();
        log.push(true); // another process's: only a read finds it
        log.push_handed();
        let relay = relay(&log, &broker, &events);
        assert_eq!(
            relay.hand_over().await.unwrap(),
            HandOver {
                sent: 2,
                unhanded: true
            }
        );
        assert_eq!(broker.sent().len(), 2, "sent without a read");
        // The read passes all three rows and sends only the one not handed over.
        let mut sent = 0;
        loop {
            match relay.pass(Feed::Messages).await.unwrap() {
                Pass::Relayed { rows: 0, .. } => break,
                Pass::Relayed { sent: n, .. } => sent += n,
                Pass::Held => panic!("the relay holds the feed"),
            }
        }
        assert_eq!(sent, 1);
        let ids: std::collections::HashSet<_> =
            broker.sent().iter().map(|m| m.message_id).collect();
        assert_eq!(
            (broker.sent().len(), ids.len()),
            (3, 3),
            "each message once"
        );
        assert_eq!(relay.sent_early_count(), 0, "forgotten once read");
    }

    #[tokio::test]
    async fn messages_handed_over_while_another_relay_holds_the_feed_are_left_to_its_read() {
        let (log, broker, events) = ports();
        let holder = relay(&log, &broker, &events);
        let other = relay(&log, &broker, &events);
        assert!(matches!(
            holder.pass(Feed::Messages).await.unwrap(),
            Pass::Relayed { .. }
        ));
        log.push_handed();
        assert_eq!(other.hand_over().await.unwrap().sent, 0);
        assert!(broker.sent().is_empty());
        assert!(matches!(
            holder.pass(Feed::Messages).await.unwrap(),
            Pass::Relayed { sent: 1, .. }
        ));
    }

    #[tokio::test]
    async fn a_hand_over_the_broker_refused_is_sent_by_the_read() {
        let (log, broker, events) = ports();
        log.push_handed();
        let relay = relay(&log, &broker, &events);
        broker.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(relay.hand_over().await.is_err());
        broker
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(relay.hand_over().await.unwrap().sent, 0, "taken once");
        assert!(matches!(
            relay.pass(Feed::Messages).await.unwrap(),
            Pass::Relayed { sent: 1, .. }
        ));
        assert_eq!(broker.sent().len(), 1);
    }

    #[test]
    fn messages_sent_early_are_forgotten_after_a_while_even_if_no_read_reaches_them() {
        let mut sent = SentEarly::default();
        let long_ago = Instant::now()
            .checked_sub(SENT_EARLY_KEPT + Duration::from_secs(1))
            .expect("the clock is past its origin");
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        sent.at.insert(old, long_ago);
        sent.record([new].into_iter());
        assert!(!sent.at.contains_key(&old));
        assert!(sent.at.contains_key(&new));
    }
}
