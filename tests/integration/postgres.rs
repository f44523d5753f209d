//! The PostgreSQL adapter: orders with their sagas, the saga log and its
//! feeds, idempotency keys, and the state machine enforced in SQL.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ordersaga::adapters::postgres::PgStore;
use ordersaga::application::messages::{MessageType, Topic};
use ordersaga::application::orders::OrderService;
use ordersaga::application::ports::{
    Feed, LogEntry, LogPosition, NewEvent, OrderStore, SagaContext, SagaLog, SagaOutcome,
    SagaStore, SagaWrite, StoreError,
};
use ordersaga::application::relay::{Pass, Relay, RelaySettings};
use ordersaga::domain::order::USER_ID_MAX_CHARS;
use ordersaga::domain::{
    NewOrder, Order, OrderId, OrderStatus, Saga, SagaPolicy, Settlement, StepOutcome, StepState,
    UserId,
};
use uuid::Uuid;

use crate::common::{TestDb, fakes};

fn form(value: &str, user: &str) -> NewOrder {
    NewOrder::parse(Some(value), Some(user), Some("1"), Some("cash")).unwrap()
}

fn service(db: &TestDb) -> OrderService {
    service_on(&db.store)
}

fn service_on(store: &PgStore) -> OrderService {
    OrderService::new(
        Arc::new(store.clone()),
        Arc::new(fakes::Log::default()),
        chrono::Duration::hours(1),
    )
}

/// Places one valid order and returns it.
async fn placed_order(db: &TestDb) -> Order {
    service(db)
        .place(form("1", "u"), "c", None)
        .await
        .unwrap()
        .order
}

/// Places `n` valid orders for user "u", with values 1..=n; returns them in order.
async fn place_orders(svc: &OrderService, n: u32) -> Vec<Order> {
    let mut placed = Vec::new();
    for i in 1..=n {
        let order = svc.place(form(&i.to_string(), "u"), "c", None).await;
        placed.push(order.unwrap().order);
    }
    placed
}

async fn count(db: &TestDb, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db.pool()).await.unwrap()
}

#[tokio::test]
async fn placing_an_order_writes_the_order_its_message_and_its_event_together() {
    let db = TestDb::new().await;
    let placed = service(&db)
        .place(form("1000", "u1"), "corr-1", None)
        .await
        .unwrap();
    assert!(placed.created);
    let order = placed.order;
    assert_eq!(order.status, OrderStatus::Processing);

    let stored = db.store.get(order.id).await.unwrap().expect("stored");
    assert_eq!(stored.value.to_string(), "1000.00");
    assert_eq!(stored.status, OrderStatus::Processing);

    // One log row: the order_created event carrying the order-created message.
    let (event, topic, mtype, key, corr, payload): (
        String,
        String,
        String,
        Uuid,
        String,
        serde_json::Value,
    ) = sqlx::query_as(
        "SELECT event_type, topic, message_type, order_id, correlation_id, message FROM saga_log",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(event, "order_created");
    assert_eq!(topic, "orders.created");
    assert_eq!(mtype, "order-created");
    assert_eq!(key, order.id.0);
    assert_eq!(corr, "corr-1");
    assert_eq!(payload["value"], "1000.00");
    assert_eq!(count(&db, "SELECT count(*) FROM saga_log").await, 1);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM order_status_transitions WHERE to_status = 'PROCESSING'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn listing_is_newest_first_with_the_true_total_and_a_stable_tie_break() {
    let db = TestDb::new().await;
    let svc = service(&db);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            svc.place(form(&format!("{}", i + 1), "lister"), "c", None)
                .await
                .unwrap()
                .order
                .id,
        );
    }
    svc.place(form("9", "someone-else"), "c", None)
        .await
        .unwrap();
    // Two orders with the same created_at: the later insert comes first.
    sqlx::query("UPDATE orders SET created_at = '2030-01-01T00:00:00Z' WHERE id = ANY($1)")
        .bind(vec![ids[0].0, ids[1].0])
        .execute(db.pool())
        .await
        .unwrap();

    let user = UserId::parse("lister").unwrap();
    let page = db.store.list_for_user(&user, 0, 100).await.unwrap();
    assert_eq!(page.total, 5);
    let got: Vec<OrderId> = page.orders.iter().map(|o| o.id).collect();
    assert_eq!(got, vec![ids[1], ids[0], ids[4], ids[3], ids[2]]);

    let page = db.store.list_for_user(&user, 1, 2).await.unwrap();
    assert_eq!(
        page.total, 5,
        "total is the user's count, not the page size"
    );
    assert_eq!(
        page.orders.iter().map(|o| o.id).collect::<Vec<_>>(),
        vec![ids[0], ids[4]]
    );

    let page = db.store.list_for_user(&user, 50, 10).await.unwrap();
    assert_eq!((page.total, page.orders.len()), (5, 0));
}

#[tokio::test]
async fn an_idempotency_key_replays_the_same_request_and_refuses_a_different_one() {
    let db = TestDb::new().await;
    let svc = service(&db);
    let first = svc
        .place(form("10", "u"), "c", Some("key-1"))
        .await
        .unwrap();
    assert!(first.created);
    let again = svc
        .place(form("10.00", "u"), "c", Some("key-1"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.order.id, first.order.id);
    let other = svc.place(form("11", "u"), "c", Some("key-1")).await;
    assert!(
        matches!(other, Err(ordersaga::application::AppError::Conflict(_))),
        "{other:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM saga_log").await, 1);

    // An expired key may be used again, for anything.
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(db.pool())
        .await
        .unwrap();
    let reused = svc
        .place(form("12", "u"), "c", Some("key-1"))
        .await
        .unwrap();
    assert!(reused.created);
    assert_ne!(reused.order.id, first.order.id);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_order() {
    let db = TestDb::new().await;
    let svc = Arc::new(service(&db));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.place(form("5", "u"), "c", Some("same")).await.unwrap() })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().order.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, 1);
}

