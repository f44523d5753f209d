//! The live saga view: a page at `/ui` where a person places an order and
//! watches it settle, fed by server-sent events from `/ui/stream`.
//!
//! The stream polls PostgreSQL (and, for a watched order, the MongoDB event
//! log) and sends only what changed, so it works whichever process runs the
//! saga. It is for people, not for integrations: it is not part of the
//! OpenAPI document.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::{Stream, StreamExt, stream};

use super::AppState;
use super::error::ApiError;
use super::orders::{EventBody, OrderBody, query_params};
use crate::application::orders::OrderService;
use crate::domain::{OrderId, OrderStatus};

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
    let events = changes(state.orders.clone(), watched);
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
    orders: std::sync::Arc<OrderService>,
    watched: Option<OrderId>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold((Seen::default(), true), move |(mut seen, first)| {
        let orders = orders.clone();
        async move {
            if !first {
                tokio::time::sleep(POLL).await;
            }
            let mut out = Vec::new();
            let mut problems = Vec::new();
            match orders.recent(RECENT).await {
                Ok(list) => {
                    let list: Vec<OrderBody> = list.into_iter().map(Into::into).collect();
                    push_if_changed(&mut out, &mut seen.recent, "recent", &list);
                }
                Err(e) => problems.push(e.to_string()),
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
            Some((stream::iter(out), (seen, false)))
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
