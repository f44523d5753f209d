//! Wiring: builds the adapters a set of roles needs, starts the components
//! and stops them in order. `main` and the black-box tests both start the
//! system through here.
//!
//! [`start`] reads as the order things start in: it connects the
//! dependencies the roles share (`Starting::connect_*`), then calls one
//! `Starting::start_*` per role (the relay, the orchestrator and its sweeper,
//! each validator, the API, the stub user API). [`Running::stop`] stops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::adapters::Refused;
use crate::adapters::http::{self, ApiKeys, AppState, Bounds};
use crate::adapters::kafka::{self, ConsumerSettings, KafkaPublisher, KafkaSettings};
use crate::adapters::mongo::{MongoEventLog, MongoSettings};
use crate::adapters::postgres::{PgSettings, PgStore};
use crate::adapters::user_api::{HttpUserDirectory, UserApiSettings};
use crate::application::health::{ConsumerAssignment, Dependency, Readiness};
use crate::application::messages::Topic;
use crate::application::orchestrator::Orchestrator;
use crate::application::orders::{Admission, DEFAULT_MAX_PROCESSING, OrderService};
use crate::application::ports::{EventLog, MessageHandler, MessagePublisher, OrderStore};
use crate::application::relay::{Relay, RelaySettings};
use crate::application::validators::{BalanceValidator, UserValidator};
use crate::domain::{Money, SagaPolicy};

/// Which components a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub relay: bool,
    pub orchestrator: bool,
    pub user_validator: bool,
    pub balance_validator: bool,
    pub user_api_stub: bool,
}

impl Roles {
    pub fn none() -> Self {
        Self {
            api: false,
            relay: false,
            orchestrator: false,
            user_validator: false,
            balance_validator: false,
            user_api_stub: false,
        }
    }

    pub fn all(with_stub: bool) -> Self {
        Self {
            api: true,
            relay: true,
            orchestrator: true,
            user_validator: true,
            balance_validator: true,
            user_api_stub: with_stub,
        }
    }

    fn postgres(&self) -> bool {
        self.api || self.relay || self.orchestrator
    }

    fn kafka(&self) -> bool {
        self.api || self.relay || self.orchestrator || self.user_validator || self.balance_validator
    }

    fn mongo(&self) -> bool {
        self.api || self.relay
    }

