//! The Kafka adapter against the broker: topics, the producer's headers, the
//! consumer loop, and dead letters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ordersaga::adapters::kafka::{
    ConsumerSettings, KafkaPublisher, KafkaSettings, ensure_topics, run_consumer,
};
use ordersaga::application::messages::{InboundMessage, MessageType, OutboundMessage, Topic};
use ordersaga::application::ports::{HandleError, MessageHandler, MessagePublisher};
use ordersaga::domain::OrderId;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{eventually, kafka_settings};

/// Records messages; fails on payloads that ask for it.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<InboundMessage>>,
    attempts: Mutex<u32>,
}

#[async_trait]
impl MessageHandler for Recorder {
    async fn handle(&self, m: &InboundMessage) -> Result<(), HandleError> {
        let body = String::from_utf8_lossy(m.payload.as_deref().unwrap_or_default()).to_string();
        if body.contains("poison") {
            return Err(HandleError::Poison("cannot parse (test)".into()));
        }
        if body.contains("flaky") {
            *self.attempts.lock().unwrap() += 1;
            return Err(HandleError::Failed(anyhow::anyhow!("keeps failing (test)")));
        }
        self.seen.lock().unwrap().push(m.clone());
        Ok(())
    }
}

fn message(topic: Topic, payload: serde_json::Value) -> OutboundMessage {
    OutboundMessage::new(
        Uuid::new_v4(),
        topic,
        OrderId::new(),
        MessageType::OrderCreated,
        "corr-k",
        &payload,
    )
}

async fn start(
    k: &Arc<KafkaSettings>,
    handler: Arc<Recorder>,
    max_attempts: u32,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    KafkaPublisher,
) {
    ensure_topics(k).await.unwrap();
    let publisher = KafkaPublisher::new(k.clone(), "test").unwrap();
    let mut cs = ConsumerSettings::new("recorder", vec![Topic::OrdersCreated]);
    cs.max_attempts = max_attempts;
    cs.initial_backoff = Duration::from_millis(5);
    let token = CancellationToken::new();
    let task = tokio::spawn(run_consumer(
        k.clone(),
        cs,
        handler,
        Arc::new(publisher.clone()),
        token.clone(),
    ));
    (token, task, publisher)
}

fn raw_consumer(k: &KafkaSettings, topic: Topic) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &k.brokers)
        .set(
            "group.id",
            format!("{}raw-{}", k.group_prefix, Uuid::new_v4()),
        )
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    c.subscribe(&[&k.topic(topic)]).unwrap();
    c
}

