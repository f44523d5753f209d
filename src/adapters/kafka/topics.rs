//! Keeps the saga's topics in place: creates those that are missing and adds
//! partitions to those that have fewer than configured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use super::KafkaSettings;
use crate::adapters::Refused;
use crate::application::messages::Topic;

/// The admin client's context: logs librdkafka's errors as usual and keeps
/// the last one that says the brokers refused this client for good (a
/// certificate that did not verify, credentials refused).
#[derive(Default)]
struct Refusals {
    last: Mutex<Option<String>>,
}

impl ClientContext for Refusals {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let refused = matches!(
            code,
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
        ) || reason.contains("SSL handshake failed")
            || reason.contains("certificate verify failed")
            // The broker ended the handshake: our certificate is missing or not trusted.
            || reason.contains("ssl/tls alert");
        if refused {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        }
        DefaultClientContext.error(error, reason);
    }
}

/// It only reads metadata; it never produces.
impl ProducerContext for Refusals {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

impl Refusals {
    fn refused(&self, brokers: &str) -> Option<Refused> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|reason| {
                Refused(format!(
                    "Kafka at {brokers} refused the connection: {reason}"
                ))
            })
    }
}

/// The topics on the brokers and their partition counts. Read with a client
/// of its own that is polled for librdkafka's error events, so that a refusal
/// (a certificate, credentials) comes back as a [`Refused`] naming Kafka.
async fn read_topics(settings: &KafkaSettings) -> anyhow::Result<HashMap<String, usize>> {
    let probe: BaseProducer<Refusals> = settings
        .base_config("ordersaga-admin")
        .create_with_context(Refusals::default())
        .context("cannot create the Kafka client")?;
    let brokers = settings.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let read = probe
            .client()
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|md| {
                md.topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| (t.name().to_owned(), t.partitions().len()))
                    .collect()
            });
        read.map_err(|e| {
            // Serve the error events librdkafka queued meanwhile (the reason is in them).
            probe.poll(Duration::from_millis(100));
            match probe.context().refused(&brokers) {
                Some(refused) => anyhow::Error::new(refused),
                None => anyhow::Error::new(e).context(format!(
                    "cannot read topic metadata from the Kafka brokers at {brokers}"
                )),
            }
        })
    })
    .await?
}

/// Makes every topic of the protocol exist with at least the configured
/// number of partitions. Safe to call from every process, at any time: it
/// reads the broker's metadata first and changes only what is missing (a
/// broker that lost its data, or that created a topic on its own with its
/// default partition count). Returns how many topics it created or grew.
pub async fn ensure_topics(settings: &KafkaSettings) -> anyhow::Result<usize> {
    let present = read_topics(settings).await?;
    let admin: AdminClient<DefaultClientContext> = settings
        .base_config("ordersaga-admin")
        .create()
        .context("cannot create the Kafka admin client")?;
    let wanted = settings.partitions.max(1) as usize;
    let names: Vec<String> = Topic::ALL.iter().map(|t| settings.topic(*t)).collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let mut changed = 0;

    let missing: Vec<NewTopic> = names
        .iter()
        .filter(|n| !present.contains_key(*n))
        .map(|n| {
            NewTopic::new(
                n,
                wanted as i32,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    if !missing.is_empty() {
        let results = admin
            .create_topics(missing.iter(), &options)
            .await
            .with_context(|| {
                format!(
                    "cannot create topics on the Kafka brokers at {}",
                    settings.brokers
                )
            })?;
        for result in results {
            match result {
                Ok(name) => {
                    changed += 1;
                    tracing::info!(topic = %name, partitions = wanted, "created topic");
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
            }
        }
    }

    let short: Vec<NewPartitions> = names
        .iter()
        .filter(|n| present.get(*n).is_some_and(|count| *count < wanted))
        .map(|n| NewPartitions::new(n, wanted))
        .collect();
    if !short.is_empty() {
        let results = admin
            .create_partitions(short.iter(), &options)
            .await
            .with_context(|| {
                format!(
                    "cannot add partitions on the Kafka brokers at {}",
                    settings.brokers
                )
            })?;
        for result in results {
            match result {
                Ok(name) => {
                    changed += 1;
                    tracing::warn!(topic = %name, partitions = wanted, "topic had fewer partitions than configured; added some");
                }
                Err((name, code)) => tracing::warn!(topic = %name, %code, "cannot add partitions"),
            }
        }
    }
    Ok(changed)
}

/// Checks the topics every `interval` until `shutdown`, putting back what a
/// broker lost (an in-memory broker restarted, a topic deleted by hand).
pub async fn guard_topics(
    settings: Arc<KafkaSettings>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match ensure_topics(&settings).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                topics = n,
                "topics were missing or short on the broker; put them back"
            ),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "topic check failed (broker unreachable?)")
            }
        }
    }
}

/// Deletes every topic of the protocol under `settings.topic_prefix` (the
/// bench's private topics when it is done).
pub async fn delete_topics(settings: &KafkaSettings) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = settings
        .base_config("ordersaga-admin")
        .create()
        .context("cannot create the Kafka admin client")?;
    let names: Vec<String> = Topic::ALL.iter().map(|t| settings.topic(*t)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(&names, &options).await? {
        if let Err((name, code)) = result
            && code != RDKafkaErrorCode::UnknownTopicOrPartition
        {
            anyhow::bail!("cannot delete topic {name}: {code}");
        }
    }
    Ok(())
}
