//! Wiring: builds the adapters a set of roles needs, starts the components
//! and stops them in order. `main` and the black-box tests both start the
//! system through here.

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
use crate::adapters::user_api::{self, HttpUserDirectory, UserApiSettings};
use crate::application::health::{Dependency, Readiness};
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
                fetch_wait_max: Duration::from_millis(500),
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
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
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
        tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
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

/// How often the orchestrator purges old processed ids and expired idempotency keys.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// How often the API recounts PROCESSING orders for admission control.
const ADMISSION_REFRESH: Duration = Duration::from_millis(200);

/// How long start-up waits for each dependency before giving up.
const START_PATIENCE: Duration = Duration::from_secs(30);

pub async fn start(settings: Settings, roles: Roles) -> anyhow::Result<Running> {
    crate::metrics::install();
    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let mut dependencies = Vec::new();

    // The stub goes first so a user validator in the same process can reach
    // it, and stops last (`stub_shutdown`, see `Running::stop`).
    let stub_shutdown = CancellationToken::new();
    let mut stub_addr = None;
    if roles.user_api_stub {
        let server = Server {
            name: "user-api",
            what: "the stub user API (USER_API_PORT)",
        };
        stub_addr = Some(
            server
                .spawn(
                    &mut tasks,
                    settings.stub_addr,
                    user_api::stub_router(),
                    &stub_shutdown,
                    settings.shutdown_timeout,
                )
                .await?,
        );
    }

    let store = if roles.postgres() {
        if settings.migrate_on_start {
            let url = settings.db.url.clone();
            retry_start("database migration", START_PATIENCE, || {
                PgStore::migrate(&url)
            })
            .await?;
        }
        let store = PgStore::connect_lazy(&settings.db)?;
        let url = settings.db.url.clone();
        retry_start("connecting to PostgreSQL", START_PATIENCE, || {
            store.check(&url)
        })
        .await?;
        dependencies.push(Dependency::Postgres(Arc::new(store.clone())));
        Some(store)
    } else {
        None
    };

    let kafka_settings = Arc::new(settings.kafka.clone());
    let publisher = if roles.kafka() {
        if settings.create_topics {
            let k = kafka_settings.clone();
            retry_start("Kafka topic creation", START_PATIENCE, || {
                let k = k.clone();
                async move { kafka::ensure_topics(&k).await }
            })
            .await?;
            tokio::spawn(kafka::guard_topics(
                kafka_settings.clone(),
                settings.topic_check_interval,
                shutdown.clone(),
            ));
        }
        let publisher = KafkaPublisher::new(kafka_settings.clone(), "ordersaga")?;
        let p = publisher.clone();
        tokio::spawn(async move { p.learn_topics().await });
        dependencies.push(Dependency::Kafka(Arc::new(publisher.clone())));
        Some(publisher)
    } else {
        None
    };

    let event_log = if roles.mongo() {
        let log = MongoEventLog::connect(&settings.mongo).await?;
        log.check().await?;
        dependencies.push(Dependency::MongoDb(Arc::new(log.clone())));
        // The index is created in the background: a MongoDB outage must not stop the saga.
        let l = log.clone();
        let token = shutdown.clone();
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
        Some(log)
    } else {
        None
    };

    if roles.api || roles.orchestrator {
        let store = store.clone().expect("postgres is set up for these roles");
        tokio::spawn(store.announce_log(shutdown.clone()));
    }
    if roles.relay {
        let store = store.clone().expect("postgres is set up for the relay");
        tokio::spawn(store.listen_for_log(shutdown.clone()));
    }

    if roles.relay {
        let relay = Arc::new(Relay::new(
            Arc::new(store.clone().expect("postgres")),
            Arc::new(publisher.clone().expect("kafka")),
            Arc::new(event_log.clone().expect("mongo")) as Arc<dyn EventLog>,
            settings.relay,
        ));
        let token = shutdown.clone();
        tasks.spawn(async move {
            relay.run(token).await;
            ("relay", Ok(()))
        });
    }

    // Each consumer's first assignment, which /ready waits for.
    let mut assignments = Vec::new();
    let mut consumer =
        |component: &'static str, topics: Vec<Topic>, handler: Arc<dyn MessageHandler>| {
            let mut cs = ConsumerSettings::new(component, topics);
            cs.max_attempts = settings.consumer_max_attempts;
            cs.shutdown_timeout = settings.shutdown_timeout;
            // The saga store serializes an order's decisions itself, and writes
            // both replies of an order once when they are handled together.
            cs.one_per_key = component != "orchestrator";
            assignments.push((component, cs.assignment.clone()));
            let dlq: Arc<dyn MessagePublisher> = Arc::new(publisher.clone().expect("kafka"));
            let k = kafka_settings.clone();
            let token = shutdown.clone();
            async move {
                (
                    component,
                    kafka::run_consumer(k, cs, handler, dlq, token).await,
                )
            }
        };

    if roles.orchestrator {
        let orchestrator = Arc::new(Orchestrator::new(
            Arc::new(store.clone().expect("postgres")),
            settings.saga,
            settings.start_grace,
        ));
        tasks.spawn(consumer(
            "orchestrator",
            vec![
                Topic::OrdersCreated,
                Topic::UserValidationReplies,
                Topic::BalanceValidationReplies,
            ],
            orchestrator.clone(),
        ));
        let token = shutdown.clone();
        let interval = settings.sweep_interval;
        let retention = settings.log_retention;
        tasks.spawn(async move {
            let mut next_housekeeping = tokio::time::Instant::now();
            loop {
                match orchestrator.sweep(100).await {
                    Ok(100) => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "deadline sweep failed"),
                }
                if tokio::time::Instant::now() >= next_housekeeping {
                    match orchestrator.housekeeping(retention).await {
                        Ok(n) if n > 0 => tracing::info!(rows = n, "trimmed the saga log and expired idempotency keys"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
                    }
                    next_housekeeping += HOUSEKEEPING_EVERY;
                }
                tokio::select! { _ = token.cancelled() => return ("sweeper", Ok(())), _ = tokio::time::sleep(interval) => {} }
            }
        });
    }

    if roles.user_validator {
        let directory = Arc::new(HttpUserDirectory::new(settings.user_api.clone())?);
        let validator = Arc::new(UserValidator::new(
            directory,
            Arc::new(publisher.clone().expect("kafka")),
        ));
        tasks.spawn(consumer(
            "user-validator",
            vec![Topic::UserValidationCommands],
            validator,
        ));
    }

    if roles.balance_validator {
        let validator = Arc::new(BalanceValidator::new(
            settings.balance_limit,
            Arc::new(publisher.clone().expect("kafka")),
        ));
        tasks.spawn(consumer(
            "balance-validator",
            vec![Topic::BalanceValidationCommands],
            validator,
        ));
    }

    let readiness =
        Arc::new(Readiness::new(dependencies, Duration::from_secs(3)).with_consumers(assignments));

    let mut api_addr = None;
    if roles.api {
        let order_store: Arc<dyn OrderStore> = Arc::new(store.clone().expect("postgres"));
        let admission = Arc::new(Admission::new(settings.max_processing));
        if admission.limit() > 0 {
            let (admission, store, token) =
                (admission.clone(), order_store.clone(), shutdown.clone());
            tasks.spawn(async move {
                admission.run(store, ADMISSION_REFRESH, token).await;
                ("admission", Ok(()))
            });
        }
        let orders = Arc::new(
            OrderService::new(
                order_store,
                Arc::new(event_log.clone().expect("mongo")),
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
        api_addr = Some(
            server
                .spawn(
                    &mut tasks,
                    settings.http_addr,
                    app,
                    &shutdown,
                    settings.shutdown_timeout,
                )
                .await?,
        );
    }

    let mut ops_addr = None;
    if let (false, Some(addr)) = (roles.api, settings.ops_addr) {
        let server = Server {
            name: "ops",
            what: "/health, /ready and /metrics (OPS_HOST/OPS_PORT)",
        };
        let app = http::ops_router(readiness.clone(), settings.api_keys.clone());
        ops_addr = Some(
            server
                .spawn(&mut tasks, addr, app, &shutdown, settings.shutdown_timeout)
                .await?,
        );
    }

    Ok(Running {
        api_addr,
        ops_addr,
        stub_addr,
        readiness,
        shutdown,
        stub_shutdown,
        tasks,
        publisher,
        settings,
    })
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
