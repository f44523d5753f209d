//! The PostgreSQL adapter: orders, the outbox, sagas, idempotency keys, and
//! the state machine enforced in SQL.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ordersaga::adapters::postgres::PgStore;
use ordersaga::application::messages::{MessageType, Topic};
use ordersaga::application::orders::OrderService;
use ordersaga::application::ports::{
    OrderStore, Outbox, OutboxKind, SagaContext, SagaOutcome, SagaStore, SagaWrite,
};
use ordersaga::domain::{
    NewOrder, Order, OrderId, OrderStatus, Saga, SagaPolicy, Settlement, UserId,
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

    let (topic, mtype, key, corr, payload): (String, String, String, String, serde_json::Value) =
        sqlx::query_as(
            "SELECT topic, message_type, message_key, correlation_id, payload FROM outbox",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(topic, "orders.created");
    assert_eq!(mtype, "order-created");
    assert_eq!(key, order.id.to_string());
    assert_eq!(corr, "corr-1");
    assert_eq!(payload["value"], "1000.00");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM saga_events WHERE event_type = 'order_created'"
        )
        .await,
        1
    );
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
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 1);

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
    assert_eq!(
        transitions,
        vec![
            (None, "PROCESSING".into()),
            (Some("PROCESSING".into()), "APPROVED".into())
        ]
    );
}

fn start_decision(ctx: &SagaContext) -> Option<SagaWrite> {
    let (saga, _) = Saga::start(Utc::now(), &SagaPolicy::default());
    (ctx.saga.is_none()).then_some(SagaWrite {
        saga,
        settle: None,
        outbox: vec![],
        events: vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_that_waited_for_the_lock_sees_the_saga_the_other_one_wrote() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    // Two stores on one database, as two orchestrator processes: within one
    // store, decisions about one order are queued rather than locked.
    let store = db.store.clone();
    let elsewhere = PgStore::from_pool(db.pool().clone());
    let outcome = store
        .transact(order.id, None, Box::new(start_decision))
        .await
        .unwrap();
    assert_eq!(outcome, SagaOutcome::Applied);
    let marked = chrono::DateTime::from_timestamp(1_000_000_000, 0).unwrap();
    // The first decision holds the order's lock for a while, then writes a marked saga.
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel::<()>();
    let locked_tx = std::sync::Mutex::new(Some(locked_tx));
    let first = tokio::spawn({
        let store = store.clone();
        async move {
            let decide = move |ctx: &SagaContext| -> Option<SagaWrite> {
                if let Some(tx) = locked_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::thread::sleep(Duration::from_millis(500));
                let mut saga = ctx.saga.clone().unwrap();
                saga.started_at = marked;
                Some(SagaWrite {
                    saga,
                    settle: None,
                    outbox: vec![],
                    events: vec![],
                })
            };
            store.transact(order.id, None, Box::new(decide)).await
        }
    });
    locked_rx.await.unwrap();
    // The second one waits for the lock and must decide on what the first wrote.
    let seen = Arc::new(std::sync::Mutex::new(None));
    let decide = {
        let seen = seen.clone();
        move |ctx: &SagaContext| -> Option<SagaWrite> {
            *seen.lock().unwrap() = ctx.saga.as_ref().map(|s| s.started_at);
            None
        }
    };
    elsewhere
        .transact(order.id, None, Box::new(decide))
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().unwrap(), SagaOutcome::Applied);
    assert_eq!(*seen.lock().unwrap(), Some(marked));
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
        async move { store.transact(busy, None, Box::new(hold)).await }
    });
    entered.await.unwrap();

    let (m_good, m_bad, m_twice) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let seen = Arc::new(std::sync::Mutex::new(None));
    let look = {
        let seen = seen.clone();
        move |ctx: &SagaContext| {
            *seen.lock().unwrap() = Some(ctx.saga.is_some());
            None
        }
    };
    let mut queued = vec![
        store.transact(good, Some(("o", m_good)), Box::new(start_decision)),
        store.transact(
            bad,
            Some(("o", m_bad)),
            Box::new(|_: &SagaContext| panic!("a decision that fails")),
        ),
        store.transact(twice, Some(("o", m_twice)), Box::new(start_decision)),
        // The same order again: decided after the one before, on what it wrote.
        store.transact(twice, None, Box::new(look)),
        // The same message again: a duplicate, not a second decision.
        store.transact(twice, Some(("o", m_twice)), Box::new(start_decision)),
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
    assert_eq!(outcomes[4].as_ref().unwrap(), &SagaOutcome::Duplicate);

    // The good decisions of the batch were written by one transaction.
    let writers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM sagas WHERE order_id = ANY($1)")
            .bind(vec![good.0, twice.0])
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(writers, 1);
    // The failed decision left nothing behind, not even its message id: it can be retried.
    assert_eq!(
        count(&db, "SELECT count(*) FROM sagas").await,
        3,
        "busy, good and twice have sagas; bad has none"
    );
    let retried = store
        .transact(bad, Some(("o", m_bad)), Box::new(start_decision))
        .await
        .unwrap();
    assert_eq!(retried, SagaOutcome::Applied);
}

