//! The saga under failure, black box: servers and components stopped and
//! started again while orders flow. Each test runs its own processes (and,
//! where it stops one, its own broker or MongoDB).

use std::collections::HashSet;
use std::time::Duration;

use mongodb::bson::doc;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::common::{Launcher, PrivateServer, SystemEnv, eventually, free_port, place};

const SETTLE: Duration = Duration::from_secs(60);
/// Longer than every attempt of a step (8 + 16 + 32 s) in the broker test, so
/// that a step running out of attempts shows as its reason, not as a timeout.
const RECOVERY: Duration = Duration::from_secs(90);

async fn status_and_reason(api: &crate::common::Api, id: &str) -> (String, Option<String>) {
    status_and_reason_within(api, id, SETTLE).await
}

async fn status_and_reason_within(
    api: &crate::common::Api,
    id: &str,
    deadline: Duration,
) -> (String, Option<String>) {
    let order = api.wait_settled(id, deadline).await;
    (
        order["status"].as_str().unwrap().to_string(),
        order["cancel_reason"].as_str().map(str::to_owned),
    )
}

#[tokio::test]
async fn a_mongodb_outage_delays_the_event_log_but_not_the_saga_and_the_log_catches_up_exactly_once()
 {
    let mut mongo = PrivateServer::mongo();
    let launcher =
        Launcher::new(SystemEnv::on(None, Some(&mongo)).await).set("MONGODB_TIMEOUT_MS", 1000);
    let _all = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(SETTLE).await;
    let before = place(&api, "10.00", "mongo-user", "1", "cash").await;
    api.wait_settled(&before, SETTLE).await;

    mongo.stop();
    let mut during = Vec::new();
    for i in 0..10 {
        let user = if i % 3 == 0 {
            "mongo-user-invalid"
        } else {
            "mongo-user"
        };
        during.push(place(&api, "20.00", user, "1", "cash").await);
    }
    for id in &during {
        let (status, _) = status_and_reason(&api, id).await;
        assert_ne!(status, "PROCESSING");
    }
    let (status, body) = api
        .get_json(&format!("/api/order/{}/events", during[0]))
        .await;
    assert_eq!(status, 503, "the event log is down: {body}");
    assert_eq!(body["error"], "unavailable");
    let (status, ready) = api.get_json("/ready").await;
    assert_eq!(status, 503);
    assert_ne!(ready["checks"]["mongodb"], "ok", "{ready}");

    mongo.start();
    // Every event PostgreSQL recorded reaches MongoDB, once.
    let coll = launcher.env.mongo.log.collection().clone();
    let expected: Vec<(String,)> =
        sqlx::query_as("SELECT event_id::text FROM saga_log WHERE event_id IS NOT NULL")
            .fetch_all(launcher.pool())
            .await
            .unwrap();
    let expected: HashSet<String> = expected.into_iter().map(|(id,)| id).collect();
    eventually("the event log to catch up", SETTLE, || async {
        let unlogged: i64 =
            sqlx::query_scalar("SELECT count(*) FROM saga_log l, relay_feeds f WHERE f.feed = 'events' AND l.event_id IS NOT NULL AND (l.txid, l.seq) > (f.after_txid, f.after_seq)")
                .fetch_one(launcher.pool())
                .await
                .unwrap();
        (unlogged == 0).then_some(())
    })
    .await;
    let docs: Vec<mongodb::bson::Document> =
        futures::TryStreamExt::try_collect(coll.find(doc! {}).await.unwrap())
            .await
            .unwrap();
    let logged: Vec<String> = docs
        .iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect();
    let logged_set: HashSet<String> = logged.iter().cloned().collect();
    assert_eq!(logged.len(), logged_set.len(), "no duplicate event ids");
    let missing: Vec<&String> = expected.difference(&logged_set).collect();
    assert!(
        missing.is_empty(),
        "events recorded in PostgreSQL but missing from the log: {missing:?}"
    );
    let (_, events) = api
        .get_json(&format!("/api/order/{}/events", during[0]))
        .await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"order_created"));
    assert_eq!(types.last(), Some(&"status_changed"));
}

