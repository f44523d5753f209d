//! The live saga view: a page at `/ui` where a person places an order and
//! watches it settle, fed by server-sent events from `/ui/stream`.
//!
//! One poller per process reads the recent orders from PostgreSQL while any
//! page is open and shares them with every stream; a stream that watches an
//! order also reads that order and its timeline (the MongoDB event log). Only
//! what changed is sent, so it works whichever process runs the saga. Streams
//! are capped (`UI_STREAM_MAX`; past that 503 `overloaded`), and with API keys
//! configured the stream needs one, like the API. It is for people, not for
//! integrations: it is not part of the OpenAPI document.

use std::convert::Infallible;
use std::sync::{Arc, Once};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::{Stream, StreamExt, stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::AppState;
use super::error::ApiError;
use super::orders::{EventBody, OrderBody, query_params};
use crate::application::orders::OrderService;
use crate::domain::{OrderId, OrderStatus};

/// The recent orders as JSON, or what went wrong reading them.
type Recent = Option<Result<String, String>>;

/// What every stream of the process shares: the cap on open streams and the
/// recent orders, read by one poller.
pub struct LiveFeed {
    slots: Arc<Semaphore>,
    recent: watch::Sender<Recent>,
    poller: Once,
}

impl LiveFeed {
    pub fn new(max_streams: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max_streams)),
            recent: watch::Sender::new(None),
            poller: Once::new(),
        })
    }

    /// A slot for one more stream, if the cap allows it.
    fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// The recent orders, kept fresh by the poller (started by the first stream).
    fn subscribe(&self, orders: &Arc<OrderService>) -> watch::Receiver<Recent> {
        self.poller.call_once(|| {
            let (sender, orders) = (self.recent.clone(), orders.clone());
            tokio::spawn(async move {
                loop {
                    // Reads only while a page is open; idle otherwise.
                    if sender.receiver_count() > 0 {
                        let read = match orders.recent(RECENT).await {
                            Ok(list) => {
                                let list: Vec<OrderBody> =
                                    list.into_iter().map(Into::into).collect();
                                Ok(serde_json::to_string(&list).unwrap_or_default())
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        sender.send_if_modified(|now| {
                            let changed = now.as_ref() != Some(&read);
                            *now = Some(read);
                            changed
                        });
                    }
                    tokio::time::sleep(POLL).await;
                }
            });
        });
        self.recent.subscribe()
    }
}

/// How often the stream looks for changes.
const POLL: Duration = Duration::from_millis(300);
/// Orders in the "recent orders" list.
const RECENT: u32 = 15;

pub async fn page() -> Html<&'static str> {
    Html(include_str!("ui/index.html"))
}

/// `GET /ui/stream[?order=<id>]`: events `recent` (the latest orders), and
/// for a watched order `order` (the order) and `timeline` (its saga events),
/// each sent when it changes.
pub async fn stream(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = query_params(query);
    let watched = match query.get("order").filter(|s| !s.is_empty()) {
        None => None,
        Some(raw) => {
            let id = raw
                .parse::<OrderId>()
                .map_err(|_| ApiError::bad_request("order", format!("{raw:?} is not a UUID")))?;
            state.orders.get(id).await?; // 404 for an unknown order, before streaming
            Some(id)
        }
    };
    let Some(slot) = state.live.slot() else {
        return Ok(super::guard::overloaded(
            "too many live-page streams are open; retry shortly",
        ));
    };
    let recent = state.live.subscribe(&state.orders);
    let events = changes(state.orders.clone(), watched, recent, slot);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Default)]
struct Seen {
    recent: String,
    order: String,
    timeline: String,
    problem: String,
    /// Once the watched order is settled and its timeline shows it, stop looking at it.
    watched_done: bool,
}

fn changes(
    orders: Arc<OrderService>,
    watched: Option<OrderId>,
    recent: watch::Receiver<Recent>,
    slot: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // The stream holds its slot (and its view of the recent orders) until the page goes.
    let state = (Seen::default(), true, recent, slot);
    stream::unfold(state, move |(mut seen, first, mut recent, slot)| {
        let orders = orders.clone();
        async move {
            if !first {
                // The next change of the recent orders, or the next look at the watched order.
                let _ = tokio::time::timeout(POLL, recent.changed()).await;
            }
            let mut out = Vec::new();
            let mut problems = Vec::new();
            match recent.borrow_and_update().clone() {
                Some(Ok(json)) if seen.recent != json => {
                    out.push(Event::default().event("recent").data(&json));
                    seen.recent = json;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => problems.push(e),
                None => {}
            }
            if let (Some(id), false) = (watched, seen.watched_done) {
                let settled = match orders.get(id).await {
                    Ok(order) => {
                        let settled = order.status != OrderStatus::Processing;
                        push_if_changed(
                            &mut out,
                            &mut seen.order,
                            "order",
                            &OrderBody::from(order),
                        );
                        settled
                    }
                    Err(e) => {
                        problems.push(e.to_string());
                        false
                    }
                };
                match orders.events(id).await {
                    Ok(events) => {
                        let complete = events
                            .iter()
                            .any(|e| e.kind == crate::domain::SagaEventKind::StatusChanged);
                        let events: Vec<EventBody> = events.into_iter().map(Into::into).collect();
                        push_if_changed(&mut out, &mut seen.timeline, "timeline", &events);
                        seen.watched_done = settled && complete;
                    }
                    // The event log is written asynchronously and may be down: say so, keep going.
                    Err(e) => problems.push(e.to_string()),
                }
            }
            // A problem is said once, and again only if it changes or comes back.
            let problem = serde_json::json!({ "message": problems.join("; ") });
            if problems.is_empty() {
                seen.problem.clear();
            } else {
                push_if_changed(&mut out, &mut seen.problem, "problem", &problem);
            }
            Some((stream::iter(out), (seen, false, recent, slot)))
        }
    })
    .flatten()
    .map(Ok)
}

fn push_if_changed<T: serde::Serialize>(
    out: &mut Vec<Event>,
    seen: &mut String,
    name: &str,
    value: &T,
) {
    let json = serde_json::to_string(value).unwrap_or_default();
    if *seen != json {
        out.push(Event::default().event(name).data(&json));
        *seen = json;
    }
}