    /// How this process names itself to PostgreSQL: `ordersaga all`, or
    /// `ordersaga` and its roles (`ordersaga api+relay`).
    pub fn label(&self) -> String {
        if *self == Self::all(self.user_api_stub) {
            return "ordersaga all".into();
        }
        let names = [
            (self.api, "api"),
            (self.orchestrator, "orchestrator"),
            (self.relay, "relay"),
            (self.user_validator, "user-validator"),
            (self.balance_validator, "balance-validator"),
            (self.user_api_stub, "user-api-stub"),
        ];
        let on: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        format!("ordersaga {}", on.join("+"))
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub db: PgSettings,
    pub migrate_on_start: bool,
    pub kafka: KafkaSettings,
    pub create_topics: bool,
    /// How often each process checks that the topics are still there.
    pub topic_check_interval: Duration,
    pub consumer_max_attempts: u32,
    pub mongo: MongoSettings,
    pub http_addr: SocketAddr,
    pub stub_addr: SocketAddr,
    /// Where a process without the API serves /health, /ready and /metrics (OPS_PORT).
    pub ops_addr: Option<SocketAddr>,
    pub idempotency_ttl: chrono::Duration,
    /// PROCESSING orders at which the API refuses new ones (0: never).
    pub max_processing: u64,
    /// The API's request timeout, in-flight limit and live-page stream cap.
    pub bounds: Bounds,
    /// Keys callers must present (none: every route open).
    pub api_keys: ApiKeys,
    pub saga: SagaPolicy,
    pub sweep_interval: Duration,
    /// How long a passing reply waits for its order's other one (`SAGA_REPLY_HOLD_MS`).
    pub reply_hold: Duration,
    pub start_grace: chrono::Duration,
    /// How long relayed saga-log rows are kept (creation and settlement events stay).
    pub log_retention: chrono::Duration,
    pub user_api: UserApiSettings,
    pub balance_limit: Money,
    pub relay: RelaySettings,
    /// How long /ready reports draining before work stops.
    pub shutdown_drain: Duration,
    pub shutdown_timeout: Duration,
}

/// The command line's defaults (`ordersaga all` told nothing): what a role
/// leaves unset. `config::plan`'s tests fail if the two drift apart.
impl Default for Settings {
    fn default() -> Self {
        Self {
            db: PgSettings {
                url: "postgres://postgres@127.0.0.1:5432/ordersaga".into(),
                max_connections: 16,
                acquire_timeout: Duration::from_secs(5),
                saga_writers: PgSettings::DEFAULT_SAGA_WRITERS,
                saga_batch_max: PgSettings::DEFAULT_SAGA_BATCH_MAX,
                order_writers: PgSettings::DEFAULT_ORDER_WRITERS,
                order_queue_max: PgSettings::DEFAULT_ORDER_QUEUE_MAX,
                statement_timeout: PgSettings::DEFAULT_STATEMENT_TIMEOUT,
            },
            migrate_on_start: true,
            kafka: KafkaSettings {
                brokers: "127.0.0.1:9092".into(),
                topic_prefix: String::new(),
                group_prefix: "ordersaga.".into(),
                partitions: 6,
                replication_factor: 1,
                session_timeout: Duration::from_secs(10),
                heartbeat_interval: Duration::from_secs(1),
                fetch_wait_max: Duration::from_millis(100),
                linger: Duration::ZERO,
                max_in_flight: KafkaSettings::DEFAULT_MAX_IN_FLIGHT,
                message_timeout: Duration::from_secs(10),
                idempotence: true,
                consumer_concurrency: 6,
                lane_depth: 4,
                extra: Default::default(),
            },
            create_topics: true,
            topic_check_interval: Duration::from_secs(10),
            consumer_max_attempts: 5,
            mongo: MongoSettings {
                uri: "mongodb://127.0.0.1:27017".into(),
                database: "ordersaga".into(),
                timeout: Duration::from_secs(5),
            },
            http_addr: "0.0.0.0:8000".parse().expect("valid"),
            stub_addr: "0.0.0.0:8001".parse().expect("valid"),
            ops_addr: None,
            idempotency_ttl: chrono::Duration::hours(24),
            max_processing: DEFAULT_MAX_PROCESSING,
            bounds: Bounds::default(),
            api_keys: ApiKeys::default(),
            saga: SagaPolicy::default(),
            sweep_interval: Duration::from_millis(250),
            reply_hold: Duration::from_millis(10),
            start_grace: chrono::Duration::seconds(5),
            log_retention: chrono::Duration::days(7),
            user_api: UserApiSettings {
                base_url: "http://127.0.0.1:8001".into(),
                timeout: Duration::from_secs(2),
                retries: 2,
                retry_delay: Duration::from_millis(100),
                breaker_threshold: 5,
                breaker_cooldown: Duration::from_secs(5),
            },
            balance_limit: Money::parse("10000.00").expect("valid"),
            relay: RelaySettings::default(),
            shutdown_drain: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The component tasks of a process, each reporting its name when it ends.
type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// A started process: its addresses, and how to stop it.
pub struct Running {
    pub api_addr: Option<SocketAddr>,
    pub stub_addr: Option<SocketAddr>,
    /// /health, /ready and /metrics of a process without the API.
    pub ops_addr: Option<SocketAddr>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    /// Stops the stub user API, once every other component has stopped:
    /// a user validator of the same process finishing its last messages
    /// must still reach it, or it would reply "user API unavailable".
    stub_shutdown: CancellationToken,
    tasks: Tasks,
    publisher: Option<KafkaPublisher>,
    settings: Settings,
}

/// Retries `f` until it succeeds or `within` passes, then fails with its last
/// error; a [`Refused`] (bad certificate, refused credentials) fails at once.
async fn retry_start<T, F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Refused::is_in(&e) => return Err(e),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "{what} did not succeed within {} s",
                    within.as_secs()
                )));
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "{what} failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// An HTTP server among the process's components.
struct Server {
    /// The component name its task reports under.
    name: &'static str,
    /// What it serves, and the settings that place it (for the bind error).
    what: &'static str,
}

impl Server {
    /// Binds `addr` and serves `app` as a component task until `shutdown`;
    /// returns the bound address (port 0 picks a free one).
    async fn spawn(
        self,
        tasks: &mut Tasks,
        addr: SocketAddr,
        app: axum::Router,
        shutdown: &CancellationToken,
        grace: Duration,
    ) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for {}", self.what))?;
        let bound = listener.local_addr()?;
        let token = shutdown.clone();
        let name = self.name;
        tasks.spawn(async move { (name, http::serve(listener, app, token, grace).await) });
        tracing::info!(addr = %bound, component = name, "listening");
        Ok(bound)
    }
}

