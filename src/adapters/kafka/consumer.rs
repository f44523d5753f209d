//! The consumer loop: reads a consumer group's topics and hands each message
//! to a `MessageHandler`. Partitions are spread over `CONSUMER_CONCURRENCY`
//! lanes; a lane handles up to `CONSUMER_LANE_DEPTH` messages at once, never
//! two with the same key (an order's messages are handled in order; the
//! orchestrator lifts this, as its store serializes an order's decisions and
//! merges both replies handled together into one write), and stores offsets
//! in arrival order.
//!
//! Offsets are stored only after a message was handled (or dead-lettered) and
//! committed in the background, so delivery is at-least-once: a crash replays
//! at most the last uncommitted messages, which the handlers tolerate.
//!
//! What happens when handling fails depends on the error:
//! - poison (unparseable, impossible): dead-lettered at once, the partition moves on;
//! - a dependency is down: the same message is retried with backoff until it is
//!   back (or shutdown), because dead-lettering a good message would lose work;
//! - anything else: retried `max_attempts` times, then dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::KafkaSettings;
use crate::application::health::ConsumerAssignment;
use crate::application::messages::{
    HEADER_CORRELATION_ID, HEADER_MESSAGE_ID, HEADER_MESSAGE_TYPE, InboundMessage, Topic,
};
use crate::application::ports::{HandleError, MessageHandler, MessagePublisher};

/// Messages read ahead for each lane.
const LANE_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Component name: the consumer group is `<group prefix><component>`.
    pub component: &'static str,
    pub topics: Vec<Topic>,
    /// Attempts for a message whose handling fails (not for an unavailable dependency).
    pub max_attempts: u32,
    /// First pause between attempts; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest wait for the final offset commit at shutdown.
    pub shutdown_timeout: Duration,
    /// Marked when the group first assigns this consumer its partitions (`/ready` waits for it).
    pub assignment: Arc<ConsumerAssignment>,
    /// Never handle two messages with the same key (one order's) at once.
    /// The orchestrator turns it off: its store already serializes the
    /// decisions about one order, and both replies of an order handled
    /// together can then be written together.
    pub one_per_key: bool,
}

impl ConsumerSettings {
    pub fn new(component: &'static str, topics: Vec<Topic>) -> Self {
        Self {
            component,
            topics,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            assignment: Arc::default(),
            one_per_key: true,
        }
    }
}

/// librdkafka statistics every this often feed the consumer-lag gauge
/// (`statistics.interval.ms` in KAFKA_EXTRA_CONFIG overrides it; 0 turns it off).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// A consumer whose context turns librdkafka statistics into the lag gauge
/// and reports its partition assignment.
type Client = StreamConsumer<Events>;

struct Events {
    component: &'static str,
    assignment: Arc<ConsumerAssignment>,
}

impl ClientContext for Events {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // Partition -1 is librdkafka's internal one; a negative lag means unknown.
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(crate::metrics::CONSUMER_LAG, "component" => self.component, "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for Events {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            if !self.assignment.is_assigned() {
                tracing::info!(
                    component = self.component,
                    partitions = partitions.count(),
                    "partitions assigned"
                );
            }
            self.assignment.mark_assigned();
        }
    }
}

fn create(kafka: &KafkaSettings, settings: &ConsumerSettings) -> anyhow::Result<Client> {
    let group = kafka.group(settings.component);
    let mut config = kafka.base_config(&format!("ordersaga-{}", settings.component));
    if !kafka
        .extra
        .iter()
        .any(|(k, _)| k == "statistics.interval.ms")
    {
        config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    }
    let consumer: Client = config
        .set("group.id", &group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set(
            "session.timeout.ms",
            kafka.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            kafka.heartbeat_interval.as_millis().to_string(),
        )
        .set(
            "fetch.wait.max.ms",
            kafka.fetch_wait_max.as_millis().to_string(),
        )
        .create_with_context(Events {
            component: settings.component,
            assignment: settings.assignment.clone(),
        })
        .with_context(|| format!("cannot create the Kafka consumer for group {group}"))?;
    let topics: Vec<String> = settings.topics.iter().map(|t| kafka.topic(*t)).collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("cannot subscribe to {topics:?}"))?;
    Ok(consumer)
}

