//! Step definitions: small, all through the scenario's system's one HTTP client.

use std::time::{Duration, Instant};

use cucumber::gherkin::Step;
use cucumber::{given, then, when};
use serde_json::Value;

use crate::OrderWorld;
use crate::common::eventually;

const SETTLE: Duration = Duration::from_secs(60);

fn last(w: &OrderWorld) -> &(u16, Value) {
    w.last.as_ref().expect("a request was made")
}

fn order_id(w: &OrderWorld) -> String {
    w.order.as_ref().expect("an order was accepted")["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The rows of a one-column data table.
fn column(step: &Step) -> Vec<String> {
    step.table
        .as_ref()
        .expect("a table")
        .rows
        .iter()
        .map(|r| r[0].trim().to_string())
        .collect()
}

async fn send(w: &mut OrderWorld, form: &[(&str, &str)], key: Option<&str>) {
    let api = w.api();
    let mut request = api.http.post(api.url("/api/orders")).form(form);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("request sent");
    record(w, response).await;
}

async fn record(w: &mut OrderWorld, response: reqwest::Response) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 201 {
        w.accepted_at = Some(Instant::now());
        w.placed.push(body["id"].as_str().unwrap().to_string());
        w.order = Some(body.clone());
    }
    w.last = Some((status, body));
}

async fn timeline(w: &OrderWorld, complete: bool) -> Vec<Value> {
    let id = order_id(w);
    eventually("the order's timeline", SETTLE, || async {
        let (status, body) = w.api().get_json(&format!("/api/order/{id}/events")).await;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        let done = events.iter().any(|e| e["type"] == "status_changed");
        (status == 200 && (done || !complete) && !events.is_empty()).then_some(events)
    })
    .await
}

// ---------------------------------------------------------------- given

#[given(expr = "a user called {string}")]
fn a_user(w: &mut OrderWorld, name: String) {
    w.user = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
}

#[given(expr = "the user has placed {int} orders")]
async fn has_placed(w: &mut OrderWorld, n: usize) {
    for i in 1..=n {
        let value = format!("{i}.00");
        let user = w.user.clone();
        send(
            w,
            &[
                ("value", &value),
                ("user_id", &user),
                ("installment", "1"),
                ("method", "cash"),
            ],
            None,
        )
        .await;
        assert_eq!(last(w).0, 201);
    }
}

#[given("the system has settled an order already")]
async fn warm(w: &mut OrderWorld) {
    let api = w.api();
    let id = crate::common::place(api, "1.00", "warm-up", "1", "cash").await;
    api.wait_settled(&id, SETTLE).await;
}

#[given("the balance validator is stopped")]
fn balance_stopped(w: &mut OrderWorld) {
    w.system().stop("balance-validator");
}

// ----------------------------------------------------------------- when

#[when(
    regex = r#"^the user places an order of "([^"]*)" in (\d+) installments? by "([^"]*)"(?: with the key "([^"]*)")?$"#
)]
async fn places_order(
    w: &mut OrderWorld,
    value: String,
    installments: String,
    method: String,
    key: String,
) {
    let user = w.user.clone();
    let form = [
        ("value", value.as_str()),
        ("user_id", &user),
        ("installment", &installments),
        ("method", &method),
    ];
    send(w, &form, (!key.is_empty()).then_some(key.as_str())).await;
}