/// How often the API recounts PROCESSING orders for admission control.
const ADMISSION_REFRESH: Duration = Duration::from_millis(200);

/// How long start-up waits for each dependency before giving up.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// Starts the components `roles` names: the stub user API first, then the
/// dependencies they share, the relay and the consumers, and the servers that
/// report readiness last, once every consumer is known.
pub async fn start(settings: Settings, roles: Roles) -> anyhow::Result<Running> {
    crate::metrics::install();
    let mut process = Starting::new(settings);
    // The stub goes first so a user validator in the same process can reach
    // it, and stops last (`stub_shutdown`, see `Running::stop`).
    let stub_addr = if roles.user_api_stub {
        Some(process.start_user_api_stub().await?)
    } else {
        None
    };
    if roles.postgres() {
        process.connect_postgres(&roles.label()).await?;
    }
    if roles.kafka() {
        process.connect_kafka().await?;
    }
    if roles.mongo() {
        process.connect_mongo().await?;
    }
    if roles.api || roles.orchestrator {
        process.announce_log()?;
    }
    if roles.relay {
        process.start_relay()?;
    }
    if roles.orchestrator {
        process.start_orchestrator()?;
    }
    if roles.user_validator {
        process.start_user_validator()?;
    }
    if roles.balance_validator {
        process.start_balance_validator()?;
    }
    let readiness = process.readiness();
    let api_addr = if roles.api {
        Some(process.start_api(&readiness).await?)
    } else {
        None
    };
    let ops_addr = match (roles.api, process.settings.ops_addr) {
        (false, Some(addr)) => Some(process.start_ops(addr, &readiness).await?),
        _ => None,
    };
    Ok(Running {
        api_addr,
        ops_addr,
        stub_addr,
        readiness,
        shutdown: process.shutdown,
        stub_shutdown: process.stub_shutdown,
        tasks: process.tasks,
        publisher: process.publisher,
        settings: process.settings,
    })
}

/// A process while it starts: the dependencies connected so far, and the
/// components started so far.
struct Starting {
    settings: Settings,
    kafka_settings: Arc<KafkaSettings>,
    shutdown: CancellationToken,
    /// Stops the stub user API (see [`Running::stop`]).
    stub_shutdown: CancellationToken,
    tasks: Tasks,
    /// What /ready checks.
    dependencies: Vec<Dependency>,
    /// Each consumer's first assignment, which /ready waits for.
    assignments: Vec<(&'static str, Arc<ConsumerAssignment>)>,
    store: Option<PgStore>,
    publisher: Option<KafkaPublisher>,
    event_log: Option<MongoEventLog>,
}

impl Starting {
    fn new(settings: Settings) -> Self {
        Self {
            kafka_settings: Arc::new(settings.kafka.clone()),
            settings,
            shutdown: CancellationToken::new(),
            stub_shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
            dependencies: Vec::new(),
            assignments: Vec::new(),
            store: None,
            publisher: None,
            event_log: None,
        }
    }

    fn store(&self) -> anyhow::Result<PgStore> {
        self.store
            .clone()
            .context("PostgreSQL is not connected for these roles")
    }