#[tokio::test]
async fn terminal_statuses_are_final_in_sql_whatever_the_client() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    sqlx::query("UPDATE orders SET status = 'APPROVED', updated_at = now() WHERE id = $1")
        .bind(order.id.0)
        .execute(db.pool())
        .await
        .unwrap();
    for sql in [
        "UPDATE orders SET status = 'CANCELED', cancel_reason = 'USER_INVALID' WHERE id = $1",
        "UPDATE orders SET status = 'PROCESSING' WHERE id = $1",
    ] {
        let err = sqlx::query(sql)
            .bind(order.id.0)
            .execute(db.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot go from APPROVED"), "{err}");
    }
    let err = sqlx::query("UPDATE orders SET cancel_reason = 'USER_INVALID' WHERE id = $1")
        .bind(order.id.0)
        .execute(db.pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("can no longer change"), "{err}");
    // A change that keeps the rule goes through.
    sqlx::query("UPDATE orders SET updated_at = now() WHERE id = $1")
        .bind(order.id.0)
        .execute(db.pool())
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO orders (id, user_id, value, installment, method, status, cancel_reason, correlation_id, created_at, updated_at)
                           VALUES ($1, 'u', 1, 1, 'cash', 'APPROVED', NULL, '', now(), now())")
        .bind(Uuid::new_v4())
        .execute(db.pool())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("must be created PROCESSING"),
        "{err}"
    );
    let transitions: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT from_status, to_status FROM order_status_transitions WHERE order_id = $1 ORDER BY id")
            .bind(order.id.0)
            .fetch_all(db.pool())
            .await
            .unwrap();
    // The history is the saga log's: a client that changes the row itself
    // (as here) is held to the state machine, but writes no history.
    assert_eq!(transitions, vec![(None, "PROCESSING".into())]);
}

/// Runs `sql`, which every CHECK (of a table or a domain) must let through.
async fn accepted_by_the_checks(db: &TestDb, sql: String) {
    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .execute(db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs `sql`, which a CHECK (of a table or a domain) must refuse.
async fn refused_by_a_check(db: &TestDb, sql: String) {
    let err = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .execute(db.pool())
        .await
        .expect_err(&sql);
    let code = err.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("23514"), "{sql}: {err}");
}

/// The rules on a field's own value (the columns' domains) and on the parts of
/// a saga-log row hold whatever the client, as the status rule does.
#[tokio::test]
async fn the_database_holds_every_field_and_log_row_to_its_rule() {
    let db = TestDb::new().await;
    let accepted = |sql: String| accepted_by_the_checks(&db, sql);
    let refused = |sql: String| refused_by_a_check(&db, sql);
    let valid = [
        ("user_id", "'u'"),
        ("value", "1"),
        ("installment", "1"),
        ("method", "'cash'"),
        ("status", "'PROCESSING'"),
    ];
    // The order `valid` describes, with `column` set to `literal` instead.
    let insert = |column: &str, literal: &str| {
        let values = valid.map(|(c, v)| if c == column { literal } else { v });
        format!(
            "INSERT INTO orders (id, user_id, value, installment, method, status, correlation_id, created_at, updated_at)
             VALUES (gen_random_uuid(), {}, '', now(), now())",
            values.join(", ")
        )
    };
    // The longest user_id the domain takes (`UserId`) is the longest the database takes.
    let longest = format!("repeat('u', {USER_ID_MAX_CHARS})");
    let too_long = format!("repeat('u', {})", USER_ID_MAX_CHARS + 1);
    accepted(insert("user_id", "'u'")).await;
    accepted(insert("user_id", &longest)).await;
    for (column, literal) in [
        ("user_id", "''"),
        ("user_id", too_long.as_str()),
        ("value", "0"),
        ("value", "-1"),
        ("installment", "0"),
        ("method", "'cheque'"),
        ("status", "'LOST'"),
    ] {
        refused(insert(column, literal)).await;
    }
    let order = placed_order(&db).await;
    refused(format!(
        "UPDATE orders SET status = 'LOST' WHERE id = '{}'",
        order.id
    ))
    .await;
    refused(format!(
        "UPDATE orders SET method = 'cheque' WHERE id = '{}'",
        order.id
    ))
    .await;

    let log = "INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload, message_id, topic, message_type, correlation_id, message)";
    let event = "gen_random_uuid(), 'order_created', '{}'";
    let message = "gen_random_uuid(), 'orders.created', 'order-created', 'c', '{}'";
    // An event, a message, both.
    for values in [
        format!("{event}, NULL, NULL, NULL, NULL, NULL"),
        format!("NULL, NULL, NULL, {message}"),
        format!("{event}, {message}"),
    ] {
        accepted(format!("{log} VALUES (gen_random_uuid(), now(), {values})")).await;
    }
    for values in [
        "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL".to_owned(),
        format!("gen_random_uuid(), NULL, '{{}}', {message}"),
        format!("{event}, gen_random_uuid(), 'orders.created', NULL, 'c', '{{}}'"),
    ] {
        refused(format!("{log} VALUES (gen_random_uuid(), now(), {values})")).await;
    }
}

/// The status rule lives in the domain (`OrderStatus::can_become`); the
/// database's trigger repeats it as a backstop. They must agree on every move.
#[tokio::test]
async fn the_database_guards_the_status_rule_of_the_domain() {
    let db = TestDb::new().await;
    for from in OrderStatus::ALL {
        for to in OrderStatus::ALL.into_iter().filter(|to| *to != from) {
            let order = placed_order(&db).await;
            let reason = |s: OrderStatus| (s == OrderStatus::Canceled).then_some("USER_INVALID");
            let set = "UPDATE orders SET status = $2, cancel_reason = $3 WHERE id = $1";
            if from != OrderStatus::Processing {
                sqlx::query(set)
                    .bind(order.id.0)
                    .bind(from.as_str())
                    .bind(reason(from))
                    .execute(db.pool())
                    .await
                    .unwrap();
            }
            let moved = sqlx::query(set)
                .bind(order.id.0)
                .bind(to.as_str())
                .bind(reason(to))
                .execute(db.pool())
                .await;
            assert_eq!(
                moved.is_ok(),
                from.can_become(to),
                "{from} -> {to}: the database said {moved:?}"
            );
        }
    }
}

/// The saga stored on order `id`.
async fn stored_saga(db: &TestDb, id: OrderId) -> Saga {
    let saga = sqlx::query_scalar("SELECT saga FROM orders WHERE id = $1")
        .bind(id.0)
        .fetch_one(db.pool())
        .await
        .unwrap();
    serde_json::from_value(saga).unwrap()
}

fn start_decision(ctx: &SagaContext) -> Option<SagaWrite> {
    let (saga, _) = Saga::start(Utc::now(), &SagaPolicy::default());
    (ctx.saga.is_none()).then_some(SagaWrite {
        saga,
        settle: None,
        entries: vec![],
    })
}

/// Two processes decide about one order at once: the one that writes
/// second decided on a state that is gone, so its write does not happen and
/// its decision is taken again on what the first wrote. No update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_on_a_state_another_process_changed_is_taken_again() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    // Two stores on one database, as two orchestrator processes.
    let store = db.store.clone();
    let elsewhere = PgStore::from_pool(db.pool().clone());
    let outcome = store
        .transact(order.id, Box::new(start_decision))
        .await
        .unwrap();
    assert_eq!(outcome, SagaOutcome::Applied);
    let slow_mark = chrono::DateTime::from_timestamp(1_000_000_000, 0).unwrap();
    let quick_mark = StepState::Done {
        outcome: StepOutcome::Passed,
    };
    // Each decision keeps the other's mark: the slow one marks `started_at`,
    // the quick one the user step. The slow one, once it has seen the
    // order, waits until the quick one has written.
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = std::sync::Mutex::new(Some(entered_tx));
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let slow = tokio::spawn({
        let (store, seen) = (store.clone(), seen.clone());
        async move {
            let decide = move |ctx: &SagaContext| -> Option<SagaWrite> {
                let mut saga = ctx.saga.clone().unwrap();
                seen.lock().unwrap().push(saga.user);
                if let Some(tx) = entered_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                    let _ = wait.lock().unwrap().recv();
                }
                saga.started_at = slow_mark;
                Some(SagaWrite {
                    saga,
                    settle: None,
                    entries: vec![],
                })
            };
            store.transact(order.id, Box::new(decide)).await
        }
    });
    entered.await.unwrap();
    let quick = move |ctx: &SagaContext| -> Option<SagaWrite> {
        let mut saga = ctx.saga.clone().unwrap();
        saga.user = quick_mark;
        Some(SagaWrite {
            saga,
            settle: None,
            entries: vec![],
        })
    };
    assert_eq!(
        elsewhere.transact(order.id, Box::new(quick)).await.unwrap(),
        SagaOutcome::Applied
    );
    go.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), SagaOutcome::Applied);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "the slow decision was taken twice: {seen:?}");
    assert_eq!(
        seen[1], quick_mark,
        "the second time on what the quick one wrote"
    );
    let saga = stored_saga(&db, order.id).await;
    assert_eq!((saga.started_at, saga.user), (slow_mark, quick_mark));
}