#[tokio::test]
async fn orders_accepted_while_the_broker_is_down_settle_once_it_is_back() {
    let mut kafka = PrivateServer::kafka();
    // Step timeouts of 8 + 16 + 32 s leave room for the broker to restart and
    // the consumers to rejoin it: the group waits out the old members' session
    // before it assigns partitions again. On a loaded CI machine that took over
    // 28 s (the 4 + 8 + 16 s used before), and the user step ran out of
    // attempts; this test is about recovery, not timeouts.
    let launcher = Launcher::new(SystemEnv::on(Some(&kafka), None).await)
        .set("STEP_TIMEOUT_MS", 8000)
        .set("SAGA_START_GRACE_MS", 2000)
        .set("KAFKA_MESSAGE_TIMEOUT_MS", 3000);
    let _all = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(SETTLE).await;
    let warm = place(&api, "10.00", "broker-user", "1", "cash").await;
    assert_eq!(status_and_reason(&api, &warm).await.0, "APPROVED");

    // The broker crashes (SIGKILL); it comes back with its log dir as it was.
    kafka.kill();
    let mut accepted = Vec::new();
    for i in 0..10 {
        let user = if i == 0 {
            "broker-user-invalid"
        } else {
            "broker-user"
        };
        accepted.push((place(&api, "30.00", user, "1", "cash").await, i == 0));
    }
    let (status, _) = api.get_json("/ready").await;
    assert_eq!(status, 503, "readiness names the broker while it is down");
    kafka.start();
    for (id, invalid) in &accepted {
        let (status, reason) = status_and_reason_within(&api, id, RECOVERY).await;
        if *invalid {
            assert_eq!(
                (status.as_str(), reason.as_deref()),
                ("CANCELED", Some("USER_INVALID"))
            );
        } else {
            assert_eq!(status, "APPROVED", "{id}");
        }
    }
    let settled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_status_transitions WHERE from_status = 'PROCESSING'",
    )
    .fetch_one(launcher.pool())
    .await
    .unwrap();
    assert_eq!(settled, 11, "each order settled exactly once");
}

#[tokio::test]
async fn a_step_without_replies_is_retried_then_canceled_and_its_deadline_survives_an_orchestrator_restart()
 {
    // No balance validator runs: its step can only time out.
    let launcher = Launcher::new(SystemEnv::new().await)
        .set("STEP_TIMEOUT_MS", 1000)
        .set("STEP_MAX_ATTEMPTS", 3)
        .set("STEP_BACKOFF_FACTOR", 2);
    let _api = launcher.spawn("api", &[]);
    let _stub = launcher.spawn("user-api", &[]);
    let _users = launcher.spawn("user-validator", &[]);
    let mut orchestrator = launcher.spawn("orchestrator", &[("RELAY_EMBEDDED", "false")]);
    let api = launcher.api();
    api.wait_healthy(SETTLE).await;
    let id = place(&api, "10.00", "patient", "1", "cash").await;
    eventually("the saga to start", SETTLE, || async {
        (launcher.events_of(&id, "command_sent").await >= 2).then_some(())
    })
    .await;

    // Kill the orchestrator: the deadlines are in PostgreSQL, not in its memory.
    orchestrator.kill();
    let _orchestrator = launcher.spawn("orchestrator", &[("RELAY_EMBEDDED", "false")]);
    let (status, reason) = status_and_reason(&api, &id).await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("CANCELED", Some("VALIDATION_TIMEOUT"))
    );
    let balance_timeouts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM saga_log WHERE order_id = $1::uuid AND event_type = 'step_timed_out'
           AND payload->>'step' = 'balance'",
    )
    .bind(&id)
    .fetch_one(launcher.pool())
    .await
    .unwrap();
    // (The user step may time out too when this machine is slow; only the balance step must.)
    assert_eq!(balance_timeouts, 3, "all three balance attempts timed out");
    let sent: Vec<(Value,)> = sqlx::query_as(
        "SELECT payload FROM saga_log WHERE order_id = $1::uuid AND event_type = 'command_sent' ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(launcher.pool())
    .await
    .unwrap();
    let balance_attempts: Vec<i64> = sent
        .iter()
        .filter(|(p,)| p["step"] == "balance")
        .map(|(p,)| p["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(
        balance_attempts,
        [1, 2, 3],
        "retried with a new attempt number each time"
    );
    assert_eq!(launcher.events_of(&id, "status_changed").await, 1);
}

#[tokio::test]
async fn a_user_api_that_stays_down_cancels_with_user_api_unavailable() {
    let dead = free_port();
    let launcher = Launcher::new(SystemEnv::new().await)
        .set("USER_API_URL", format!("http://127.0.0.1:{dead}"))
        .set("USER_API_STUB", false)
        .set("USER_API_RETRIES", 1)
        .set("USER_API_TIMEOUT_MS", 200);
    let _all = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(SETTLE).await;
    let id = place(&api, "10.00", "lonely", "1", "cash").await;
    let (status, reason) = status_and_reason(&api, &id).await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("CANCELED", Some("USER_API_UNAVAILABLE"))
    );
}

