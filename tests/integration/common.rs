//! Shared test support: isolated databases, topic prefixes and Mongo
//! databases on the real servers, a polling helper, and a way to start the
//! `ordersaga` binary as a black box.

#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ordersaga::adapters::kafka::KafkaSettings;
use ordersaga::adapters::mongo::{MongoEventLog, MongoSettings};
use ordersaga::adapters::postgres::PgStore;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use uuid::Uuid;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/ordersaga".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into())
}

/// A short unique name for this test's resources.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// Runs `cleanup` to its end on a thread and runtime of its own: a guard's
/// `Drop` may run inside a test's runtime, which must not be blocked on.
pub fn on_own_runtime(cleanup: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(cleanup)
    })
    .join();
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A database of its own for one test, migrated, dropped when the guard goes.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub store: PgStore,
    /// The server's URL (any database): where the database is dropped from.
    server: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::at(&database_url()).await
    }

    /// A database of the test's own on the server of `server_url` (its path is replaced).
    pub async fn at(server_url: &str) -> Self {
        let base: PgConnectOptions = server_url.parse().expect("the server URL parses");
        let name = unique("ordersaga_t_");
        let url = {
            let mut u = url::Url::parse(server_url).expect("the server URL is a URL");
            u.set_path(&name);
            u.to_string()
        };
        let mut admin = PgConnection::connect_with(&base.clone().database("postgres"))
            .await
            .expect("PostgreSQL must be up: run `make stack-up`");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let pool = ordersaga::adapters::postgres::pool_options()
            .max_connections(8)
            .connect_with(base.database(&name))
            .await
            .unwrap();
        ordersaga::adapters::postgres::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations apply");
        Self {
            name,
            url,
            store: PgStore::from_pool(pool),
            server: server_url.to_owned(),
        }
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.store.pool()
    }

    /// A pool of its own on this database, of `connections`, with the
    /// service's options: for a test that watches what one connection does.
    pub async fn pool_of(&self, connections: u32) -> sqlx::PgPool {
        ordersaga::adapters::postgres::pool_options()
            .max_connections(connections)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl TestDb {
    /// Drops the database now (also done when the guard goes).
    pub fn drop_now(&self) {
        let (name, server) = (self.name.clone(), self.server.clone());
        // Fresh connections: FORCE ends the pool's.
        on_own_runtime(async move {
            let base: PgConnectOptions = server.parse().unwrap();
            if let Ok(mut admin) = PgConnection::connect_with(&base.database("postgres")).await {
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await;
            }
        });
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.drop_now();
    }
}

/// Kafka settings with a topic and group prefix of the test's own and the fast test timings.
pub fn kafka_settings() -> Arc<KafkaSettings> {
    kafka_settings_at(&kafka_brokers())
}

pub fn kafka_settings_at(brokers: &str) -> Arc<KafkaSettings> {
    if brokers == kafka_brokers() {
        static SWEPT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        SWEPT.get_or_init(|| sweep_test_topics(brokers));
    }
    let prefix = unique("t");
    Arc::new(KafkaSettings {
        brokers: brokers.into(),
        topic_prefix: format!("{prefix}."),
        group_prefix: format!("{prefix}."),
        partitions: 3,
        replication_factor: 1,
        session_timeout: Duration::from_millis(6000),
        heartbeat_interval: Duration::from_millis(500),
        fetch_wait_max: Duration::from_millis(500),
        linger: Duration::ZERO,
        max_in_flight: KafkaSettings::DEFAULT_MAX_IN_FLIGHT,
        message_timeout: Duration::from_secs(10),
        idempotence: true,
        consumer_concurrency: 6,
        lane_depth: 4,
        extra: Default::default(),
    })
}

/// Deletes the topics earlier test runs left on the shared broker (named
/// `t` + 12 hex digits + `.`, see `unique`), once per test process and
/// before its first test makes any: a run that ends early (a failed
/// assertion, ^C) cannot delete its own, and a broker that gathers thousands
/// of partitions starts slowly. (Test binaries run one after the other, so
/// no other run's topics are in use.)
fn sweep_test_topics(brokers: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let brokers = brokers.to_owned();
    on_own_runtime(async move {
        let Ok(admin) = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create::<AdminClient<DefaultClientContext>>()
        else {
            return;
        };
        let Ok(metadata) = admin.inner().fetch_metadata(None, Duration::from_secs(10)) else {
            return;
        };
        let stale: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|name| {
                let bytes = name.as_bytes();
                bytes.len() > 14
                    && bytes[0] == b't'
                    && bytes[13] == b'.'
                    && bytes[1..13].iter().all(u8::is_ascii_hexdigit)
            })
            .collect();
        for chunk in stale.chunks(500) {
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            let _ = admin.delete_topics(&names, &options).await;
        }
    });
}