fn inbound(kafka: &KafkaSettings, m: &OwnedMessage) -> InboundMessage {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    InboundMessage {
        topic: kafka.logical(m.topic()),
        topic_name: m.topic().to_owned(),
        source: format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// How a consuming session ended.
enum Ended {
    /// Shutdown was requested.
    Shutdown,
    /// A subscribed partition vanished from the broker (a topic deleted and
    /// recreated). The consumer is rebuilt: it rejoins the group and starts on
    /// the new partitions.
    PartitionsVanished,
    /// Every broker was unreachable and now answers again, with the
    /// subscribed topics in place. A cluster that lost its data meanwhile has
    /// forgotten the group and recreated the topics under new ids, which
    /// librdkafka 2.12 does not notice: the consumer kept its old assignment
    /// and never fetched again (74 of 100 orders stuck in `make drill`'s
    /// "broker wiped" phase without this). A fresh consumer rejoins cleanly;
    /// after a plain restart this costs one rebalance, only after an outage
    /// of every broker.
    BrokersReturned,
}

/// Consumes until `shutdown`, then commits what was handled and leaves the group.
pub async fn run_consumer(
    kafka: Arc<KafkaSettings>,
    settings: ConsumerSettings,
    handler: Arc<dyn MessageHandler>,
    dead_letters: Arc<dyn MessagePublisher>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let consumer = Arc::new(create(&kafka, &settings)?);
        tracing::info!(component = settings.component, group = %kafka.group(settings.component), "consumer started");
        let ended = consume(
            &kafka,
            &settings,
            &consumer,
            handler.as_ref(),
            dead_letters.as_ref(),
            &shutdown,
        )
        .await;
        teardown(consumer, &settings).await;
        match ended {
            Ended::Shutdown => break,
            Ended::PartitionsVanished | Ended::BrokersReturned => {
                let why = match ended {
                    Ended::PartitionsVanished => "a subscribed partition vanished from the broker",
                    _ => "the brokers are back after an outage",
                };
                tracing::warn!(
                    component = settings.component,
                    why,
                    "rebuilding the consumer"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(settings.initial_backoff.max(Duration::from_millis(500))) => {}
                }
            }
        }
    }
    tracing::info!(component = settings.component, "consumer stopped");
    Ok(())
}

/// Reads messages and hands each to the lane of its partition: lanes run
/// concurrently, each handles its messages in order and stores an offset
/// only once its message was handled, so a partition never skips ahead.
async fn consume(
    kafka: &KafkaSettings,
    settings: &ConsumerSettings,
    consumer: &Arc<Client>,
    handler: &dyn MessageHandler,
    dead_letters: &dyn MessagePublisher,
    shutdown: &CancellationToken,
) -> Ended {
    let lanes = kafka.consumer_concurrency.max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..lanes)
        .map(|_| mpsc::channel::<OwnedMessage>(LANE_QUEUE))
        .unzip();
    let handle = |message: OwnedMessage| async move {
        if shutdown.is_cancelled() {
            return (message, None); // what is still queued is redelivered to the next owner
        }
        let msg = inbound(kafka, &message);
        observe_wait(settings.component, &msg, message.timestamp());
        let span = message_span(settings.component, &msg);
        let started = std::time::Instant::now();
        let result = handle_with_retries(settings, handler, dead_letters, &msg, shutdown)
            .instrument(span.clone())
            .await;
        if let Some(result) = result {
            let took = started.elapsed();
            span.in_scope(|| {
                tracing::debug!(
                    ?result,
                    took_ms = took.as_secs_f64() * 1e3,
                    "message handled"
                )
            });
            observe_handled(settings.component, &message, result, took);
        }
        (message, result)
    };
    let store = |message: &OwnedMessage| {
        if let Err(e) =
            consumer.store_offset(message.topic(), message.partition(), message.offset())
        {
            // The partition was revoked meanwhile; its new owner will see the message again.
            tracing::debug!(error = %e, "offset not stored");
        }
    };
    let depth = kafka.lane_depth.max(1);
    let workers = futures::future::join_all(
        receivers
            .into_iter()
            .map(|rx| run_lane(rx, depth, settings.one_per_key, &handle, &store)),
    );
    let dispatch = async move {
        let mut outage = false;
        let mut probe = tokio::time::interval(Duration::from_secs(1));
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                m = consumer.recv() => m.map(|m| m.detach()),
                _ = probe.tick(), if outage => {
                    if topics_present(kafka, settings, consumer).await {
                        return Ended::BrokersReturned;
                    }
                    continue;
                }
            };
            let message = match received {
                Ok(m) => m,
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownPartition)) => {
                    return Ended::PartitionsVanished;
                }
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown))
                    if !outage =>
                {
                    tracing::warn!(
                        component = settings.component,
                        "all Kafka brokers are down; waiting for them"
                    );
                    outage = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(component = settings.component, error = %e, "consumer error");
                    tokio::select! { _ = shutdown.cancelled() => return Ended::Shutdown, _ = tokio::time::sleep(Duration::from_millis(200)) => {} }
                    continue;
                }
            };
            let lane = message.partition().unsigned_abs() as usize % lanes;
            if senders[lane].send(message).await.is_err() {
                return Ended::Shutdown; // the lane stopped: shutdown interrupted it
            }
        }
        // Returning drops the senders: the lanes finish what they hold, then stop.
    };
    let (ended, _) = tokio::join!(dispatch, workers);
    ended
}