#[tokio::test]
async fn with_the_wait_policy_an_order_waits_for_the_user_api_to_come_back() {
    let launcher = Launcher::new(SystemEnv::new().await)
        .set("USER_API_FAILURE_POLICY", "wait")
        .set("USER_API_WAIT_RETRY_MS", 200)
        .set("SAGA_DEADLINE_MS", 120_000)
        .set("USER_API_RETRIES", 0)
        .set("USER_API_TIMEOUT_MS", 200)
        .set("USER_API_BREAKER_COOLDOWN_MS", 200)
        .set("USER_API_STUB", false);
    let _all = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(SETTLE).await;
    let id = place(&api, "10.00", "waiting", "1", "cash").await;
    // The user validator has answered "error" at least twice: the saga is waiting, not canceling.
    eventually("the saga to ask again after an error", SETTLE, || async {
        let asked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM saga_log WHERE order_id = $1::uuid AND event_type = 'command_sent' AND payload->>'step' = 'user'",
        )
        .bind(&id)
        .fetch_one(launcher.pool())
        .await
        .unwrap();
        (asked >= 3).then_some(())
    })
    .await;
    let (_, order) = api.get_json(&format!("/api/order/{id}")).await;
    assert_eq!(order["status"], "PROCESSING");

    let _stub = launcher.spawn("user-api", &[]);
    let (status, _) = status_and_reason(&api, &id).await;
    assert_eq!(status, "APPROVED");
}

/// A plain Kafka client, as an operator's tool would be.
fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

#[tokio::test]
async fn garbage_on_every_input_topic_is_dead_lettered_and_the_saga_carries_on() {
    let launcher = Launcher::new(SystemEnv::new().await);
    let _all = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(SETTLE).await;
    let k = launcher.env.kafka.clone();
    // Topics exist once the API answers (created at start).
    let inputs = [
        "orders.created",
        "user-validation.commands",
        "user-validation.replies",
        "balance-validation.commands",
        "balance-validation.replies",
    ];
    let p = producer(&k.brokers);
    let mut sent = 0;
    for topic in inputs {
        let full = format!("{}{topic}", k.topic_prefix);
        for partition in 0..k.partitions {
            // Unparseable JSON, with a message id so the dead letter can be traced back.
            let headers = OwnedHeaders::new().insert(Header {
                key: "message-id",
                value: Some("not-a-uuid"),
            });
            let record = FutureRecord::to(&full)
                .partition(partition)
                .key("junk")
                .payload("{not json")
                .headers(headers);
            p.send(record, Duration::from_secs(5)).await.unwrap();
            // A well-formed envelope with a payload of the wrong shape.
            let id = uuid::Uuid::new_v4().to_string();
            let mtype = match topic {
                "orders.created" => "order-created",
                "user-validation.commands" => "validate-user",
                "user-validation.replies" => "user-validated",
                "balance-validation.commands" => "validate-balance",
                _ => "balance-validated",
            };
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "message-id",
                    value: Some(id.as_str()),
                })
                .insert(Header {
                    key: "message-type",
                    value: Some(mtype),
                });
            let record = FutureRecord::to(&full)
                .partition(partition)
                .key("junk")
                .payload("{\"order_id\": 42}")
                .headers(headers);
            p.send(record, Duration::from_secs(5)).await.unwrap();
            sent += 2;
        }
    }

    // The partitions move on: new orders settle.
    let ok = place(&api, "10.00", "after-garbage", "1", "cash").await;
    let bad = place(&api, "10.00", "after-garbage-invalid", "1", "cash").await;
    assert_eq!(status_and_reason(&api, &ok).await.0, "APPROVED");
    assert_eq!(
        status_and_reason(&api, &bad).await.1.as_deref(),
        Some("USER_INVALID")
    );

    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &k.brokers)
        .set("group.id", format!("{}dlq-reader", k.group_prefix))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    dlq.subscribe(&[&format!("{}dead-letter", k.topic_prefix)])
        .unwrap();
    let mut sources = HashSet::new();
    let mut count = 0;
    while count < sent {
        let m = tokio::time::timeout(SETTLE, dlq.recv())
            .await
            .expect("every bad message is dead-lettered")
            .unwrap();
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            })
        };
        let error = header("dlq-error").expect("the error travels with the message");
        assert!(!error.is_empty());
        assert!(header("message-id").is_some(), "original headers kept");
        let source = header("dlq-source").unwrap();
        sources.insert(source.split('/').next().unwrap().to_string());
        assert_eq!(m.key(), Some(&b"junk"[..]));
        count += 1;
    }
    let expected: HashSet<String> = inputs
        .iter()
        .map(|t| format!("{}{t}", k.topic_prefix))
        .collect();
    assert_eq!(sources, expected, "dead letters from every input topic");
}