    fn publisher(&self) -> anyhow::Result<KafkaPublisher> {
        self.publisher
            .clone()
            .context("Kafka is not connected for these roles")
    }

    fn event_log(&self) -> anyhow::Result<MongoEventLog> {
        self.event_log
            .clone()
            .context("MongoDB is not connected for these roles")
    }

    /// Applies the migrations (DATABASE_MIGRATE_ON_START) and connects as
    /// `name`, waiting for PostgreSQL up to [`START_PATIENCE`].
    async fn connect_postgres(&mut self, name: &str) -> anyhow::Result<()> {
        let url = self.settings.db.url.clone();
        if self.settings.migrate_on_start {
            retry_start("database migration", START_PATIENCE, || {
                PgStore::migrate(&url)
            })
            .await?;
        }
        let store = PgStore::connect_lazy(&self.settings.db, name)?;
        retry_start("connecting to PostgreSQL", START_PATIENCE, || {
            store.check(&url)
        })
        .await?;
        self.dependencies
            .push(Dependency::store("postgres", Arc::new(store.clone())));
        self.store = Some(store);
        Ok(())
    }

    /// Creates the missing topics and keeps them there (KAFKA_CREATE_TOPICS),
    /// and makes the producer.
    async fn connect_kafka(&mut self) -> anyhow::Result<()> {
        let k = self.kafka_settings.clone();
        if self.settings.create_topics {
            retry_start("Kafka topic creation", START_PATIENCE, || {
                let k = k.clone();
                async move { kafka::ensure_topics(&k).await }
            })
            .await?;
            tokio::spawn(kafka::guard_topics(
                k.clone(),
                self.settings.topic_check_interval,
                self.shutdown.clone(),
            ));
        }
        let publisher = KafkaPublisher::new(k, "ordersaga")?;
        let p = publisher.clone();
        tokio::spawn(async move { p.learn_topics().await });
        self.dependencies
            .push(Dependency::broker("kafka", Arc::new(publisher.clone())));
        self.publisher = Some(publisher);
        Ok(())
    }

    /// Connects to the event log; its index is created in the background.
    async fn connect_mongo(&mut self) -> anyhow::Result<()> {
        let log = MongoEventLog::connect(&self.settings.mongo).await?;
        log.check().await?;
        self.dependencies
            .push(Dependency::event_log("mongodb", Arc::new(log.clone())));
        // In the background: a MongoDB outage must not stop the saga.
        let l = log.clone();
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match l.ensure_indexes().await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot create the event log index yet; retrying")
                    }
                }
                tokio::select! { _ = token.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
        self.event_log = Some(log);
        Ok(())
    }

    /// Tells relays in other processes when this one (the API, the
    /// orchestrator) has written the saga log.
    fn announce_log(&self) -> anyhow::Result<()> {
        tokio::spawn(self.store()?.announce_log(self.shutdown.clone()));
        Ok(())
    }

    /// The outbox relay, which also listens for other processes' writes.
    fn start_relay(&mut self) -> anyhow::Result<()> {
        let store = self.store()?;
        tokio::spawn(store.clone().listen_for_log(self.shutdown.clone()));
        let relay = Arc::new(Relay::new(
            Arc::new(store),
            Arc::new(self.publisher()?),
            Arc::new(self.event_log()?) as Arc<dyn EventLog>,
            self.settings.relay,
        ));
        let token = self.shutdown.clone();
        self.tasks.spawn(async move {
            relay.run(token).await;
            ("relay", Ok(()))
        });
        Ok(())
    }

    /// The orchestrator: a consumer of new orders and replies, and the
    /// sweeper that enforces its deadlines and keeps house.
    fn start_orchestrator(&mut self) -> anyhow::Result<()> {
        // A reply waiting in a lane of depth one would hold up the other reply it waits for.
        let hold = if self.settings.kafka.lane_depth > 1 {
            self.settings.reply_hold
        } else {
            Duration::ZERO
        };
        let orchestrator = Arc::new(
            Orchestrator::new(
                Arc::new(self.store()?),
                self.settings.saga,
                self.settings.start_grace,
            )
            .with_reply_hold(hold),
        );
        self.spawn_consumer(
            "orchestrator",
            vec![
                Topic::OrdersCreated,
                Topic::UserValidationReplies,
                Topic::BalanceValidationReplies,
            ],
            orchestrator.clone(),
        )?;
        let token = self.shutdown.clone();
        let interval = self.settings.sweep_interval;
        let retention = self.settings.log_retention;
        self.tasks.spawn(async move {
            orchestrator.run_sweeper(interval, retention, token).await;
            ("sweeper", Ok(()))
        });
        Ok(())
    }

