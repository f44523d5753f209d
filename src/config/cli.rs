//! The command line: the subcommands and their argument groups, as clap reads
//! them. Each option names its environment variable and default; what the
//! values become is in `settings.rs`, which subcommand runs what in `plan.rs`.

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::adapters::http::Bounds;
use crate::adapters::kafka::KafkaSettings;
use crate::adapters::postgres::PgSettings;
use crate::application::orders::DEFAULT_MAX_PROCESSING;
use crate::application::relay::RelaySettings;
use crate::domain::Money;

use super::settings::parse_money;

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
    Probe(crate::tools::probe::ProbeArgs),
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
    /// fetch.wait.max.ms: how long the broker may hold a fetch that finds nothing (it answers as soon as data arrives,
    /// but a partition that becomes fetchable while a fetch is held waits for it: right after start-up this bounds the first hop).
    #[arg(long, env = "KAFKA_FETCH_WAIT_MAX_MS", default_value_t = 100)]
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
    /// How long a validation reply that passed waits for its order's other reply, in ms, so
    /// both are written in one transaction (0: never wait). It delays no settlement: an order
    /// settles on its last reply. Not used with CONSUMER_LANE_DEPTH=1, nor for a reply sent more
    /// than five holds before it is handled (the orchestrator is behind).
    #[arg(long, env = "SAGA_REPLY_HOLD_MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub saga_reply_hold_ms: u64,
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
    #[arg(long, env = "RELAY_EVENTS_GATHER_MS", default_value_t = RelaySettings::DEFAULT_GATHER.as_millis() as u64)]
    pub relay_events_gather_ms: u64,
    /// How long after sending the messages its own process committed the
    /// relay reads the saga log past them, in ms (the read that moves its
    /// position; other processes' messages are read as soon as they announce
    /// them). Longer: fewer reads, more sent again after a relay's crash.
    #[arg(long, env = "RELAY_CATCH_UP_MS", default_value_t = RelaySettings::DEFAULT_GATHER.as_millis() as u64, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub relay_catch_up_ms: u64,
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
    fn the_readme_documents_every_environment_variable() {
        let readme = include_str!("../../README.md");
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
}
