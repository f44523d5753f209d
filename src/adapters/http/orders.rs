//! The `/api` routes: orders, their events and the method table.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::form::OrderForm;
use super::observe;
use super::openapi_schemas::OrderFormDoc;
use crate::application::AppError;
use crate::application::orders::MAX_PAGE_SIZE;
use crate::application::ports::EventRecord;
use crate::domain::order::OrderRejection;
use crate::domain::{CancelReason, NewOrder, Order, OrderId, OrderStatus, PaymentMethod, UserId};

/// The header carrying the correlation id (set from the request id).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// An order.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct OrderBody {
    pub id: Uuid,
    /// Always two decimals.
    #[schema(example = "1000.00")]
    pub value: String,
    #[schema(example = "uuuu-aaaa-bbbb")]
    pub user_id: String,
    #[schema(example = 1)]
    pub installment: u32,
    #[schema(value_type = String, example = "PROCESSING")]
    pub status: OrderStatus,
    #[schema(value_type = String, example = "credit_card")]
    pub method: PaymentMethod,
    /// Present when the order is CANCELED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "USER_INVALID")]
    pub cancel_reason: Option<CancelReason>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Order> for OrderBody {
    fn from(o: Order) -> Self {
        Self {
            id: o.id.0,
            value: o.value.to_string(),
            user_id: o.user_id.to_string(),
            installment: o.installment.get(),
            status: o.status,
            method: o.method,
            cancel_reason: o.cancel_reason,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// Place an order.
///
/// Stores the order as PROCESSING and starts its validation saga. With an
/// `Idempotency-Key` header, repeating the same request returns the same order
/// (200) and reusing the key for a different form is refused (409).
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    request_body(content(
        (OrderFormDoc = "application/x-www-form-urlencoded"),
        (OrderFormDoc = "multipart/form-data"),
    )),
    params((
        "Idempotency-Key" = Option<String>,
        Header,
        description = "Makes retries safe: the same key and form return the same order (1 to 255 printable ASCII characters)",
        pattern = r"^[\x20-\x7e]{1,255}$",
    )),
    responses(
        (status = 201, description = "Order accepted, PROCESSING", body = OrderBody),
        (status = 200, description = "Repeat of an earlier request with the same Idempotency-Key", body = OrderBody),
        (status = 401, description = "API keys are configured and the request has no valid `Authorization: Bearer <key>`", body = ErrorBody),
        (status = 400, description = "A method outside the method table, more installments than the method allows, or a bad header", body = ErrorBody),
        (status = 409, description = "Idempotency-Key already used with a different form", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not a form", body = ErrorBody),
        (status = 422, description = "A field is missing or malformed", body = ErrorBody),
        (status = 503, description = "Storage unavailable (`unavailable`); too many orders still PROCESSING, too many requests in flight or too many new orders queued (`overloaded`, with a Retry-After header in seconds); or not answered in time (`timeout`)", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying (with `overloaded`)"))),
    )
)]
pub async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: OrderForm,
) -> Result<(StatusCode, Json<OrderBody>), ApiError> {
    let new = NewOrder::parse(
        form.value.as_deref(),
        form.user_id.as_deref(),
        form.installment.as_deref(),
        form.method.as_deref(),
    )
    .map_err(|r| match r {
        OrderRejection::InvalidFields(fields) => AppError::InvalidFields(fields),
        OrderRejection::OutsideMethodTable(field) => AppError::Rejected(field),
    })?;
    let correlation_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let key = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::bad_request(
                "Idempotency-Key",
                "must be 1 to 255 printable ASCII characters",
            )
        })?),
    };
    let placed = state.orders.place(new, &correlation_id, key).await?;
    observe::record_order_id(placed.order.id);
    let status = if placed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(placed.order.into())))
}

/// The query string's parameters (the last of a repeated name wins). Read
/// by hand rather than with axum's `Query`, so a bad value gets our JSON error.
pub(super) fn query_params(raw: Option<String>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn parse_order_id(raw: &str) -> Result<OrderId, ApiError> {
    raw.parse::<OrderId>()
        .map_err(|_| ApiError::bad_request("id", format!("{raw:?} is not a UUID")))
}

/// Get an order.
#[utoipa::path(
    get,
    path = "/api/order/{id}",
    tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 400, description = "id is not a UUID", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has no valid `Authorization: Bearer <key>`", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 503, description = "Too many requests in flight (`overloaded`, with Retry-After), or not answered in time (`timeout`)", body = ErrorBody),
    )
)]
pub async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let id = parse_order_id(&id)?;
    observe::record_order_id(id);
    Ok(Json(state.orders.get(id).await?.into()))
}