    fn start_user_validator(&mut self) -> anyhow::Result<()> {
        let directory = Arc::new(HttpUserDirectory::new(self.settings.user_api.clone())?);
        let validator = Arc::new(UserValidator::new(directory, Arc::new(self.publisher()?)));
        self.spawn_consumer(
            "user-validator",
            vec![Topic::UserValidationCommands],
            validator,
        )
    }

    fn start_balance_validator(&mut self) -> anyhow::Result<()> {
        let validator = Arc::new(BalanceValidator::new(
            self.settings.balance_limit,
            Arc::new(self.publisher()?),
        ));
        self.spawn_consumer(
            "balance-validator",
            vec![Topic::BalanceValidationCommands],
            validator,
        )
    }

    /// Consumes `topics` into `handler` as the component task `component`,
    /// dead-lettering through the producer.
    fn spawn_consumer(
        &mut self,
        component: &'static str,
        topics: Vec<Topic>,
        handler: Arc<dyn MessageHandler>,
    ) -> anyhow::Result<()> {
        let dlq: Arc<dyn MessagePublisher> = Arc::new(self.publisher()?);
        let mut cs = ConsumerSettings::new(component, topics);
        cs.max_attempts = self.settings.consumer_max_attempts;
        cs.shutdown_timeout = self.settings.shutdown_timeout;
        // The saga store serializes an order's decisions itself, and writes
        // both replies of an order once when they are handled together.
        cs.one_per_key = component != "orchestrator";
        self.assignments.push((component, cs.assignment.clone()));
        let k = self.kafka_settings.clone();
        let token = self.shutdown.clone();
        self.tasks.spawn(async move {
            (
                component,
                kafka::run_consumer(k, cs, handler, dlq, token).await,
            )
        });
        Ok(())
    }

    /// What /ready reports: the dependencies connected and the consumers started.
    fn readiness(&mut self) -> Arc<Readiness> {
        let dependencies = std::mem::take(&mut self.dependencies);
        let assignments = std::mem::take(&mut self.assignments);
        Arc::new(Readiness::new(dependencies, Duration::from_secs(3)).with_consumers(assignments))
    }

    /// The HTTP API, with its admission control; returns its address.
    async fn start_api(&mut self, readiness: &Arc<Readiness>) -> anyhow::Result<SocketAddr> {
        let settings = &self.settings;
        let order_store: Arc<dyn OrderStore> = Arc::new(self.store()?);
        let admission = Arc::new(Admission::new(settings.max_processing));
        if admission.limit() > 0 {
            let (admission, store, token) = (
                admission.clone(),
                order_store.clone(),
                self.shutdown.clone(),
            );
            self.tasks.spawn(async move {
                admission.run(store, ADMISSION_REFRESH, token).await;
                ("admission", Ok(()))
            });
        }
        let orders = Arc::new(
            OrderService::new(
                order_store,
                Arc::new(self.event_log()?),
                settings.idempotency_ttl,
            )
            .with_admission(admission),
        );
        if settings.api_keys.enabled() {
            tracing::info!(
                keys = settings.api_keys.len(),
                "API keys configured: /api/* and the live page's stream need Authorization: Bearer <key>"
            );
        } else {
            tracing::warn!(
                "no API keys configured (API_KEYS, API_KEYS_FILE): every order, the live page and /metrics are open to anyone who reaches the port"
            );
        }
        let state = AppState::new(orders, readiness.clone())
            .with_keys(settings.api_keys.clone())
            .with_stream_cap(settings.bounds.max_streams);
        let app = http::router(state, &settings.bounds);
        let server = Server {
            name: "api",
            what: "the API (HOST/PORT)",
        };
        server
            .spawn(
                &mut self.tasks,
                settings.http_addr,
                app,
                &self.shutdown,
                settings.shutdown_timeout,
            )
            .await
    }

