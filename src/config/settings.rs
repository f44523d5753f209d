//! What the arguments become: each argument group's part of a run's
//! [`Settings`], checked as it is translated (an unreadable file, options that
//! need each other), with an error naming the environment variable at fault.

use std::net::SocketAddr;
use std::time::Duration;

use clap::ValueEnum;

use crate::adapters::http::{ApiKeys, Bounds};
use crate::adapters::kafka::{ClientProperties, KafkaSettings, parse_extra_config};
use crate::adapters::mongo::MongoSettings;
use crate::adapters::postgres::PgSettings;
use crate::adapters::user_api::UserApiSettings;
use crate::application::relay::RelaySettings;
use crate::domain::saga::UnavailablePolicy;
use crate::domain::{Money, SagaPolicy};
use crate::startup::Settings;

use super::cli::{
    AuthArgs, DbArgs, FailurePolicy, HttpArgs, KafkaArgs, KafkaSecurityProtocol, MigrateArgs,
    MongoArgs, OpsArgs, RelayArgs, SagaArgs, ShutdownArgs, UserApiClientArgs,
};

/// A secret given directly or, when `file` is set, read from that file
/// (trailing newlines dropped), with a message naming `file_var` if it cannot be read.
pub fn secret(
    value: &str,
    file: Option<&std::path::Path>,
    file_var: &str,
) -> Result<String, String> {
    match file {
        None => Ok(value.to_owned()),
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("{file_var}: cannot read {}: {e}", path.display())),
    }
}

