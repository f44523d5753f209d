//! Scale-out and graceful shutdown, black box.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{Api, Launcher, SystemEnv, eventually, free_port, place};

/// What an order's status should end as, by its position in the run.
fn expected(i: usize) -> (&'static str, Option<&'static str>) {
    match i % 10 {
        0 => ("CANCELED", Some("USER_INVALID")),
        1 => ("CANCELED", Some("BALANCE_LIMIT_EXCEEDED")),
        _ => ("APPROVED", None),
    }
}

fn form(i: usize) -> (&'static str, String) {
    match i % 10 {
        0 => ("10.00", format!("scale-{}-invalid", i % 7)),
        1 => ("10000.01", format!("scale-{}", i % 7)),
        _ => ("99.99", format!("scale-{}", i % 7)),
    }
}

/// Checks that every order settled exactly once, with the right status, and
/// that no step accepted two replies.
async fn assert_settled_exactly_once(launcher: &Launcher, orders: &[(usize, String)]) {
    let pool = launcher.pool();
    eventually(
        "every order to settle",
        Duration::from_secs(180),
        || async {
            let processing: i64 =
                sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PROCESSING'")
                    .fetch_one(pool)
                    .await
                    .unwrap();
            (processing == 0).then_some(())
        },
    )
    .await;
    for (i, id) in orders {
        let (status, reason): (String, Option<String>) =
            sqlx::query_as("SELECT status, cancel_reason FROM orders WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        let (want_status, want_reason) = expected(*i);
        assert_eq!(
            (status.as_str(), reason.as_deref()),
            (want_status, want_reason),
            "order #{i} {id}"
        );
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        total as usize,
        orders.len(),
        "no order lost or created twice"
    );
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM order_status_transitions WHERE from_status = 'PROCESSING'
                               GROUP BY order_id HAVING count(*) <> 1) t",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(twice, 0, "each order leaves PROCESSING exactly once");
    let double_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM saga_log WHERE event_type IN ('status_changed', 'command_sent')
                               GROUP BY order_id, event_type, payload->>'step', payload->>'attempt'
                               HAVING count(*) > 1) t",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        double_events, 0,
        "no order started twice (a command sent twice for one attempt) or settled twice"
    );
    let double_replies: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM saga_log WHERE event_type = 'reply_received'
                               GROUP BY order_id, payload->>'step' HAVING count(*) > 1) t",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(double_replies, 0, "no step took two replies");
}

#[tokio::test]
async fn five_hundred_orders_settle_exactly_once_across_two_of_each_component_with_one_killed_midway()
 {
    let launcher = Launcher::new(SystemEnv::new().await)
        .set("KAFKA_PARTITIONS", 6)
        .set("STEP_TIMEOUT_MS", 10_000);
    let second_port = free_port().to_string();
    let _api_a = launcher.spawn("api", &[]);
    let _api_b = launcher.spawn("api", &[("PORT", &second_port)]);
    let _stub = launcher.spawn("user-api", &[]);
    let mut orchestrator_a = launcher.spawn("orchestrator", &[("RELAY_EMBEDDED", "false")]);
    let _orchestrator_b = launcher.spawn("orchestrator", &[("RELAY_EMBEDDED", "false")]);
    let mut users_a = launcher.spawn("user-validator", &[]);
    let _users_b = launcher.spawn("user-validator", &[]);
    let _balance_a = launcher.spawn("balance-validator", &[]);
    let _balance_b = launcher.spawn("balance-validator", &[]);
    let apis = [
        launcher.api(),
        Api::new(format!("127.0.0.1:{second_port}").parse().unwrap()),
    ];
    for api in &apis {
        api.wait_healthy(Duration::from_secs(60)).await;
    }

    let apis = Arc::new(apis);
    let mut orders = Vec::new();
    for batch in 0..2 {
        let tasks: Vec<_> = (batch * 250..(batch + 1) * 250)
            .map(|i| {
                let apis = apis.clone();
                tokio::spawn(async move {
                    let (value, user) = form(i);
                    (i, place(&apis[i % 2], value, &user, "1", "cash").await)
                })
            })
            .collect();
        for t in tasks {
            orders.push(t.await.unwrap());
        }
        if batch == 0 {
            // Midway: one orchestrator and one user validator die without a word.
            orchestrator_a.kill();
            users_a.kill();
        }
    }
    assert_settled_exactly_once(&launcher, &orders).await;
}