#[tokio::test]
async fn topics_are_created_once_with_the_prefix() {
    let k = kafka_settings();
    ensure_topics(&k).await.unwrap();
    ensure_topics(&k).await.expect("existing topics are fine");
    let publisher = KafkaPublisher::new(k.clone(), "test").unwrap();
    publisher.ping().await.unwrap();
    let c = Arc::new(raw_consumer(&k, Topic::OrdersCreated));
    // A created topic reaches every broker's metadata a moment after the
    // creation was acknowledged (KRaft propagates it through the metadata log).
    eventually(
        "every topic in the metadata",
        Duration::from_secs(30),
        || {
            let (c, k2) = (c.clone(), k.clone());
            let prefix = k.topic_prefix.clone();
            async move {
                let names: Vec<String> = tokio::task::spawn_blocking(move || {
                    let md = c.fetch_metadata(None, Duration::from_secs(5)).unwrap();
                    md.topics()
                        .iter()
                        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                        .map(|t| t.name().to_owned())
                        .filter(|n| n.starts_with(&prefix))
                        .collect()
                })
                .await
                .unwrap();
                Topic::ALL
                    .iter()
                    .all(|t| names.contains(&k2.topic(*t)))
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn published_messages_reach_the_handler_with_key_headers_and_payload() {
    let k = kafka_settings();
    let recorder = Arc::new(Recorder::default());
    let (token, task, publisher) = start(&k, recorder.clone(), 3).await;
    let sent: Vec<OutboundMessage> = (0..20)
        .map(|i| message(Topic::OrdersCreated, serde_json::json!({ "n": i })))
        .collect();
    publisher.publish(&sent).await.unwrap();

    let seen = eventually("20 messages handled", Duration::from_secs(30), || async {
        let seen = recorder.seen.lock().unwrap().clone();
        (seen.len() >= 20).then_some(seen)
    })
    .await;
    assert_eq!(seen.len(), 20);
    for out in &sent {
        let got = seen
            .iter()
            .find(|m| m.header("message-id") == Some(&out.message_id.to_string()))
            .expect("received");
        assert_eq!(got.topic, Some(Topic::OrdersCreated));
        assert_eq!(got.key.as_deref(), Some(out.key.as_bytes()));
        assert_eq!(got.header("correlation-id"), Some("corr-k"));
        assert_eq!(got.header("message-type"), Some("order-created"));
        assert!(got.header("message-time").is_some());
        let payload: serde_json::Value =
            serde_json::from_slice(got.payload.as_deref().unwrap()).unwrap();
        assert_eq!(payload, out.payload);
    }
    token.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("consumer stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn poison_and_repeatedly_failing_messages_are_dead_lettered_and_the_partition_moves_on() {
    let k = kafka_settings();
    let recorder = Arc::new(Recorder::default());
    let (token, task, publisher) = start(&k, recorder.clone(), 3).await;
    // One key, so all three land on one partition, in order.
    let mut batch = vec![
        message(Topic::OrdersCreated, serde_json::json!("poison")),
        message(Topic::OrdersCreated, serde_json::json!("flaky")),
        message(Topic::OrdersCreated, serde_json::json!("fine")),
    ];
    for m in &mut batch {
        m.key = "same-key".into();
    }
    publisher.publish(&batch).await.unwrap();

    eventually(
        "the good message after the bad ones",
        Duration::from_secs(30),
        || async { (recorder.seen.lock().unwrap().len() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        *recorder.attempts.lock().unwrap(),
        3,
        "a failing message gets max_attempts tries"
    );

    let dlq = raw_consumer(&k, Topic::DeadLetter);
    let mut dead = Vec::new();
    while dead.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
            .await
            .expect("dead letters arrive")
            .unwrap();
        let headers: Vec<(String, String)> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        dead.push((
            String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
            headers,
        ));
    }
    let header = |d: &(String, Vec<(String, String)>), k: &str| {
        d.1.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    assert_eq!(dead[0].0, "\"poison\"");
    assert_eq!(
        header(&dead[0], "dlq-error").as_deref(),
        Some("cannot parse (test)")
    );
    assert_eq!(
        header(&dead[0], "message-id"),
        Some(batch[0].message_id.to_string()),
        "original headers kept"
    );
    assert!(
        header(&dead[0], "dlq-source")
            .unwrap()
            .starts_with(&k.topic(Topic::OrdersCreated))
    );
    assert_eq!(dead[1].0, "\"flaky\"");
    assert!(
        header(&dead[1], "dlq-error")
            .unwrap()
            .contains("failed 3 times")
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("consumer stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn handled_offsets_are_committed_so_a_restart_does_not_replay_them() {
    let k = kafka_settings();
    let first = Arc::new(Recorder::default());
    let (token, task, publisher) = start(&k, first.clone(), 3).await;
    let batch: Vec<_> = (0..5)
        .map(|i| message(Topic::OrdersCreated, serde_json::json!({ "n": i })))
        .collect();
    publisher.publish(&batch).await.unwrap();
    eventually("5 handled", Duration::from_secs(30), || async {
        (first.seen.lock().unwrap().len() == 5).then_some(())
    })
    .await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("consumer stops")
        .unwrap()
        .unwrap();

    let second = Arc::new(Recorder::default());
    let (token, task, publisher) = start(&k, second.clone(), 3).await;
    let marker = message(
        Topic::OrdersCreated,
        serde_json::json!({ "n": "after restart" }),
    );
    publisher
        .publish(std::slice::from_ref(&marker))
        .await
        .unwrap();
    eventually("the new message", Duration::from_secs(30), || async {
        (!second.seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let seen = second.seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        1,
        "only the new message: {:?}",
        seen.iter().map(|m| &m.source).collect::<Vec<_>>()
    );
    assert_eq!(
        seen[0].header("message-id"),
        Some(marker.message_id.to_string().as_str())
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("consumer stops")
        .unwrap()
        .unwrap();
}

/// A producer that librdkafka declares fatally broken (an idempotence
/// guarantee lost) refuses every message until it is recreated: the publisher
/// replaces it, so publishing works again.
#[tokio::test]
async fn a_fatally_broken_producer_is_replaced_and_publishing_goes_on() {
    let k = kafka_settings();
    ensure_topics(&k).await.unwrap();
    let publisher = KafkaPublisher::new(k.clone(), "test").unwrap();
    let message = |n: u32| message(Topic::OrdersCreated, serde_json::json!({ "n": n }));
    publisher
        .publish(&[message(0)])
        .await
        .expect("a healthy producer delivers");
    publisher.break_for_test();
    let refused = publisher.publish(&[message(1)]).await;
    assert!(
        refused.is_err(),
        "a fatally broken producer refuses: {refused:?}"
    );
    publisher
        .publish(&[message(2)])
        .await
        .expect("the replaced producer delivers");
}
