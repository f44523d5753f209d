//! The HTTP API over real HTTP, backed by a real database and event log.

use std::sync::Arc;
use std::time::Duration;

use ordersaga::adapters::http::{AppState, router};
use ordersaga::adapters::kafka::KafkaPublisher;
use ordersaga::application::health::{Dependency, Readiness};
use ordersaga::application::orders::{Admission, OrderService};
use ordersaga::application::ports::Feed;
use ordersaga::application::relay::{Relay, RelaySettings};
use serde_json::Value;

use crate::common::{Api, TestDb, TestMongo, eventually, kafka_settings};

struct Fixture {
    api: Api,
    db: TestDb,
    mongo: TestMongo,
}

async fn fixture() -> Fixture {
    fixture_with(Arc::new(Admission::unlimited())).await
}

async fn fixture_with(admission: Arc<Admission>) -> Fixture {
    let db = TestDb::new().await;
    let mongo = TestMongo::new().await;
    let publisher = KafkaPublisher::new(kafka_settings(), "test").unwrap();
    let orders = Arc::new(
        OrderService::new(
            Arc::new(db.store.clone()),
            Arc::new(mongo.log.clone()),
            chrono::Duration::hours(1),
        )
        .with_admission(admission),
    );
    let readiness = Arc::new(Readiness::new(
        vec![
            Dependency::store("postgres", Arc::new(db.store.clone())),
            Dependency::broker("kafka", Arc::new(publisher)),
            Dependency::event_log("mongodb", Arc::new(mongo.log.clone())),
        ],
        Duration::from_secs(3),
    ));
    let app = router(AppState::new(orders, readiness), &Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fixture {
        api: Api::new(addr),
        db,
        mongo,
    }
}

const VALID: [(&str, &str); 4] = [
    ("value", "1000.00"),
    ("user_id", "uuuu-aaaa-bbbb"),
    ("installment", "1"),
    ("method", "credit_card"),
];

fn with(field: &str, value: &str) -> Vec<(&'static str, String)> {
    VALID
        .iter()
        .map(|(k, v)| {
            (
                *k,
                if *k == field {
                    value.to_string()
                } else {
                    v.to_string()
                },
            )
        })
        .collect()
}

fn without(field: &str) -> Vec<(&'static str, String)> {
    VALID
        .iter()
        .filter(|(k, _)| *k != field)
        .map(|(k, v)| (*k, v.to_string()))
        .collect()
}

async fn post(api: &Api, fields: &[(&'static str, String)]) -> (u16, Value) {
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    api.post_form(&pairs).await
}

#[tokio::test]
async fn an_order_placed_with_a_urlencoded_form_is_processing() {
    let f = fixture().await;
    let (status, body) = f.api.post_form(&VALID).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["value"], "1000.00");
    assert_eq!(body["user_id"], "uuuu-aaaa-bbbb");
    assert_eq!(body["installment"], 1);
    assert_eq!(body["status"], "PROCESSING");
    assert_eq!(body["method"], "credit_card");
    assert!(body.get("cancel_reason").is_none());
    let id = body["id"].as_str().unwrap();
    let (status, got) = f.api.get_json(&format!("/api/order/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], id);
    assert_eq!(got["status"], "PROCESSING");
    assert!(got["created_at"].is_string() && got["updated_at"].is_string());
}

#[tokio::test]
async fn an_order_placed_with_a_multipart_form_is_processing() {
    let f = fixture().await;
    let form = reqwest::multipart::Form::new()
        .text("value", "150.5")
        .text("user_id", "multi")
        .text("installment", "1")
        .text("method", "debit_card");
    let r = f
        .api
        .http
        .post(f.api.url("/api/orders"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["value"], "150.50");
    assert_eq!(body["method"], "debit_card");
}

#[tokio::test]
async fn every_missing_or_malformed_field_is_a_422_naming_it() {
    let f = fixture().await;
    type Case = (Vec<(&'static str, String)>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        (without("value"), "value", "is required"),
        (without("user_id"), "user_id", "is required"),
        (without("installment"), "installment", "is required"),
        (without("method"), "method", "is required"),
        (with("value", ""), "value", "is required"),
        (with("value", "abc"), "value", "decimal number"),
        (with("value", "-10"), "value", "greater than 0"),
        (with("value", "0"), "value", "greater than 0"),
        (with("value", "10.001"), "value", "at most 2 decimal places"),
        (with("value", "1e30"), "value", "decimal number"),
        (with("value", "NaN"), "value", "decimal number"),
        (with("value", "99999999999999999999"), "value", "at most"),
        (with("user_id", ""), "user_id", "is required"),
        (
            with("user_id", &"x".repeat(10_000)),
            "user_id",
            "at most 64 characters",
        ),
        (
            with("user_id", "bad\u{7}id"),
            "user_id",
            "control characters",
        ),
        (with("installment", "0"), "installment", "at least 1"),
        (with("installment", "1.5"), "installment", "whole number"),
        (with("installment", "-2"), "installment", "at least 1"),
    ];
    for (fields, field, problem) in cases {
        let (status, body) = post(&f.api, &fields).await;
        assert_eq!(status, 422, "{field}: {body}");
        assert_eq!(body["error"], "invalid_fields");
        let named = body["fields"].as_array().unwrap();
        assert!(
            named
                .iter()
                .any(|e| e["field"] == field && e["message"].as_str().unwrap().contains(problem)),
            "{field} / {problem}: {body}"
        );
    }
    let (status, body) = f.api.post_form(&[]).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["fields"].as_array().unwrap().len(),
        4,
        "all four named at once: {body}"
    );
}

#[tokio::test]
async fn a_method_installment_pair_outside_the_table_is_a_400() {
    let f = fixture().await;
    for (method, installment) in [
        ("credit_card", "13"),
        ("debit_card", "2"),
        ("transfer", "3"),
        ("cash", "12"),
    ] {
        let mut fields = with("method", method);
        fields.retain(|(k, _)| *k != "installment");
        fields.push(("installment", installment.into()));
        let (status, body) = post(&f.api, &fields).await;
        assert_eq!(status, 400, "{method} x{installment}: {body}");
        assert_eq!(body["fields"][0]["field"], "installment");
        assert!(body["message"].as_str().unwrap().contains(method));
    }
    let (status, _) = post(&f.api, &with("installment", "12")).await;
    assert_eq!(status, 201, "credit_card allows 12");
}

/// The reference answers 400 for a method outside its table; so does a drop-in replacement.
#[tokio::test]
async fn a_method_outside_the_table_is_a_400_naming_the_method() {
    let f = fixture().await;
    for method in ["not_exist", "pix", "CREDIT_CARD"] {
        let (status, body) = post(&f.api, &with("method", method)).await;
        assert_eq!(status, 400, "{method}: {body}");
        assert_eq!(body["error"], "bad_request", "{body}");
        assert_eq!(body["fields"][0]["field"], "method", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("must be one of"),
            "{body}"
        );
    }
    // Beside another malformed field it is listed with it, in one 422.
    let mut fields = with("method", "not_exist");
    fields.retain(|(k, _)| *k != "value");
    fields.push(("value", "abc".into()));
    let (status, body) = post(&f.api, &fields).await;
    assert_eq!(status, 422, "{body}");
    let named: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["value", "method"], "{body}");
}

#[tokio::test]
async fn wrong_content_types_and_oversized_bodies_get_json_errors() {
    let f = fixture().await;
    let r = f
        .api
        .http
        .post(f.api.url("/api/orders"))
        .json(&serde_json::json!({"value": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unsupported_media_type"
    );

    let r = f
        .api
        .http
        .post(f.api.url("/api/orders"))
        .body("value=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "no content type");

    let huge = format!("value=1&user_id={}", "x".repeat(200_000));
    let r = f
        .api
        .http
        .post(f.api.url("/api/orders"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );

    let r = f
        .api
        .http
        .post(f.api.url("/api/orders"))
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("multipart")
    );
}

#[tokio::test]
async fn unknown_orders_bad_ids_routes_and_methods_get_json_errors() {
    let f = fixture().await;
    let (status, body) = f
        .api
        .get_json(&format!("/api/order/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = f.api.get_json("/api/order/not-a-uuid").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    assert_eq!(body["fields"][0]["field"], "id");
    let (status, _) = f.api.get_json("/api/order/not-a-uuid/events").await;
    assert_eq!(status, 400);
    let (status, _) = f
        .api
        .get_json(&format!("/api/order/{}/events", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    let (status, body) = f.api.get_json("/api/nothing-here").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let r = f
        .api
        .http
        .delete(f.api.url("/api/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
}

#[tokio::test]
async fn listing_pages_through_a_users_orders_newest_first() {
    let f = fixture().await;
    let mut ids = Vec::new();
    for i in 1..=7 {
        let value = format!("{i}.00");
        let (status, body) = f
            .api
            .post_form(&[
                ("value", &value),
                ("user_id", "pager"),
                ("installment", "1"),
                ("method", "cash"),
            ])
            .await;
        assert_eq!(status, 201);
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let (status, body) = f.api.get_json("/api/orders/pager").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            body["offset"].as_u64(),
            body["limit"].as_u64(),
            body["total"].as_u64()
        ),
        (Some(0), Some(100), Some(7))
    );
    let got: Vec<&str> = body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);

    let (_, body) = f.api.get_json("/api/orders/pager?offset=2&limit=3").await;
    assert_eq!(body["total"], 7);
    let got: Vec<&str> = body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, &ids[2..5]);

    let (_, body) = f.api.get_json("/api/orders/pager?limit=500").await;
    assert_eq!(body["limit"], 100, "capped at 100");
    let (_, body) = f.api.get_json("/api/orders/nobody").await;
    assert_eq!(
        (
            body["total"].as_u64(),
            body["orders"].as_array().unwrap().len()
        ),
        (Some(0), 0)
    );

    for bad in ["offset=-1", "offset=x", "limit=0", "limit=-5", "limit=abc"] {
        let (status, body) = f.api.get_json(&format!("/api/orders/pager?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
}

#[tokio::test]
async fn an_idempotency_key_makes_retries_safe() {
    let f = fixture().await;
    let send = |fields: Vec<(&'static str, String)>, key: &'static str| {
        let api = f.api.clone();
        async move {
            let r = api
                .http
                .post(api.url("/api/orders"))
                .header("Idempotency-Key", key)
                .form(&fields)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s1, first) = send(with("value", "10"), "retry-me").await;
    let (s2, again) = send(with("value", "10.00"), "retry-me").await;
    let (s3, conflict) = send(with("value", "11"), "retry-me").await;
    assert_eq!((s1, s2, s3), (201, 200, 409));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(conflict["error"], "conflict");
    let (s4, _) = send(with("value", "10"), "another-key").await;
    assert_eq!(s4, 201);
}

#[tokio::test]
async fn the_method_table_is_published() {
    let f = fixture().await;
    let (status, body) = f.api.get_json("/api/methods").await;
    assert_eq!(status, 200);
    let table: Vec<(String, u64)> = body["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["method"].as_str().unwrap().to_string(),
                m["max_installments"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        table,
        [
            ("credit_card".into(), 12),
            ("debit_card".into(), 1),
            ("transfer".into(), 1),
            ("cash".into(), 1)
        ]
    );
}

#[tokio::test]
async fn events_come_from_the_event_log() {
    let f = fixture().await;
    let (_, body) = f.api.post_form(&VALID).await;
    let id = body["id"].as_str().unwrap();
    let (status, events) = f.api.get_json(&format!("/api/order/{id}/events")).await;
    assert_eq!(status, 200);
    assert_eq!(
        events["events"].as_array().unwrap().len(),
        0,
        "not copied to the log yet"
    );
    let relay = Relay::new(
        Arc::new(f.db.store.clone()),
        Arc::new(crate::common::fakes::Publisher::default()),
        Arc::new(f.mongo.log.clone()),
        RelaySettings::default(),
    );
    // A pass copies only rows below the cluster's oldest running transaction
    // (the relay's gap-safe horizon): another test's open transaction can hold
    // a pass back, so pass until the row is copied.
    let list = eventually(
        "the order's event in the log",
        Duration::from_secs(10),
        || async {
            relay.pass(Feed::Events).await.unwrap();
            let (_, events) = f.api.get_json(&format!("/api/order/{id}/events")).await;
            let list = events["events"].as_array().unwrap().clone();
            (!list.is_empty()).then_some(list)
        },
    )
    .await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"], "order_created");
    assert_eq!(list[0]["payload"]["value"], "1000.00");
}

#[tokio::test]
async fn health_readiness_and_the_swagger_document() {
    let f = fixture().await;
    let (status, body) = f.api.get_json("/health").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = f.api.get_json("/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["kafka"], "ok");
    assert_eq!(body["checks"]["mongodb"], "ok");

    let (status, doc) = f.api.get_json("/api-docs/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/api/orders",
        "/api/order/{id}",
        "/api/order/{id}/events",
        "/api/orders/{user_id}",
        "/api/methods",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} not documented");
    }
    let post = &doc["paths"]["/api/orders"]["post"]["requestBody"]["content"];
    assert!(
        post.get("application/x-www-form-urlencoded").is_some()
            && post.get("multipart/form-data").is_some()
    );

    let r = f
        .api
        .http
        .get(f.api.url("/swagger-ui/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("swagger"));
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(f.api.url("/swagger/index.html"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()["location"], "/swagger-ui/");
}

#[tokio::test]
async fn past_the_processing_limit_new_orders_get_a_503_with_retry_after() {
    let admission = Arc::new(Admission::new(2));
    let f = fixture_with(admission.clone()).await;
    let valid = with("value", "1000.00");
    for _ in 0..2 {
        assert_eq!(post(&f.api, &valid).await.0, 201);
    }
    let refused = f
        .api
        .http
        .post(f.api.url("/api/orders"))
        .form(&[
            ("value", "1000.00"),
            ("user_id", "uuuu-aaaa-bbbb"),
            ("installment", "1"),
            ("method", "credit_card"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "overloaded");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("API_MAX_PROCESSING"),
        "{body}"
    );
    // Nothing was stored for the refused order.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(f.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 2);

    // Once the saga settles orders, the recount (from PostgreSQL) lets new ones in.
    sqlx::query("UPDATE orders SET status = 'APPROVED', updated_at = now()")
        .execute(f.db.pool())
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel(); // count once, then return
    admission
        .clone()
        .run(Arc::new(f.db.store.clone()), Duration::from_secs(1), stop)
        .await;
    assert_eq!(post(&f.api, &valid).await.0, 201);
}
