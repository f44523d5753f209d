//! PostgreSQL: orders, sagas, the outboxes and idempotency keys.

mod orders;
mod outbox;
mod saga;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::application::ports::StoreError;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Channel the outbox triggers notify on.
const OUTBOX_CHANNEL: &str = "ordersaga_outbox";

#[derive(Debug, Clone)]
pub struct PgSettings {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// The Postgres adapter; implements `OrderStore`, `SagaStore` and `Outbox`.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    wake_messages: Arc<Notify>,
    wake_events: Arc<Notify>,
}

impl PgStore {
    /// Connects lazily: the first query opens connections, so a process can
    /// start (and report not-ready) while Postgres is down.
    pub fn connect_lazy(settings: &PgSettings) -> anyhow::Result<Self> {
        let options: PgConnectOptions = settings
            .url
            .parse()
            .with_context(|| "DATABASE_URL is not a valid PostgreSQL URL".to_string())?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            wake_messages: Arc::new(Notify::new()),
            wake_events: Arc::new(Notify::new()),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the database if it does not exist, then applies pending migrations.
    pub async fn migrate(url: &str) -> anyhow::Result<()> {
        if !Postgres::database_exists(url)
            .await
            .context("cannot reach PostgreSQL at DATABASE_URL")?
        {
            Postgres::create_database(url)
                .await
                .context("cannot create the database named in DATABASE_URL")?;
            tracing::info!("created database");
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        MIGRATOR.run(&pool).await.context("migration failed")?;
        pool.close().await;
        Ok(())
    }

    /// Listens for outbox notifications and wakes the relay loops. Runs until
    /// `shutdown`; if the listening connection drops, it reconnects and wakes
    /// both loops so nothing committed meanwhile waits for the idle poll.
    pub async fn listen_for_outbox(self, shutdown: CancellationToken) {
        let mut listener: Option<PgListener> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let l = match listener.as_mut() {
                Some(l) => l,
                None => match PgListener::connect_with(&self.pool).await {
                    Ok(mut l) => match l.listen(OUTBOX_CHANNEL).await {
                        Ok(()) => {
                            self.wake_messages.notify_one();
                            self.wake_events.notify_one();
                            listener.insert(l)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot LISTEN for outbox notifications; retrying");
                            tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = shutdown.cancelled() => return }
                            continue;
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "outbox listener cannot connect; retrying");
                        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = shutdown.cancelled() => return }
                        continue;
                    }
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = l.try_recv() => match n {
                    Ok(Some(n)) => match n.payload() {
                        "outbox" => self.wake_messages.notify_one(),
                        _ => self.wake_events.notify_one(),
                    },
                    Ok(None) => {
                        // Connection lost and re-established: notifications may have been missed.
                        self.wake_messages.notify_one();
                        self.wake_events.notify_one();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "outbox listener lost its connection");
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

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Other(anyhow::anyhow!(
        "unreadable {what} in the database: {detail}"
    ))
}