/// One lane: handles up to `depth` of its messages at once, but (with
/// `per_key`) never two with the same key (one order's messages stay in
/// order), and stores their offsets strictly in the order they arrived, so a
/// committed offset never passes a message that is still being handled. A
/// message that takes long (a reply waiting for its partner, a slow user API)
/// holds only its own place: the others around it finish and make room.
/// Stops at the first message that shutdown interrupted (`handle` gives
/// `None`): its offset and every later one stay unstored, and the next owner
/// of the partition sees them again.
async fn run_lane<F, Fut>(
    mut rx: mpsc::Receiver<OwnedMessage>,
    depth: usize,
    per_key: bool,
    handle: &F,
    store: &(impl Fn(&OwnedMessage) + ?Sized),
) where
    F: Fn(OwnedMessage) -> Fut,
    Fut: std::future::Future<Output = (OwnedMessage, Option<Handled>)>,
{
    use futures::FutureExt;

    /// A message started, in arrival order: its key while it runs, its
    /// result once done (kept until every older one is done too).
    struct Started {
        key: Option<Vec<u8>>,
        done: Option<(OwnedMessage, Option<Handled>)>,
    }
    let key = |m: &OwnedMessage| m.key().map(<[u8]>::to_vec);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut started: std::collections::VecDeque<Started> = Default::default();
    // The arrival number of `started`'s first entry, and of the next message.
    let (mut first, mut next) = (0u64, 0u64);
    let mut waiting: Option<OwnedMessage> = None;
    let mut closed = false;
    loop {
        // Start the message taken last, if there is room and its key is free.
        if let Some(m) = waiting.take() {
            let k = key(&m);
            let busy = || {
                started
                    .iter()
                    .any(|s| s.done.is_none() && s.key.is_some() && s.key == k)
            };
            if in_flight.len() < depth && (!per_key || k.is_none() || !busy()) {
                let n = next;
                next += 1;
                started.push_back(Started { key: k, done: None });
                in_flight.push(handle(m).map(move |(m, result)| (n, m, result)));
            } else {
                waiting = Some(m); // full, or its key is busy: wait for one to finish
            }
        }
        let can_take = waiting.is_none() && !closed && in_flight.len() < depth;
        tokio::select! {
            // Finishing a message comes before taking another.
            biased;
            Some((n, message, result)) = in_flight.next() => {
                let i = (n - first) as usize;
                started[i].done = Some((message, result));
                // Store the offsets of the oldest messages that are done.
                while started.front().is_some_and(|s| s.done.is_some()) {
                    let Some(Started { done: Some((message, result)), .. }) = started.pop_front() else {
                        unreachable!("the front is done")
                    };
                    first += 1;
                    if result.is_none() {
                        return;
                    }
                    store(&message);
                }
            }
            m = rx.recv(), if can_take => match m {
                Some(m) => waiting = Some(m),
                None => closed = true,
            },
            // Nothing in flight and nothing more to take: the channel closed.
            else => return,
        }
    }
}

/// Whether the brokers answer and every subscribed topic has partitions.
async fn topics_present(
    kafka: &KafkaSettings,
    settings: &ConsumerSettings,
    consumer: &Arc<Client>,
) -> bool {
    let wanted: Vec<String> = settings.topics.iter().map(|t| kafka.topic(*t)).collect();
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok_and(|md| {
                wanted.iter().all(|name| {
                    md.topics().iter().any(|t| {
                        t.name() == name && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
            })
    })
    .await
    .unwrap_or(false)
}

/// Commits the stored offsets, then leaves the group (the group rebalances at
/// once), with a bound on how long that takes.
async fn teardown(consumer: Arc<Client>, settings: &ConsumerSettings) {
    let teardown = tokio::task::spawn_blocking(move || {
        // A metadata probe that timed out may still hold a clone for a moment.
        let mut consumer = consumer;
        let consumer = loop {
            match Arc::try_unwrap(consumer) {
                Ok(c) => break c,
                Err(c) => {
                    std::thread::sleep(Duration::from_millis(10));
                    consumer = c;
                }
            }
        };
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final offset commit failed (nothing to commit, or a rebalance)");
        }
        drop(consumer); // closes the consumer: LeaveGroup
    });
    if tokio::time::timeout(settings.shutdown_timeout, teardown)
        .await
        .is_err()
    {
        tracing::warn!(
            component = settings.component,
            "consumer teardown timed out"
        );
    }
}

/// The span a message is handled in: its place in the log, its ids, and the
/// order (the message key) and correlation id it carries.
fn message_span(component: &'static str, msg: &InboundMessage) -> tracing::Span {
    let key = msg
        .key
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    tracing::info_span!(
        "message",
        component,
        source = %msg.source,
        order_id = %key,
        message_id = msg.header(HEADER_MESSAGE_ID).unwrap_or(""),
        message_type = msg.header(HEADER_MESSAGE_TYPE).unwrap_or(""),
        correlation_id = msg.header(HEADER_CORRELATION_ID).unwrap_or(""),
    )
}

/// How a message left the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    Ok,
    DeadLettered,
}