/// A page of a user's orders.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct OrderListBody {
    pub offset: u64,
    /// The page size used (requests above 100 get 100).
    pub limit: u32,
    /// How many orders the user has in all.
    pub total: u64,
    pub orders: Vec<OrderBody>,
}

#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Orders to skip (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
    /// Page size (default 100; values above 100 are capped at 100).
    #[param(minimum = 1)]
    limit: Option<i32>,
}

fn query_number<T: std::str::FromStr>(
    query: &HashMap<String, String>,
    name: &'static str,
    default: T,
    what: &str,
) -> Result<T, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|_| ApiError::bad_request(name, format!("must be {what}, got {raw:?}"))),
    }
}

/// List a user's orders, newest first.
#[utoipa::path(
    get,
    path = "/api/orders/{user_id}",
    tag = "orders",
    params(
        (
            "user_id" = String,
            Path,
            description = "The user",
            min_length = 1,
            max_length = 64,
            pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        ),
        PageParams
    ),
    responses(
        (status = 200, description = "A page of orders, newest first, and the user's total", body = OrderListBody),
        (status = 400, description = "Bad offset or limit", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has no valid `Authorization: Bearer <key>`", body = ErrorBody),
        (status = 503, description = "Too many requests in flight (`overloaded`, with Retry-After), or not answered in time (`timeout`)", body = ErrorBody),
    )
)]
pub async fn list_orders(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<OrderListBody>, ApiError> {
    let query = query_params(query);
    let user =
        UserId::parse(&user_id).map_err(|e| ApiError::bad_request("user_id", e.to_string()))?;
    let offset: i64 = query_number(&query, "offset", 0, "a whole number from 0")?;
    let limit: i32 = query_number(
        &query,
        "limit",
        MAX_PAGE_SIZE as i32,
        "a whole number from 1",
    )?;
    let offset =
        u64::try_from(offset).map_err(|_| ApiError::bad_request("offset", "must be at least 0"))?;
    let limit = u32::try_from(limit)
        .ok()
        .filter(|l| *l >= 1)
        .ok_or_else(|| ApiError::bad_request("limit", "must be at least 1"))?;
    let (limit, page) = state.orders.list(&user, offset, limit).await?;
    Ok(Json(OrderListBody {
        offset,
        limit,
        total: page.total,
        orders: page.orders.into_iter().map(Into::into).collect(),
    }))
}

/// One saga event.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct EventBody {
    pub event_id: Uuid,
    /// `order_created`, `command_sent`, `reply_received`, `step_timed_out` or `status_changed`
    /// (and `saga_started` in timelines logged before the first `command_sent` marked the start).
    #[serde(rename = "type")]
    #[schema(example = "status_changed")]
    pub kind: String,
    /// Position in the event sequence.
    pub seq: i64,
    pub at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<EventRecord> for EventBody {
    fn from(e: EventRecord) -> Self {
        Self {
            event_id: e.event_id,
            kind: e.kind.to_string(),
            seq: e.seq,
            at: e.at,
            payload: e.payload,
        }
    }
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct EventsBody {
    pub order_id: Uuid,
    pub events: Vec<EventBody>,
}

/// An order's saga timeline, from the event log.
///
/// The log is written asynchronously: right after a change, its event may take a moment to appear.
#[utoipa::path(
    get,
    path = "/api/order/{id}/events",
    tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The events, oldest first", body = EventsBody),
        (status = 400, description = "id is not a UUID", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has no valid `Authorization: Bearer <key>`", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 503, description = "The event log is unavailable (`unavailable`), too many requests in flight (`overloaded`), or not answered in time (`timeout`)", body = ErrorBody),
    )
)]
pub async fn order_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EventsBody>, ApiError> {
    let id = parse_order_id(&id)?;
    let events = state.orders.events(id).await?;
    Ok(Json(EventsBody {
        order_id: id.0,
        events: events.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct MethodBody {
    #[schema(example = "credit_card")]
    pub method: String,
    pub min_installments: u32,
    pub max_installments: u32,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct MethodsBody {
    pub methods: Vec<MethodBody>,
}

/// The payment methods and the installments each allows.
#[utoipa::path(
    get,
    path = "/api/methods",
    tag = "orders",
    responses(
        (status = 200, body = MethodsBody),
        (status = 401, description = "API keys are configured and the request has no valid `Authorization: Bearer <key>`", body = ErrorBody),
        (status = 503, description = "Too many requests in flight (`overloaded`, with Retry-After), or not answered in time (`timeout`)", body = ErrorBody),
    )
)]
pub async fn methods() -> Json<MethodsBody> {
    Json(MethodsBody {
        methods: PaymentMethod::ALL
            .iter()
            .map(|m| MethodBody {
                method: m.to_string(),
                min_installments: 1,
                max_installments: m.max_installments(),
            })
            .collect(),
    })
}
