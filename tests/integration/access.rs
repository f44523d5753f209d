//! Who may call what, and the bounds that keep one caller from starving the
//! rest: API keys, the request timeout, the limit on requests in flight, the
//! cap on live-page streams, and the `X-Request-Id` a request may bring. The
//! `ordersaga all` binary, driven over HTTP.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::common::{Api, Launcher, SystemEnv, eventually};

const UP: Duration = Duration::from_secs(60);

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn status_of(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn form() -> [(&'static str, &'static str); 4] {
    [
        ("value", "10.00"),
        ("user_id", "keyed-user"),
        ("installment", "1"),
        ("method", "cash"),
    ]
}

#[tokio::test]
async fn with_api_keys_only_a_caller_with_a_key_reaches_orders_metrics_and_the_live_stream() {
    let keys_file = std::env::temp_dir().join(crate::common::unique("keys-"));
    std::fs::write(&keys_file, "# operators\nkey-from-file\n").unwrap();
    let launcher = Launcher::new(SystemEnv::new().await)
        .set("API_KEYS", "key-one,key-two")
        .set("API_KEYS_FILE", keys_file.to_str().unwrap());
    let process = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(UP).await;
    let http = &api.http;

    // Without a key, or with a wrong one: 401 JSON naming the problem.
    for auth in [
        None,
        Some("Bearer wrong-key"),
        Some("Bearer key-onex"),
        Some("Basic key-one"),
    ] {
        let mut r = http.post(api.url("/api/orders")).form(&form());
        if let Some(value) = auth {
            r = r.header("Authorization", value);
        }
        let response = r.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "{body}");
    }
    for path in [
        "/api/methods",
        "/api/orders/keyed-user",
        "/metrics",
        "/ui/stream",
    ] {
        let (status, _) = status_of(http.get(api.url(path))).await;
        assert_eq!(status, 401, "{path} without a key");
    }

    // Each configured key works, from the list and from the file.
    let mut id = String::new();
    for key in ["key-one", "key-two", "key-from-file"] {
        let (status, body) = status_of(
            http.post(api.url("/api/orders"))
                .header("Authorization", bearer(key))
                .form(&form()),
        )
        .await;
        assert_eq!(status, 201, "{key}: {body}");
        id = body["id"].as_str().unwrap().to_owned();
    }
    let (status, order) = status_of(
        http.get(api.url(&format!("/api/order/{id}")))
            .header("Authorization", bearer("key-two")),
    )
    .await;
    assert_eq!(status, 200, "{order}");
    let (status, _) = status_of(
        http.get(api.url("/metrics"))
            .header("Authorization", bearer("key-one")),
    )
    .await;
    assert_eq!(status, 200);

    // /health stays open; /ready answers anyone but shows its checks only with a key.
    let (status, _) = status_of(http.get(api.url("/health"))).await;
    assert_eq!(status, 200);
    let open = eventually("/ready to answer 200", UP, || async {
        let (status, body) = status_of(http.get(api.url("/ready"))).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(
        open["checks"],
        serde_json::json!({}),
        "no details without a key: {open}"
    );
    let (_, keyed) = status_of(
        http.get(api.url("/ready"))
            .header("Authorization", bearer("key-one")),
    )
    .await;
    assert_eq!(keyed["checks"]["postgres"], "ok", "{keyed}");

    // The live page itself is open (it holds no data); its stream needs the key.
    let (status, _) = status_of(http.get(api.url("/ui"))).await;
    assert_eq!(status, 200);
    let stream = http
        .get(api.url("/ui/stream"))
        .header("Authorization", bearer("key-one"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut stream = stream;
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: recent") && seen.contains(&id) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "the stream shows the recent orders: {seen}"
    );

    // The OpenAPI document declares the key, so Swagger UI's Authorize button sends it.
    let (_, doc) = status_of(http.get(api.url("/api-docs/openapi.json"))).await;
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer",
        "{}",
        doc["components"]
    );
    assert!(
        !process.log().contains("key-one"),
        "a key appears in the log"
    );
    let _ = std::fs::remove_file(&keys_file);
}

#[tokio::test]
async fn without_api_keys_everything_is_open_and_the_service_says_so() {
    let launcher = Launcher::new(SystemEnv::new().await);
    let process = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(UP).await;
    let (status, _) = api.post_form(&form()).await;
    assert_eq!(status, 201);
    assert!(
        process.log().contains("no API keys configured"),
        "a warning at start: {}",
        process.log()
    );
}

/// A request body that never finishes: a slow (or malicious) client.
fn stalled_body() -> reqwest::Body {
    let chunks =
        futures::stream::once(async { Ok::<_, std::io::Error>("value=1".as_bytes().to_vec()) })
            .chain(futures::stream::pending());
    reqwest::Body::wrap_stream(chunks)
}

#[tokio::test]
async fn slow_clients_hit_the_timeout_and_the_in_flight_limit_not_everyone_else() {
    let launcher = Launcher::new(SystemEnv::new().await)
        .set("API_MAX_IN_FLIGHT", 3)
        .set("API_REQUEST_TIMEOUT_MS", 2000)
        .set("UI_STREAM_MAX", 2);
    let _process = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(UP).await;

    // Three clients that never finish their bodies hold every slot... (kept
    // at three in flight: one that arrived while a probe held a slot was
    // refused at once, and is replaced).
    let slow = std::sync::Mutex::new(Vec::new());
    let stall = || {
        let api = api.clone();
        tokio::spawn(async move {
            api.http
                .post(api.url("/api/orders"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(stalled_body())
                .send()
                .await
        })
    };
    let refused = eventually(
        "a fourth request to be refused as overloaded",
        UP,
        || async {
            {
                let mut slow = slow.lock().unwrap();
                let waiting = slow
                    .iter()
                    .filter(|h: &&tokio::task::JoinHandle<_>| !h.is_finished())
                    .count();
                for _ in waiting..3 {
                    slow.push(stall());
                }
            }
            let r = api.http.get(api.url("/api/methods")).send().await.ok()?;
            (r.status() == 503).then_some(r)
        },
    )
    .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "overloaded", "{body}");
    // ...while /health still answers.
    let (status, _) = api.get_json("/health").await;
    assert_eq!(status, 200);

    // ...until the timeout answers them 503 timeout, and the slots are free again.
    let mut timed_out = 0;
    for s in slow.into_inner().unwrap() {
        let r = s.await.unwrap().expect("answered");
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        match body["error"].as_str() {
            Some("timeout") => timed_out += 1,
            Some("overloaded") => {} // refused at once, replaced
            _ => panic!("{body}"),
        }
    }
    assert_eq!(timed_out, 3, "the three that held the slots");
    let (status, body) = api.post_form(&form()).await;
    assert_eq!(status, 201, "{body}");

    // Live-page streams are capped.
    let open = |api: Api| async move { api.http.get(api.url("/ui/stream")).send().await.unwrap() };
    let (a, b) = (open(api.clone()).await, open(api.clone()).await);
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let third = open(api.clone()).await;
    assert_eq!(third.status(), 503);
    drop((a, b));
    eventually("a stream slot to be free again", UP, || async {
        (open(api.clone()).await.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_request_id_is_kept_only_when_short_and_printable() {
    let launcher = Launcher::new(SystemEnv::new().await);
    let _process = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(UP).await;
    let echoed = |id: String| {
        let api = api.clone();
        async move {
            let r = api
                .http
                .post(api.url("/api/orders"))
                .header("X-Request-Id", id)
                .form(&form())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(echoed("checkout-42".into()).await, "checkout-42");
    for bad in ["x".repeat(65), "has space".into(), "tab\there".into()] {
        let got = echoed(bad.clone()).await;
        assert_ne!(got, bad);
        assert!(
            uuid::Uuid::parse_str(&got).is_ok(),
            "{bad:?} replaced by a fresh id, got {got:?}"
        );
    }
}
