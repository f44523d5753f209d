//! The orchestrator and the validators with real PostgreSQL and a real HTTP
//! user API, fed messages directly: redelivery and duplicates change nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::routing::get;
use ordersaga::adapters::user_api::{HttpUserDirectory, UserApiSettings};
use ordersaga::application::messages::{
    BalanceValidated, BalanceVerdict, InboundMessage, MessageType, OrderCreated, OutboundMessage,
    Topic, UserValidated, UserVerdict, ValidateUser,
};
use ordersaga::application::orchestrator::Orchestrator;
use ordersaga::application::orders::OrderService;
use ordersaga::application::ports::{MessageHandler, MessagePublisher};
use ordersaga::application::validators::UserValidator;
use ordersaga::domain::{Money, NewOrder, OrderId, SagaPolicy, UserId};
use uuid::Uuid;

use crate::common::{TestDb, fakes};

/// An outbound message as a consumer would receive it.
fn delivered(m: &OutboundMessage) -> InboundMessage {
    InboundMessage::from(m)
}

async fn count(db: &TestDb, sql: &'static str, order: OrderId) -> i64 {
    sqlx::query_scalar(sql)
        .bind(order.0)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn placed_order(db: &TestDb) -> (OrderId, OutboundMessage) {
    let svc = OrderService::new(
        Arc::new(db.store.clone()),
        Arc::new(fakes::Log::default()),
        chrono::Duration::hours(1),
    );
    let new = NewOrder::parse(Some("10"), Some("u"), Some("1"), Some("cash")).unwrap();
    let order = svc.place(new, "c", None).await.unwrap().order;
    let created = OutboundMessage::new(
        Uuid::new_v4(),
        Topic::OrdersCreated,
        order.id,
        MessageType::OrderCreated,
        "c",
        &OrderCreated {
            order_id: order.id,
            user_id: order.user_id.clone(),
            value: order.value,
            installment: 1,
            method: order.method,
            created_at: order.created_at,
        },
    );
    (order.id, created)
}

fn reply(order_id: OrderId, result: UserVerdict) -> OutboundMessage {
    OutboundMessage::new(
        Uuid::new_v4(),
        Topic::UserValidationReplies,
        order_id,
        MessageType::UserValidated,
        "c",
        &UserValidated {
            order_id,
            attempt: 1,
            result,
            detail: None,
        },
    )
}

#[tokio::test]
async fn a_redelivered_order_created_starts_the_saga_once() {
    let db = TestDb::new().await;
    let orchestrator = Orchestrator::new(
        Arc::new(db.store.clone()),
        SagaPolicy::default(),
        chrono::Duration::seconds(60),
    );
    let (order, created) = placed_order(&db).await;
    for _ in 0..3 {
        orchestrator.handle(&delivered(&created)).await.unwrap();
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM saga_log WHERE order_id = $1 AND event_type = 'command_sent'",
            order
        )
        .await,
        2,
        "started once: one command per step"
    );
    let commands: i64 =
        sqlx::query_scalar("SELECT count(*) FROM saga_log WHERE topic LIKE '%.commands'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(commands, 2, "one command per step");
}

/// With a reply hold, an order's two replies handled at once are decided in
/// one transaction: both `reply_received` entries and the settlement share a
/// txid.
#[tokio::test]
async fn both_replies_of_an_order_are_written_in_one_transaction() {
    let db = TestDb::new().await;
    let orchestrator = Orchestrator::new(
        Arc::new(db.store.clone()),
        SagaPolicy::default(),
        chrono::Duration::seconds(60),
    )
    .with_reply_hold(Duration::from_secs(30));
    let (order, created) = placed_order(&db).await;
    orchestrator.handle(&delivered(&created)).await.unwrap();
    let balance = OutboundMessage::new(
        Uuid::new_v4(),
        Topic::BalanceValidationReplies,
        order,
        MessageType::BalanceValidated,
        "c",
        &BalanceValidated {
            order_id: order,
            attempt: 1,
            result: BalanceVerdict::WithinLimit,
            limit: Money::parse("10000").unwrap(),
        },
    );
    let (balance, user) = (
        delivered(&balance),
        delivered(&reply(order, UserVerdict::Valid)),
    );
    let (a, b) = tokio::join!(orchestrator.handle(&balance), orchestrator.handle(&user));
    a.unwrap();
    b.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(order.0)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(status, "APPROVED");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM saga_log WHERE order_id = $1
               AND event_type IN ('reply_received', 'status_changed')",
            order
        )
        .await,
        3,
        "both replies and the settlement are logged"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT txid) FROM saga_log WHERE order_id = $1
               AND event_type IN ('reply_received', 'status_changed')",
            order
        )
        .await,
        1,
        "in one transaction"
    );
}

