//! PostgreSQL: orders with their sagas, the saga log, and idempotency keys.
//!
//! **One plan per statement.** The statements every order runs (the saga's
//! read and write of several orders in `saga.rs`, the relays' read in
//! `log.rs`) take their values through sub-selects, `(SELECT $1::uuid[])`,
//! which the planner cannot see into. Given the values themselves,
//! PostgreSQL planned each run anew (a plan for one order's array, or for a
//! position near the log's end, looks cheaper than the general one), and
//! the planning cost as much as the run or more: at 100 orders/s, 3.2 s of
//! planning in 30 s. Hidden, every plan costs the same and each connection
//! keeps the first general one, the same index walk. (Forcing general plans on every statement with
//! `plan_cache_mode` was tried: a statement planned while its table was
//! nearly empty kept a full scan until the table's statistics changed.)
//! The saga's read and write of one order take its id as it is: a lookup by
//! primary key is planned alike whatever the value, so PostgreSQL keeps the
//! general plan after its first five (the planning test holds all of them
//! to that).

mod group;
mod log;
mod orders;
mod saga;
mod warm;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Refused;
use crate::application::messages::OutboundMessage;
use crate::application::ports::{Committed, Feed, StoreError};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Channel on which writers tell relays in other processes that log rows were committed.
const LOG_CHANNEL: &str = "ordersaga_log";

/// Least time between two announcements on `OUTBOX_CHANNEL`: under load one
/// NOTIFY stands for many commits, and a relay that is busy does not need them.
const ANNOUNCE_GAP: Duration = Duration::from_millis(10);

#[derive(Clone)]
pub struct PgSettings {
    /// The connection URL; may hold a password, so it is never printed whole.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Tasks that write saga decisions, each one transaction at a time.
    pub saga_writers: usize,
    /// Most saga decisions one transaction holds.
    pub saga_batch_max: usize,
    /// New orders inserted at once before they queue for group commit.
    pub order_writers: usize,
    /// Orders waiting for an order writer, at most; past that `place` answers
    /// overloaded instead of queueing more.
    pub order_queue_max: usize,
    /// PostgreSQL's `statement_timeout` for every connection of the pool.
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &display_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("saga_writers", &self.saga_writers)
            .field("saga_batch_max", &self.saga_batch_max)
            .field("order_writers", &self.order_writers)
            .field("order_queue_max", &self.order_queue_max)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// Where a PostgreSQL URL points, for messages and logs: `host:port/database`,
/// never the user's password.
pub fn display_url(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(o) => format!(
            "{}:{}/{}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("")
        ),
        Err(_) => "(an unparsable DATABASE_URL)".into(),
    }
}

/// Turns a connection failure into an error that names PostgreSQL and where
/// it is; a certificate that does not verify or refused credentials become a
/// [`Refused`], which start-up does not retry.
fn connect_error(url: &str, e: sqlx::Error) -> anyhow::Error {
    let at = display_url(url);
    let refused = match &e {
        sqlx::Error::Tls(_) => true,
        // rustls's verdict on the server's certificate arrives as an I/O error.
        sqlx::Error::Io(io) => io.to_string().contains("invalid peer certificate"),
        // 28000 invalid_authorization_specification, 28P01 invalid_password.
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("28000" | "28P01")),
        _ => false,
    };
    if refused {
        Refused(format!("PostgreSQL at {at} refused the connection: {e}")).into()
    } else {
        anyhow::Error::new(e).context(format!("cannot reach PostgreSQL at {at}"))
    }
}

