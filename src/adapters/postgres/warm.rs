//! Connections kept warm between the statements every order runs.
//!
//! sqlx checks a connection, with a round trip, every time one goes back to
//! its pool: for the one-statement uses of the hot path (the saga's read and
//! write, the relays' read, the inserts, the log's NOTIFY) that doubled the
//! round trips, about seven more an order. Those statements take their
//! connection from here instead, and give it back here once the statement
//! has succeeded: it has just answered, so there is nothing to check. A
//! statement that failed, or was dropped half-way (a cancelled request),
//! never gives its connection back here: it goes back to the pool, which
//! checks it and closes it if it is broken.
//!
//! A kept connection that has been idle for `CHECK_AFTER_IDLE` or kept for
//! `KEEP_MAX` goes back to the pool the next time one is taken, so the
//! pool's own checks (a server restarted or a network cut while it was
//! quiet, its connections' lifetime) still apply. At most a third of the
//! pool's connections are kept (five of the default sixteen; the hot path
//! runs up to seven statements at once), so the rest of the service always
//! has the others.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use super::CHECK_AFTER_IDLE;

/// The longest a connection is kept out of the pool, however busy.
const KEEP_MAX: Duration = Duration::from_secs(60);

pub(super) struct Warm {
    pool: PgPool,
    idle: Mutex<Vec<Kept>>,
    max: usize,
}

struct Kept {
    conn: PoolConnection<Postgres>,
    /// When it was taken from the pool.
    since: Instant,
    /// When its last statement ended.
    used: Instant,
}

impl Kept {
    fn fresh(&self) -> bool {
        self.used.elapsed() < CHECK_AFTER_IDLE && self.since.elapsed() < KEEP_MAX
    }
}

/// A connection taken for one statement; given back once the statement
/// succeeded, or dropped (back to the pool, checked).
struct Taken {
    conn: PoolConnection<Postgres>,
    since: Instant,
}

impl Warm {
    /// Keeps up to a third of `pool`'s connections (none for a pool of
    /// fewer than three).
    pub(super) fn new(pool: PgPool) -> Self {
        let max = pool.options().get_max_connections() as usize / 3;
        Self {
            pool,
            idle: Mutex::default(),
            max,
        }
    }

    /// Runs `statement` on a kept connection (or one from the pool), and
    /// keeps the connection if it succeeded.
    pub(super) async fn run<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut taken = self.take().await?;
        let out = statement(&mut taken.conn).await?;
        self.give_back(taken);
        Ok(out)
    }

    /// The most recently used kept connection, or one from the pool.
    async fn take(&self) -> Result<Taken, sqlx::Error> {
        let (kept, stale) = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let stale: Vec<Kept> = idle.extract_if(.., |k| !k.fresh()).collect();
            (idle.pop(), stale)
        };
        // Stale ones go back to the pool (dropped: the pool checks them).
        drop(stale);
        match kept {
            Some(k) => Ok(Taken {
                conn: k.conn,
                since: k.since,
            }),
            None => Ok(Taken {
                conn: self.pool.acquire().await?,
                since: Instant::now(),
            }),
        }
    }

    /// Keeps `taken`, whose statement has just succeeded, for the next one
    /// (or hands it back to the pool when enough are kept).
    fn give_back(&self, taken: Taken) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max {
            idle.push(Kept {
                conn: taken.conn,
                since: taken.since,
                used: Instant::now(),
            });
            return;
        }
        drop(idle);
        drop(taken); // back to the pool
    }
}