#[tokio::test]
async fn a_message_is_applied_once_per_consumer() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    let msg = Uuid::new_v4();
    let first = db
        .store
        .transact(
            order.id,
            Some(("orchestrator", msg)),
            Box::new(start_decision),
        )
        .await
        .unwrap();
    assert_eq!(first, SagaOutcome::Applied);
    let again = db
        .store
        .transact(
            order.id,
            Some(("orchestrator", msg)),
            Box::new(start_decision),
        )
        .await
        .unwrap();
    assert_eq!(again, SagaOutcome::Duplicate);
    let other_consumer = db
        .store
        .transact(order.id, Some(("other", msg)), Box::new(start_decision))
        .await
        .unwrap();
    assert_eq!(
        other_consumer,
        SagaOutcome::NothingToDo,
        "saga already started"
    );
    let unknown = db
        .store
        .transact(OrderId::new(), None, Box::new(start_decision))
        .await
        .unwrap();
    assert_eq!(unknown, SagaOutcome::UnknownOrder);
}

#[tokio::test]
async fn settling_writes_status_outbox_and_events_atomically_and_only_once() {
    let db = TestDb::new().await;
    let order = service(&db)
        .place(form("1", "u"), "corr", None)
        .await
        .unwrap()
        .order;
    db.store
        .transact(order.id, None, Box::new(start_decision))
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
        Some(SagaWrite {
            saga,
            settle: Some(Settlement::Approved),
            outbox: vec![msg],
            events: vec![],
        })
    };
    assert_eq!(
        db.store
            .transact(order.id, None, Box::new(settle))
            .await
            .unwrap(),
        SagaOutcome::Applied
    );
    let stored: Order = db.store.get(order.id).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Approved);
    let corr: String =
        sqlx::query_scalar("SELECT correlation_id FROM outbox WHERE topic = 'orders.settled'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(corr, "corr", "the order's correlation id follows the saga");
    // A second settlement is refused and writes nothing.
    assert!(
        db.store
            .transact(order.id, None, Box::new(settle))
            .await
            .is_err()
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE topic = 'orders.settled'"
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
        .transact(started.id, None, Box::new(start_decision))
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

#[tokio::test]
async fn the_relay_removes_messages_only_once_published() {
    let db = TestDb::new().await;
    place_orders(&service(&db), 3).await;
    let down = fakes::Publisher::failing();
    assert!(db.store.relay_messages(10, &down).await.is_err());
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox").await,
        3,
        "kept while the broker is down"
    );

    let up = fakes::Publisher::default();
    assert_eq!(db.store.relay_messages(2, &up).await.unwrap(), 2);
    assert_eq!(db.store.relay_messages(10, &up).await.unwrap(), 1);
    assert_eq!(db.store.relay_messages(10, &up).await.unwrap(), 0);
    let sent = up.sent();
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|m| m.topic == Topic::OrdersCreated));
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test]
async fn relays_side_by_side_never_publish_the_same_row_twice() {
    let db = TestDb::new().await;
    place_orders(&service(&db), 200).await;
    let a = Arc::new(fakes::Publisher::default());
    let b = Arc::new(fakes::Publisher::default());
    let run = |p: Arc<fakes::Publisher>, store: ordersaga::adapters::postgres::PgStore| {
        tokio::spawn(async move { while store.relay_messages(7, p.as_ref()).await.unwrap() > 0 {} })
    };
    let (ra, rb) = (
        run(a.clone(), db.store.clone()),
        run(b.clone(), db.store.clone()),
    );
    ra.await.unwrap();
    rb.await.unwrap();
    let mut ids: Vec<Uuid> = a
        .sent()
        .iter()
        .chain(b.sent().iter())
        .map(|m| m.message_id)
        .collect();
    assert_eq!(ids.len(), 200);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "no message published by both relays");
}

