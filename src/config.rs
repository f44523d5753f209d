//! Command line and environment: every setting has an environment variable
//! and a default that works with the local stack (`make stack-up`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::adapters::http::{ApiKeys, Bounds};
use crate::adapters::kafka::{ClientProperties, KafkaSettings, parse_extra_config};
use crate::adapters::mongo::MongoSettings;
use crate::adapters::postgres::PgSettings;
use crate::adapters::user_api::UserApiSettings;
use crate::application::orders::DEFAULT_MAX_PROCESSING;
use crate::application::relay::RelaySettings;
use crate::domain::saga::UnavailablePolicy;
use crate::domain::{Money, SagaPolicy};
use crate::startup::{Roles, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "ordersaga",
    version,
    about = "Order validation as an orchestrated saga over Kafka",
    long_about = "Order validation as an orchestrated saga over Kafka.\n\n\
        An order placed over HTTP is stored PROCESSING in PostgreSQL; an orchestrator asks a user \
        validator and a balance validator through Kafka and settles it APPROVED or CANCELED. Every \
        saga event is appended to a MongoDB event log.\n\n\
        Each subcommand runs one component; `all` runs every component in one process. Every \
        option can be set with the environment variable shown next to it.",
    after_help = "Logging: RUST_LOG sets the log filter (default: info); LOG_FORMAT=json for JSON lines."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every component in one process: API, relay, orchestrator, both validators and the stub user API.
    All(AllArgs),
    /// The HTTP API (with an embedded outbox relay unless RELAY_EMBEDDED=false).
    Api(ApiArgs),
    /// The orchestrator: consumes orders and replies, sends commands, settles orders, enforces deadlines.
    Orchestrator(OrchestratorArgs),
    /// The user validator: asks the user API whether an order's user is valid.
    UserValidator(UserValidatorArgs),
    /// The balance validator: checks an order's value against the balance limit.
    BalanceValidator(BalanceValidatorArgs),
    /// The outbox relay alone: publishes outbox messages to Kafka and copies events to MongoDB.
    Relay(RelayOnlyArgs),
    /// The stub user directory: GET /api/user/{id}; ids containing "invalid" are invalid.
    UserApi(UserApiStubArgs),
    /// Creates the database if needed and applies the migrations, then exits.
    Migrate(MigrateArgs),
    /// Asks a URL once and exits 0 on a 2xx answer: a health check for containers without curl.
    Probe(crate::adapters::http::probe::ProbeArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "PostgreSQL")]