#[tokio::test]
async fn a_reply_delivered_twice_settles_once_and_logs_once() {
    let db = TestDb::new().await;
    let orchestrator = Orchestrator::new(
        Arc::new(db.store.clone()),
        SagaPolicy::default(),
        chrono::Duration::seconds(60),
    );
    let (order, created) = placed_order(&db).await;
    orchestrator.handle(&delivered(&created)).await.unwrap();
    let invalid = reply(order, UserVerdict::Invalid);
    orchestrator.handle(&delivered(&invalid)).await.unwrap();
    orchestrator.handle(&delivered(&invalid)).await.unwrap();
    // A different message with the same content (a validator that handled its command twice
    // without the deterministic id) is still ignored: the step is done.
    orchestrator
        .handle(&delivered(&reply(order, UserVerdict::Invalid)))
        .await
        .unwrap();
    orchestrator
        .handle(&delivered(&reply(order, UserVerdict::Valid)))
        .await
        .unwrap();

    let q = |kind| {
        format!(
            "SELECT count(*) FROM saga_log WHERE order_id = '{}' AND event_type = '{kind}'",
            order
        )
    };
    for (kind, expected) in [("reply_received", 1), ("status_changed", 1)] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q(kind)))
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(n, expected, "{kind}");
    }
    let settled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM saga_log WHERE topic = 'orders.settled'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(settled, 1);
    let transitions =
        count(&db, "SELECT count(*) FROM order_status_transitions WHERE order_id = $1 AND to_status = 'CANCELED'", order)
            .await;
    assert_eq!(transitions, 1);
}

#[tokio::test]
async fn a_reply_for_an_unknown_order_is_poison() {
    let db = TestDb::new().await;
    let orchestrator = Orchestrator::new(
        Arc::new(db.store.clone()),
        SagaPolicy::default(),
        chrono::Duration::seconds(60),
    );
    let err = orchestrator
        .handle(&delivered(&reply(OrderId::new(), UserVerdict::Valid)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn the_sweeper_starts_a_saga_whose_order_created_was_lost() {
    let db = TestDb::new().await;
    let orchestrator = Orchestrator::new(
        Arc::new(db.store.clone()),
        SagaPolicy::default(),
        chrono::Duration::zero(),
    );
    let (order, _lost) = placed_order(&db).await;
    orchestrator.sweep(100).await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM orders WHERE id = $1 AND saga IS NOT NULL",
            order
        )
        .await,
        1
    );
    orchestrator.sweep(100).await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM saga_log WHERE order_id = $1 AND event_type = 'command_sent'",
            order
        )
        .await,
        2,
        "started once: one command per step"
    );
}

#[tokio::test]
async fn a_command_delivered_twice_asks_the_user_api_once_and_replies_the_same() {
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let router = axum::Router::new().route(
        "/api/user/{id}",
        get(move || {
            let c = c2.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                axum::Json(serde_json::json!({ "user_id": "u", "is_valid": true }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let directory = HttpUserDirectory::new(UserApiSettings {
        base_url: base,
        timeout: Duration::from_secs(2),
        retries: 0,
        retry_delay: Duration::from_millis(10),
        breaker_threshold: 0,
        breaker_cooldown: Duration::from_secs(1),
    })
    .unwrap();
    let publisher = Arc::new(fakes::Publisher::default());
    let validator = UserValidator::new(
        Arc::new(directory),
        publisher.clone() as Arc<dyn MessagePublisher>,
    );
    let order_id = OrderId::new();
    let command = OutboundMessage::new(
        Uuid::new_v4(),
        Topic::UserValidationCommands,
        order_id,
        MessageType::ValidateUser,
        "c",
        &ValidateUser {
            order_id,
            user_id: UserId::parse("u").unwrap(),
            attempt: 1,
        },
    );
    validator.handle(&delivered(&command)).await.unwrap();
    validator.handle(&delivered(&command)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no second lookup");
    let sent = publisher.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0].message_id, sent[1].message_id,
        "the same reply, which the orchestrator drops"
    );
    assert_eq!(sent[0].payload, sent[1].payload);
}