#[when(
    regex = r#"^the user places a multipart order of "([^"]*)" in (\d+) installments? by "([^"]*)"$"#
)]
async fn places_multipart(w: &mut OrderWorld, value: String, installments: String, method: String) {
    let api = w.api();
    let form = reqwest::multipart::Form::new()
        .text("value", value)
        .text("user_id", w.user.clone())
        .text("installment", installments)
        .text("method", method);
    let response = api
        .http
        .post(api.url("/api/orders"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    record(w, response).await;
}

#[when(regex = r#"^the user sends an order form with (\w+) set to "([^"]*)"$"#)]
async fn sends_with(w: &mut OrderWorld, field: String, value: String) {
    let user = w.user.clone();
    let mut form = [
        ("value", "10.00".to_string()),
        ("user_id", user),
        ("installment", "1".into()),
        ("method", "cash".into()),
    ];
    form.iter_mut()
        .find(|(k, _)| *k == field)
        .expect("a form field")
        .1 = value;
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send(w, &form, None).await;
}

#[when(regex = r"^the user sends an order form without (\w+)$")]
async fn sends_without(w: &mut OrderWorld, field: String) {
    let user = w.user.clone();
    let form = [
        ("value", "10.00"),
        ("user_id", user.as_str()),
        ("installment", "1"),
        ("method", "cash"),
    ];
    let form: Vec<(&str, &str)> = form.into_iter().filter(|(k, _)| *k != field).collect();
    send(w, &form, None).await;
}

#[when(expr = "an order is sent for a user id of {int} characters")]
async fn long_user(w: &mut OrderWorld, n: usize) {
    let user = "u".repeat(n);
    send(
        w,
        &[
            ("value", "10.00"),
            ("user_id", &user),
            ("installment", "1"),
            ("method", "cash"),
        ],
        None,
    )
    .await;
}

#[when("an order is sent as JSON")]
async fn as_json(w: &mut OrderWorld) {
    let api = w.api();
    let body = serde_json::json!({ "value": "10.00", "user_id": "json", "installment": 1, "method": "cash" });
    let response = api
        .http
        .post(api.url("/api/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    record(w, response).await;
}

#[when(regex = r#"^the user lists their orders(?: with "([^"]*)")?$"#)]
async fn lists(w: &mut OrderWorld, query: String) {
    let path = format!("/api/orders/{}?{query}", w.user);
    let response = w.api().get_json(&path).await;
    w.last = Some(response);
}

#[when("the balance validator is started again")]
fn balance_started(w: &mut OrderWorld) {
    w.system()
        .start_again("balance-validator", "balance-validator");
}

#[when("the OpenAPI document is read")]
async fn read_openapi(w: &mut OrderWorld) {
    let response = w.api().get_json("/api-docs/openapi.json").await;
    w.last = Some(response);
}

// ----------------------------------------------------------------- then

#[then("the order is accepted as PROCESSING")]
fn accepted(w: &mut OrderWorld) {
    let (status, body) = last(w);
    assert_eq!(*status, 201, "{body}");
    assert_eq!(body["status"], "PROCESSING");
    assert_eq!(body["user_id"], w.user.as_str());
}

#[then(expr = "its value reads {string}")]
fn value_reads(w: &mut OrderWorld, value: String) {
    assert_eq!(w.order.as_ref().unwrap()["value"], value.as_str());
}

#[then(regex = r#"^the order is refused with (\d+) naming "([^"]*)"(?: because it "([^"]*)")?$"#)]
fn refused(w: &mut OrderWorld, status: u16, field: String, problem: String) {
    let (got, body) = last(w);
    assert_eq!(*got, status, "{body}");
    let fields = body["fields"].as_array().expect("fields are named");
    let named = fields
        .iter()
        .find(|f| f["field"] == field.as_str())
        .unwrap_or_else(|| panic!("{field} not named in {body}"));
    assert!(
        named["message"].as_str().unwrap().contains(&problem),
        "{body}"
    );
}

#[then(regex = r#"^the answer is (\d+) with error "([^"]*)"$"#)]
fn answer_with_error(w: &mut OrderWorld, status: u16, error: String) {
    let (got, body) = last(w);
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"], error.as_str(), "{body}");
}

#[then(expr = "the answer is {int} with the same order")]
fn same_order(w: &mut OrderWorld, status: u16) {
    let (got, body) = last(w);
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["id"], w.order.as_ref().unwrap()["id"], "{body}");
}

#[then(expr = "the user has {int} order(s)")]
async fn user_has(w: &mut OrderWorld, n: u64) {
    let (status, list) = w.api().get_json(&format!("/api/orders/{}", w.user)).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], n, "{list}");
}

#[then("the user's orders list it")]
async fn listed(w: &mut OrderWorld) {
    let id = order_id(w);
    let (status, list) = w.api().get_json(&format!("/api/orders/{}", w.user)).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["orders"][0]["id"], id.as_str());
}

#[then(
    regex = r"^the page shows (\d+) orders, newest first, with offset (\d+), limit (\d+) and total (\d+)$"
)]
fn page_shows(w: &mut OrderWorld, count: usize, offset: u64, limit: u64, total: u64) {
    let (status, body) = last(w);
    assert_eq!(*status, 200, "{body}");
    assert_eq!(
        (
            body["offset"].as_u64(),
            body["limit"].as_u64(),
            body["total"].as_u64()
        ),
        (Some(offset), Some(limit), Some(total))
    );
    let ids: Vec<&str> = body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = w.placed.iter().rev().map(String::as_str).collect();
    assert_eq!(ids.len(), count);
    assert_eq!(
        ids,
        newest_first[offset.min(newest_first.len() as u64) as usize..][..count]
    );
}