impl PgSettings {
    pub const DEFAULT_SAGA_WRITERS: usize = 2;
    pub const DEFAULT_SAGA_BATCH_MAX: usize = 64;
    /// One: on a 2-core machine a second concurrent insert cost PostgreSQL
    /// a quarter more CPU per order and accepted no more (docs/performance.md).
    pub const DEFAULT_ORDER_WRITERS: usize = 1;
    pub const DEFAULT_ORDER_QUEUE_MAX: usize = 10_000;
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Wakes the relays after a commit that wrote log rows: this store's at
/// once, the others' through a NOTIFY (`announce_log`) that names this
/// store, so that its own listener does not wake its relays a second time.
/// While this store's relays hold both feeds, no relay elsewhere follows
/// the log, and no NOTIFY is sent. While its relay holds the messages feed,
/// the messages committed here are also handed to it, so that it sends them
/// without reading them back (`SagaLog::take_committed`).
#[derive(Clone)]
pub(crate) struct Wake {
    messages: Arc<Notify>,
    events: Arc<Notify>,
    announce: Arc<Notify>,
    /// The NOTIFY payload of this store's announcements.
    origin: Arc<str>,
    /// Until when a relay of this store holds each feed (`claim_feed`):
    /// the messages', the events'; from a clock read before the claim, so never
    /// later than the lease the database gave.
    held: Arc<Mutex<[Option<Instant>; 2]>>,
    /// What the writers committed for this store's relay since it last took it.
    handed: Arc<Mutex<Committed>>,
}

/// Most messages kept for the relay; past that, it reads them.
const HANDED_MAX: usize = 10_000;

impl Default for Wake {
    fn default() -> Self {
        Self {
            messages: Arc::default(),
            events: Arc::default(),
            announce: Arc::default(),
            origin: Uuid::new_v4().to_string().into(),
            held: Arc::default(),
            handed: Arc::default(),
        }
    }
}

impl Wake {
    /// Called after a transaction that wrote log rows has committed, with
    /// the messages among them and when each was logged (the time their
    /// rows carry, which the relay's read would give them).
    ///
    /// This is not a trigger on purpose: a transaction that NOTIFYs holds a
    /// database-wide lock from its commit until it is flushed, so every
    /// writer's commit would wait for the one before it (no group commit).
    /// Measured with pgbench, 8 clients: 4,200 single-row commits/s without
    /// NOTIFY, 1,400/s with (docs/performance.md).
    pub(crate) fn committed<'a>(
        &self,
        messages: impl IntoIterator<Item = (&'a OutboundMessage, DateTime<Utc>)>,
    ) {
        let mut messages = messages.into_iter().peekable();
        if messages.peek().is_some() {
            let held = self.holds(Feed::Messages);
            let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
            for (message, at) in messages {
                if held && handed.messages.len() < HANDED_MAX {
                    handed.messages.push(OutboundMessage {
                        time: at,
                        ..message.clone()
                    });
                } else {
                    handed.unhanded = true;
                }
            }
            drop(handed);
            self.messages.notify_one();
        }
        self.events.notify_one();
        self.announce.notify_one();
    }

    /// Rows may have been written elsewhere: look.
    fn elsewhere(&self) {
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unhanded = true;
        self.messages.notify_one();
        self.events.notify_one();
    }