#[tokio::test]
async fn sigterm_reports_draining_then_exits_cleanly_and_nothing_is_lost() {
    let launcher = Launcher::new(SystemEnv::new().await).set("SHUTDOWN_DRAIN_MS", 2000);
    let mut all = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(Duration::from_secs(60)).await;
    let warm = place(&api, "10.00", "term", "1", "cash").await;
    api.wait_settled(&warm, Duration::from_secs(60)).await;

    let mut orders = vec![(2usize, warm)];
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                let (value, user) = form(i);
                (i, place(&api, value, &user, "1", "cash").await)
            })
        })
        .collect();
    for t in tasks {
        orders.push(t.await.unwrap());
    }
    let pid = all.pid().to_string();
    let signal = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(signal.success());
    // Readiness turns 503 first, while the process still answers.
    let draining = eventually(
        "/ready to report draining",
        Duration::from_secs(2),
        || async {
            let (status, body) = api.get_json("/ready").await;
            (status == 503 && body["status"] == "draining").then_some(body)
        },
    )
    .await;
    assert_eq!(draining["status"], "draining");
    let exit = tokio::task::spawn_blocking(move || {
        let status = all.terminate(Duration::from_secs(30));
        (all, status)
    })
    .await
    .unwrap()
    .1
    .expect("exits within the shutdown timeout");
    assert!(exit.success(), "{exit:?}");

    // Started again, it finishes whatever the first run left.
    let _again = launcher.spawn("all", &[]);
    api.wait_healthy(Duration::from_secs(60)).await;
    assert_settled_exactly_once(&launcher, &orders).await;
}

#[tokio::test]
async fn one_idempotency_key_sent_to_two_api_processes_at_once_creates_one_order() {
    let launcher = Launcher::new(SystemEnv::new().await);
    let second_port = free_port().to_string();
    let _api_a = launcher.spawn("api", &[]);
    let _api_b = launcher.spawn("api", &[("PORT", &second_port)]);
    let apis = [
        launcher.api(),
        Api::new(format!("127.0.0.1:{second_port}").parse().unwrap()),
    ];
    for api in &apis {
        api.wait_healthy(Duration::from_secs(60)).await;
    }
    let send = |api: &Api, key: String| {
        let request = api
            .http
            .post(api.url("/api/orders"))
            .header("Idempotency-Key", key)
            .form(&[
                ("value", "12.34"),
                ("user_id", "twice"),
                ("installment", "1"),
                ("method", "cash"),
            ]);
        async move {
            let r = request.send().await.expect("request sent");
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Several rounds, each a new key sent to both processes at the same moment:
    // the race the key guards against, not just a retry after the first answer.
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let key = format!("checkout-{round}");
        let ((status_a, a), (status_b, b)) =
            tokio::join!(send(&apis[0], key.clone()), send(&apis[1], key.clone()));
        let mut statuses = [status_a, status_b];
        statuses.sort();
        // README: the same key and form return the same order with 200.
        assert_eq!(statuses, [200, 201], "round {round}: {a} / {b}");
        assert_eq!(a["id"], b["id"], "round {round}: both name one order");
        assert!(a["id"].is_string(), "{a}");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(launcher.pool())
            .await
            .unwrap();
        assert_eq!(
            rows as usize,
            round + 1,
            "round {round}: exactly one row in orders per key"
        );
    }
}