/// Starts `busy`'s saga with a decision that holds the store's writer
/// inside it; returns once the writer is held, with the decision's outcome
/// to come and the sender that lets it go on.
async fn hold_the_writer(
    store: &PgStore,
    busy: OrderId,
) -> (
    tokio::task::JoinHandle<Result<SagaOutcome, StoreError>>,
    std::sync::mpsc::Sender<()>,
) {
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = std::sync::Mutex::new(Some(entered_tx));
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Mutex::new(held);
    let hold = move |ctx: &SagaContext| {
        if let Some(tx) = entered_tx.lock().unwrap().take() {
            let _ = tx.send(());
            let _ = held.lock().unwrap().recv();
        }
        start_decision(ctx)
    };
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.transact(busy, Box::new(hold)).await }
    });
    entered.await.unwrap();
    (first, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_queued_behind_a_busy_writer_commit_together_each_as_if_alone() {
    use futures::poll;
    let db = TestDb::new().await;
    // One writer, so every decision queued while it is busy lands in its next batch.
    let store = PgStore::from_pool(db.pool().clone()).with_saga_writers(1, 64);
    let mut orders = Vec::new();
    for _ in 0..4 {
        orders.push(placed_order(&db).await.id);
    }
    let [busy, good, bad, twice] = orders[..] else {
        unreachable!()
    };
    // The writer is held inside a decision until everything else is queued.
    let (first, release) = hold_the_writer(&store, busy).await;

    let seen = Arc::new(std::sync::Mutex::new(None));
    let look = {
        let seen = seen.clone();
        move |ctx: &SagaContext| {
            *seen.lock().unwrap() = Some(ctx.saga.is_some());
            None
        }
    };
    let mut queued = vec![
        store.transact(good, Box::new(start_decision)),
        store.transact(
            bad,
            Box::new(|_: &SagaContext| panic!("a decision that fails")),
        ),
        store.transact(twice, Box::new(start_decision)),
        // The same order again: decided after the one before, on what it decided.
        store.transact(twice, Box::new(look)),
        // The same start again (a redelivered order-created): the saga exists.
        store.transact(twice, Box::new(start_decision)),
    ];
    for f in &mut queued {
        assert!(poll!(f).is_pending());
    }
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), SagaOutcome::Applied);
    let outcomes = futures::future::join_all(queued).await;
    assert_eq!(outcomes[0].as_ref().unwrap(), &SagaOutcome::Applied);
    assert!(outcomes[1].is_err(), "the panicking decision fails alone");
    assert_eq!(outcomes[2].as_ref().unwrap(), &SagaOutcome::Applied);
    assert_eq!(outcomes[3].as_ref().unwrap(), &SagaOutcome::NothingToDo);
    assert_eq!(*seen.lock().unwrap(), Some(true));
    assert_eq!(outcomes[4].as_ref().unwrap(), &SagaOutcome::NothingToDo);

    // The good decisions of the batch were written by one transaction, each order once.
    let writers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM orders WHERE id = ANY($1)")
            .bind(vec![good.0, twice.0])
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(writers, 1);
    // The failed decision left nothing behind: it can be retried.
    assert_eq!(
        count(&db, "SELECT count(*) FROM orders WHERE saga IS NOT NULL").await,
        3,
        "busy, good and twice have sagas; bad has none"
    );
    let retried = store.transact(bad, Box::new(start_decision)).await.unwrap();
    assert_eq!(retried, SagaOutcome::Applied);
}

/// Both replies of an order in one batch: decided one after the other, the
/// order written once (one row version), every entry logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_decisions_about_one_order_in_a_batch_write_it_once() {
    use futures::poll;
    let db = TestDb::new().await;
    let store = PgStore::from_pool(db.pool().clone()).with_saga_writers(1, 64);
    let (busy, order) = (placed_order(&db).await.id, placed_order(&db).await.id);
    store
        .transact(order, Box::new(start_decision))
        .await
        .unwrap();
    let before: String = sqlx::query_scalar("SELECT xmin::text FROM orders WHERE id = $1")
        .bind(order.0)
        .fetch_one(db.pool())
        .await
        .unwrap();
    let (first, release) = hold_the_writer(&store, busy).await;
    let reply = |step: &'static str| {
        move |ctx: &SagaContext| -> Option<SagaWrite> {
            let event = NewEvent::new(
                ctx.order.id,
                ordersaga::domain::SagaEventKind::ReplyReceived,
                serde_json::json!({ "step": step }),
                Utc::now(),
            );
            Some(SagaWrite {
                saga: ctx.saga.clone().unwrap(),
                settle: None,
                entries: vec![LogEntry::event(event)],
            })
        }
    };
    let mut both = vec![
        store.transact(order, Box::new(reply("user"))),
        store.transact(order, Box::new(reply("balance"))),
    ];
    for f in &mut both {
        assert!(poll!(f).is_pending());
    }
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    for outcome in futures::future::join_all(both).await {
        assert_eq!(outcome.unwrap(), SagaOutcome::Applied);
    }
    let (after, versions): (String, i64) = sqlx::query_as(
        "SELECT o.xmin::text, (SELECT count(DISTINCT l.txid) FROM saga_log l
                                WHERE l.order_id = o.id AND l.event_type = 'reply_received')
           FROM orders o WHERE o.id = $1",
    )
    .bind(order.0)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_ne!(after, before, "written");
    assert_eq!(versions, 1, "both replies logged by one transaction");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM saga_log WHERE event_type = 'reply_received'"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn a_redelivered_start_changes_nothing_and_an_unknown_order_is_said() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    let first = db
        .store
        .transact(order.id, Box::new(start_decision))
        .await
        .unwrap();
    assert_eq!(first, SagaOutcome::Applied);
    let again = db
        .store
        .transact(order.id, Box::new(start_decision))
        .await
        .unwrap();
    assert_eq!(again, SagaOutcome::NothingToDo, "the saga has started");
    let unknown = db
        .store
        .transact(OrderId::new(), Box::new(start_decision))
        .await
        .unwrap();
    assert_eq!(unknown, SagaOutcome::UnknownOrder);
}