    fn take(&self) -> Committed {
        std::mem::take(&mut *self.handed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn slot(feed: Feed) -> usize {
        match feed {
            Feed::Messages => 0,
            Feed::Events => 1,
        }
    }

    /// A relay of this store holds `feed` until `until` (`None`: it does not,
    /// or may not).
    fn hold(&self, feed: Feed, until: Option<Instant>) {
        self.held.lock().unwrap_or_else(|e| e.into_inner())[Self::slot(feed)] = until;
    }

    /// Whether a relay of this store holds `feed` now.
    fn holds(&self, feed: Feed) -> bool {
        self.held.lock().unwrap_or_else(|e| e.into_inner())[Self::slot(feed)]
            .is_some_and(|t| t > Instant::now())
    }

    /// Whether this store's relays hold every feed now: then a commit here
    /// has woken every relay that follows the log.
    fn held_here(&self) -> bool {
        Feed::ALL.iter().all(|&feed| self.holds(feed))
    }
}

/// The Postgres adapter; implements `OrderStore`, `SagaStore` and `SagaLog`.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Connections kept between the hot path's statements (`warm.rs`).
    warm: Arc<warm::Warm>,
    wake: Wake,
    /// Saga decisions waiting for a writer (group commit, see `saga.rs`).
    sagas: Arc<saga::SagaQueue>,
    /// New orders waiting for a writer (group commit, see `orders.rs`).
    inserts: Arc<orders::InsertQueue>,
}

/// A pooled connection idle this long is checked before it is handed out.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The options of every pool ordersaga opens (and the bench's). sqlx checks
/// a connection when it goes back to the pool, and by default again when it
/// is handed out: with the statement itself, three round trips for one
/// statement (the hot path's statements skip the first, `warm.rs`). Here a
/// connection is checked when handed out only if it has been idle for
/// `CHECK_AFTER_IDLE` (a restart or a network cut while the pool was quiet
/// is still found before a request meets it); one in steady use was checked
/// a moment ago, when it came back.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

impl PgStore {
    /// Connects lazily: the first query opens connections, so a process can
    /// start (and report not-ready) while Postgres is down. The connections
    /// introduce themselves as `application_name` (what `pg_stat_activity`
    /// and the server's log show) unless the URL or `PGAPPNAME` names them.
    pub fn connect_lazy(settings: &PgSettings, application_name: &str) -> anyhow::Result<Self> {
        let mut options: PgConnectOptions = settings
            .url
            .parse()
            .with_context(|| "DATABASE_URL is not a valid PostgreSQL URL".to_string())?;
        if options.get_application_name().is_none() {
            options = options.application_name(application_name);
        }
        let timeout = settings.statement_timeout.as_millis().to_string();
        let options = options.options([("statement_timeout", timeout.as_str())]);
        let pool = pool_options()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self::from_pool(pool)
            .with_saga_writers(settings.saga_writers, settings.saga_batch_max)
            .with_order_writers(settings.order_writers, settings.order_queue_max))
    }

