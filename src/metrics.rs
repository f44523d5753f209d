//! Prometheus metrics: every name in one place, with its help text, and the
//! recorder that `/metrics` renders. The code records through the `metrics`
//! facade (like `tracing` for logs); `docs/operations.md` lists the metrics.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "ordersaga_http_requests_total";
pub const HTTP_DURATION: &str = "ordersaga_http_request_duration_seconds";
pub const ORDERS_PLACED: &str = "ordersaga_orders_placed_total";
pub const ORDERS_SETTLED: &str = "ordersaga_orders_settled_total";
pub const SAGA_DURATION: &str = "ordersaga_saga_duration_seconds";
pub const STEP_DURATION: &str = "ordersaga_saga_step_duration_seconds";
pub const MESSAGES_HANDLED: &str = "ordersaga_messages_handled_total";
pub const MESSAGE_DURATION: &str = "ordersaga_message_handling_duration_seconds";
pub const MESSAGE_WAIT: &str = "ordersaga_message_wait_seconds";
pub const KAFKA_PUBLISH_DURATION: &str = "ordersaga_kafka_publish_duration_seconds";
pub const KAFKA_PRODUCER_RECREATED: &str = "ordersaga_kafka_producer_recreated_total";
pub const CONSUMER_OFFSET: &str = "ordersaga_consumer_last_offset";
pub const CONSUMER_LAG: &str = "ordersaga_consumer_lag";
pub const OUTBOX_BACKLOG: &str = "ordersaga_outbox_backlog";
pub const OUTBOX_RELAYED: &str = "ordersaga_outbox_relayed_total";
pub const DEAD_LETTERS: &str = "ordersaga_dead_letters_total";
pub const SAGA_BATCH_SIZE: &str = "ordersaga_saga_batch_size";
pub const REPLY_HOLDS: &str = "ordersaga_saga_reply_holds_total";
pub const ORDER_BATCH_SIZE: &str = "ordersaga_order_batch_size";

/// Histogram buckets for every `*_seconds` metric: 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Histogram buckets for batch sizes.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same
/// handle, so tests that start several systems in one process share it).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full(SAGA_BATCH_SIZE.into()), BATCH_BUCKETS)
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full(ORDER_BATCH_SIZE.into()), BATCH_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (an embedding program's): keep it.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only what this one sees");
            }
            describe();
            handle
        })
        .clone()
}

/// The Prometheus text exposition of everything recorded so far.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by method, route template and status"
    );
    describe_counter!(
        ORDERS_PLACED,
        "Orders accepted by POST /api/orders (idempotent replays not counted)"
    );
    describe_counter!(
        ORDERS_SETTLED,
        "Orders settled by the orchestrator, by status and cancel reason"
    );
    describe_histogram!(
        SAGA_DURATION,
        Unit::Seconds,
        "From an order's creation to its settlement, by status"
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "From a saga's start to the accepted reply of each step, by step and outcome"
    );
    describe_counter!(
        MESSAGES_HANDLED,
        "Kafka messages handled, by component, topic and result (ok, dead_lettered)"
    );
    describe_histogram!(
        MESSAGE_DURATION,
        Unit::Seconds,
        "Time to handle one Kafka message, retries included, by component and topic"
    );
    describe_histogram!(
        MESSAGE_WAIT,
        Unit::Seconds,
        "From a Kafka message's timestamp (when it was produced) to the start of its handling: the producer, the broker, the fetch and the consumer's queue; by component and topic"
    );
    describe_histogram!(
        KAFKA_PUBLISH_DURATION,
        Unit::Seconds,
        "From handing a batch of messages to the Kafka producer to the broker acknowledging the last of them"
    );
    describe_counter!(
        KAFKA_PRODUCER_RECREATED,
        "Kafka producers replaced because they could no longer deliver (a fatal error, or batches timing out while the brokers answer)"
    );
    describe_gauge!(
        CONSUMER_OFFSET,
        "Offset of the last message handled, by component, topic and partition"
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Messages behind the partition's end, from librdkafka statistics, by component, topic and partition"
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Saga-log rows waiting to be relayed: kind=messages (to Kafka) or kind=events (to MongoDB)"
    );
    describe_counter!(
        OUTBOX_RELAYED,
        "Outbox rows relayed, by kind (messages, events)"
    );
    describe_histogram!(
        SAGA_BATCH_SIZE,
        "Saga decisions written per PostgreSQL transaction (group commit)"
    );
    describe_counter!(
        REPLY_HOLDS,
        "Passing replies that waited for their order's other reply, by result: paired (written with it) or alone (it did not come within SAGA_REPLY_HOLD_MS)"
    );
    describe_histogram!(
        ORDER_BATCH_SIZE,
        "New orders inserted per PostgreSQL statement (group commit; orders without an idempotency key)"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Messages set aside on the dead-letter topic, by component and source topic"
    );
}
