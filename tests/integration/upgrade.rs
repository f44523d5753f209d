//! Upgrading a database that holds orders in every state: from the first
//! migration, and from the last schema before the saga log. The orders that
//! were PROCESSING settle afterwards, the finished ones keep their history,
//! the events MongoDB had not taken yet reach it (none twice), and running
//! the migrations again changes nothing.

use std::time::Duration;

use chrono::Utc;
use ordersaga::adapters::postgres::MIGRATOR;
use ordersaga::domain::{Saga, SagaPolicy};
use sqlx::postgres::PgPool;
use uuid::Uuid;

use crate::common::{Launcher, SystemEnv, eventually};

const SETTLE: Duration = Duration::from_secs(60);

/// The last migration of each schema an installation may be upgraded from.
const FIRST: i64 = 20260101000001;
const BEFORE_THE_SAGA_LOG: i64 = 20261130000001;

/// Orders as an older ordersaga left them.
struct OldOrders {
    /// PROCESSING, its `order-created` still in the outbox, nothing logged to MongoDB.
    waiting: Uuid,
    /// PROCESSING, its saga started with a deadline that has passed (its
    /// commands were sent, their replies never came).
    started: Uuid,
    approved: Uuid,
    canceled: Uuid,
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
}

/// Writes the orders through the old schema's tables, as the old code did.
async fn old_orders(pool: &PgPool) -> OldOrders {
    let o = OldOrders {
        waiting: Uuid::new_v4(),
        started: Uuid::new_v4(),
        approved: Uuid::new_v4(),
        canceled: Uuid::new_v4(),
    };
    for (id, value) in [
        (o.waiting, "10.00"),
        (o.started, "20.00"),
        (o.approved, "30.00"),
        (o.canceled, "40000.00"),
    ] {
        exec(
            pool,
            &format!(
                "INSERT INTO orders (id, user_id, value, installment, method, status, correlation_id, created_at, updated_at)
                 VALUES ('{id}', 'upgrade-user', {value}, 1, 'cash', 'PROCESSING', 'corr-{id}', now() - interval '1 minute', now() - interval '1 minute');
                 INSERT INTO saga_events (event_id, order_id, event_type, payload, occurred_at, logged_at)
                 VALUES (gen_random_uuid(), '{id}', 'order_created', '{{\"value\": \"{value}\"}}', now() - interval '1 minute', now());"
            ),
        )
        .await;
    }
    // The first order's event never reached MongoDB, and its message waits in the outbox.
    exec(
        pool,
        &format!(
            "UPDATE saga_events SET logged_at = NULL WHERE order_id = '{w}';
             INSERT INTO outbox (message_id, topic, message_key, message_type, correlation_id, payload, created_at)
             VALUES (gen_random_uuid(), 'orders.created', '{w}', 'order-created', 'corr-{w}',
                     '{{\"order_id\": \"{w}\", \"user_id\": \"upgrade-user\", \"value\": \"10.00\", \"installment\": 1, \"method\": \"cash\", \"created_at\": \"2026-11-01T00:00:00Z\"}}',
                     now() - interval '1 minute');",
            w = o.waiting
        ),
    )
    .await;
    // The second's saga started an hour ago: its deadlines have passed.
    let an_hour_ago = Utc::now() - chrono::Duration::hours(1);
    let (saga, _) = Saga::start(an_hour_ago, &SagaPolicy::default());
    let state = serde_json::to_string(&saga).unwrap();
    exec(
        pool,
        &format!(
            "INSERT INTO sagas (order_id, state, next_deadline) VALUES ('{s}', '{state}', '{deadline}');
             INSERT INTO saga_events (event_id, order_id, event_type, payload, occurred_at)
             VALUES (gen_random_uuid(), '{s}', 'saga_started', '{{}}', now() - interval '1 hour');
             INSERT INTO processed_messages (consumer, message_id) VALUES ('orchestrator', gen_random_uuid());",
            s = o.started,
            deadline = saga.next_deadline().unwrap().to_rfc3339(),
        ),
    )
    .await;
    // The last two settled long ago, their transitions and events recorded.
    for (id, status, reason) in [
        (o.approved, "APPROVED", None),
        (o.canceled, "CANCELED", Some("BALANCE_LIMIT_EXCEEDED")),
    ] {
        let reason_sql = reason.map_or("NULL".to_owned(), |r| format!("'{r}'"));
        exec(
            pool,
            &format!(
                "UPDATE orders SET status = '{status}', cancel_reason = {reason_sql}, updated_at = now() WHERE id = '{id}';
                 INSERT INTO saga_events (event_id, order_id, event_type, payload, occurred_at, logged_at)
                 VALUES (gen_random_uuid(), '{id}', 'status_changed',
                         '{{\"from\": \"PROCESSING\", \"to\": \"{status}\", \"cancel_reason\": {reason_json}}}', now(), now());",
                reason_json = reason.map_or("null".to_owned(), |r| format!("\"{r}\"")),
            ),
        )
        .await;
    }
    o
}

