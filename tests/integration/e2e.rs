//! Black box: the `ordersaga` binary started as `ordersaga all` on free ports,
//! with its own database, topics and event log, driven over HTTP only.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Launcher, SystemEnv, eventually, place};

const SETTLE: Duration = Duration::from_secs(30);

fn event_types(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn orders_settle_through_the_whole_saga_and_the_log_shows_the_steps() {
    let launcher = Launcher::new(SystemEnv::new().await);
    let mut process = launcher.spawn("all", &[]);
    let api = &launcher.api();
    api.wait_healthy(Duration::from_secs(60)).await;
    let approved = place(api, "1000.00", "uuuu-aaaa-bbbb", "1", "credit_card").await;
    let invalid_user = place(api, "1000.00", "uuuu-aaaa-bbbb-invalid", "1", "credit_card").await;
    let over_limit = place(api, "10000.01", "uuuu-aaaa-bbbb", "1", "debit_card").await;
    let at_limit = place(api, "10000.00", "uuuu-aaaa-bbbb", "10", "credit_card").await;

    let order = api.wait_settled(&approved, SETTLE).await;
    assert_eq!(order["status"], "APPROVED");
    assert!(order.get("cancel_reason").is_none());
    let order = api.wait_settled(&invalid_user, SETTLE).await;
    assert_eq!(
        (order["status"].as_str(), order["cancel_reason"].as_str()),
        (Some("CANCELED"), Some("USER_INVALID"))
    );
    let order = api.wait_settled(&over_limit, SETTLE).await;
    assert_eq!(
        (order["status"].as_str(), order["cancel_reason"].as_str()),
        (Some("CANCELED"), Some("BALANCE_LIMIT_EXCEEDED"))
    );
    let order = api.wait_settled(&at_limit, SETTLE).await;
    assert_eq!(order["status"], "APPROVED", "the limit is inclusive");

    // The event log catches up with every step of the approved order.
    let events = eventually("the approved order's full timeline", SETTLE, || async {
        let (_, events) = api.get_json(&format!("/api/order/{approved}/events")).await;
        event_types(&events)
            .contains(&"status_changed".to_string())
            .then_some(events)
    })
    .await;
    let mut types = event_types(&events);
    assert_eq!(types.first().map(String::as_str), Some("order_created"));
    assert_eq!(types.last().map(String::as_str), Some("status_changed"));
    types.sort();
    assert_eq!(
        types,
        [
            "command_sent",
            "command_sent",
            "order_created",
            "reply_received",
            "reply_received",
            "status_changed"
        ]
    );
    let last = events["events"].as_array().unwrap().last().unwrap();
    assert_eq!(last["payload"]["to"], "APPROVED");
    let seqs: Vec<i64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ordered by sequence: {seqs:?}"
    );

    let events = eventually("the canceled order's timeline", SETTLE, || async {
        let (_, events) = api
            .get_json(&format!("/api/order/{invalid_user}/events"))
            .await;
        event_types(&events)
            .contains(&"status_changed".to_string())
            .then_some(events)
    })
    .await;
    let last = events["events"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (
            last["payload"]["to"].as_str(),
            last["payload"]["cancel_reason"].as_str()
        ),
        (Some("CANCELED"), Some("USER_INVALID"))
    );

    // The user's list shows all four, newest first, with the true total.
    let (_, list) = api.get_json("/api/orders/uuuu-aaaa-bbbb?limit=2").await;
    assert_eq!(list["total"], 3);
    assert_eq!(list["orders"][0]["id"], at_limit.as_str());

    let (status, ready) = api.get_json("/ready").await;
    assert_eq!(status, 200, "{ready}");

    let exit = process
        .terminate(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert!(exit.success(), "graceful exit: {exit:?}");
}

/// The reference's own end-to-end suite waits for the service to answer, then
/// expects an order to settle within a second. `/ready` answers 200 only once
/// every consumer of the process has its partitions, so an order placed right
/// after it does not wait for a consumer group to form.
#[tokio::test]
async fn an_order_placed_right_after_ready_settles_within_a_second() {
    let launcher = Launcher::new(SystemEnv::new().await);
    let _process = launcher.spawn("all", &[]);
    let api = &launcher.api();
    api.wait_healthy(Duration::from_secs(60)).await;
    let waited_for_consumers = std::cell::Cell::new(false);
    eventually("/ready to answer 200", Duration::from_secs(60), || async {
        let (status, body) = api.get_json("/ready").await;
        if body["checks"]["consumers"].is_string() && body["checks"]["consumers"] != "ok" {
            waited_for_consumers.set(true);
        }
        (status == 200).then_some(())
    })
    .await;
    let (_, ready) = api.get_json("/ready").await;
    assert_eq!(ready["checks"]["consumers"], "ok", "{ready}");
    let id = place(api, "10.00", "uuuu-aaaa-bbbb", "1", "cash").await;
    let placed = Instant::now();
    let order = api.wait_settled(&id, Duration::from_secs(1)).await;
    assert_eq!(order["status"], "APPROVED", "{order}");
    eprintln!(
        "settled {} ms after its 201 (consumers still joining seen at first: {})",
        placed.elapsed().as_millis(),
        waited_for_consumers.get()
    );
}