pub struct DbArgs {
    /// PostgreSQL connection URL (the database is created if missing when migrating).
    /// TLS: add sslmode=verify-full&sslrootcert=/path/ca.pem (or sslmode=require).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/ordersaga",
        hide_env_values = true
    )]
    pub database_url: String,
    /// A file holding the PostgreSQL connection URL (a secret mounted as a file); wins over DATABASE_URL.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<std::path::PathBuf>,
    /// PostgreSQL's statement_timeout for every connection, in ms (0: none).
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = PgSettings::DEFAULT_STATEMENT_TIMEOUT.as_millis() as u64)]
    pub database_statement_timeout_ms: u64,
    /// New orders waiting for an order writer, at most; past that POST /api/orders answers 503 overloaded.
    #[arg(long, env = "DATABASE_ORDER_QUEUE_MAX", default_value_t = PgSettings::DEFAULT_ORDER_QUEUE_MAX as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub database_order_queue_max: u32,
    /// Connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub database_max_connections: u32,
    /// Longest wait for a pooled connection, in ms.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 5000)]
    pub database_acquire_timeout_ms: u64,
    /// Tasks that write saga decisions; each takes every decision waiting and
    /// writes them in one transaction (group commit), so each holds one connection.
    #[arg(long, env = "DATABASE_SAGA_WRITERS", default_value_t = PgSettings::DEFAULT_SAGA_WRITERS as u32, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub database_saga_writers: u32,
    /// Most saga decisions in one transaction.
    #[arg(long, env = "DATABASE_SAGA_BATCH_MAX", default_value_t = PgSettings::DEFAULT_SAGA_BATCH_MAX as u32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_saga_batch_max: u32,
    /// New orders inserted at once before they queue; past that, each of
    /// these writers inserts every order waiting in one statement (group
    /// commit). Orders with an Idempotency-Key are always inserted alone.
    #[arg(long, env = "DATABASE_ORDER_WRITERS", default_value_t = PgSettings::DEFAULT_ORDER_WRITERS as u32, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub database_order_writers: u32,
    /// Apply pending migrations at start.
    #[arg(long, env = "DATABASE_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub database_migrate_on_start: bool,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Prefix of every topic name (topics: orders.created, user-validation.commands, ...).
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "")]
    pub kafka_topic_prefix: String,
    /// Prefix of every consumer group id (groups: <prefix>orchestrator, <prefix>user-validator, ...).
    #[arg(long, env = "KAFKA_GROUP_PREFIX", default_value = "ordersaga.")]
    pub kafka_group_prefix: String,
    /// Create missing topics at start.
    #[arg(long, env = "KAFKA_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_create_topics: bool,
    /// How often each process checks the topics and puts back missing ones (with KAFKA_CREATE_TOPICS), in ms.
    #[arg(long, env = "KAFKA_TOPIC_CHECK_INTERVAL_MS", default_value_t = 10000, value_parser = clap::value_parser!(u64).range(100..))]
    pub kafka_topic_check_interval_ms: u64,
    /// Partitions of topics created at start.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub kafka_partitions: i32,
    /// Replication factor of topics created at start.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub kafka_replication_factor: i32,
    /// Consumer session timeout, in ms.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10000)]
    pub kafka_session_timeout_ms: u64,
    /// Consumer heartbeat interval, in ms.
    #[arg(long, env = "KAFKA_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    pub kafka_heartbeat_interval_ms: u64,
    /// fetch.wait.max.ms: how long the broker may hold a fetch that finds nothing (it answers as soon as data arrives).
    #[arg(long, env = "KAFKA_FETCH_WAIT_MAX_MS", default_value_t = 500)]
    pub kafka_fetch_wait_max_ms: u64,
    /// linger.ms: how long the producer waits to fill a batch.
    #[arg(long, env = "KAFKA_LINGER_MS", default_value_t = 0)]
    pub kafka_linger_ms: u64,
    /// max.in.flight.requests.per.connection: produce requests the producer has
    /// outstanding per broker. With 1, messages that arrive while a request is out
    /// go together in the next one (batches grow with the load, with no linger).
    /// At most 5 with KAFKA_IDEMPOTENCE=true.
    #[arg(long, env = "KAFKA_MAX_IN_FLIGHT", default_value_t = KafkaSettings::DEFAULT_MAX_IN_FLIGHT, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub kafka_max_in_flight: u32,
    /// message.timeout.ms: how long a produce may take before it fails and is retried from the outbox.
    #[arg(long, env = "KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = 10000)]
    pub kafka_message_timeout_ms: u64,
    /// Idempotent producer (enable.idempotence): no duplicates or reordering from client retries.
    #[arg(long, env = "KAFKA_IDEMPOTENCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_idempotence: bool,
    /// Security protocol to the brokers: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", default_value = "plaintext")]
    pub kafka_security_protocol: KafkaSecurityProtocol,
    /// SASL mechanism (with sasl_ssl or sasl_plaintext).
    #[arg(long, env = "KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<KafkaSaslMechanism>,
    /// SASL user name.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// SASL password.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
    /// A file holding the SASL password; wins over KAFKA_SASL_PASSWORD.
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<std::path::PathBuf>,
    /// PEM file of the CA that signed the brokers' certificates (else the system's CAs).
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<std::path::PathBuf>,
    /// PEM file of this client's certificate, for brokers that require one (mutual TLS).
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub kafka_ssl_certificate_location: Option<std::path::PathBuf>,
    /// PEM file of this client's private key (with KAFKA_SSL_CERTIFICATE_LOCATION).
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION")]
    pub kafka_ssl_key_location: Option<std::path::PathBuf>,
    /// Password of that private key, if it is encrypted.
    #[arg(long, env = "KAFKA_SSL_KEY_PASSWORD", hide_env_values = true)]
    pub kafka_ssl_key_password: Option<String>,
    /// Extra librdkafka properties for every client, as key=value,key=value; they win over the settings above.
    #[arg(
        long,
        env = "KAFKA_EXTRA_CONFIG",
        default_value = "",
        hide_env_values = true
    )]
    pub kafka_extra_config: String,
    /// Attempts for a message whose handling keeps failing before it is dead-lettered.
    #[arg(long, env = "CONSUMER_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub consumer_max_attempts: u32,
    /// Lanes a consumer spreads its partitions over (a partition always goes to the same lane).
    #[arg(long, env = "CONSUMER_CONCURRENCY", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub consumer_concurrency: u32,
    /// Messages one lane handles at once. Two messages with the same key (one
    /// order's) are never handled at once, except by the orchestrator, whose
    /// store serializes an order's decisions itself; offsets are committed in order
    /// whatever finishes first. 1 handles each partition one message at a time.
    #[arg(long, env = "CONSUMER_LANE_DEPTH", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub consumer_lane_depth: u32,
}