/// A Mongo database of the test's own, dropped when the guard goes.
pub struct TestMongo {
    pub settings: MongoSettings,
    pub log: MongoEventLog,
}

impl TestMongo {
    pub async fn new() -> Self {
        Self::at(&mongodb_uri()).await
    }

    pub async fn at(uri: &str) -> Self {
        let settings = MongoSettings {
            uri: uri.into(),
            database: unique("ordersaga_t_"),
            timeout: Duration::from_secs(5),
        };
        let log = MongoEventLog::connect(&settings)
            .await
            .expect("mongo client");
        log.ensure_indexes()
            .await
            .expect("MongoDB must be up: run `make stack-up`");
        Self { settings, log }
    }
}

impl TestMongo {
    /// Drops the Mongo database now (also done when the guard goes).
    pub fn drop_now(&self) {
        let settings = self.settings.clone();
        on_own_runtime(async move {
            if let Ok(client) = mongodb::Client::with_uri_str(&settings.uri).await {
                let db = client.database(&settings.database);
                let _ = tokio::time::timeout(Duration::from_secs(10), db.drop()).await;
            }
        });
    }
}

impl Drop for TestMongo {
    fn drop(&mut self) {
        self.drop_now();
    }
}

/// A free TCP port on loopback for a child process to listen on. It is
/// bound and released, and the child binds it a moment later; meanwhile
/// another process may take it. So the port is chosen below the kernel's
/// ephemeral range (where the tests' outgoing connections take their local
/// ports, and where a port asked for with `:0` comes from), and never handed
/// out twice by this test binary: neither a client socket nor another test's
/// server can be on it when the child starts. (With ports from `:0`, a test
/// once found another test's process answering on its API's port.)
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, span) = (ephemeral_low / 2, ephemeral_low - ephemeral_low / 2);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let port = low + (Uuid::new_v4().as_u128() % u128::from(span)) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{ephemeral_low}");
}

/// The `ordersaga` binary running as a child process, killed when dropped.
pub struct Process {
    pub name: String,
    /// Where its stderr (the log) goes.
    pub log_path: std::path::PathBuf,
    child: Child,
}

