//! What operators and people watching see, on the real binary: Prometheus
//! metrics, logs whose spans carry the order and correlation ids through every
//! component, the live saga view's event stream, and the operations endpoint
//! of a component without the API.

use std::time::Duration;

use serde_json::Value;

use crate::common::{Api, Launcher, SystemEnv, eventually, free_port};

const SETTLE: Duration = Duration::from_secs(30);

/// Reads a server-sent event stream until `done` holds for the text so far.
async fn read_stream_until(api: &Api, path: &str, done: impl Fn(&str) -> bool) -> String {
    let mut response = api.http.get(api.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if done(&text) {
                return;
            }
        }
        panic!("the stream ended early:\n{text}");
    };
    if tokio::time::timeout(SETTLE, read).await.is_err() {
        panic!("no expected event within {SETTLE:?} on {path}");
    }
    text
}

/// The data of every `event: name` in an SSE text.
fn events_named(text: &str, name: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l == format!("event: {name}")))
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

#[tokio::test]
async fn metrics_correlated_logs_and_the_live_view_follow_an_order() {
    let launcher = Launcher::new(SystemEnv::new().await);
    let process = launcher.spawn(
        "all",
        &[
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info,ordersaga::adapters::kafka=debug"),
        ],
    );
    let api = launcher.api();
    api.wait_healthy(Duration::from_secs(60)).await;

    let correlation = format!("corr-{}", uuid::Uuid::new_v4());
    let response = api
        .http
        .post(api.url("/api/orders"))
        .header("x-request-id", &correlation)
        .form(&[
            ("value", "12.34"),
            ("user_id", "watcher"),
            ("installment", "1"),
            ("method", "cash"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], correlation.as_str());
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The live view's stream shows the order settle and its timeline complete.
    let text = read_stream_until(&api, &format!("/ui/stream?order={id}"), |t| {
        t.contains("\"status\":\"APPROVED\"") && t.contains("\"type\":\"status_changed\"")
    })
    .await;
    let recent = events_named(&text, "recent");
    assert!(
        recent[0]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == id.as_str())
    );
    let orders = events_named(&text, "order");
    assert_eq!(orders.last().unwrap()["status"], "APPROVED");
    assert!(orders.iter().all(|o| o["id"] == id.as_str()));

    // Metrics: the order placed and settled, the request timed, the consumers' offsets,
    // how long its messages waited and took to publish.
    let metrics = eventually("the settlement in /metrics", SETTLE, || async {
        let text = api
            .http
            .get(api.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("ordersaga_orders_settled_total{status=\"APPROVED\",reason=\"\"} 1")
            .then_some(text)
    })
    .await;
    for expected in [
        "ordersaga_orders_placed_total 1",
        "ordersaga_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/orders\",status=\"201\",le=",
        "ordersaga_saga_duration_seconds_count{status=\"APPROVED\"} 1",
        "ordersaga_saga_step_duration_seconds_count{step=\"user\",outcome=\"passed\"} 1",
        "ordersaga_consumer_last_offset{component=\"orchestrator\"",
        "ordersaga_messages_handled_total{component=\"user-validator\"",
        "ordersaga_message_wait_seconds_count{component=\"balance-validator\"",
        "ordersaga_kafka_publish_duration_seconds_count ",
        "ordersaga_outbox_backlog{kind=\"messages\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected}:\n{metrics}"
        );
    }

    // Logs: each component handled one of this order's messages in a span
    // naming the order and the request's correlation id.
    let log_path = process.log_path.clone();
    eventually("a correlated log line from every consumer", SETTLE, || {
        let log_path = log_path.clone();
        let (correlation, id) = (correlation.clone(), id.clone());
        async move {
            let log = std::fs::read_to_string(&log_path).ok()?;
            let components: Vec<String> = log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|l| l["message"] == "message handled")
                .filter(|l| {
                    l["span"]["correlation_id"] == correlation.as_str()
                        && l["span"]["order_id"] == id.as_str()
                })
                .filter_map(|l| l["span"]["component"].as_str().map(String::from))
                .collect();
            ["orchestrator", "user-validator", "balance-validator"]
                .iter()
                .all(|c| components.iter().any(|x| x == c))
                .then_some(())
        }
    })
    .await;

    // The stream refuses what it cannot watch, in JSON.
    let (status, body) = api.get_json("/ui/stream?order=not-a-uuid").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = api
        .get_json(&format!("/ui/stream?order={}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    let page = api.http.get(api.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "/ leads to the live view");
    assert!(page.text().await.unwrap().contains("live saga view"));
}

#[tokio::test]
async fn a_component_without_the_api_serves_health_readiness_and_metrics_on_ops_port() {
    let launcher = Launcher::new(SystemEnv::new().await);
    let port = free_port().to_string();
    let _validator = launcher.spawn("balance-validator", &[("OPS_PORT", &port)]);
    let ops = Api::new(format!("127.0.0.1:{port}").parse().unwrap());
    ops.wait_healthy(Duration::from_secs(60)).await;
    // Ready once its consumer has its partitions.
    let body = eventually("/ready to answer 200", Duration::from_secs(60), || async {
        let (status, body) = ops.get_json("/ready").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body["checks"]["consumers"], "ok", "{body}");
    assert_eq!(body["checks"]["kafka"], "ok");
    assert!(
        body["checks"].get("postgres").is_none(),
        "the balance validator needs no database"
    );
    let metrics = ops.http.get(ops.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains(
            "ordersaga_http_requests_total{method=\"GET\",route=\"/ready\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    let (status, _) = ops.get_json("/api/orders/someone").await;
    assert_eq!(status, 404, "only the operations routes are there");
}