fn observe_handled(component: &'static str, msg: &OwnedMessage, result: Handled, took: Duration) {
    let result = match result {
        Handled::Ok => "ok",
        Handled::DeadLettered => "dead_lettered",
    };
    let topic = msg.topic().to_owned();
    metrics::counter!(crate::metrics::MESSAGES_HANDLED, "component" => component, "topic" => topic.clone(), "result" => result)
        .increment(1);
    metrics::histogram!(crate::metrics::MESSAGE_DURATION, "component" => component, "topic" => topic.clone())
        .record(took.as_secs_f64());
    metrics::gauge!(crate::metrics::CONSUMER_OFFSET, "component" => component, "topic" => topic, "partition" => msg.partition().to_string())
        .set(msg.offset() as f64);
}

/// Records how long a message waited between its producer and its handling,
/// by its Kafka timestamp (clocks of different hosts may disagree a little;
/// a timestamp in the future is not recorded).
fn observe_wait(component: &'static str, msg: &InboundMessage, at: rdkafka::Timestamp) {
    let Some(produced) = at.to_millis() else {
        return;
    };
    let waited = chrono::Utc::now().timestamp_millis() - produced;
    if waited >= 0 {
        metrics::histogram!(crate::metrics::MESSAGE_WAIT, "component" => component, "topic" => msg.topic_name.clone())
            .record(waited as f64 / 1e3);
    }
}