impl Process {
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)]) -> Self {
        let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let log_path = log_dir.join(format!("{}.log", unique(&format!("{name}-"))));
        let log = std::fs::File::create(&log_path).unwrap();
        let log_level = std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into());
        let child = Command::new(env!("CARGO_BIN_EXE_ordersaga"))
            .args(args)
            .env("RUST_LOG", log_level)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the ordersaga binary starts");
        eprintln!(
            "started {name} (pid {}), log: {}",
            child.id(),
            log_path.display()
        );
        Self {
            name: name.into(),
            log_path,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended, if it did.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (at most `within`) for the process to end by itself.
    pub fn exit_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// What the process has logged so far (its standard error).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything a whole-system run needs: its own database, topics, groups and Mongo database.
pub struct SystemEnv {
    pub db: TestDb,
    pub mongo: TestMongo,
    pub kafka: Arc<KafkaSettings>,
}

impl SystemEnv {
    pub async fn new() -> Self {
        Self {
            db: TestDb::new().await,
            mongo: TestMongo::new().await,
            kafka: kafka_settings(),
        }
    }

    /// A system on private servers (either may be `None` for the shared one).
    pub async fn on(kafka: Option<&PrivateServer>, mongo: Option<&PrivateServer>) -> Self {
        let mongo = match mongo {
            Some(m) => TestMongo::at(&m.mongo_uri()).await,
            None => TestMongo::new().await,
        };
        let kafka = match kafka {
            Some(k) => kafka_settings_at(&k.kafka_brokers()),
            None => kafka_settings(),
        };
        Self {
            db: TestDb::new().await,
            mongo,
            kafka,
        }
    }

    /// A system whose database is on a private PostgreSQL (shared broker and MongoDB).
    pub async fn on_postgres(postgres: &PrivateServer) -> Self {
        Self {
            db: TestDb::at(&postgres.postgres_trust_url("postgres")).await,
            mongo: TestMongo::new().await,
            kafka: kafka_settings(),
        }
    }

    /// Environment variables for `ordersaga` processes of this system.
    pub fn env(&self) -> Vec<(String, String)> {
        let k = &self.kafka;
        [
            ("DATABASE_URL", self.db.url.clone()),
            ("KAFKA_BROKERS", k.brokers.clone()),
            ("KAFKA_TOPIC_PREFIX", k.topic_prefix.clone()),
            ("KAFKA_GROUP_PREFIX", k.group_prefix.clone()),
            ("KAFKA_PARTITIONS", k.partitions.to_string()),
            (
                "KAFKA_SESSION_TIMEOUT_MS",
                k.session_timeout.as_millis().to_string(),
            ),
            (
                "KAFKA_HEARTBEAT_INTERVAL_MS",
                k.heartbeat_interval.as_millis().to_string(),
            ),
            ("KAFKA_IDEMPOTENCE", k.idempotence.to_string()),
            ("MONGODB_URI", self.mongo.settings.uri.clone()),
            ("MONGODB_DATABASE", self.mongo.settings.database.clone()),
            ("HOST", "127.0.0.1".into()),
            ("LOG_FORMAT", "text".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The run's topics go with it, so the local broker does not gather
/// thousands of test partitions (each slows its start).
impl Drop for SystemEnv {
    fn drop(&mut self) {
        let kafka = self.kafka.clone();
        on_own_runtime(async move {
            let deleted = ordersaga::adapters::kafka::delete_topics(&kafka);
            let _ = tokio::time::timeout(Duration::from_secs(15), deleted).await;
        });
    }
}

/// One reqwest client for a test, with a base URL.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post_form(&self, fields: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url("/api/orders"))
            .form(fields)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Waits until the API answers /health.
    pub async fn wait_healthy(&self, timeout: Duration) {
        eventually("the API to answer /health", timeout, || async {
            match self.http.get(self.url("/health")).send().await {
                Ok(r) if r.status().is_success() => Some(()),
                _ => None,
            }
        })
        .await
    }

    /// Polls an order until its status is not PROCESSING.
    pub async fn wait_settled(&self, id: &str, timeout: Duration) -> serde_json::Value {
        eventually(&format!("order {id} to settle"), timeout, || async {
            let (status, body) = self.get_json(&format!("/api/order/{id}")).await;
            (status == 200 && body["status"] != "PROCESSING").then_some(body)
        })
        .await
    }
}

/// The library's in-memory ports, under the names these tests use (the
/// cucumber harness shares this file and uses none).
pub mod fakes {
    #[allow(unused_imports)]
    pub use ordersaga::application::ports::fakes::{
        MemoryBroker as Publisher, MemoryEvents as Log,
    };
}

/// A server of the test's own (an Apache Kafka broker, the MongoDB-protocol
/// stand-in, or PostgreSQL), on a free port, that the test may stop, kill and start again on
/// the same port, with its data kept (or wiped). Killed when dropped.
pub struct PrivateServer {
    kind: ServerKind,
    pub port: u16,
    /// The Kafka controller's port (unused for the others).
    controller_port: u16,
    /// Kafka's SASL_SSL (SCRAM-SHA-512) and SSL (client certificate) listeners, when asked for.
    pub sasl_ssl_port: Option<u16>,
    pub ssl_port: Option<u16>,
    /// Environment of the server's program (its TLS files, users...).
    env: Vec<(String, String)>,
    /// Extra arguments of the server's program.
    args: Vec<String>,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    Kafka,
    Mongo,
    Postgres,
}

impl PrivateServer {
    pub fn kafka() -> Self {
        Self::new(ServerKind::Kafka).launched()
    }

    pub fn mongo() -> Self {
        Self::new(ServerKind::Mongo).launched()
    }

    /// A Kafka broker with, besides PLAINTEXT, a SASL_SSL listener (SCRAM-SHA-512,
    /// `user` with `password`) and an SSL listener that requires a client
    /// certificate signed by `ca`.
    pub fn kafka_secure(ca: &tls::TestCa, user: &str, password: &str) -> Self {
        let mut s = Self::new(ServerKind::Kafka);
        s.sasl_ssl_port = Some(free_port());
        s.ssl_port = Some(free_port());
        s.env = vec![
            ("KAFKA_TLS_KEYSTORE".into(), ca.path("server-keystore.pem")),
            ("KAFKA_TLS_CA".into(), ca.ca()),
            (
                "KAFKA_SASL_SSL_PORT".into(),
                s.sasl_ssl_port.unwrap().to_string(),
            ),
            ("KAFKA_SSL_PORT".into(), s.ssl_port.unwrap().to_string()),
            ("KAFKA_SCRAM_USERS".into(), format!("{user}={password}")),
        ];
        s.launched()
    }

    /// A MongoDB-protocol server that speaks TLS only, with a certificate of `ca`.
    pub fn mongo_tls(ca: &tls::TestCa) -> Self {
        let mut s = Self::new(ServerKind::Mongo);
        s.args = vec![
            "--tls-cert-file".into(),
            ca.path("server.pem"),
            "--tls-key-file".into(),
            ca.path("server.key"),
        ];
        s.launched()
    }

    /// A plain PostgreSQL server (no TLS; user `postgres` without a password),
    /// for tests that stop it and start it again.
    pub fn postgres() -> Self {
        Self::new(ServerKind::Postgres).launched()
    }

    /// A PostgreSQL server that takes TCP clients over TLS only (a certificate
    /// of `ca`), as user `postgres` with `password`.
    pub fn postgres_tls(ca: &tls::TestCa, password: &str) -> Self {
        let mut s = Self::new(ServerKind::Postgres);
        s.env = vec![
            ("PG_TLS_CERT".into(), ca.path("server.pem")),
            ("PG_TLS_KEY".into(), ca.path("server.key")),
            ("PG_PASSWORD".into(), password.into()),
        ];
        s.launched()
    }

    fn new(kind: ServerKind) -> Self {
        // PostgreSQL runs as its own system user when the tests run as root:
        // its folder must be where that user can go (not under /root).
        let base = match kind {
            ServerKind::Postgres => std::env::temp_dir(),
            _ => std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        };
        let dir = base.join(unique("ordersaga-server-"));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            kind,
            port: free_port(),
            controller_port: free_port(),
            sasl_ssl_port: None,
            ssl_port: None,
            env: vec![],
            args: vec![],
            dir,
            child: None,
        }
    }

    fn launched(mut self) -> Self {
        self.start();
        self
    }

    fn binary(&self) -> String {
        if self.kind == ServerKind::Postgres {
            return concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres/server.sh").into();
        }
        let var = match self.kind {
            ServerKind::Kafka => "ORDERSAGA_KAFKA_SERVER",
            _ => "ORDERSAGA_MONGO_BIN",
        };
        std::env::var(var)
            .ok()
            .filter(|p| !p.is_empty() && std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("{var} must name the server's program: run the tests through `make test`")
            })
    }

    /// Where the server keeps its data.
    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.join("data")
    }

    /// Starts the server (again) and waits until its port answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let mut cmd = Command::new(self.binary());
        match self.kind {
            ServerKind::Kafka => {
                // scripts/kafka/server.sh DIR PORT CONTROLLER_PORT: formats DIR/data
                // on first start (or after a wipe), then execs the broker.
                cmd.arg(&self.dir)
                    .args([port.as_str(), &self.controller_port.to_string()])
                    .env("KAFKA_HEAP", "384m");
            }
            ServerKind::Postgres => {
                // scripts/postgres/server.sh DIR PORT: creates DIR/data once, then execs postgres.
                cmd.arg(&self.dir).arg(&port);
            }
            ServerKind::Mongo => {
                cmd.args(["--host", "127.0.0.1", "--port", &port, "--storage-path"])
                    .arg(self.data_dir());
                if self.binary().ends_with("secantusd-rs") {
                    cmd.args(["--log-file-max", "10MB", "--cache-size", "128M"]);
                }
            }
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the server starts");
        self.child = Some(child);
        // A JVM start and, the first time, formatting the log dir take a few seconds.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !self.answers() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{:?} exited during start-up ({status}); see {:?}",
                    self.kind,
                    self.dir.join("server.log")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not answer on port {}; see {:?}",
                self.kind,
                self.port,
                self.dir
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server takes clients: its port is open and, for PostgreSQL
    /// (whose port opens before it is ready), `pg_isready` says it accepts them.
    fn answers(&self) -> bool {
        if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return false;
        }
        self.kind != ServerKind::Postgres
            || Command::new("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Stops the server as an operator would (SIGTERM, then SIGKILL after 20 s)
    /// and waits until its port is closed. (A SIGKILLed secantusd-rs loses the
    /// writes of its last half second even when journaled: docs/stand-ins.md.)
    /// PostgreSQL gets SIGINT, its "fast" shutdown: SIGTERM ("smart") would
    /// wait for every client to disconnect, which a connection pool never does.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let signal = match self.kind {
                ServerKind::Postgres => "-INT",
                _ => "-TERM",
            };
            let _ = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.wait_closed();
    }

    /// Kills the server with SIGKILL, as a crash would; its data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.wait_closed();
    }

    /// Deletes everything the (stopped) server stored: it starts empty, as a
    /// broker whose disk was lost.
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "stop the server before wiping it");
        let _ = std::fs::remove_dir_all(self.data_dir());
    }

    fn wait_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "port {} still open", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kafka_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn mongo_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>` (a server from [`Self::postgres`]).
    pub fn postgres_trust_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<database>?<query>`.
    pub fn postgres_url(&self, password: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/{database}?{query}",
            self.port
        )
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `ordersaga` processes for one system: the ports, the stub user API
/// address and the environment are chosen once; each process may add to it.
pub struct Launcher {
    pub env: SystemEnv,
    pub api_port: u16,
    pub stub_port: u16,
    pub extra: Vec<(String, String)>,
}