/// `security.protocol` of librdkafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KafkaSecurityProtocol {
    #[value(name = "plaintext")]
    Plaintext,
    #[value(name = "ssl")]
    Ssl,
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl KafkaSecurityProtocol {
    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// `sasl.mechanism` of librdkafka (GSSAPI is not built in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KafkaSaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "MongoDB")]
pub struct MongoArgs {
    /// MongoDB connection URI (TLS and credentials go in it: tls=true&tlsCAFile=..., user:password@).
    #[arg(
        long,
        env = "MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017",
        hide_env_values = true
    )]
    pub mongodb_uri: String,
    /// A file holding the MongoDB URI; wins over MONGODB_URI.
    #[arg(long, env = "MONGODB_URI_FILE")]
    pub mongodb_uri_file: Option<std::path::PathBuf>,
    /// Database holding the event log (collection saga_events).
    #[arg(long, env = "MONGODB_DATABASE", default_value = "ordersaga")]
    pub mongodb_database: String,
    /// How long an operation waits for a reachable server, in ms.
    #[arg(long, env = "MONGODB_TIMEOUT_MS", default_value_t = 5000)]
    pub mongodb_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Port of the API.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// How long a started idempotency key is remembered, in hours.
    #[arg(long, env = "IDEMPOTENCY_KEY_TTL_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=8760))]
    pub idempotency_key_ttl_hours: u32,
    /// Refuse new orders (503 with Retry-After) while this many or more are
    /// PROCESSING, so the queue never outgrows the saga's deadlines; 0: never.
    #[arg(long, env = "API_MAX_PROCESSING", default_value_t = DEFAULT_MAX_PROCESSING)]
    pub api_max_processing: u64,
    /// Longest a request may take before it is answered 503 timeout, in ms.
    #[arg(long, env = "API_REQUEST_TIMEOUT_MS", default_value_t = Bounds::default().request_timeout.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_request_timeout_ms: u64,
    /// Requests handled at once; past that 503 overloaded (Retry-After: 1).
    #[arg(long, env = "API_MAX_IN_FLIGHT", default_value_t = Bounds::default().max_in_flight as u32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub api_max_in_flight: u32,
    /// Live-page streams (/ui/stream) open at once; past that 503 overloaded.
    #[arg(long, env = "UI_STREAM_MAX", default_value_t = Bounds::default().max_streams as u32, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub ui_stream_max: u32,
}

