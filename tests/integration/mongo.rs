//! The MongoDB event log.

use chrono::{TimeZone, Utc};
use mongodb::bson::doc;
use ordersaga::application::ports::{EventLog, EventRecord};
use ordersaga::domain::{OrderId, SagaEventKind};
use serde_json::json;
use uuid::Uuid;

use crate::common::TestMongo;

fn event(order_id: OrderId, seq: i64, kind: SagaEventKind) -> EventRecord {
    EventRecord {
        event_id: Uuid::new_v4(),
        order_id,
        seq,
        kind,
        payload: json!({ "seq": seq, "nested": { "list": [1, "two"] } }),
        at: Utc.timestamp_opt(1_800_000_000, seq as u32 * 1000).unwrap(),
    }
}

#[tokio::test]
async fn appended_events_come_back_in_sequence_order_with_their_payload() {
    let m = TestMongo::new().await;
    let order = OrderId::new();
    let other = OrderId::new();
    let events = vec![
        event(order, 3, SagaEventKind::CommandSent),
        event(order, 1, SagaEventKind::OrderCreated),
        event(other, 2, SagaEventKind::OrderCreated),
        event(order, 2, SagaEventKind::SagaStarted),
    ];
    m.log.append(&events).await.unwrap();
    let got = m.log.for_order(order).await.unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let expected = events.iter().find(|e| e.seq == 1).unwrap();
    assert_eq!(
        &got[0], expected,
        "every field survives the round trip, microseconds included"
    );
}

#[tokio::test]
async fn appending_again_never_duplicates_an_event() {
    let m = TestMongo::new().await;
    let order = OrderId::new();
    let first = vec![
        event(order, 1, SagaEventKind::OrderCreated),
        event(order, 2, SagaEventKind::SagaStarted),
    ];
    m.log.append(&first).await.unwrap();
    // The relay may deliver a batch again after a crash, mixed with new events.
    let mut again = first.clone();
    again.push(event(order, 3, SagaEventKind::CommandSent));
    m.log.append(&again).await.unwrap();
    m.log.append(&again).await.unwrap();
    let got = m.log.for_order(order).await.unwrap();
    assert_eq!(got.len(), 3);
    let count = m
        .log
        .collection()
        .count_documents(doc! { "order_id": order.to_string() })
        .await
        .unwrap();
    assert_eq!(count, 3);
}

#[tokio::test]
async fn the_log_is_indexed_by_order_id() {
    let m = TestMongo::new().await;
    m.log
        .ensure_indexes()
        .await
        .expect("creating the index again is harmless");
    let names = m.log.collection().list_index_names().await.unwrap();
    assert!(names.iter().any(|n| n == "order_id_seq"), "{names:?}");
    m.log.ping().await.unwrap();
}