    /// /health, /ready and /metrics of a process without the API, on `addr`.
    async fn start_ops(
        &mut self,
        addr: SocketAddr,
        readiness: &Arc<Readiness>,
    ) -> anyhow::Result<SocketAddr> {
        let server = Server {
            name: "ops",
            what: "/health, /ready and /metrics (OPS_HOST/OPS_PORT)",
        };
        let app = http::ops_router(readiness.clone(), self.settings.api_keys.clone());
        server
            .spawn(
                &mut self.tasks,
                addr,
                app,
                &self.shutdown,
                self.settings.shutdown_timeout,
            )
            .await
    }

    /// The stub user directory, stopped by `stub_shutdown`; returns its address.
    async fn start_user_api_stub(&mut self) -> anyhow::Result<SocketAddr> {
        let server = Server {
            name: "user-api",
            what: "the stub user API (USER_API_PORT)",
        };
        server
            .spawn(
                &mut self.tasks,
                self.settings.stub_addr,
                crate::tools::user_api_stub::router(),
                &self.stub_shutdown,
                self.settings.shutdown_timeout,
            )
            .await
    }
}

impl Running {
    /// Runs until a component fails or `stop_signal` fires, then shuts down in order.
    pub async fn run_until(
        mut self,
        stop_signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop_signal);
        let failure = tokio::select! {
            _ = &mut stop_signal => None,
            Some(done) = self.tasks.join_next() => Some(match done {
                Ok((name, Ok(()))) => anyhow::anyhow!("{name} stopped unexpectedly"),
                Ok((name, Err(e))) => e.context(format!("{name} failed")),
                Err(e) => anyhow::anyhow!("a component panicked: {e}"),
            }),
        };
        self.stop().await;
        failure.map_or(Ok(()), Err)
    }

    /// Graceful stop: report draining, stop taking work, let in-flight work
    /// finish (bounded), commit offsets, flush the producer.
    pub async fn stop(mut self) {
        self.readiness.start_draining();
        if !self.settings.shutdown_drain.is_zero() {
            tokio::time::sleep(self.settings.shutdown_drain).await;
        }
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        // The stub, if this process runs one, still serves until the rest has stopped.
        let stub = usize::from(self.stub_addr.is_some());
        let mut stub_stopping = false;
        loop {
            if !stub_stopping && self.tasks.len() <= stub {
                self.stub_shutdown.cancel();
                stub_stopping = true;
            }
            let Ok(Some(done)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await
            else {
                break;
            };
            match done {
                Ok((name, Err(e))) => {
                    tracing::warn!(component = name, error = %format!("{e:#}"), "stopped with an error")
                }
                Ok((name, Ok(()))) => tracing::debug!(component = name, "stopped"),
                Err(e) => tracing::warn!(error = %e, "a component panicked while stopping"),
            }
        }
        if !self.tasks.is_empty() {
            tracing::warn!(
                left = self.tasks.len(),
                "components still busy at the shutdown timeout; aborting them"
            );
            self.tasks.abort_all();
        }
        if let Some(p) = self.publisher.take() {
            let timeout = self.settings.shutdown_timeout;
            let _ = tokio::task::spawn_blocking(move || p.flush(timeout)).await;
        }
        tracing::info!("stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::Roles;

    #[test]
    fn a_process_names_itself_by_its_roles() {
        assert_eq!(Roles::all(true).label(), "ordersaga all");
        assert_eq!(Roles::all(false).label(), "ordersaga all");
        let api = Roles {
            api: true,
            relay: true,
            ..Roles::none()
        };
        assert_eq!(api.label(), "ordersaga api+relay");
        let orchestrator = Roles {
            orchestrator: true,
            ..Roles::none()
        };
        assert_eq!(orchestrator.label(), "ordersaga orchestrator");
    }
}
