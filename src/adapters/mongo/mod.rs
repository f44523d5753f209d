//! MongoDB: the saga event log, one document per event.
//!
//! Documents are keyed by event id (`_id`), so appending an event twice is a
//! duplicate-key error that is ignored: the log never holds a duplicate.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, InsertManyOptions, WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};
use uuid::Uuid;

use super::Refused;
use crate::application::ports::{EventLog, EventLogError, EventRecord};
use crate::domain::OrderId;

pub const EVENTS_COLLECTION: &str = "saga_events";
const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub uri: String,
    pub database: String,
    /// How long an operation waits for a reachable server.
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct MongoEventLog {
    events: Collection<Document>,
    /// Where the servers are, for messages (never the credentials).
    hosts: String,
}

impl MongoEventLog {
    /// Builds the client; no connection is made until the first operation.
    pub async fn connect(settings: &MongoSettings) -> anyhow::Result<Self> {
        let mut options = ClientOptions::parse(&settings.uri)
            .await
            .context("MONGODB_URI is not a valid MongoDB URI")?;
        options
            .server_selection_timeout
            .get_or_insert(settings.timeout);
        options.connect_timeout.get_or_insert(settings.timeout);
        options.app_name.get_or_insert_with(|| "ordersaga".into());
        let hosts = options
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let client = Client::with_options(options).context("cannot build the MongoDB client")?;
        // Journaled writes: an acknowledged event survives a crash of the server,
        // so the relay may mark it logged (an unjournaled ack can be lost).
        let durable = CollectionOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Nodes(1))
                    .journal(true)
                    .build(),
            )
            .build();
        let events = client
            .database(&settings.database)
            .collection_with_options::<Document>(EVENTS_COLLECTION, durable);
        Ok(Self { events, hosts })
    }

    /// Asks the server once, at start: a certificate that does not verify or
    /// refused credentials stop start-up with a [`Refused`] naming MongoDB;
    /// an unreachable server does not (the event log catches up later).
    pub async fn check(&self) -> anyhow::Result<()> {
        let ping = self
            .events
            .client()
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await;
        match ping {
            Ok(_) => Ok(()),
            Err(e) if refused(&e) => Err(Refused(format!(
                "MongoDB at {} refused the connection: {e}",
                self.hosts
            ))
            .into()),
            Err(e) => {
                tracing::warn!(error = %e, hosts = %self.hosts, "MongoDB does not answer yet; the event log will catch up when it does");
                Ok(())
            }
        }
    }

    /// Creates the index on order id (and sequence) if missing. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<(), EventLogError> {
        let index = IndexModel::builder()
            .keys(doc! { "order_id": 1, "seq": 1 })
            .options(
                IndexOptions::builder()
                    .name("order_id_seq".to_string())
                    .build(),
            )
            .build();
        self.events.create_index(index).await.map_err(classify)?;
        Ok(())
    }

    pub fn collection(&self) -> &Collection<Document> {
        &self.events
    }
}

fn to_document(e: &EventRecord) -> Result<Document, EventLogError> {
    let payload = bson::to_bson(&e.payload).map_err(|err| EventLogError::Other(err.into()))?;
    Ok(doc! {
        "_id": e.event_id.to_string(),
        "order_id": e.order_id.to_string(),
        "seq": e.seq,
        "type": e.kind.as_str(),
        "payload": payload,
        "at": bson::DateTime::from_millis(e.at.timestamp_millis()),
        "at_micros": e.at.timestamp_micros(),
    })
}

fn from_document(d: Document) -> anyhow::Result<EventRecord> {
    let micros = d.get_i64("at_micros").ok();
    let at = match micros {
        Some(us) => DateTime::<Utc>::from_timestamp_micros(us).context("bad at_micros")?,
        None => DateTime::<Utc>::from_timestamp_millis(d.get_datetime("at")?.timestamp_millis())
            .context("bad at")?,
    };
    Ok(EventRecord {
        event_id: d.get_str("_id")?.parse::<Uuid>()?,
        order_id: OrderId(d.get_str("order_id")?.parse::<Uuid>()?),
        seq: d.get_i64("seq")?,
        kind: d.get_str("type")?.parse().map_err(anyhow::Error::msg)?,
        payload: d
            .get("payload")
            .cloned()
            .unwrap_or(Bson::Null)
            .into_relaxed_extjson(),
        at,
    })
}

/// Whether MongoDB refused this client for good: credentials, or a TLS
/// certificate that does not verify (the driver reports those inside its
/// server selection error, as text).
fn refused(e: &MongoError) -> bool {
    if matches!(*e.kind, ErrorKind::Authentication { .. }) {
        return true;
    }
    let text = e.to_string();
    [
        "certificate",
        "UnknownIssuer",
        "InvalidCertificate",
        "tls handshake",
        "Authentication failed",
    ]
    .iter()
    .any(|s| text.contains(s))
}

fn classify(e: MongoError) -> EventLogError {
    match *e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => EventLogError::Unavailable(e.to_string()),
        _ => EventLogError::Other(anyhow::Error::new(e)),
    }
}

/// True when every failure of a bulk insert is "this `_id` is already there".
fn only_duplicates(e: &MongoError) -> bool {
    match &*e.kind {
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|we| we.code == DUPLICATE_KEY))
        }
        _ => false,
    }
}

#[async_trait]
impl EventLog for MongoEventLog {
    async fn append(&self, events: &[EventRecord]) -> Result<(), EventLogError> {
        if events.is_empty() {
            return Ok(());
        }
        let docs = events
            .iter()
            .map(to_document)
            .collect::<Result<Vec<_>, _>>()?;
        match self
            .events
            .insert_many(docs)
            .with_options(InsertManyOptions::builder().ordered(false).build())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if only_duplicates(&e) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    async fn for_order(&self, order_id: OrderId) -> Result<Vec<EventRecord>, EventLogError> {
        let cursor = self
            .events
            .find(doc! { "order_id": order_id.to_string() })
            .sort(doc! { "seq": 1 })
            .await
            .map_err(classify)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(classify)?;
        docs.into_iter()
            .map(|d| from_document(d).map_err(EventLogError::Other))
            .collect()
    }

    async fn ping(&self) -> Result<(), EventLogError> {
        self.events
            .client()
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(classify)?;
        Ok(())
    }
}