/// In a process that runs the API and the orchestrator, a saga starts on
/// what the order's insert left: one write, no read of the order.
#[tokio::test]
async fn a_saga_starts_without_a_read_in_the_process_that_placed_its_order() {
    let db = TestDb::new().await;
    // One connection: every statement of the store shows in its prepared statements.
    let pool = db.pool_of(1).await;
    let store = PgStore::from_pool(pool.clone());
    let svc = service_on(&store);
    // Until a store has taken a saga decision it keeps nothing of the orders
    // it places (the API alone would keep them all): the first start reads.
    let first = place_orders(&svc, 1).await.remove(0);
    let start = store.transact(first.id, Box::new(start_decision)).await;
    assert_eq!(start.unwrap(), SagaOutcome::Applied);
    let later = place_orders(&svc, 3).await;
    for order in &later {
        let start = store.transact(order.id, Box::new(start_decision)).await;
        assert_eq!(start.unwrap(), SagaOutcome::Applied);
    }
    let reads: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(generic_plans + custom_plans), 0)::bigint
           FROM pg_prepared_statements WHERE statement ~ 'AS version\\s+FROM orders'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reads, 1, "only the first order was read");
    let started: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE saga IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(started, 4);
}

/// What a store remembers of the orders it placed is a hint: when another
/// process started an order's saga, a reply decided here sees the started
/// saga, not the unstarted one it remembered (which would drop the reply as
/// early: a decision that writes nothing on what was remembered is taken
/// again on a fresh read).
#[tokio::test]
async fn a_reply_about_an_order_placed_here_but_started_elsewhere_sees_the_started_saga() {
    let db = TestDb::new().await;
    let (here, elsewhere) = (db.store.clone(), PgStore::from_pool(db.pool().clone()));
    // This store's saga writers run, so it remembers the orders it places.
    let first = placed_order(&db).await;
    let start = here.transact(first.id, Box::new(start_decision)).await;
    assert_eq!(start.unwrap(), SagaOutcome::Applied);
    let order = placed_order(&db).await;
    let start = elsewhere.transact(order.id, Box::new(start_decision)).await;
    assert_eq!(start.unwrap(), SagaOutcome::Applied);
    let passed = StepState::Done {
        outcome: StepOutcome::Passed,
    };
    // A user-step reply: nothing to do without a saga.
    let reply = move |ctx: &SagaContext| -> Option<SagaWrite> {
        let mut saga = ctx.saga.clone()?;
        saga.user = passed;
        Some(SagaWrite {
            saga,
            settle: None,
            entries: vec![],
        })
    };
    let outcome = here.transact(order.id, Box::new(reply)).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Applied);
    let saga = stored_saga(&db, order.id).await;
    assert_eq!(saga.user, passed);
}