/// Handles one message until it succeeds or is dead-lettered. Returns `None`
/// if shutdown interrupted it before either.
async fn handle_with_retries(
    settings: &ConsumerSettings,
    handler: &dyn MessageHandler,
    dead_letters: &dyn MessagePublisher,
    msg: &InboundMessage,
    shutdown: &CancellationToken,
) -> Option<Handled> {
    let mut attempt = 0u32;
    let mut backoff = settings.initial_backoff;
    loop {
        let error = match handler.handle(msg).await {
            Ok(()) => return Some(Handled::Ok),
            Err(HandleError::Poison(reason)) => Some(reason),
            Err(HandleError::Unavailable(reason)) => {
                tracing::warn!(component = settings.component, source = %msg.source, %reason, "dependency unavailable; will retry");
                None
            }
            Err(HandleError::Failed(e)) => {
                attempt += 1;
                if attempt >= settings.max_attempts {
                    Some(format!("failed {attempt} times: {e:#}"))
                } else {
                    tracing::warn!(component = settings.component, source = %msg.source, attempt, error = %format!("{e:#}"), "handling failed; will retry");
                    None
                }
            }
        };
        if let Some(reason) = error {
            return dead_letter(settings, dead_letters, msg, &reason, shutdown)
                .await
                .then_some(Handled::DeadLettered);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

async fn dead_letter(
    settings: &ConsumerSettings,
    dead_letters: &dyn MessagePublisher,
    msg: &InboundMessage,
    reason: &str,
    shutdown: &CancellationToken,
) -> bool {
    tracing::error!(component = settings.component, source = %msg.source, %reason, "dead-lettering message");
    let mut backoff = settings.initial_backoff;
    loop {
        match dead_letters.dead_letter(msg, reason).await {
            Ok(()) => {
                metrics::counter!(crate::metrics::DEAD_LETTERS, "component" => settings.component, "topic" => msg.topic_name.clone())
                    .increment(1);
                return true;
            }
            Err(e) => tracing::warn!(error = %e, "cannot publish dead letter; will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rdkafka::Timestamp;

    use super::*;

    fn message(offset: i64, key: &str) -> OwnedMessage {
        OwnedMessage::new(
            None,
            Some(key.as_bytes().to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    /// What a lane did: which messages ran at once, in which order they
    /// started and ended, and which offsets it stored.
    #[derive(Default)]
    struct Trace {
        running: Vec<(i64, String)>,
        most_at_once: usize,
        events: Vec<String>,
        stored: Vec<i64>,
    }

    /// Runs a lane of `depth` over `plan` (offset, key, handling ms); the
    /// message at `interrupted` (if any) is cut short by shutdown.
    async fn run(plan: &[(i64, &str, u64)], depth: usize, interrupted: Option<i64>) -> Trace {
        run_keyed(plan, depth, true, interrupted).await
    }

    async fn run_keyed(
        plan: &[(i64, &str, u64)],
        depth: usize,
        per_key: bool,
        interrupted: Option<i64>,
    ) -> Trace {
        let (tx, rx) = mpsc::channel(plan.len());
        for (offset, key, _) in plan {
            tx.send(message(*offset, key)).await.unwrap();
        }
        drop(tx);
        let trace = Mutex::new(Trace::default());
        let handle = |m: OwnedMessage| {
            let trace = &trace;
            async move {
                let offset = m.offset();
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let ms = plan.iter().find(|p| p.0 == offset).unwrap().2;
                {
                    let mut t = trace.lock().unwrap();
                    assert!(
                        !per_key || t.running.iter().all(|(_, k)| *k != key),
                        "two messages with key {key} at once"
                    );
                    t.running.push((offset, key));
                    t.most_at_once = t.most_at_once.max(t.running.len());
                    t.events.push(format!("start {offset}"));
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let mut t = trace.lock().unwrap();
                t.running.retain(|(o, _)| *o != offset);
                t.events.push(format!("end {offset}"));
                let result = (interrupted != Some(offset)).then_some(Handled::Ok);
                (m, result)
            }
        };
        let store = |m: &OwnedMessage| trace.lock().unwrap().stored.push(m.offset());
        run_lane(rx, depth, per_key, &handle, &store).await;
        trace.into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_overlaps_messages_yet_stores_offsets_in_order_and_keeps_a_key_in_order() {
        let plan = [
            (0, "a", 50),
            (1, "b", 10),
            (2, "a", 10),
            (3, "c", 5),
            (4, "d", 1),
        ];
        let t = run(&plan, 3, None).await;
        assert_eq!(t.stored, [0, 1, 2, 3, 4], "{:?}", t.events);
        assert_eq!(t.most_at_once, 3, "{:?}", t.events);
        let at = |e: &str| t.events.iter().position(|x| x == e).unwrap();
        assert!(at("end 1") < at("end 0"), "1 overlapped 0: {:?}", t.events);
        assert!(
            at("end 0") < at("start 2"),
            "a's second message waited for its first: {:?}",
            t.events
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_one_per_key_a_keys_messages_overlap_yet_offsets_stay_in_order() {
        let plan = [(0, "a", 50), (1, "a", 10), (2, "b", 1)];
        let t = run_keyed(&plan, 3, false, None).await;
        assert_eq!(t.most_at_once, 3, "{:?}", t.events);
        let at = |e: &str| t.events.iter().position(|x| x == e).unwrap();
        assert!(
            at("start 1") < at("end 0"),
            "a's two messages overlapped: {:?}",
            t.events
        );
        assert_eq!(t.stored, [0, 1, 2], "{:?}", t.events);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_message_holds_only_its_own_place_in_a_lane() {
        // Depth two: the slow message 0 takes one place, the quick ones go
        // through the other one after another, and their offsets wait for 0.
        let plan = [(0, "a", 100), (1, "b", 1), (2, "c", 1), (3, "d", 1)];
        let t = run(&plan, 2, None).await;
        let at = |e: &str| t.events.iter().position(|x| x == e).unwrap();
        assert!(at("end 3") < at("end 0"), "{:?}", t.events);
        assert_eq!(t.stored, [0, 1, 2, 3], "{:?}", t.events);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_of_depth_one_handles_one_message_at_a_time() {
        let plan = [(0, "a", 5), (1, "b", 1), (2, "c", 3)];
        let t = run(&plan, 1, None).await;
        assert_eq!(t.most_at_once, 1);
        assert_eq!(
            t.events,
            ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
        );
        assert_eq!(t.stored, [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_stores_nothing_from_the_first_interrupted_message_on() {
        let plan = [(0, "a", 5), (1, "b", 20), (2, "c", 1), (3, "d", 1)];
        let t = run(&plan, 4, Some(1)).await;
        assert_eq!(t.stored, [0], "{:?}", t.events);
    }
}