/// One POST of a load: when it went out, how long its answer took, and what it was.
#[derive(Debug, Clone)]
struct Answer {
    sent_at: std::time::Instant,
    took: Duration,
    /// The status, or the client's error (no answer within its timeout, connection refused...).
    status: Result<u16, String>,
    json: bool,
    body: Value,
}

/// Places orders from `workers` clients, one after another, until `stop`; every answer is kept.
fn keep_placing(
    api: &crate::common::Api,
    workers: usize,
    client_timeout: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<Answer>>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks = (0..workers)
        .map(|w| {
            let (api, stop, answers) = (api.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                let user = format!("pg-outage-{w}");
                while !stop.is_cancelled() {
                    let sent_at = std::time::Instant::now();
                    let response = api
                        .http
                        .post(api.url("/api/orders"))
                        .form(&[
                            ("value", "10.00"),
                            ("user_id", user.as_str()),
                            ("installment", "1"),
                            ("method", "cash"),
                        ])
                        .timeout(client_timeout)
                        .send()
                        .await;
                    let answer = match response {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let json = r
                                .headers()
                                .get(reqwest::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .is_some_and(|v| v.starts_with("application/json"));
                            let body = r.json().await.unwrap_or(Value::Null);
                            Answer {
                                sent_at,
                                took: sent_at.elapsed(),
                                status: Ok(status),
                                json,
                                body,
                            }
                        }
                        Err(e) => Answer {
                            sent_at,
                            took: sent_at.elapsed(),
                            status: Err(e.to_string()),
                            json: false,
                            body: Value::Null,
                        },
                    };
                    let refused = answer.status != Ok(201);
                    answers.lock().unwrap().push(answer);
                    if refused {
                        // A client backing off a little, as a real one would.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    (answers, tasks)
}

fn count_answers(
    answers: &std::sync::Mutex<Vec<Answer>>,
    check: impl Fn(&Answer) -> bool,
) -> usize {
    answers.lock().unwrap().iter().filter(|a| check(a)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_stopped_under_load_orders_are_refused_503_unavailable_and_none_accepted_is_lost()
 {
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    let mut pg = PrivateServer::postgres();
    let launcher = Launcher::new(SystemEnv::on_postgres(&pg).await)
        .set("API_REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT.as_millis())
        // Below the request timeout, as the defaults are (5 s and 15 s): a
        // request waiting for a connection is answered `unavailable`, not `timeout`.
        .set("DATABASE_ACQUIRE_TIMEOUT_MS", 1000);
    let mut all = launcher.spawn("all", &[]);
    let api = launcher.api();
    api.wait_healthy(SETTLE).await;
    let warm = place(&api, "10.00", "pg-outage-warm", "1", "cash").await;
    assert_eq!(status_and_reason(&api, &warm).await.0, "APPROVED");

    let stop_load = tokio_util::sync::CancellationToken::new();
    let (answers, workers) = keep_placing(
        &api,
        4,
        REQUEST_TIMEOUT + Duration::from_secs(5),
        stop_load.clone(),
    );
    eventually("20 orders accepted before the outage", SETTLE, || async {
        (count_answers(&answers, |a| a.status == Ok(201)) >= 20).then_some(())
    })
    .await;

    // PostgreSQL stops (a fast shutdown: its sessions are ended) while orders flow.
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let down_at = std::time::Instant::now();
    eventually(
        "10 orders sent and answered while PostgreSQL is down",
        SETTLE,
        || async { (count_answers(&answers, |a| a.sent_at >= down_at) >= 10).then_some(()) },
    )
    .await;
    let (status, ready) = api.get_json("/ready").await;
    assert_eq!(status, 503, "readiness names PostgreSQL while it is down");
    assert_ne!(ready["checks"]["postgres"], "ok", "{ready}");
    let restart_at = std::time::Instant::now();
    let pg = tokio::task::spawn_blocking(move || {
        pg.start();
        pg
    })
    .await
    .unwrap();
    let up_at = std::time::Instant::now();
    eventually(
        "20 orders accepted after PostgreSQL is back",
        SETTLE,
        || async {
            (count_answers(&answers, |a| a.sent_at >= up_at && a.status == Ok(201)) >= 20)
                .then_some(())
        },
    )
    .await;
    stop_load.cancel();
    for w in workers {
        w.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    eprintln!(
        "{} POSTs: {} answered 201, {} answered 503; slowest answer {:?}",
        answers.len(),
        answers.iter().filter(|a| a.status == Ok(201)).count(),
        answers.iter().filter(|a| a.status == Ok(503)).count(),
        answers.iter().map(|a| a.took).max().unwrap_or_default()
    );

    // Only two answers, ever: 201, or 503 `unavailable` as JSON; each within the request timeout.
    let odd: Vec<&Answer> = answers
        .iter()
        .filter(|a| match a.status {
            Ok(201) => false,
            Ok(503) => !(a.json && a.body["error"] == "unavailable"),
            _ => true,
        })
        .collect();
    assert!(
        odd.is_empty(),
        "answers other than 201 and 503 unavailable: {odd:#?}"
    );
    let slow: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.took > REQUEST_TIMEOUT + Duration::from_secs(1))
        .collect();
    assert!(
        slow.is_empty(),
        "answered past the request timeout: {slow:#?}"
    );
    let during: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent_at >= down_at && a.sent_at + a.took <= restart_at)
        .collect();
    assert!(
        during.len() >= 10,
        "sent and answered during the outage: {}",
        during.len()
    );
    assert!(
        during.iter().all(|a| a.status == Ok(503)),
        "while PostgreSQL is down every order is refused: {during:#?}"
    );

    // Every order that got its 201 is stored and settles, once.
    let accepted: Vec<String> = answers
        .iter()
        .filter(|a| a.status == Ok(201))
        .map(|a| a.body["id"].as_str().unwrap().to_string())
        .collect();
    let pool = launcher.pool();
    eventually("every accepted order to settle", SETTLE, || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[]) AND status = 'PROCESSING'",
        )
        .bind(&accepted)
        .fetch_one(pool)
        .await
        .ok()?;
        (open == 0).then_some(())
    })
    .await;
    let approved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[]) AND status = 'APPROVED'",
    )
    .bind(&accepted)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        approved as usize,
        accepted.len(),
        "every accepted order exists and is APPROVED"
    );
    let settled_once: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT order_id) FROM order_status_transitions
          WHERE order_id = ANY($1::uuid[]) AND from_status = 'PROCESSING'",
    )
    .bind(&accepted)
    .fetch_one(pool)
    .await
    .unwrap();
    let transitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_status_transitions
          WHERE order_id = ANY($1::uuid[]) AND from_status = 'PROCESSING'",
    )
    .bind(&accepted)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (settled_once, transitions),
        (accepted.len() as i64, accepted.len() as i64),
        "each accepted order left PROCESSING exactly once"
    );
    assert!(
        all.is_running(),
        "`ordersaga all` rode out the outage: {}",
        all.log()
    );
    drop(pg);
}
