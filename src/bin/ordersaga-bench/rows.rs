//! What an order costs PostgreSQL in rows: the inserts, updates (and how many
//! of them were heap-only) and deletes of each table of the service's
//! database while the load ran and its orders settled, from
//! `pg_stat_user_tables`, divided by the orders accepted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// Cumulative row counts of each table: inserted, updated, updated heap-only, deleted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts(BTreeMap<String, [i64; 4]>);

/// One table's rows written per order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TableRows {
    pub table: String,
    pub inserted: f64,
    pub updated: f64,
    /// Of the updates, those that touched no index (heap-only).
    pub hot: f64,
    pub deleted: f64,
}

impl Counts {
    pub async fn take(pool: &PgPool) -> anyhow::Result<Self> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
               FROM pg_stat_user_tables WHERE relname NOT LIKE 'bench_floor%'",
        )
        .fetch_all(pool)
        .await?;
        Ok(Self(
            rows.into_iter()
                .map(|(t, i, u, h, d)| (t, [i, u, h, d]))
                .collect(),
        ))
    }

    /// Reads again until the servers' backends have reported their work
    /// (PostgreSQL's statistics reach the table counts up to ~10 s after a
    /// backend goes idle): the `orders` inserted since `before` at least
    /// `orders`, then two reads a second apart that agree; or 15 s. (Agreement
    /// alone was not enough: with the API alone, every backend idle after the
    /// load, two reads agreed on counts still missing a tenth of the orders.)
    pub async fn settled(pool: &PgPool, before: &Counts, orders: u64) -> anyhow::Result<Self> {
        let give_up = Instant::now() + Duration::from_secs(15);
        let mut last = Self::take(pool).await?;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = Self::take(pool).await?;
            let all_in = now.inserted("orders") - before.inserted("orders") >= orders as i64;
            if (all_in && now == last) || Instant::now() >= give_up {
                return Ok(now);
            }
            last = now;
        }
    }

    fn inserted(&self, table: &str) -> i64 {
        self.0.get(table).map_or(0, |c| c[0])
    }

    /// Rows written per order from `before` to this reading, by table,
    /// tables without writes left out.
    pub fn per_order(&self, before: &Counts, orders: u64) -> Vec<TableRows> {
        if orders == 0 {
            return Vec::new();
        }
        let n = orders as f64;
        self.0
            .iter()
            .filter_map(|(table, now)| {
                let was = before.0.get(table).copied().unwrap_or_default();
                let d: Vec<f64> = (0..4)
                    .map(|i| (now[i] - was[i]).max(0) as f64 / n)
                    .collect();
                (d[0] + d[1] + d[3] > 0.0).then(|| TableRows {
                    table: table.clone(),
                    inserted: d[0],
                    updated: d[1],
                    hot: d[2],
                    deleted: d[3],
                })
            })
            .collect()
    }
}

/// The report's row: every table's inserts + updates + deletes per order, and the total.
pub fn row(tables: &[TableRows]) -> String {
    if tables.is_empty() {
        return String::new();
    }
    let total: f64 = tables
        .iter()
        .map(|t| t.inserted + t.updated + t.deleted)
        .sum();
    let each = tables
        .iter()
        .map(|t| {
            let mut parts = Vec::new();
            if t.inserted > 0.0 {
                parts.push(format!("{:.2} ins", t.inserted));
            }
            if t.updated > 0.0 {
                parts.push(format!("{:.2} upd ({:.2} HOT)", t.updated, t.hot));
            }
            if t.deleted > 0.0 {
                parts.push(format!("{:.2} del", t.deleted));
            }
            format!("{} {}", t.table, parts.join(" + "))
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "| PostgreSQL rows written per order accepted (all tables: {total:.2}) | {each} | | |\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_order_are_the_differences_over_the_orders() {
        let before = Counts(BTreeMap::from([
            ("orders".into(), [10, 0, 0, 0]),
            ("idle".into(), [5, 5, 5, 5]),
        ]));
        let after = Counts(BTreeMap::from([
            ("orders".into(), [110, 200, 150, 0]),
            ("saga_log".into(), [700, 0, 0, 0]),
            ("idle".into(), [5, 5, 5, 5]),
        ]));
        let rows = after.per_order(&before, 100);
        assert_eq!(
            rows,
            [
                TableRows {
                    table: "orders".into(),
                    inserted: 1.0,
                    updated: 2.0,
                    hot: 1.5,
                    deleted: 0.0
                },
                TableRows {
                    table: "saga_log".into(),
                    inserted: 7.0,
                    updated: 0.0,
                    hot: 0.0,
                    deleted: 0.0
                },
            ]
        );
        assert_eq!(
            row(&rows),
            "| PostgreSQL rows written per order accepted (all tables: 10.00) | orders 1.00 ins + 2.00 upd (1.50 HOT); saga_log 7.00 ins | | |\n"
        );
        assert!(after.per_order(&before, 0).is_empty());
    }
}