#[tokio::test]
async fn settling_writes_the_status_and_the_log_atomically_and_only_once() {
    let db = TestDb::new().await;
    let order = service(&db)
        .place(form("1", "u"), "corr", None)
        .await
        .unwrap()
        .order;
    db.store
        .transact(order.id, Box::new(start_decision))
        .await
        .unwrap();
    let settle = |ctx: &SagaContext| -> Option<SagaWrite> {
        let mut saga = ctx.saga.clone().unwrap();
        saga.settlement = Some(Settlement::Approved);
        let msg = ordersaga::application::messages::OutboundMessage::new(
            Uuid::new_v4(),
            Topic::OrdersSettled,
            ctx.order.id,
            MessageType::OrderSettled,
            &ctx.correlation_id,
            &serde_json::json!({}),
        );
        let changed = NewEvent::new(
            ctx.order.id,
            ordersaga::domain::SagaEventKind::StatusChanged,
            serde_json::json!({"from": "PROCESSING", "to": "APPROVED"}),
            Utc::now(),
        );
        Some(SagaWrite {
            saga,
            settle: Some(Settlement::Approved),
            entries: vec![LogEntry::with_message(changed, msg)],
        })
    };
    assert_eq!(
        db.store.transact(order.id, Box::new(settle)).await.unwrap(),
        SagaOutcome::Applied
    );
    let stored: Order = db.store.get(order.id).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Approved);
    let corr: String =
        sqlx::query_scalar("SELECT correlation_id FROM saga_log WHERE topic = 'orders.settled'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(corr, "corr", "the order's correlation id follows the saga");
    // A second settlement is refused and writes nothing.
    assert!(db.store.transact(order.id, Box::new(settle)).await.is_err());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM saga_log WHERE topic = 'orders.settled'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn due_finds_passed_deadlines_and_orphaned_orders() {
    let db = TestDb::new().await;
    let svc = service(&db);
    let orphan = svc.place(form("1", "u"), "c", None).await.unwrap().order;
    let started = svc.place(form("2", "u"), "c", None).await.unwrap().order;
    db.store
        .transact(started.id, Box::new(start_decision))
        .await
        .unwrap();

    let now = Utc::now();
    let none = db
        .store
        .due(now, now - chrono::Duration::hours(1), 10)
        .await
        .unwrap();
    assert!(none.is_empty(), "nothing due yet: {none:?}");
    let later = now + chrono::Duration::hours(1);
    let mut due = db.store.due(later, later, 10).await.unwrap();
    due.sort();
    let mut expected = vec![orphan.id, started.id];
    expected.sort();
    assert_eq!(due, expected);
}

/// A relay on `store` with test fakes for the broker and the event log.
fn relay_on(
    store: &PgStore,
    publisher: &Arc<fakes::Publisher>,
    log: &Arc<fakes::Log>,
    lease: Duration,
) -> Relay {
    Relay::new(
        Arc::new(store.clone()),
        publisher.clone(),
        log.clone(),
        RelaySettings {
            batch_size: 7,
            lease,
            ..RelaySettings::default()
        },
    )
}

/// Rows of the log after `feed`'s recorded position, whatever the feed takes of them.
async fn rows_after(store: &PgStore, feed: Feed) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM saga_log l, relay_feeds f
          WHERE f.feed = $1 AND (l.txid, l.seq) > (f.after_txid, f.after_seq)",
    )
    .bind(feed.as_str())
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// Passes over `feed` until nothing waits in it (rows are read once every
/// writing transaction older than them has ended, in any database of the
/// server: a test beside this one may hold that back for a moment); returns
/// how many messages or events went.
async fn drain(relay: &Relay, store: &PgStore, feed: Feed) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    loop {
        match relay.pass(feed).await.unwrap() {
            Pass::Relayed { rows, sent: n, .. } if rows > 0 => sent += n,
            _ if rows_after(store, feed).await == 0 => return sent,
            _ => {
                assert!(std::time::Instant::now() < deadline, "{feed:?} not drained");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_feed_moves_past_messages_only_once_the_broker_has_them() {
    let db = TestDb::new().await;
    place_orders(&service(&db), 3).await;
    let (down, log) = (
        Arc::new(fakes::Publisher::failing()),
        Arc::new(fakes::Log::default()),
    );
    let relay = relay_on(&db.store, &down, &log, Duration::from_secs(3));
    // (Rows are read once every writing transaction older than them has
    // ended, in any database of the server: tests running beside this one
    // may hold that back for a moment.)
    crate::common::eventually("the broker's refusal", Duration::from_secs(10), || async {
        relay.pass(Feed::Messages).await.is_err().then_some(())
    })
    .await;
    assert_eq!(
        db.store.backlog(Feed::Messages, None).await.unwrap(),
        3,
        "kept while the broker is down"
    );
    down.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(drain(&relay, &db.store, Feed::Messages).await, 3);
    assert_eq!(db.store.backlog(Feed::Messages, None).await.unwrap(), 0);
    let sent = down.sent();
    assert!(sent.iter().all(|m| m.topic == Topic::OrdersCreated));
    // The log itself is never changed by relaying: three rows, still there.
    assert_eq!(count(&db, "SELECT count(*) FROM saga_log").await, 3);
    // The events feed has a position of its own: its three events still wait.
    assert_eq!(db.store.backlog(Feed::Events, None).await.unwrap(), 3);
}

/// While a relay holds the messages feed, the messages its own store
/// commits are handed to it: it sends them without reading them, as a read
/// would have given them, and its read then moves past their rows without
/// sending them again.
#[tokio::test]
async fn a_relay_sends_what_its_own_store_committed_without_reading_it() {
    let db = TestDb::new().await;
    let (publisher, log) = (
        Arc::new(fakes::Publisher::default()),
        Arc::new(fakes::Log::default()),
    );
    let relay = relay_on(&db.store, &publisher, &log, Duration::from_secs(3));
    // The relay takes the feed (the log is empty).
    assert_eq!(drain(&relay, &db.store, Feed::Messages).await, 0);
    place_orders(&service(&db), 3).await;
    assert_eq!(relay.hand_over().await.unwrap().sent, 3);
    let mut sent = publisher.sent();
    let mut read: Vec<_> = crate::common::eventually(
        "the rows below the horizon",
        Duration::from_secs(10),
        || async {
            let batch = db
                .store
                .read_log(Feed::Messages, LogPosition(0, 0), 10)
                .await
                .unwrap();
            (batch.rows.len() == 3).then_some(batch.rows)
        },
    )
    .await
    .into_iter()
    .filter_map(|r| r.message)
    .collect();
    sent.sort_by_key(|m| m.message_id);
    read.sort_by_key(|m| m.message_id);
    assert_eq!(sent, read, "as a read gives them");
    assert_eq!(
        drain(&relay, &db.store, Feed::Messages).await,
        0,
        "not again"
    );
    assert_eq!(publisher.sent().len(), 3);
}

#[tokio::test]
async fn events_go_to_the_event_log_once_it_took_them() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    let (publisher, log) = (
        Arc::new(fakes::Publisher::default()),
        Arc::new(fakes::Log::default()),
    );
    let relay = relay_on(&db.store, &publisher, &log, Duration::from_secs(3));
    log.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    crate::common::eventually(
        "the event log's refusal",
        Duration::from_secs(10),
        || async { relay.pass(Feed::Events).await.is_err().then_some(()) },
    )
    .await;
    assert_eq!(db.store.backlog(Feed::Events, None).await.unwrap(), 1);
    log.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(drain(&relay, &db.store, Feed::Events).await, 1);
    let logged = log.events.lock().unwrap().clone();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].order_id, order.id);
    assert_eq!(db.store.backlog(Feed::Events, None).await.unwrap(), 0);
}

/// The point of reading in (txid, seq) order under the snapshot's horizon: a
/// transaction that took its rows' numbers first but commits last is not
/// skipped by a relay that has already read what committed before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_commits_after_a_later_one_is_never_skipped() {
    let db = TestDb::new().await;
    let early = OrderId::new();
    // This transaction writes a log row now and commits only at the end.
    let mut slow = db.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO orders (id, user_id, value, installment, method, status, correlation_id, created_at, updated_at)
         VALUES ($1, 'slow', 1, 1, 'cash', 'PROCESSING', 'c', now(), now())",
    )
    .bind(early.0)
    .execute(&mut *slow)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload)
         VALUES ($1, now(), gen_random_uuid(), 'order_created', '{}')",
    )
    .bind(early.0)
    .execute(&mut *slow)
    .await
    .unwrap();
    // Meanwhile another order is placed and committed, with a later number.
    let late = placed_order(&db).await;
    let (publisher, log) = (
        Arc::new(fakes::Publisher::default()),
        Arc::new(fakes::Log::default()),
    );
    let relay = relay_on(&db.store, &publisher, &log, Duration::from_secs(3));
    assert_eq!(
        relay.pass(Feed::Events).await.unwrap(),
        Pass::Relayed {
            rows: 0,
            sent: 0,
            held_back: true
        },
        "nothing is read past a transaction still running, and the read says a row waits"
    );
    slow.commit().await.unwrap();
    assert_eq!(drain(&relay, &db.store, Feed::Events).await, 2);
    let orders: Vec<OrderId> = log
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.order_id)
        .collect();
    assert_eq!(orders, [early, late.id], "both, in commit-safe order");
}

