//! The Kafka producer: `MessagePublisher`.
//!
//! An idempotent librdkafka producer can end up unusable: a fatal error
//! (an idempotence guarantee it can no longer keep) leaves it refusing every
//! message until it is recreated, and after a cluster lost its data (a topic
//! recreated under the same name) it has been seen timing out every message
//! for minutes while the broker answered. The publisher therefore replaces its
//! producer on a fatal error, and after `STALLED_BATCHES` batches in a row
//! timed out while the brokers answer metadata. Messages of the old producer
//! are failed, so they stay in the outbox (or the consumer retries them);
//! consumers drop the copies a retry may make.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaSettings;
use crate::application::messages::{
    HEADER_DLQ_ERROR, HEADER_DLQ_SOURCE, InboundMessage, OutboundMessage, Topic,
};
use crate::application::ports::{MessagePublisher, PublishError};

/// Longest a message waits for room in the producer's local queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Batches in a row that timed out, with the brokers answering, before the
/// producer is replaced.
const STALLED_BATCHES: u32 = 3;

#[derive(Clone)]
pub struct KafkaPublisher {
    /// The current producer; replaced when it can no longer deliver.
    producer: Arc<RwLock<FutureProducer>>,
    /// Batches in a row that timed out.
    stalled: Arc<AtomicU32>,
    settings: Arc<KafkaSettings>,
    client_id: Arc<str>,
}

impl KafkaPublisher {
    /// Creates a producer with `acks=all`, idempotent unless turned off: then
    /// retries inside the client never duplicate or reorder a partition's messages.
    pub fn new(settings: Arc<KafkaSettings>, client_id: &str) -> anyhow::Result<Self> {
        let producer = Self::create(&settings, client_id)?;
        Ok(Self {
            producer: Arc::new(RwLock::new(producer)),
            stalled: Arc::default(),
            settings,
            client_id: client_id.into(),
        })
    }

    fn create(settings: &KafkaSettings, client_id: &str) -> anyhow::Result<FutureProducer> {
        settings
            .base_config(client_id)
            .set("enable.idempotence", settings.idempotence.to_string())
            .set("acks", "all")
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set(
                "max.in.flight.requests.per.connection",
                settings.max_in_flight.to_string(),
            )
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            )
            .create()
            .context("cannot create the Kafka producer")
    }

    /// The producer to send with now.
    fn current(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failed send with `used`: replaces the producer if it is fatally
    /// broken, or if batches keep timing out while the brokers answer.
    async fn after_failure(&self, used: &FutureProducer, error: &KafkaError) {
        if let Some((code, reason)) = used.client().fatal_error() {
            self.replace(used, &format!("fatal producer error {code:?}: {reason}"));
            return;
        }
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::MessageTimedOut) {
            return;
        }
        let stalled = self.stalled.fetch_add(1, Ordering::SeqCst) + 1;
        if stalled >= STALLED_BATCHES && self.metadata(None).await.is_ok() {
            self.replace(
                used,
                &format!("{stalled} batches in a row timed out while the brokers answer"),
            );
        }
    }

    /// Puts a new producer in place of `used` (unless another send already did).
    fn replace(&self, used: &FutureProducer, why: &str) {
        let fresh = match Self::create(&self.settings, &self.client_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), why, "cannot recreate the Kafka producer");
                return;
            }
        };
        let old = {
            let mut current = self.producer.write().unwrap_or_else(|e| e.into_inner());
            if current.client().native_ptr() != used.client().native_ptr() {
                return; // replaced meanwhile
            }
            std::mem::replace(&mut *current, fresh)
        };
        self.stalled.store(0, Ordering::SeqCst);
        metrics::counter!(crate::metrics::KAFKA_PRODUCER_RECREATED).increment(1);
        tracing::warn!(why, "recreated the Kafka producer");
        // Dropping a producer purges and flushes it (up to 0.5 s): not on this thread.
        tokio::task::spawn_blocking(move || drop(old));
    }

    /// Makes the current producer fatally broken, as librdkafka does when an
    /// idempotence guarantee is lost (`rd_kafka_test_fatal_error`), so tests
    /// can check that the publisher recovers.
    #[doc(hidden)]
    pub fn break_for_test(&self) {
        let producer = self.current();
        let reason = std::ffi::CString::new("injected by a test").expect("no NUL");
        // SAFETY: the handle is valid while `producer` lives; the call only
        // records a fatal error on it.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// Asks the broker for the partitions of every topic, so that the first
    /// message to each does not wait for the client to learn them: without
    /// this, a fresh process's first publish to a topic took about a second.
    /// A failure is only logged: publishing learns the same on its own.
    pub async fn learn_topics(&self) {
        for topic in Topic::ALL {
            if let Err(e) = self.metadata(Some(self.settings.topic(topic))).await {
                tracing::warn!(error = %e, "cannot read the topics' partitions yet");
                return;
            }
        }
    }

    /// Asks the broker for the metadata of one topic, or of all of them.
    async fn metadata(&self, topic: Option<String>) -> Result<(), PublishError> {
        let producer = self.current();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(topic.as_deref(), Duration::from_secs(3))
                .map(|_| ())
        })
        .await
        .map_err(|e| PublishError(e.to_string()))?
        .map_err(|e| PublishError(e.to_string()))
    }

    /// Waits until every queued message is delivered (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.current().flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
    }
}