#[tokio::test]
async fn events_are_marked_logged_only_once_the_log_took_them() {
    let db = TestDb::new().await;
    let order = placed_order(&db).await;
    let log = fakes::Log::default();
    log.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(db.store.relay_events(10, &log).await.is_err());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM saga_events WHERE logged_at IS NULL"
        )
        .await,
        1
    );
    log.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(db.store.relay_events(10, &log).await.unwrap(), 1);
    assert_eq!(db.store.relay_events(10, &log).await.unwrap(), 0);
    let logged = log.events.lock().unwrap().clone();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].order_id, order.id);
}

#[tokio::test]
async fn a_commit_that_writes_to_the_outboxes_wakes_the_relays_here_and_elsewhere() {
    let db = TestDb::new().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(db.pool())
        .await
        .unwrap();
    listener.listen("ordersaga_outbox").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(db.store.clone().announce_outbox(shutdown));
    service(&db).place(form("1", "u"), "c", None).await.unwrap();
    // A relay in this process is woken at once, not after its idle poll.
    for kind in [OutboxKind::Messages, OutboxKind::Events] {
        let started = std::time::Instant::now();
        db.store.wait_for_work(kind, Duration::from_secs(30)).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{kind:?} relay not woken"
        );
    }
    // Relays in other processes hear a NOTIFY, sent after the commit.
    let mut payloads = Vec::new();
    for _ in 0..2 {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("notified")
            .unwrap();
        payloads.push(n.payload().to_owned());
    }
    payloads.sort();
    assert_eq!(payloads, ["outbox", "saga_events"]);
}

/// A store that hands the messages it commits to its own relay, as in a
/// process that runs one (the API or the orchestrator with its embedded relay).
fn handing_store(db: &TestDb, lease: Duration) -> PgStore {
    PgStore::from_pool(db.pool().clone()).with_hand_off(lease)
}

#[tokio::test]
async fn handed_off_messages_go_out_once_from_this_process_and_their_rows_are_deleted() {
    let db = TestDb::new().await;
    let here = handing_store(&db, Duration::from_secs(60));
    let placed: Vec<String> = place_orders(&service_on(&here), 3)
        .await
        .iter()
        .map(|o| o.id.to_string())
        .collect();
    // A saga decision's message is handed off too.
    let command = ordersaga::application::messages::OutboundMessage::new(
        Uuid::new_v4(),
        Topic::UserValidationCommands,
        ordersaga::domain::OrderId(Uuid::parse_str(&placed[0]).unwrap()),
        MessageType::ValidateUser,
        "c",
        &serde_json::json!({}),
    );
    let decision = {
        let message = command.clone();
        move |ctx: &SagaContext| -> Option<SagaWrite> {
            let mut write = start_decision(ctx)?;
            write.outbox.push(message.clone());
            Some(write)
        }
    };
    let order_id = ordersaga::domain::OrderId(Uuid::parse_str(&placed[0]).unwrap());
    assert_eq!(
        here.transact(order_id, None, Box::new(decision))
            .await
            .unwrap(),
        SagaOutcome::Applied
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE handed_until > now() + interval '50 seconds'"
        )
        .await,
        4,
        "every row written, reserved for the lease"
    );

    // A relay elsewhere leaves the reserved rows alone.
    let elsewhere = fakes::Publisher::default();
    assert_eq!(db.store.relay_messages(10, &elsewhere).await.unwrap(), 0);
    assert!(elsewhere.sent().is_empty());

    // This process's relay sends them without reading them back.
    let up = fakes::Publisher::default();
    let mut sent = 0;
    while sent < 4 {
        let n = here.relay_messages(10, &up).await.unwrap();
        assert!(n > 0, "handed-off messages are waiting");
        sent += n;
    }
    assert_eq!(here.relay_messages(10, &up).await.unwrap(), 0);
    let mut keys: Vec<String> = up.sent().iter().map(|m| m.key.clone()).collect();
    keys.sort();
    let mut expected = placed.clone();
    expected.push(placed[0].clone());
    expected.sort();
    assert_eq!(keys, expected, "each message once");
    assert!(up.sent().iter().any(|m| m.message_id == command.message_id));
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox").await,
        0,
        "rows deleted once the relay finds nothing more"
    );
}