/// The log is read in the numbers' order of (txid, seq), not their text's:
/// where a txid gains a digit (at ten million, say), a full batch takes the
/// earlier rows first, so its position never passes a row it did not read.
#[tokio::test]
async fn a_full_batch_takes_the_earliest_rows_where_a_txid_gains_a_digit() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    // Rows as transactions 99, 100 and 101 would have written them (long
    // finished: every running transaction's id is larger).
    sqlx::query(
        "INSERT INTO saga_log (txid, order_id, occurred_at, event_id, event_type, payload)
         SELECT t::text::xid8, $1, now(), gen_random_uuid(), 'reply_received', '{}'
           FROM unnest(ARRAY[101, 100, 99]) AS t",
    )
    .bind(order.id.0)
    .execute(db.pool())
    .await
    .unwrap();
    let txids = |rows: Vec<ordersaga::application::ports::LogRow>| {
        rows.iter().map(|r| r.position.0).collect::<Vec<_>>()
    };
    let first = db
        .store
        .read_log(Feed::Events, LogPosition(0, 0), 2)
        .await
        .unwrap();
    assert_eq!(txids(first.rows.clone()), [99, 100]);
    let next = db
        .store
        .read_log(Feed::Events, first.rows[1].position, 2)
        .await
        .unwrap();
    assert_eq!(txids(next.rows)[0], 101, "then the next, in order");
}

/// The statements every order runs (the saga's read and writes, the relays'
/// read) reuse their connection's plan, not plan again for their values:
/// planning cost PostgreSQL as much as running them, or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statements_of_every_order_are_planned_once_per_connection() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    // A log of `rows` more rows, analyzed, as a relay finds it.
    let grow = |rows: u32| {
        let pool = db.pool().clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload)
                 SELECT '{}', now(), gen_random_uuid(), 'reply_received', '{{}}' FROM generate_series(1, {rows});
                 ANALYZE saga_log;",
                order.id.0
            )))
            .execute(&pool)
            .await
            .unwrap();
            let (txid, seq): (String, i64) = sqlx::query_as(
                "SELECT txid::text, seq FROM saga_log ORDER BY txid DESC, seq DESC LIMIT 1",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (txid.parse::<u64>().unwrap(), seq)
        }
    };
    let pool = db.pool_of(1).await;
    // One saga writer, so decisions queued while it is busy make one batch.
    let store = PgStore::from_pool(pool.clone()).with_saga_writers(1, 64);
    // Reads near the log's end in batches of 500, as a relay reads it: there,
    // a plan for the values would look cheaper than the general one.
    let read = |(txid, seq): (u64, i64), n: i64| {
        let feed = if n % 2 == 0 {
            Feed::Events
        } else {
            Feed::Messages
        };
        let store = store.clone();
        async move {
            store
                .read_log(feed, LogPosition(txid, seq - 20 + n), 500)
                .await
                .unwrap();
        }
    };
    const RUNS: i64 = 12;
    let end = grow(10_000).await;
    for n in 0..RUNS {
        read(end, n).await;
    }
    // The log grows twentyfold and its statistics with it: the plan is made
    // again, and must still be kept (a general plan costed higher than the
    // custom plans averaged so far sent PostgreSQL back to planning each read).
    let end = grow(200_000).await;
    for n in 0..RUNS {
        read(end, n).await;
    }
    // Sagas started one at a time: each reads its order, then writes it
    // (the one-order read and write).
    for order in place_orders(&service_on(&store), RUNS as u32).await {
        let outcome = store.transact(order.id, Box::new(start_decision)).await;
        assert_eq!(outcome.unwrap(), SagaOutcome::Applied);
    }
    // Two sagas at a time, queued while the writer is busy, of orders another
    // store placed: the batch read and write.
    let elsewhere = service_on(&PgStore::from_pool(pool.clone()));
    for _ in 0..RUNS {
        let orders = place_orders(&elsewhere, 3).await;
        let (first, release) = hold_the_writer(&store, orders[0].id).await;
        let mut queued = vec![
            store.transact(orders[1].id, Box::new(start_decision)),
            store.transact(orders[2].id, Box::new(start_decision)),
        ];
        for f in &mut queued {
            assert!(futures::poll!(f).is_pending());
        }
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), SagaOutcome::Applied);
        for outcome in futures::future::join_all(queued).await {
            assert_eq!(outcome.unwrap(), SagaOutcome::Applied);
        }
    }
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
          WHERE statement ~ 'pg_snapshot_xmin|UPDATE orders o|AS version\\s+FROM orders'
            AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    // The relays' read; the saga's reads and writes of one order and of a batch.
    assert_eq!(plans.len(), 5, "{plans:?}");
    for (statement, generic, custom) in plans {
        // PostgreSQL makes five custom plans before it weighs the generic one.
        assert!(
            custom <= 5,
            "{custom} custom plans, {generic} generic: {statement}"
        );
        // The relays read twice a round; a one-order read or write (`id =
        // $1`) runs for the single sagas and for each batch's held order.
        let runs = if statement.contains("pg_snapshot_xmin") || statement.contains("id = $1") {
            2 * RUNS
        } else {
            RUNS
        };
        assert_eq!(generic + custom, runs, "{statement}");
    }
}

/// The hot path's statements keep their connection for the next one
/// (`warm.rs`), unchecked; one kept past a second idle goes back to the
/// pool, which checks it: a connection the server closed while the service
/// was quiet is replaced before a statement meets it.
#[tokio::test]
async fn a_kept_connection_closed_while_idle_is_replaced_before_a_statement_meets_it() {
    let db = TestDb::new().await;
    let pool = db.pool_of(3).await;
    let store = PgStore::from_pool(pool);
    store
        .read_log(Feed::Events, LogPosition(0, 0), 10)
        .await
        .unwrap();
    // The server closes every connection to this database but this one.
    let closed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert!(!closed.is_empty() && closed.iter().all(|c| *c));
    // Idle long enough to go back to the pool (CHECK_AFTER_IDLE).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    store
        .read_log(Feed::Events, LogPosition(0, 0), 10)
        .await
        .expect("a new connection");
}