impl Launcher {
    pub fn new(env: SystemEnv) -> Self {
        Self {
            env,
            api_port: free_port(),
            stub_port: free_port(),
            extra: Vec::new(),
        }
    }

    /// Adds a variable for every process started from now on.
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.extra.push((key.into(), value.to_string()));
        self
    }

    pub fn vars(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = self.env.env();
        vars.push(("PORT".into(), self.api_port.to_string()));
        vars.push(("USER_API_PORT".into(), self.stub_port.to_string()));
        vars.push((
            "USER_API_URL".into(),
            format!("http://127.0.0.1:{}", self.stub_port),
        ));
        vars.extend(self.extra.iter().cloned());
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        vars
    }

    /// Starts `ordersaga <subcommand>`.
    pub fn spawn(&self, subcommand: &str, extra: &[(&str, &str)]) -> Process {
        Process::spawn(subcommand, &[subcommand], &self.vars(extra))
    }

    pub fn api(&self) -> Api {
        Api::new(format!("127.0.0.1:{}", self.api_port).parse().unwrap())
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.env.db.pool()
    }

    /// Counts saga events of `kind` for `order` in PostgreSQL (the event log's source).
    pub async fn events_of(&self, order: &str, kind: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM saga_log WHERE order_id = $1::uuid AND event_type = $2",
        )
        .bind(order)
        .bind(kind)
        .fetch_one(self.pool())
        .await
        .unwrap()
    }
}