/// BALANCE_LIMIT as clap reads it, with the value named in the error.
pub(super) fn parse_money(s: &str) -> Result<Money, String> {
    Money::parse(s).map_err(|e| format!("{s:?} {e}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl ShutdownArgs {
    /// Sets how a run stops.
    pub(super) fn apply(&self, s: &mut Settings) {
        s.shutdown_drain = ms(self.shutdown_drain_ms);
        s.shutdown_timeout = ms(self.shutdown_timeout_ms);
    }
}

impl DbArgs {
    /// The connection URL, from DATABASE_URL_FILE when it is set.
    pub fn url(&self) -> Result<String, String> {
        secret(
            &self.database_url,
            self.database_url_file.as_deref(),
            "DATABASE_URL_FILE",
        )
    }

    /// Sets the PostgreSQL part of a run's settings.
    pub(super) fn apply(&self, s: &mut Settings) -> Result<(), String> {
        s.db = self.settings()?;
        s.migrate_on_start = self.database_migrate_on_start;
        Ok(())
    }

    pub(super) fn settings(&self) -> Result<PgSettings, String> {
        Ok(PgSettings {
            url: self.url()?,
            max_connections: self.database_max_connections,
            acquire_timeout: ms(self.database_acquire_timeout_ms),
            saga_writers: self.database_saga_writers as usize,
            saga_batch_max: self.database_saga_batch_max as usize,
            order_writers: self.database_order_writers as usize,
            order_queue_max: self.database_order_queue_max as usize,
            statement_timeout: ms(self.database_statement_timeout_ms),
        })
    }
}

impl MigrateArgs {
    /// The connection URL, from DATABASE_URL_FILE when it is set.
    pub fn url(&self) -> Result<String, String> {
        secret(
            &self.database_url,
            self.database_url_file.as_deref(),
            "DATABASE_URL_FILE",
        )
    }
}

impl KafkaArgs {
    /// Sets the Kafka part of a run's settings (client, topic upkeep, consumers).
    pub(super) fn apply(&self, s: &mut Settings) -> Result<(), String> {
        s.kafka = self.settings()?;
        s.create_topics = self.kafka_create_topics;
        s.topic_check_interval = ms(self.kafka_topic_check_interval_ms);
        s.consumer_max_attempts = self.consumer_max_attempts;
        Ok(())
    }

    pub fn settings(&self) -> Result<KafkaSettings, String> {
        if self.kafka_brokers.trim().is_empty() {
            return Err("KAFKA_BROKERS must name at least one broker".into());
        }
        if self.kafka_heartbeat_interval_ms >= self.kafka_session_timeout_ms {
            return Err(
                "KAFKA_HEARTBEAT_INTERVAL_MS must be lower than KAFKA_SESSION_TIMEOUT_MS".into(),
            );
        }
        let most = KafkaSettings::IDEMPOTENT_MAX_IN_FLIGHT;
        if self.kafka_idempotence && self.kafka_max_in_flight > most {
            return Err(format!(
                "KAFKA_MAX_IN_FLIGHT is {}, but an idempotent producer (KAFKA_IDEMPOTENCE=true) allows at most {most}",
                self.kafka_max_in_flight
            ));
        }
        let properties = self.client_properties()?;
        Ok(KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            topic_prefix: self.kafka_topic_prefix.clone(),
            group_prefix: self.kafka_group_prefix.clone(),
            partitions: self.kafka_partitions,
            replication_factor: self.kafka_replication_factor,
            session_timeout: ms(self.kafka_session_timeout_ms),
            heartbeat_interval: ms(self.kafka_heartbeat_interval_ms),
            fetch_wait_max: ms(self.kafka_fetch_wait_max_ms),
            linger: ms(self.kafka_linger_ms),
            max_in_flight: self.kafka_max_in_flight,
            message_timeout: ms(self.kafka_message_timeout_ms),
            idempotence: self.kafka_idempotence,
            consumer_concurrency: self.consumer_concurrency as usize,
            lane_depth: self.consumer_lane_depth as usize,
            extra: ClientProperties(properties),
        })
    }

    /// The librdkafka properties of the security settings, then KAFKA_EXTRA_CONFIG's.
    fn client_properties(&self) -> Result<Vec<(String, String)>, String> {
        let protocol = self.kafka_security_protocol;
        let mut p: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| p.push((k.to_owned(), v));
        let file =
            |path: &Option<std::path::PathBuf>, var: &str| -> Result<Option<String>, String> {
                match path {
                    None => Ok(None),
                    Some(path) if path.is_file() => Ok(Some(path.to_string_lossy().into_owned())),
                    Some(path) => Err(format!("{var}: {} is not a readable file", path.display())),
                }
            };
        if protocol != KafkaSecurityProtocol::Plaintext {
            let name = protocol
                .to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default();
            set("security.protocol", name);
        }
        if protocol.sasl() {
            let mechanism = self.kafka_sasl_mechanism.ok_or(
                "KAFKA_SECURITY_PROTOCOL is sasl_*, so KAFKA_SASL_MECHANISM must be set (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
            )?;
            let mechanism = mechanism
                .to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default();
            set("sasl.mechanism", mechanism);
            let user = self
                .kafka_sasl_username
                .clone()
                .ok_or("KAFKA_SECURITY_PROTOCOL is sasl_*, so KAFKA_SASL_USERNAME must be set")?;
            set("sasl.username", user);
            let password = match (&self.kafka_sasl_password, &self.kafka_sasl_password_file) {
                (_, Some(path)) => secret("", Some(path), "KAFKA_SASL_PASSWORD_FILE")?,
                (Some(password), None) => password.clone(),
                (None, None) => {
                    return Err("KAFKA_SECURITY_PROTOCOL is sasl_*, so KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE) must be set".into());
                }
            };
            set("sasl.password", password);
        } else if self.kafka_sasl_mechanism.is_some() || self.kafka_sasl_username.is_some() {
            return Err(
                "KAFKA_SASL_MECHANISM and KAFKA_SASL_USERNAME need KAFKA_SECURITY_PROTOCOL sasl_ssl or sasl_plaintext".into(),
            );
        }
        let ca = file(&self.kafka_ssl_ca_location, "KAFKA_SSL_CA_LOCATION")?;
        let cert = file(
            &self.kafka_ssl_certificate_location,
            "KAFKA_SSL_CERTIFICATE_LOCATION",
        )?;
        let key = file(&self.kafka_ssl_key_location, "KAFKA_SSL_KEY_LOCATION")?;
        if (ca.is_some() || cert.is_some()) && !protocol.tls() {
            return Err("KAFKA_SSL_* files need KAFKA_SECURITY_PROTOCOL ssl or sasl_ssl".into());
        }
        if cert.is_some() != key.is_some() {
            return Err(
                "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together".into(),
            );
        }
        if let Some(ca) = ca {
            set("ssl.ca.location", ca);
        }
        if let (Some(cert), Some(key)) = (cert, key) {
            set("ssl.certificate.location", cert);
            set("ssl.key.location", key);
        }
        if let Some(password) = &self.kafka_ssl_key_password {
            set("ssl.key.password", password.clone());
        }
        p.extend(
            parse_extra_config(&self.kafka_extra_config)
                .map_err(|e| format!("KAFKA_EXTRA_CONFIG: {e}"))?,
        );
        Ok(p)
    }
}

impl KafkaSecurityProtocol {
    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

impl MongoArgs {
    pub(super) fn settings(&self) -> Result<MongoSettings, String> {
        Ok(MongoSettings {
            uri: secret(
                &self.mongodb_uri,
                self.mongodb_uri_file.as_deref(),
                "MONGODB_URI_FILE",
            )?,
            database: self.mongodb_database.clone(),
            timeout: ms(self.mongodb_timeout_ms),
        })
    }
}

impl HttpArgs {
    /// Sets the API's part of a run's settings.
    pub(super) fn apply(&self, s: &mut Settings) {
        s.http_addr = SocketAddr::new(self.host, self.port);
        s.idempotency_ttl = chrono::Duration::hours(self.idempotency_key_ttl_hours.into());
        s.max_processing = self.api_max_processing;
        s.bounds = Bounds {
            request_timeout: ms(self.api_request_timeout_ms),
            max_in_flight: self.api_max_in_flight as usize,
            max_streams: self.ui_stream_max as usize,
        };
    }
}

impl AuthArgs {
    pub(super) fn apply(&self, s: &mut Settings) -> Result<(), String> {
        let mut list = self.api_keys.clone();
        if let Some(path) = &self.api_keys_file {
            list.push('\n');
            list.push_str(&secret("", Some(path), "API_KEYS_FILE")?);
        }
        s.api_keys = ApiKeys::parse(&list, self.ops_require_key);
        Ok(())
    }
}

impl OpsArgs {
    pub(super) fn apply(&self, s: &mut Settings) -> Result<(), String> {
        s.ops_addr = self
            .ops_port
            .map(|port| SocketAddr::new(self.ops_host, port));
        self.auth.apply(s)
    }
}

impl SagaArgs {
    /// Sets the orchestrator's part of a run's settings.
    pub(super) fn apply(&self, s: &mut Settings) {
        s.saga = self.policy();
        s.sweep_interval = ms(self.sweep_interval_ms);
        s.reply_hold = ms(self.saga_reply_hold_ms);
        s.start_grace = chrono::Duration::milliseconds(self.saga_start_grace_ms as i64);
        s.log_retention = chrono::Duration::hours(self.saga_log_retention_hours.into());
    }

    fn policy(&self) -> SagaPolicy {
        let d = |n: u64| chrono::Duration::milliseconds(n.min(i64::MAX as u64) as i64);
        SagaPolicy {
            step_timeout: d(self.step_timeout_ms),
            max_attempts: self.step_max_attempts,
            backoff_factor: self.step_backoff_factor,
            retry_delay: d(self.user_api_wait_retry_ms),
            saga_deadline: d(self.saga_deadline_ms),
            on_unavailable: match self.user_api_failure_policy {
                FailurePolicy::Cancel => UnavailablePolicy::Cancel,
                FailurePolicy::Wait => UnavailablePolicy::Wait,
            },
        }
    }
}

impl UserApiClientArgs {
    /// `default_port`: where the user API is when USER_API_URL is not set.
    pub(super) fn settings(&self, default_port: u16) -> UserApiSettings {
        UserApiSettings {
            base_url: self
                .user_api_url
                .clone()
                .unwrap_or_else(|| format!("http://127.0.0.1:{default_port}")),
            timeout: ms(self.user_api_timeout_ms),
            retries: self.user_api_retries,
            retry_delay: ms(self.user_api_retry_delay_ms),
            breaker_threshold: self.user_api_breaker_threshold,
            breaker_cooldown: ms(self.user_api_breaker_cooldown_ms),
        }
    }
}

impl RelayArgs {
    pub(super) fn settings(&self) -> RelaySettings {
        RelaySettings {
            batch_size: self.relay_batch_size,
            idle_poll: ms(self.relay_idle_poll_ms),
            events_gather: ms(self.relay_events_gather_ms),
            catch_up: ms(self.relay_catch_up_ms),
            lease: ms(self.relay_lease_ms),
            ..RelaySettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::Cli;

    #[test]
    fn bad_configuration_is_refused_with_the_variable_named() {
        let err = Cli::try_parse_from(["ordersaga", "all", "--balance-limit=-3"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--balance-limit") && err.contains("must be greater than 0"),
            "{err}"
        );
        // What `ordersaga all` with these arguments says of its configuration.
        let plan = |args: &[&str]| {
            let argv = ["ordersaga", "all"].iter().chain(args).copied();
            Cli::try_parse_from(argv)
                .unwrap()
                .command
                .plan()
                .map(|_| ())
        };
        let refusal = |args: &[&str]| plan(args).unwrap_err();
        assert!(
            refusal(&["--kafka-heartbeat-interval-ms", "20000"])
                .contains("KAFKA_HEARTBEAT_INTERVAL_MS")
        );
        // Idempotence named, whatever the environment says.
        let in_flight = ["--kafka-max-in-flight", "6", "--kafka-idempotence"];
        assert!(refusal(&[&in_flight[..], &["true"]].concat()).contains("KAFKA_MAX_IN_FLIGHT"));
        assert!(plan(&[&in_flight[..], &["false"]].concat()).is_ok());
        assert!(refusal(&["--kafka-extra-config", "nonsense"]).contains("KAFKA_EXTRA_CONFIG"));
        // Kafka security: what goes together, and files that must exist.
        let sasl = ["--kafka-security-protocol", "sasl_ssl"];
        assert!(refusal(&sasl).contains("KAFKA_SASL_MECHANISM"));
        let sasl = [&sasl[..], &["--kafka-sasl-mechanism", "SCRAM-SHA-512"]].concat();
        assert!(refusal(&sasl).contains("KAFKA_SASL_USERNAME"));
        let sasl = [&sasl[..], &["--kafka-sasl-username", "u"]].concat();
        assert!(refusal(&sasl).contains("KAFKA_SASL_PASSWORD"));
        assert!(plan(&[&sasl[..], &["--kafka-sasl-password", "p"]].concat()).is_ok());
        assert!(
            refusal(&["--kafka-sasl-username", "u"]).contains("KAFKA_SECURITY_PROTOCOL"),
            "SASL settings without a SASL protocol"
        );
        let ssl = ["--kafka-security-protocol", "ssl"];
        let missing = [
            &ssl[..],
            &["--kafka-ssl-ca-location", "/nonexistent/ca.pem"],
        ]
        .concat();
        assert!(refusal(&missing).contains("KAFKA_SSL_CA_LOCATION: /nonexistent/ca.pem"));
        let lone_cert = [
            &ssl[..],
            &["--kafka-ssl-certificate-location", "Cargo.toml"],
        ]
        .concat();
        assert!(refusal(&lone_cert).contains("go together"));
        assert!(
            refusal(&["--database-url-file", "/nonexistent/url"]).contains("DATABASE_URL_FILE")
        );
    }

    #[test]
    fn the_relays_read_intervals_default_to_the_relays_own_and_can_be_set() {
        use crate::application::relay::RelaySettings;
        use crate::config::cli::Command;
        use std::time::Duration;
        let relay = |args: &[&str]| {
            let argv = ["ordersaga", "all"].iter().chain(args).copied();
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::All(all)) => Ok(all.relay.settings()),
                Ok(_) => unreachable!("parsed as `all`"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(relay(&[]).unwrap(), RelaySettings::default());
        let set = relay(&[
            "--relay-catch-up-ms",
            "40",
            "--relay-events-gather-ms",
            "70",
        ])
        .unwrap();
        assert_eq!(
            (set.catch_up, set.events_gather),
            (Duration::from_millis(40), Duration::from_millis(70))
        );
        // Past what the relay remembers of a hand-over, it would send it again.
        let err = relay(&["--relay-catch-up-ms", "10001"]).unwrap_err();
        assert!(err.contains("--relay-catch-up-ms"), "{err}");
    }

    #[test]
    fn kafka_security_settings_become_librdkafka_properties_that_hide_their_secrets() {
        let cli = Cli::try_parse_from([
            "ordersaga",
            "all",
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "ordersaga",
            "--kafka-sasl-password",
            "hunter2",
            "--kafka-ssl-ca-location",
            "Cargo.toml",
            "--kafka-extra-config",
            "sasl.username=override",
        ])
        .unwrap();
        let (_, settings) = cli.command.plan().unwrap();
        let props = &settings.kafka.extra;
        let get = |k: &str| {
            props
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.password"), Some("hunter2"));
        assert_eq!(get("ssl.ca.location"), Some("Cargo.toml"));
        assert_eq!(
            get("sasl.username"),
            Some("override"),
            "KAFKA_EXTRA_CONFIG wins"
        );
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
