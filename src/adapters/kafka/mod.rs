//! Kafka: topic creation, the producer (`MessagePublisher`) and the consumer
//! loop that feeds messages to a `MessageHandler`.
//!
//! Everything speaks the plain Kafka protocol through librdkafka; nothing here
//! depends on a particular broker. Latency-relevant client settings are
//! configurable (see `KafkaSettings`).

mod consumer;
mod producer;
mod topics;

use std::time::Duration;

use rdkafka::ClientConfig;

pub use consumer::{ConsumerSettings, run_consumer};
pub use producer::KafkaPublisher;
pub use topics::{delete_topics, ensure_topics, guard_topics};

use crate::application::messages::Topic;

/// Longest pause between two attempts to reach a broker that is down.
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Prepended to every topic name.
    pub topic_prefix: String,
    /// Prepended to every consumer group id.
    pub group_prefix: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// `fetch.wait.max.ms`: how long the broker may hold an empty fetch.
    pub fetch_wait_max: Duration,
    /// `linger.ms`: how long the producer waits to batch.
    pub linger: Duration,
    /// `max.in.flight.requests.per.connection` of the producer: with 1, what
    /// arrives while a produce request is out goes in the next one.
    pub max_in_flight: u32,
    /// `message.timeout.ms`: how long a produce may take before it fails.
    pub message_timeout: Duration,
    /// `enable.idempotence` on the producer: no duplicates or reordering from
    /// the client's own retries. Off only for clusters that refuse it (an ACL
    /// without IDEMPOTENT_WRITE on old brokers).
    pub idempotence: bool,
    /// Lanes a consumer spreads its partitions over.
    pub consumer_concurrency: usize,
    /// Messages one lane handles at once (never two with the same key).
    pub lane_depth: usize,
    /// librdkafka properties applied to every client after ordersaga's own:
    /// the security settings, then KAFKA_EXTRA_CONFIG.
    pub extra: ClientProperties,
}

/// librdkafka properties; the values of secret ones (passwords, keys,
/// tokens) never show in `Debug` output, so settings can be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties(pub Vec<(String, String)>);

impl ClientProperties {
    fn is_secret(key: &str) -> bool {
        ["password", "secret", "jaas", "token", ".pem", "key"]
            .iter()
            .any(|s| key.contains(s))
    }
}

impl std::ops::Deref for ClientProperties {
    type Target = [(String, String)];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if Self::is_secret(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

impl KafkaSettings {
    /// One produce request out at a time (see `max_in_flight`).
    pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1;
    /// The most requests in flight librdkafka allows an idempotent producer.
    pub const IDEMPOTENT_MAX_IN_FLIGHT: u32 = 5;

    pub fn topic(&self, topic: Topic) -> String {
        format!("{}{}", self.topic_prefix, topic.name())
    }

    /// Maps a full topic name back to its logical topic.
    pub fn logical(&self, name: &str) -> Option<Topic> {
        name.strip_prefix(self.topic_prefix.as_str())
            .and_then(Topic::from_name)
    }

    pub fn group(&self, component: &str) -> String {
        format!("{}{}", self.group_prefix, component)
    }

    /// The settings shared by every client.
    fn base_config(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            .set("socket.nagle.disable", "true")
            .set("topic.metadata.refresh.interval.ms", "10000")
            // librdkafka backs off reconnecting up to 10 s by default, so a broker
            // back from a restart waited up to 10 s more for its clients (seen in
            // `make drill`); a try a second costs a refused connection, no more.
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
        for (k, v) in self.extra.iter() {
            c.set(k, v);
        }
        c
    }
}

/// Parses `key=value,key=value` into librdkafka properties. A piece without
/// `=` continues the previous value, so list values work: `debug=cgrp,fetch`.
pub fn parse_extra_config(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in input.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match piece.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                pairs.push((k.trim().to_owned(), v.trim().to_owned()))
            }
            Some(_) => return Err(format!("{piece:?} has no key")),
            None => match pairs.last_mut() {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(piece);
                }
                None => return Err(format!("{piece:?} is not key=value")),
            },
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_never_show_in_debug_output() {
        let p = ClientProperties(vec![
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.password".into(), "hunter2".into()),
            ("ssl.key.password".into(), "k3y".into()),
            ("sasl.oauthbearer.client.secret".into(), "s3cret".into()),
        ]);
        let shown = format!("{p:?}");
        assert!(shown.contains("SASL_SSL"), "{shown}");
        for secret in ["hunter2", "k3y", "s3cret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn extra_config_parses_pairs() {
        assert_eq!(parse_extra_config("").unwrap(), vec![]);
        assert_eq!(
            parse_extra_config("security.protocol=SASL_SSL, sasl.mechanism=PLAIN").unwrap(),
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "PLAIN".into())
            ]
        );
        assert_eq!(
            parse_extra_config("debug=cgrp,topic,acks=all").unwrap(),
            vec![
                ("debug".into(), "cgrp,topic".into()),
                ("acks".into(), "all".into())
            ]
        );
        assert!(parse_extra_config("novalue").is_err());
        assert!(parse_extra_config("=x").is_err());
    }
}