#[async_trait]
impl MessagePublisher for KafkaPublisher {
    async fn publish(&self, messages: &[OutboundMessage]) -> Result<(), PublishError> {
        let prepared: Vec<(String, Vec<u8>, OwnedHeaders)> = messages
            .iter()
            .map(|m| {
                let headers =
                    m.headers()
                        .iter()
                        .fold(OwnedHeaders::new_with_capacity(4), |h, (k, v)| {
                            h.insert(Header {
                                key: k,
                                value: Some(v.as_bytes()),
                            })
                        });
                (
                    self.settings.topic(m.topic),
                    serde_json::to_vec(&m.payload).expect("JSON values serialize"),
                    headers,
                )
            })
            .collect();
        let producer = self.current();
        let sends = messages
            .iter()
            .zip(&prepared)
            .map(|(m, (topic, payload, headers))| {
                let record = FutureRecord::to(topic)
                    .key(m.key.as_bytes())
                    .payload(payload)
                    .headers(headers.clone());
                producer.send(record, QUEUE_TIMEOUT)
            });
        let started = std::time::Instant::now();
        // Futures enqueue in order when first polled, so a partition keeps the outbox order.
        for result in futures::future::join_all(sends).await {
            if let Err((e, _)) = result {
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    )
                ) {
                    // The cluster lost its topics (its data was lost, or a topic was
                    // deleted by hand): create them again.
                    tracing::warn!(error = %e, "topic missing on the broker; creating the topics again");
                    if let Err(create) = super::ensure_topics(&self.settings).await {
                        tracing::warn!(error = %format!("{create:#}"), "cannot create the topics");
                    }
                }
                self.after_failure(&producer, &e).await;
                return Err(PublishError(e.to_string()));
            }
        }
        self.stalled.store(0, Ordering::SeqCst);
        metrics::histogram!(crate::metrics::KAFKA_PUBLISH_DURATION)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn dead_letter(&self, message: &InboundMessage, error: &str) -> Result<(), PublishError> {
        let source = &message.source;
        let headers = message
            .headers
            .iter()
            .filter(|(k, _)| k != HEADER_DLQ_ERROR && k != HEADER_DLQ_SOURCE)
            .fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                })
            })
            .insert(Header {
                key: HEADER_DLQ_ERROR,
                value: Some(error.as_bytes()),
            })
            .insert(Header {
                key: HEADER_DLQ_SOURCE,
                value: Some(source.as_bytes()),
            });
        let topic = self.settings.topic(Topic::DeadLetter);
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &message.payload {
            record = record.payload(payload.as_slice());
        }
        let producer = self.current();
        if let Err((e, _)) = producer.send(record, QUEUE_TIMEOUT).await {
            self.after_failure(&producer, &e).await;
            return Err(PublishError(e.to_string()));
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), PublishError> {
        self.metadata(None).await
    }
}