#[then(
    regex = r"^the page shows orders (\d+) to (\d+) of the newest-first list, with total (\d+)$"
)]
fn page_slice(w: &mut OrderWorld, from: usize, to: usize, total: u64) {
    let (status, body) = last(w);
    assert_eq!(*status, 200, "{body}");
    assert_eq!(body["total"], total);
    let ids: Vec<&str> = body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = w.placed.iter().rev().map(String::as_str).collect();
    assert_eq!(ids, newest_first[from - 1..to]);
}

#[then(regex = r"^the order becomes (APPROVED|CANCELED)(?: because ([A-Z_]+))?$")]
async fn becomes(w: &mut OrderWorld, status: String, reason: String) {
    let order = w.api().wait_settled(&order_id(w), SETTLE).await;
    assert_eq!(order["status"], status.as_str(), "{order}");
    if !reason.is_empty() {
        assert_eq!(order["cancel_reason"], reason.as_str(), "{order}");
    }
}

#[then(expr = "the order settles as {word} within {int} second(s) of its 201")]
async fn settles_within(w: &mut OrderWorld, status: String, secs: u64) {
    let accepted_at = w.accepted_at.expect("an order was accepted");
    let deadline = accepted_at + Duration::from_secs(secs);
    let id = order_id(w);
    // Polled every 10 ms, not with `eventually`: its backoff (up to 200 ms
    // between reads) would eat into the budget being measured.
    loop {
        let (code, order) = w.api().get_json(&format!("/api/order/{id}")).await;
        let seen = accepted_at.elapsed();
        if code == 200 && order["status"] != "PROCESSING" {
            assert_eq!(order["status"], status.as_str(), "{order}");
            assert!(
                Instant::now() <= deadline,
                "settled, but only seen {seen:?} after its 201: {order}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still PROCESSING {seen:?} after its 201 (promise: {secs} s): {code} {order}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[then("the user step has answered while the order is still PROCESSING")]
async fn waiting_for_balance(w: &mut OrderWorld) {
    let events = eventually("the user step's reply", SETTLE, || async {
        let events = timeline(w, false).await;
        events
            .iter()
            .any(|e| e["type"] == "reply_received" && e["payload"]["step"] == "user")
            .then_some(events)
    })
    .await;
    assert!(!events.iter().any(|e| e["type"] == "status_changed"));
    let (_, order) = w
        .api()
        .get_json(&format!("/api/order/{}", order_id(w)))
        .await;
    assert_eq!(order["status"], "PROCESSING", "{order}");
}

#[then("the order's timeline reads:")]
async fn timeline_reads(w: &mut OrderWorld, step: &Step) {
    let events = timeline(w, true).await;
    let mut got: Vec<String> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    let mut expected = column(step);
    // The two commands and the two replies may come in either order; the rest is fixed.
    assert_eq!(got.first(), expected.first());
    assert_eq!(got.last(), expected.last());
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

#[then("the order's timeline starts with:")]
async fn timeline_starts(w: &mut OrderWorld, step: &Step) {
    let events = timeline(w, true).await;
    let got: Vec<String> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    let expected = column(step);
    assert_eq!(got[..expected.len()], expected[..], "{got:?}");
}

#[then(
    regex = r"^the timeline ends with the status changing to (APPROVED|CANCELED)(?: because ([A-Z_]+))?$"
)]
async fn timeline_ends(w: &mut OrderWorld, status: String, reason: String) {
    let events = timeline(w, true).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "status_changed");
    assert_eq!(last["payload"]["from"], "PROCESSING");
    assert_eq!(last["payload"]["to"], status.as_str());
    if !reason.is_empty() {
        assert_eq!(last["payload"]["cancel_reason"], reason.as_str());
    }
}

#[then("it lists these routes:")]
fn lists_routes(w: &mut OrderWorld, step: &Step) {
    let (status, doc) = last(w);
    assert_eq!(*status, 200);
    let rows = &step.table.as_ref().expect("a table").rows;
    for row in rows.iter().skip(1) {
        let (method, path) = (row[0].trim(), row[1].trim());
        assert!(
            doc["paths"][path].get(method).is_some(),
            "{method} {path} is not documented"
        );
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        rows.len() - 1,
        "no route documented that the table does not name"
    );
}

#[then(expr = "{string} answers {int}")]
async fn answers(w: &mut OrderWorld, path: String, status: u16) {
    let r = w.api().http.get(w.api().url(&path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), status);
}

#[then(expr = "{string} redirects to {string}")]
async fn redirects(w: &mut OrderWorld, path: String, target: String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client.get(w.api().url(&path)).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()["location"], target.as_str());
}
