//! The Kafka producer: `MessagePublisher`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
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

#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    settings: Arc<KafkaSettings>,
}

impl KafkaPublisher {
    /// Creates a producer with `acks=all`, idempotent unless turned off: then
    /// retries inside the client never duplicate or reorder a partition's messages.
    pub fn new(settings: Arc<KafkaSettings>, client_id: &str) -> anyhow::Result<Self> {
        let producer: FutureProducer = settings
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
            .context("cannot create the Kafka producer")?;
        Ok(Self { producer, settings })
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
        let producer = self.producer.clone();
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
        if let Err(e) = self.producer.flush(timeout) {
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
        let sends = messages
            .iter()
            .zip(&prepared)
            .map(|(m, (topic, payload, headers))| {
                let record = FutureRecord::to(topic)
                    .key(m.key.as_bytes())
                    .payload(payload)
                    .headers(headers.clone());
                self.producer.send(record, QUEUE_TIMEOUT)
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
                    // The broker lost its topics (e.g. a restarted in-memory broker): create them again.
                    tracing::warn!(error = %e, "topic missing on the broker; creating the topics again");
                    if let Err(create) = super::ensure_topics(&self.settings).await {
                        tracing::warn!(error = %format!("{create:#}"), "cannot create the topics");
                    }
                }
                return Err(PublishError(e.to_string()));
            }
        }
        metrics::histogram!(crate::metrics::KAFKA_PUBLISH_DURATION)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn dead_letter(&self, message: &InboundMessage, error: &str) -> Result<(), PublishError> {
        let source = format!(
            "{}/{}/{}",
            message.topic_name, message.partition, message.offset
        );
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
        self.producer
            .send(record, QUEUE_TIMEOUT)
            .await
            .map_err(|(e, _)| PublishError(e.to_string()))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), PublishError> {
        self.metadata(None).await
    }
}