    /// Connects once, to fail at start with a clear message when PostgreSQL
    /// refuses this process (see [`Refused`]) or cannot be reached.
    pub async fn check(&self, url: &str) -> anyhow::Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| connect_error(url, e))?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|e| connect_error(url, e))?;
        Ok(())
    }

    /// A store on `pool`, with the default saga writers.
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            warm: Arc::new(warm::Warm::new(pool.clone())),
            pool,
            wake: Wake::default(),
            sagas: Arc::new(saga::SagaQueue::new(
                PgSettings::DEFAULT_SAGA_WRITERS,
                PgSettings::DEFAULT_SAGA_BATCH_MAX,
            )),
            inserts: Arc::new(orders::InsertQueue::new(
                PgSettings::DEFAULT_ORDER_WRITERS,
                PgSettings::DEFAULT_ORDER_QUEUE_MAX,
            )),
        }
    }

    /// The same store inserting up to `writers` new orders at once before
    /// they queue, and then `writers` at a time in groups (`orders.rs`).
    pub fn with_order_writers(mut self, writers: usize, queue_max: usize) -> Self {
        self.inserts = Arc::new(orders::InsertQueue::new(writers, queue_max));
        self
    }

    /// The same store with `writers` saga writers taking up to `batch_max` decisions per transaction.
    pub fn with_saga_writers(mut self, writers: usize, batch_max: usize) -> Self {
        self.sagas = Arc::new(saga::SagaQueue::new(writers, batch_max));
        self
    }

    /// Sends a NOTIFY on the log channel after commits that wrote log rows
    /// (`Wake::committed`), at most one per `ANNOUNCE_GAP`, outside those
    /// transactions. Relays in other processes hear it through `listen_for_log`;
    /// if one is missed they still look every idle poll. None is sent while
    /// this store's own relays hold both feeds (`ordersaga all` alone, say):
    /// they were woken at the commit, and no other relay reads the log.
    pub async fn announce_log(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.announce.notified() => {}
            }
            if self.wake.held_here() {
                continue;
            }
            let origin = &*self.wake.origin;
            let sent = self
                .warm
                .run(async |c| {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(LOG_CHANNEL)
                        .bind(origin)
                        .execute(c)
                        .await
                })
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "cannot announce log rows; relays elsewhere will find them on their idle poll");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ANNOUNCE_GAP) => {}
            }
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the database if it does not exist, then applies pending migrations.
    pub async fn migrate(url: &str) -> anyhow::Result<()> {
        if !Postgres::database_exists(url)
            .await
            .map_err(|e| connect_error(url, e))?
        {
            Postgres::create_database(url)
                .await
                .with_context(|| format!("cannot create the database {}", display_url(url)))?;
            tracing::info!(database = %display_url(url), "created database");
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .map_err(|e| connect_error(url, e))?;
        MIGRATOR.run(&pool).await.context("migration failed")?;
        pool.close().await;
        Ok(())
    }

    /// Listens for log announcements (`announce_log`) and wakes the relay
    /// loops. Runs until `shutdown`; if the listening connection drops, it
    /// reconnects and wakes both loops so nothing committed meanwhile waits
    /// for the idle poll.
    pub async fn listen_for_log(self, shutdown: CancellationToken) {
        let mut listener: Option<PgListener> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let l = match listener.as_mut() {
                Some(l) => l,
                None => match PgListener::connect_with(&self.pool).await {
                    Ok(mut l) => match l.listen(LOG_CHANNEL).await {
                        Ok(()) => {
                            self.wake.elsewhere();
                            listener.insert(l)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot LISTEN for log notifications; retrying");
                            tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = shutdown.cancelled() => return }
                            continue;
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "log listener cannot connect; retrying");
                        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = shutdown.cancelled() => return }
                        continue;
                    }
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = l.try_recv() => match n {
                    // This store's own: its relays were woken at the commit.
                    Ok(Some(n)) if n.payload() == &*self.wake.origin => {}
                    // Another's, or the connection re-established (one may have been missed).
                    Ok(_) => self.wake.elsewhere(),
                    Err(e) => {
                        tracing::debug!(error = %e, "log listener lost its connection");
                        listener = None;
                    }
                }
            }
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// Sorts database errors into "unreachable, retry later" and the rest.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    let unavailable = match &e {
        E::Io(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::Tls(_)
        | E::Protocol(_)
        | E::WorkerCrashed => true,
        E::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P0x: shutdown / cannot connect now; 53300: too many connections.
            c.starts_with("08") || c.starts_with("57P0") || c == "53300"
        }),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Other(anyhow::Error::new(e))
    }
}

/// One column of a batch, for a statement that reads its rows with `UNNEST`.
fn column<'a, J, T>(batch: &'a [J], field: impl Fn(&'a J) -> T) -> Vec<T> {
    batch.iter().map(field).collect()
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Other(anyhow::anyhow!(
        "unreadable {what} in the database: {detail}"
    ))
}

#[cfg(test)]
mod tests {
    use super::MIGRATOR;

    /// The binary applies the migrations this checkout has, every one and as
    /// written: `MIGRATOR` is copied from `migrations/` when the library
    /// compiles, and only `build.rs` tells cargo to compile it again when a
    /// migration is added or edited (until then a new one was left out).
    #[test]
    fn the_binary_carries_every_migration_of_the_checkout() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut on_disk: Vec<(i64, String)> = std::fs::read_dir(&dir)
            .expect("the migrations folder")
            .map(|entry| entry.expect("a migration file").path())
            .filter(|path| path.extension().is_some_and(|e| e == "sql"))
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let version = name
                    .split('_')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} does not start with its version"));
                (version, std::fs::read_to_string(&path).expect("readable"))
            })
            .collect();
        on_disk.sort();
        let embedded: Vec<(i64, String)> = MIGRATOR
            .iter()
            .map(|m| (m.version, m.sql.as_str().to_owned()))
            .collect();
        let versions = |v: &[(i64, String)]| v.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        assert_eq!(
            versions(&embedded),
            versions(&on_disk),
            "the migrations' versions"
        );
        for ((version, embedded), (_, file)) in embedded.iter().zip(&on_disk) {
            assert!(
                embedded == file,
                "migration {version} differs from its file"
            );
        }
    }
}