impl HttpArgs {
    /// Sets the API's part of a run's settings.
    fn apply(&self, s: &mut Settings) {
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

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Access")]
pub struct AuthArgs {
    /// API keys, comma-separated. With any key set, /api/*, the live page's
    /// stream and /metrics need `Authorization: Bearer <key>`; /health stays
    /// open. Without keys every route is open (a warning says so at start).
    #[arg(long, env = "API_KEYS", default_value = "", hide_env_values = true)]
    pub api_keys: String,
    /// A file of API keys, one per line (lines starting with # are skipped); added to API_KEYS.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// With API keys: /metrics needs a key and /ready shows its checks only to
    /// a caller with one. false leaves both open (a scraper without a key).
    #[arg(long, env = "OPS_REQUIRE_KEY", default_value_t = true, action = clap::ArgAction::Set)]
    pub ops_require_key: bool,
}

impl AuthArgs {
    fn apply(&self, s: &mut Settings) -> Result<(), String> {
        let mut list = self.api_keys.clone();
        if let Some(path) = &self.api_keys_file {
            list.push('\n');
            list.push_str(&secret("", Some(path), "API_KEYS_FILE")?);
        }
        s.api_keys = ApiKeys::parse(&list, self.ops_require_key);
        Ok(())
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Saga")]
pub struct SagaArgs {
    /// How long a validation step waits for its first reply, in ms.
    #[arg(long, env = "STEP_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub step_timeout_ms: u64,
    /// Attempts per validation step (first send included) before the order is CANCELED with VALIDATION_TIMEOUT.
    #[arg(long, env = "STEP_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub step_max_attempts: u32,
    /// Each retry waits this many times longer than the attempt before it.
    #[arg(long, env = "STEP_BACKOFF_FACTOR", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub step_backoff_factor: u32,
    /// What to do when the user API is down: cancel (USER_API_UNAVAILABLE) or wait until SAGA_DEADLINE_MS.
    #[arg(long, env = "USER_API_FAILURE_POLICY", default_value = "cancel")]
    pub user_api_failure_policy: FailurePolicy,
    /// With the wait policy: pause before asking the user validator again, in ms (doubles per attempt, up to 16x).
    #[arg(long, env = "USER_API_WAIT_RETRY_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub user_api_wait_retry_ms: u64,
    /// With the wait policy: longest a saga may wait for the user API, in ms from its start.
    #[arg(long, env = "SAGA_DEADLINE_MS", default_value_t = 60000, value_parser = clap::value_parser!(u64).range(1..))]
    pub saga_deadline_ms: u64,
    /// How often the orchestrator looks for due deadlines, in ms.
    #[arg(long, env = "SWEEP_INTERVAL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    pub sweep_interval_ms: u64,
    /// A PROCESSING order whose saga has not started after this long is started by the sweeper, in ms.
    #[arg(long, env = "SAGA_START_GRACE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub saga_start_grace_ms: u64,
    /// How long relayed saga-log rows stay in PostgreSQL before the orchestrator
    /// trims them, in hours (an order's creation and settlement events stay: its status history).
    #[arg(long, env = "SAGA_LOG_RETENTION_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u32).range(1..))]
    pub saga_log_retention_hours: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FailurePolicy {
    Cancel,
    Wait,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "User API client")]
pub struct UserApiClientArgs {
    /// Base URL of the user directory; users are read at <url>/api/user/<id>.
    /// Default: http://127.0.0.1:8001, or with `all` and its stub, the stub's USER_API_PORT.
    #[arg(long, env = "USER_API_URL")]
    pub user_api_url: Option<String>,
    /// Timeout of one user API request, in ms.
    #[arg(long, env = "USER_API_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub user_api_timeout_ms: u64,
    /// Retries of a failed user API request (timeouts, connection errors, 5xx).
    #[arg(long, env = "USER_API_RETRIES", default_value_t = 2)]
    pub user_api_retries: usize,
    /// First retry delay, in ms (doubles, with jitter).
    #[arg(long, env = "USER_API_RETRY_DELAY_MS", default_value_t = 100)]
    pub user_api_retry_delay_ms: u64,
    /// Failed lookups in a row that open the circuit breaker (0 disables it).
    #[arg(long, env = "USER_API_BREAKER_THRESHOLD", default_value_t = 5)]
    pub user_api_breaker_threshold: u32,
    /// How long an open circuit fails fast before one trial lookup, in ms.
    #[arg(long, env = "USER_API_BREAKER_COOLDOWN_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub user_api_breaker_cooldown_ms: u64,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Balance")]
pub struct BalanceArgs {
    /// Highest order value accepted (inclusive).
    #[arg(long, env = "BALANCE_LIMIT", default_value = "10000.00", value_parser = parse_money)]
    pub balance_limit: Money,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Outbox relay")]
pub struct RelayArgs {
    /// Outbox rows per transaction.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub relay_batch_size: u32,
    /// Longest wait between outbox polls when no notification arrives, in ms.
    #[arg(long, env = "RELAY_IDLE_POLL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub relay_idle_poll_ms: u64,
    /// Least time between two batches of saga events copied to MongoDB, in ms:
    /// under load, fewer and larger batches. The event log is not on the saga's path.
    #[arg(long, env = "RELAY_EVENTS_GATHER_MS", default_value_t = 50)]
    pub relay_events_gather_ms: u64,
    /// One relay at a time follows each feed of the saga log (messages,
    /// events), holding it for this long (ms) after each read; when its
    /// process dies, another relay takes the feed over after this.
    #[arg(long, env = "RELAY_LEASE_MS", default_value_t = RelaySettings::DEFAULT_LEASE.as_millis() as u64, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub relay_lease_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct EmbeddedRelay {
    /// Run an outbox relay inside this process too (relays can run side by side).
    #[arg(long, env = "RELAY_EMBEDDED", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay_embedded: bool,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Stub user API")]
pub struct StubArgs {
    /// Port of the stub user API.
    #[arg(long, env = "USER_API_PORT", default_value_t = 8001)]
    pub user_api_port: u16,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Operations")]
pub struct OpsArgs {
    /// Port of this component's /health, /ready and /metrics (components without the API); unset: none.
    #[arg(long, env = "OPS_PORT")]
    pub ops_port: Option<u16>,
    /// Address that port listens on.
    #[arg(long, env = "OPS_HOST", default_value = "0.0.0.0")]
    pub ops_host: IpAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl OpsArgs {
    fn apply(&self, s: &mut Settings) -> Result<(), String> {
        s.ops_addr = self
            .ops_port
            .map(|port| SocketAddr::new(self.ops_host, port));
        self.auth.apply(s)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ShutdownArgs {
    /// On SIGTERM: how long /ready reports draining before work stops, in ms.
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = 0)]
    pub shutdown_drain_ms: u64,
    /// On SIGTERM: longest wait for in-flight work to finish, in ms.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10000)]
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct AllArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub saga: SagaArgs,
    #[command(flatten)]
    pub user_api: UserApiClientArgs,
    #[command(flatten)]
    pub balance: BalanceArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
    #[command(flatten)]
    pub stub: StubArgs,
    /// Also serve the stub user API (turn off when USER_API_URL points at a real one).
    #[arg(long, env = "USER_API_STUB", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Stub user API")]
    pub user_api_stub: bool,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub embedded: EmbeddedRelay,
    #[command(flatten)]
    pub relay: RelayArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub saga: SagaArgs,
    #[command(flatten)]
    pub embedded: EmbeddedRelay,
    #[command(flatten)]
    pub relay: RelayArgs,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

#[derive(Debug, Args)]
pub struct UserValidatorArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub user_api: UserApiClientArgs,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

#[derive(Debug, Args)]
pub struct BalanceValidatorArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub balance: BalanceArgs,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

#[derive(Debug, Args)]
pub struct RelayOnlyArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub relay: RelayArgs,
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

#[derive(Debug, Args)]
pub struct UserApiStubArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    #[command(flatten)]
    pub stub: StubArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL connection URL (the database is created if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/ordersaga",
        hide_env_values = true
    )]
    pub database_url: String,
    /// A file holding the PostgreSQL connection URL; wins over DATABASE_URL.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<std::path::PathBuf>,
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

fn parse_money(s: &str) -> Result<Money, String> {
    Money::parse(s).map_err(|e| format!("{s:?} {e}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
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
    fn apply(&self, s: &mut Settings) -> Result<(), String> {
        s.db = self.settings()?;
        s.migrate_on_start = self.database_migrate_on_start;
        Ok(())
    }

    fn settings(&self) -> Result<PgSettings, String> {
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

impl KafkaArgs {
    /// Sets the Kafka part of a run's settings (client, topic upkeep, consumers).
    fn apply(&self, s: &mut Settings) -> Result<(), String> {
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

impl MongoArgs {
    fn settings(&self) -> Result<MongoSettings, String> {
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

impl SagaArgs {
    /// Sets the orchestrator's part of a run's settings.
    fn apply(&self, s: &mut Settings) {
        s.saga = self.policy();
        s.sweep_interval = ms(self.sweep_interval_ms);
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
    fn settings(&self, default_port: u16) -> UserApiSettings {
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
    fn settings(&self) -> RelaySettings {
        RelaySettings {
            batch_size: self.relay_batch_size,
            idle_poll: ms(self.relay_idle_poll_ms),
            events_gather: ms(self.relay_events_gather_ms),
            lease: ms(self.relay_lease_ms),
            ..RelaySettings::default()
        }
    }
}

/// Settings for a run; components the roles do not use keep their defaults.
fn base(shutdown: &ShutdownArgs) -> Settings {
    Settings {
        shutdown_drain: ms(shutdown.shutdown_drain_ms),
        shutdown_timeout: ms(shutdown.shutdown_timeout_ms),
        ..Settings::default()
    }
}

impl Command {
    /// What this subcommand runs, and with which settings.
    pub fn plan(&self) -> Result<(Roles, Settings), String> {
        Ok(match self {
            Command::All(a) => {
                let mut s = base(&a.shutdown);
                a.db.apply(&mut s)?;
                a.kafka.apply(&mut s)?;
                s.mongo = a.mongo.settings()?;
                a.http.apply(&mut s);
                a.auth.apply(&mut s)?;
                a.saga.apply(&mut s);
                s.user_api = a.user_api.settings(if a.user_api_stub {
                    a.stub.user_api_port
                } else {
                    8001
                });
                s.balance_limit = a.balance.balance_limit;
                s.relay = a.relay.settings();
                s.stub_addr = SocketAddr::new(a.http.host, a.stub.user_api_port);
                (Roles::all(a.user_api_stub), s)
            }
            Command::Api(a) => {
                let mut s = base(&a.shutdown);
                a.db.apply(&mut s)?;
                a.kafka.apply(&mut s)?;
                s.mongo = a.mongo.settings()?;
                a.http.apply(&mut s);
                a.auth.apply(&mut s)?;
                s.relay = a.relay.settings();
                (
                    Roles {
                        api: true,
                        relay: a.embedded.relay_embedded,
                        ..Roles::none()
                    },
                    s,
                )
            }
            Command::Orchestrator(a) => {
                let mut s = base(&a.shutdown);
                a.ops.apply(&mut s)?;
                a.db.apply(&mut s)?;
                a.kafka.apply(&mut s)?;
                s.mongo = a.mongo.settings()?;
                a.saga.apply(&mut s);
                s.relay = a.relay.settings();
                (
                    Roles {
                        orchestrator: true,
                        relay: a.embedded.relay_embedded,
                        ..Roles::none()
                    },
                    s,
                )
            }
            Command::UserValidator(a) => {
                let mut s = base(&a.shutdown);
                a.ops.apply(&mut s)?;
                a.kafka.apply(&mut s)?;
                s.user_api = a.user_api.settings(8001);
                (
                    Roles {
                        user_validator: true,
                        ..Roles::none()
                    },
                    s,
                )
            }
            Command::BalanceValidator(a) => {
                let mut s = base(&a.shutdown);
                a.ops.apply(&mut s)?;
                a.kafka.apply(&mut s)?;
                s.balance_limit = a.balance.balance_limit;
                (
                    Roles {
                        balance_validator: true,
                        ..Roles::none()
                    },
                    s,
                )
            }
            Command::Relay(a) => {
                let mut s = base(&a.shutdown);
                a.ops.apply(&mut s)?;
                a.db.apply(&mut s)?;
                a.kafka.apply(&mut s)?;
                s.mongo = a.mongo.settings()?;
                s.relay = a.relay.settings();
                (
                    Roles {
                        relay: true,
                        ..Roles::none()
                    },
                    s,
                )
            }
            Command::UserApi(a) => {
                let mut s = base(&a.shutdown);
                s.stub_addr = SocketAddr::new(a.host, a.stub.user_api_port);
                (
                    Roles {
                        user_api_stub: true,
                        ..Roles::none()
                    },
                    s,
                )
            }
            Command::Migrate(_) => return Err("migrate runs no components".into()),
            Command::Probe(_) => return Err("probe runs no components".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_help_names_its_env_vars_and_defaults() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("all")
            .unwrap()
            .render_long_help()
            .to_string();
        for var in [
            "DATABASE_URL",
            "KAFKA_BROKERS",
            "KAFKA_TOPIC_PREFIX",
            "MONGODB_URI",
            "USER_API_URL",
            "PORT",
            "BALANCE_LIMIT",
            "STEP_TIMEOUT_MS",
            "USER_API_FAILURE_POLICY",
        ] {
            assert!(
                help.contains(&format!("env: {var}=")) || help.contains(&format!("env: {var}]")),
                "all --help lacks {var}"
            );
        }
        assert!(help.contains("[default: 10000.00]"));
        // Values that may hold a secret are never shown, even when set.
        for var in [
            "DATABASE_URL",
            "MONGODB_URI",
            "KAFKA_SASL_PASSWORD",
            "KAFKA_EXTRA_CONFIG",
        ] {
            assert!(
                help.contains(&format!("env: {var}]")),
                "{var}'s value shows in --help"
            );
        }
    }

    #[test]
    fn all_with_its_stub_asks_the_stub_unless_told_otherwise() {
        let url = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            cli.command.plan().unwrap().1.user_api.base_url
        };
        assert_eq!(
            url(&["ordersaga", "all", "--user-api-port", "9301"]),
            "http://127.0.0.1:9301"
        );
        assert_eq!(
            url(&[
                "ordersaga",
                "all",
                "--user-api-port",
                "9301",
                "--user-api-url",
                "http://users:80"
            ]),
            "http://users:80"
        );
        assert_eq!(
            url(&["ordersaga", "user-validator"]),
            "http://127.0.0.1:8001"
        );
    }

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

    #[test]
    fn the_readme_documents_every_environment_variable() {
        let readme = include_str!("../README.md");
        let cmd = Cli::command();
        let mut vars: Vec<(String, String)> = Vec::new();
        for sub in cmd.get_subcommands().chain(std::iter::once(&cmd)) {
            for arg in sub.get_arguments() {
                if let Some(env) = arg.get_env() {
                    let default = arg
                        .get_default_values()
                        .first()
                        .map(|d| d.to_string_lossy().into_owned());
                    let shown = match default.as_deref() {
                        None | Some("") => "(empty)".to_string(),
                        Some(d) => format!("`{d}`"),
                    };
                    vars.push((env.to_string_lossy().into_owned(), shown));
                }
            }
        }
        vars.sort();
        vars.dedup();
        assert!(vars.len() > 30, "{vars:?}");
        let wrong: Vec<_> = vars
            .iter()
            .filter(|(v, d)| !readme.contains(&format!("| `{v}` | {d} |")))
            .collect();
        assert!(
            wrong.is_empty(),
            "README's configuration table lacks or misstates {wrong:?}"
        );
    }

    /// `Settings::default()` fills in what a role leaves unset, so its values
    /// must be the command line's defaults: a default changed in one place
    /// only would make the roles disagree about it.
    #[test]
    fn settings_default_is_what_all_runs_with_when_told_nothing() {
        // The environment cannot interfere (the local stack's sets some of these).
        let cmd = Cli::command().mut_subcommand("all", |all| all.mut_args(|arg| arg.env(None)));
        let matches = cmd.try_get_matches_from(["ordersaga", "all"]).unwrap();
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        let (_, planned) = cli.command.plan().unwrap();
        let (planned, default) = (
            format!("{planned:#?}"),
            format!("{:#?}", Settings::default()),
        );
        let differ: Vec<_> = planned
            .lines()
            .zip(default.lines())
            .filter(|(p, d)| p != d)
            .collect();
        assert!(
            differ.is_empty() && planned.lines().count() == default.lines().count(),
            "(`all`, Settings::default()) differ: {differ:#?}"
        );
    }

    #[test]
    fn all_plans_every_role() {
        let cli = Cli::try_parse_from(["ordersaga", "all"]).unwrap();
        let (roles, _) = cli.command.plan().unwrap();
        assert!(
            roles.api
                && roles.relay
                && roles.orchestrator
                && roles.user_validator
                && roles.balance_validator
        );
    }
}