async fn upgrades_and_every_order_settles(from: i64) {
    let env = SystemEnv::new().await;
    let pool = env.db.pool().clone();
    // The test database was migrated to the newest schema: start again from `from`.
    exec(&pool, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;").await;
    MIGRATOR.run_to(from, &pool).await.expect("the old schema");
    let old = old_orders(&pool).await;
    let events_before: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_events")
        .fetch_one(&pool)
        .await
        .unwrap();

    MIGRATOR.run(&pool).await.expect("the upgrade");

    // Every event moved into the log, and the waiting message with them.
    let (events, messages): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event_id IS NOT NULL), count(*) FILTER (WHERE message_id IS NOT NULL) FROM saga_log",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((events, messages), (events_before, 1));
    // The started saga is on its order; the finished orders keep their history.
    let on_order: bool = sqlx::query_scalar(
        "SELECT saga IS NOT NULL AND next_deadline IS NOT NULL FROM orders WHERE id = $1",
    )
    .bind(old.started)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(on_order);
    let history: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT from_status, to_status FROM order_status_transitions WHERE order_id = $1 ORDER BY id",
    )
    .bind(old.canceled)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        [
            (None, "PROCESSING".into()),
            (Some("PROCESSING".into()), "CANCELED".into())
        ]
    );

    // The new code takes the orders over.
    let launcher = Launcher::new(env).set("STEP_TIMEOUT_MS", 2000);
    let _all = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(SETTLE).await;
    for id in [old.waiting, old.started] {
        let order = api.wait_settled(&id.to_string(), SETTLE).await;
        assert_eq!(order["status"], "APPROVED", "{order}");
    }
    for (id, status) in [(old.approved, "APPROVED"), (old.canceled, "CANCELED")] {
        let (_, order) = api.get_json(&format!("/api/order/{id}")).await;
        assert_eq!(order["status"], status, "finished orders stay as they were");
    }
    // The event MongoDB had not taken before the upgrade reaches it once, with
    // the new ones; the ones it had taken are not sent again.
    let waiting = eventually("the waiting order's events in MongoDB", SETTLE, || async {
        let (_, e) = api
            .get_json(&format!("/api/order/{}/events", old.waiting))
            .await;
        let types: Vec<String> = e["events"]
            .as_array()?
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        types
            .contains(&"status_changed".to_string())
            .then_some(types)
    })
    .await;
    assert_eq!(
        waiting.iter().filter(|t| *t == "order_created").count(),
        1,
        "{waiting:?}"
    );
    // Events the old relay had logged may be copied again (the feed starts at
    // the first one it had not): MongoDB keeps each once.
    let (_, approved) = api
        .get_json(&format!("/api/order/{}/events", old.approved))
        .await;
    let mut ids: Vec<&str> = approved["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all, "no event twice: {approved}");

    // Running the migrations again changes nothing.
    let mut migrate = launcher.spawn("migrate", &[]);
    let status = migrate.exit_within(SETTLE).expect("migrate ends");
    assert!(status.success(), "{}", migrate.log());
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, MIGRATOR.iter().count());
}

#[tokio::test]
async fn a_database_from_the_first_migration_upgrades_and_its_orders_settle() {
    upgrades_and_every_order_settles(FIRST).await;
}

#[tokio::test]
async fn a_database_from_before_the_saga_log_upgrades_and_its_orders_settle() {
    upgrades_and_every_order_settles(BEFORE_THE_SAGA_LOG).await;
}