#[tokio::test]
async fn one_relay_at_a_time_follows_a_feed_and_another_takes_over_when_its_lease_ends() {
    let db = TestDb::new().await;
    place_orders(&service(&db), 20).await;
    let (a, b, log) = (
        Arc::new(fakes::Publisher::default()),
        Arc::new(fakes::Publisher::default()),
        Arc::new(fakes::Log::default()),
    );
    let lease = Duration::from_millis(300);
    let first = relay_on(&db.store, &a, &log, lease);
    let second = relay_on(&db.store, &b, &log, lease);
    // When the first relay's last pass began: it held the feed then for two
    // thirds of the lease at least (a pass renews a lease a third old).
    let last_pass = std::sync::Mutex::new(std::time::Instant::now());
    crate::common::eventually(
        "the first relay's first batch",
        Duration::from_secs(10),
        || async {
            *last_pass.lock().unwrap() = std::time::Instant::now();
            matches!(
                first.pass(Feed::Messages).await.unwrap(),
                Pass::Relayed { sent: 7, .. }
            )
            .then_some(())
        },
    )
    .await;
    assert_eq!(second.pass(Feed::Messages).await.unwrap(), Pass::Held);
    // The first relay stops (its process died): once its lease ends, the second goes on from the recorded position.
    let started = *last_pass.lock().unwrap();
    let taken =
        crate::common::eventually("the feed taken over", Duration::from_secs(10), || async {
            match second.pass(Feed::Messages).await.unwrap() {
                Pass::Held => None,
                taken => Some(taken),
            }
        })
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "not before the lease ended"
    );
    assert!(matches!(taken, Pass::Relayed { sent: 7, .. }));
    drain(&second, &db.store, Feed::Messages).await;
    // The second relay went on from the position the first had recorded:
    // everything went out, and the first's last batch, never recorded, went
    // again (consumers drop those copies). (The first may have recorded a
    // part before it: when another test's open transaction held the log's
    // horizon back, its first passes saw fewer rows, and a pass after a
    // third of the lease records the position.)
    let mut by_second: Vec<Uuid> = b.sent().iter().map(|m| m.message_id).collect();
    by_second.sort();
    by_second.dedup();
    assert_eq!(
        b.sent().len(),
        by_second.len(),
        "none twice from the second relay"
    );
    let mut everything: Vec<Uuid> = a.sent().iter().map(|m| m.message_id).collect();
    everything.extend(by_second.iter().copied());
    everything.sort();
    everything.dedup();
    assert_eq!(everything.len(), 20, "every message went out");
    let unrecorded = &a.sent()[a.sent().len() - 7..];
    assert!(
        unrecorded.iter().all(|m| by_second.contains(&m.message_id)),
        "the first relay's unrecorded batch went again"
    );
    // And the first, back, now finds the feed held.
    assert_eq!(first.pass(Feed::Messages).await.unwrap(), Pass::Held);
}

#[tokio::test]
async fn a_commit_that_writes_to_the_log_wakes_the_relays_here_and_elsewhere() {
    let db = TestDb::new().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(db.pool())
        .await
        .unwrap();
    listener.listen("ordersaga_log").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(db.store.clone().announce_log(shutdown));
    let order = service(&db)
        .place(form("1", "u"), "c", None)
        .await
        .unwrap()
        .order;
    // A relay in this process is woken at once, not after its idle poll.
    let woken = |feed: Feed| {
        let store = db.store.clone();
        async move {
            let started = std::time::Instant::now();
            store.wait_for_work(feed, Duration::from_secs(30)).await;
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{feed:?} relay not woken"
            );
        }
    };
    for feed in Feed::ALL {
        woken(feed).await;
    }
    // So is the events relay by a saga decision that logs an event and sends nothing.
    let log_an_event = |ctx: &SagaContext| {
        let mut write = start_decision(ctx)?;
        let timed_out = NewEvent::new(
            ctx.order.id,
            ordersaga::domain::SagaEventKind::StepTimedOut,
            serde_json::json!({ "step": "user", "attempt": 1 }),
            Utc::now(),
        );
        write.entries.push(LogEntry::event(timed_out));
        Some(write)
    };
    let outcome = db.store.transact(order.id, Box::new(log_an_event)).await;
    assert_eq!(outcome.unwrap(), SagaOutcome::Applied);
    woken(Feed::Events).await;
    // Relays in other processes hear a NOTIFY, sent after the commit.
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("notified")
        .unwrap();
    assert!(
        Uuid::parse_str(n.payload()).is_ok(),
        "names the store that announced: {}",
        n.payload()
    );
}

/// How long `store`'s relay of `feed` waits for a wake-up, `wait` at most.
async fn wait_for_work(store: &PgStore, feed: Feed, wait: Duration) -> Duration {
    let started = std::time::Instant::now();
    store.wait_for_work(feed, wait).await;
    started.elapsed()
}