#[tokio::test]
async fn a_handed_off_message_is_sent_by_any_relay_once_its_lease_ends() {
    let db = TestDb::new().await;
    // This process commits an order, then dies before its relay sends it.
    let gone = handing_store(&db, Duration::from_millis(300));
    service_on(&gone)
        .place(form("1", "u"), "c", None)
        .await
        .unwrap();
    drop(gone);
    let up = fakes::Publisher::default();
    assert_eq!(
        db.store.relay_messages(10, &up).await.unwrap(),
        0,
        "reserved until the lease ends"
    );
    crate::common::eventually("the lease to end", Duration::from_secs(10), || async {
        (db.store.relay_messages(10, &up).await.unwrap() == 1).then_some(())
    })
    .await;
    assert_eq!(up.sent().len(), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test]
async fn a_hand_off_the_broker_refused_is_left_to_the_table_at_once() {
    let db = TestDb::new().await;
    let here = handing_store(&db, Duration::from_secs(60));
    place_orders(&service_on(&here), 2).await;
    let down = fakes::Publisher::failing();
    assert!(here.relay_messages(10, &down).await.is_err());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE handed_until IS NULL"
        )
        .await,
        2,
        "released, not waiting a minute for the lease"
    );
    // The next pass reads them from the table (here, or in any other relay).
    let up = fakes::Publisher::default();
    assert_eq!(here.relay_messages(10, &up).await.unwrap(), 2);
    assert_eq!(up.sent().len(), 2);
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test]
async fn a_hand_off_that_waited_past_half_its_lease_is_left_to_the_table() {
    let db = TestDb::new().await;
    // A zero lease ends at once: every handed message is already past half of it,
    // as after a long broker outage, and any relay's scan may send its row.
    let here = handing_store(&db, Duration::ZERO);
    place_orders(&service_on(&here), 3).await;
    let elsewhere = fakes::Publisher::default();
    assert_eq!(db.store.relay_messages(10, &elsewhere).await.unwrap(), 3);
    let up = fakes::Publisher::default();
    while here.relay_messages(10, &up).await.unwrap() > 0 {}
    assert!(
        up.sent().is_empty(),
        "the hand-off does not send again what the scan may have sent"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_while_the_inserts_are_busy_are_inserted_together_each_complete() {
    use futures::poll;
    let db = TestDb::new().await;
    // One insert at a time inline, one writer behind it.
    let store = PgStore::from_pool(db.pool().clone()).with_order_writers(1, 10_000);
    let svc = Arc::new(service_on(&store));
    // Hold every insert at the saga_events table until all the orders are placed.
    let mut lock = db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE saga_events IN EXCLUSIVE MODE")
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
           AND EXISTS (SELECT 1 FROM outbox m WHERE m.message_key = o.id::text)
           AND EXISTS (SELECT 1 FROM saga_events e WHERE e.order_id = o.id)",
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

/// Every connection of the pool runs with DATABASE_STATEMENT_TIMEOUT_MS: a
/// statement stuck on a lock or a slow plan is cancelled, not left holding a
/// connection.
#[tokio::test]
async fn every_pooled_connection_has_the_statement_timeout() {
    let db = TestDb::new().await;
    let store = PgStore::connect_lazy(&ordersaga::adapters::postgres::PgSettings {
        url: db.url.clone(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(5),
        saga_writers: 1,
        saga_batch_max: 8,
        order_writers: 1,
        order_queue_max: 16,
        statement_timeout: Duration::from_millis(300),
    })
    .unwrap();
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