/// Places an order and returns its id (asserting 201 PROCESSING).
pub async fn place(api: &Api, value: &str, user: &str, installment: &str, method: &str) -> String {
    let (status, body) = api
        .post_form(&[
            ("value", value),
            ("user_id", user),
            ("installment", installment),
            ("method", method),
        ])
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "PROCESSING");
    body["id"].as_str().unwrap().to_string()
}

pub mod tls {
    //! A certificate authority made at test time, and the files the servers and
    //! clients of the TLS tests read: the CA, a server certificate for 127.0.0.1
    //! and localhost, and a client certificate (mutual TLS).

    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use super::unique;

    pub struct TestCa {
        pub dir: PathBuf,
    }

    impl TestCa {
        /// A new CA in a folder of its own, with a server and a client certificate.
        pub fn new() -> Self {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("ca-"));
            std::fs::create_dir_all(&dir).unwrap();

            let ca_key = KeyPair::generate().unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(DnType::CommonName, "ordersaga test CA");
            ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = Issuer::new(ca, &ca_key);

            let leaf = |cn: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(names).unwrap();
                params.distinguished_name.push(DnType::CommonName, cn);
                params.extended_key_usages = vec![usage];
                let cert = params.signed_by(&key, &issuer).unwrap();
                (cert.pem(), key.serialize_pem())
            };
            let (server, server_key) = leaf(
                "127.0.0.1",
                vec!["127.0.0.1".into(), "localhost".into()],
                ExtendedKeyUsagePurpose::ServerAuth,
            );
            let (client, client_key) =
                leaf("ordersaga", vec![], ExtendedKeyUsagePurpose::ClientAuth);

            let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
            write("ca.pem", &ca_cert.pem());
            write("server.pem", &server);
            write("server.key", &server_key);
            // Kafka's PEM keystore: the key and its certificate in one file.
            write("server-keystore.pem", &format!("{server_key}{server}"));
            write("client.pem", &client);
            write("client.key", &client_key);
            Self { dir }
        }

        pub fn path(&self, name: &str) -> String {
            self.dir.join(name).to_string_lossy().into_owned()
        }

        /// The CA certificate.
        pub fn ca(&self) -> String {
            self.path("ca.pem")
        }
    }

    impl Drop for TestCa {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