/// A NOTIFY wakes the relays of every other store, but not those of the
/// store that sent it: they were woken at its commit already, and a second
/// wake-up would only cost each of them a read that finds nothing.
#[tokio::test]
async fn an_announcement_wakes_the_other_stores_relays_not_its_own() {
    let db = TestDb::new().await;
    let (here, elsewhere) = (db.store.clone(), PgStore::from_pool(db.pool().clone()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(here.clone().listen_for_log(shutdown.clone()));
    tokio::spawn(elsewhere.clone().listen_for_log(shutdown.clone()));
    tokio::spawn(here.clone().announce_log(shutdown));
    let woken = async |store: &PgStore, feed: Feed| {
        wait_for_work(store, feed, Duration::from_secs(10)).await < Duration::from_secs(5)
    };
    // Each listener wakes its relays once it listens.
    for store in [&here, &elsewhere] {
        assert!(woken(store, Feed::Messages).await, "listening");
    }
    service_on(&here)
        .place(form("1", "u"), "c", None)
        .await
        .unwrap();
    assert!(woken(&here, Feed::Messages).await, "woken at the commit");
    assert!(
        woken(&elsewhere, Feed::Messages).await,
        "woken by the NOTIFY"
    );
    // The same NOTIFY has reached this store's listener by now, or is about to.
    assert!(
        wait_for_work(&here, Feed::Messages, Duration::from_secs(1)).await
            >= Duration::from_millis(900),
        "woken again by its own NOTIFY"
    );
}

/// While a store's relays hold both feeds, no relay elsewhere follows the
/// log: its commits wake its own relays in memory and send no NOTIFY. Once
/// they no longer hold both, its commits are announced again.
#[tokio::test]
async fn a_store_whose_relays_hold_both_feeds_announces_nothing() {
    let db = TestDb::new().await;
    let (here, elsewhere) = (db.store.clone(), PgStore::from_pool(db.pool().clone()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(elsewhere.clone().listen_for_log(shutdown.clone()));
    tokio::spawn(here.clone().announce_log(shutdown));
    // How long `elsewhere`'s message relay waits for a wake-up, at most `wait`.
    let waited = async |wait: Duration| wait_for_work(&elsewhere, Feed::Messages, wait).await;
    assert!(
        waited(Duration::from_secs(10)).await < Duration::from_secs(5),
        "listening"
    );
    let relay = Uuid::new_v4();
    for feed in Feed::ALL {
        let held = here
            .claim_feed(feed, relay, Duration::from_secs(60), None)
            .await;
        assert!(held.unwrap().is_some(), "{feed:?}");
    }
    let svc = service_on(&here);
    svc.place(form("1", "u"), "c", None).await.unwrap();
    assert!(
        waited(Duration::from_secs(1)).await >= Duration::from_millis(900),
        "no NOTIFY while this store's relays hold both feeds"
    );
    // The events feed's lease, renewed for a millisecond, ends at once.
    let held = here
        .claim_feed(Feed::Events, relay, Duration::from_millis(1), None)
        .await;
    assert!(held.unwrap().is_some());
    svc.place(form("2", "u"), "c", None).await.unwrap();
    assert!(
        waited(Duration::from_secs(10)).await < Duration::from_secs(5),
        "announced once a feed is not held here"
    );
}

/// Housekeeping trims relayed rows past the retention, but never an order's
/// status history, and never a row a feed has not passed.
#[tokio::test]
async fn the_log_is_trimmed_behind_both_feeds_but_keeps_each_orders_history() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    db.store
        .transact(order.id, Box::new(start_decision))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload)
         VALUES ($1, now(), gen_random_uuid(), 'reply_received', '{}')",
    )
    .bind(order.id.0)
    .execute(db.pool())
    .await
    .unwrap();
    let later = Utc::now() + chrono::Duration::hours(1);
    // Nothing relayed yet: nothing goes.
    assert_eq!(db.store.purge(Utc::now(), later).await.unwrap(), 0);
    let (publisher, log) = (
        Arc::new(fakes::Publisher::default()),
        Arc::new(fakes::Log::default()),
    );
    let relay = relay_on(&db.store, &publisher, &log, Duration::from_secs(3));
    drain(&relay, &db.store, Feed::Messages).await;
    assert_eq!(
        db.store.purge(Utc::now(), later).await.unwrap(),
        0,
        "the events feed is behind"
    );
    drain(&relay, &db.store, Feed::Events).await;
    // Younger than the retention: kept.
    assert_eq!(
        db.store
            .purge(Utc::now(), Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        db.store.purge(Utc::now(), later).await.unwrap(),
        1,
        "the reply_received row goes"
    );
    let kept: Vec<String> = sqlx::query_scalar("SELECT event_type FROM saga_log ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(kept, ["order_created"]);
    let history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM order_status_transitions WHERE order_id = $1")
            .bind(order.id.0)
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(history, 1, "the creation transition stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_while_the_inserts_are_busy_are_inserted_together_each_complete() {
    use futures::poll;
    let db = TestDb::new().await;
    // One insert at a time inline, one writer behind it.
    let store = PgStore::from_pool(db.pool().clone()).with_order_writers(1, 10_000);
    let svc = Arc::new(service_on(&store));
    // Hold every insert at the saga_log table until all the orders are placed.
    let mut lock = db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE saga_log IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let place = |value: u32| {
        let svc = svc.clone();
        async move { svc.place(form(&value.to_string(), "u"), "c", None).await }
    };
    // The first is inserted inline, the second by the writer: both wait for the lock.
    let first = tokio::spawn(place(1));
    let second = tokio::spawn(place(2));
    crate::common::eventually(
        "two inserts waiting for the lock",
        Duration::from_secs(10),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(db.pool())
            .await
            .unwrap();
            (waiting == 2).then_some(())
        },
    )
    .await;
    // These queue behind the busy writer.
    let mut queued: Vec<_> = (3..=6).map(|v| Box::pin(place(v))).collect();
    for f in &mut queued {
        assert!(poll!(f.as_mut()).is_pending(), "queued, not inserted yet");
    }
    lock.rollback().await.unwrap();

    let mut placed = vec![
        first.await.unwrap().unwrap().order,
        second.await.unwrap().unwrap().order,
    ];
    for f in queued {
        placed.push(f.await.unwrap().order);
    }
    let ids: Vec<Uuid> = placed.iter().map(|o| o.id.0).collect();
    let complete: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o
         WHERE o.id = ANY($1)
           AND EXISTS (SELECT 1 FROM saga_log l WHERE l.order_id = o.id
                        AND l.event_type = 'order_created' AND l.topic = 'orders.created')",
    )
    .bind(&ids)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(complete, 6, "every order with its message and its event");
    let queued_xmins: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM orders WHERE id = ANY($1)")
            .bind(&ids[2..])
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(queued_xmins, 1, "the queued orders share one transaction");
}

/// A connection the server closed while the pool was quiet is found and
/// replaced when it is next handed out: the statement never meets it.
#[tokio::test]
async fn a_connection_closed_while_idle_is_replaced_before_a_statement_meets_it() {
    let db = TestDb::new().await;
    let pool = db.pool_of(1).await;
    let backend = "SELECT pg_backend_pid()";
    let first: i32 = sqlx::query_scalar(backend).fetch_one(&pool).await.unwrap();
    let closed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(closed);
    // Idle long enough to be checked when handed out (CHECK_AFTER_IDLE).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second: i32 = sqlx::query_scalar(backend).fetch_one(&pool).await.unwrap();
    assert_ne!(first, second, "a new connection");
}

/// A name the URL gives (`application_name=`) is the one PostgreSQL sees,
/// not the process's own.
#[tokio::test]
async fn the_urls_application_name_wins_over_the_processs() {
    let db = TestDb::new().await;
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}application_name=billing-replica", db.url);
    let store =
        PgStore::connect_lazy(&small_pool(url, Duration::from_secs(5)), "ordersaga all").unwrap();
    let name: String = sqlx::query_scalar("SHOW application_name")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(name, "billing-replica");
}

/// A two-connection pool's settings, with one writer of each kind.
fn small_pool(
    url: String,
    statement_timeout: Duration,
) -> ordersaga::adapters::postgres::PgSettings {
    ordersaga::adapters::postgres::PgSettings {
        url,
        max_connections: 2,
        acquire_timeout: Duration::from_secs(5),
        saga_writers: 1,
        saga_batch_max: 8,
        order_writers: 1,
        order_queue_max: 16,
        statement_timeout,
    }
}

/// Every connection of the pool runs with DATABASE_STATEMENT_TIMEOUT_MS: a
/// statement stuck on a lock or a slow plan is cancelled, not left holding a
/// connection.
#[tokio::test]
async fn every_pooled_connection_has_the_statement_timeout() {
    let db = TestDb::new().await;
    let store = PgStore::connect_lazy(
        &small_pool(db.url.clone(), Duration::from_millis(300)),
        "ordersaga test",
    )
    .unwrap();
    let name: String = sqlx::query_scalar("SHOW application_name")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        name, "ordersaga test",
        "the pool names itself to PostgreSQL"
    );
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(shown, "300ms");
    let err = sqlx::query("SELECT pg_sleep(5)")
        .execute(store.pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
}
