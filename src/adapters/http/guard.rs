//! What stands in front of the handlers: API keys, a request timeout, a
//! limit on requests in flight, and the `X-Request-Id` a request may bring.
//!
//! - With API keys configured, every `/api/*` route, the live page's stream
//!   and (unless `OPS_REQUIRE_KEY=false`) `/metrics` need
//!   `Authorization: Bearer <key>`; `/ready` answers without a key but shows
//!   its checks only to a caller with one. `/health`, the live page itself
//!   and the API documentation stay open. Without keys everything is open
//!   and the process says so at start.
//! - A request that takes longer than the timeout gets 503 `timeout`; past
//!   the limit of requests in flight, 503 `overloaded` with `Retry-After`.
//! - An `X-Request-Id` is kept only when short and printable (it is copied
//!   into PostgreSQL, Kafka headers, MongoDB and logs); otherwise a fresh one
//!   replaces it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::observe::RequestMetrics;
use super::orders::REQUEST_ID_HEADER;

/// Longest `X-Request-Id` kept as it came.
pub const REQUEST_ID_MAX: usize = 64;

/// The API keys a caller may present; none configured means no check.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Arc<Vec<Vec<u8>>>,
    /// `/metrics` needs a key too (when keys are configured).
    pub protect_ops: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &format_args!("{} configured", self.keys.len()))
            .field("protect_ops", &self.protect_ops)
            .finish()
    }
}

/// No keys; `/metrics` protected once keys are configured (`OPS_REQUIRE_KEY`'s default).
impl Default for ApiKeys {
    fn default() -> Self {
        Self {
            keys: Arc::default(),
            protect_ops: true,
        }
    }
}

impl PartialEq for ApiKeys {
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys && self.protect_ops == other.protect_ops
    }
}

impl ApiKeys {
    /// Keys from a comma- or newline-separated list; blank entries and lines
    /// starting with `#` are skipped.
    pub fn parse(list: &str, protect_ops: bool) -> Self {
        let keys = list
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.starts_with('#'))
            .map(|k| k.as_bytes().to_vec())
            .collect();
        Self {
            keys: Arc::new(keys),
            protect_ops,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the request carries one of the keys (always, without keys).
    pub fn admits(&self, headers: &axum::http::HeaderMap) -> bool {
        if !self.enabled() {
            return true;
        }
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return false;
        };
        // Every key is compared in full, so the time taken says nothing about a key.
        self.keys
            .iter()
            .fold(false, |found, key| found | same(key, given.as_bytes()))
    }
}

/// Byte-wise comparison whose time depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid API key is needed: send Authorization: Bearer <key>",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// What stands in front of the data routes, as one middleware (each
/// middleware costs every request a clone of the route behind it): counted
/// and timed (`observe`), then the in-flight limit, then the key, then the
/// timeout. So a request refused for want of a key is counted, and the limit
/// holds for callers without one too.
pub async fn admit(State(guard): State<DataGuard>, req: Request, next: Next) -> Response {
    super::observe::measured(&guard.metrics, req, async |req| {
        let Ok(_permit) = guard.limit.in_flight.clone().try_acquire_owned() else {
            return overloaded("too many requests in flight; retry shortly");
        };
        if !guard.keys.admits(req.headers()) {
            return unauthorized();
        }
        match tokio::time::timeout(guard.limit.timeout, next.run(req)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request was not answered within {} ms",
                    guard.limit.timeout.as_millis()
                ),
            )
            .into_response(),
        }
    })
    .await
}

/// The state of `admit`: the keys, the bounds and the request metrics.
#[derive(Clone)]
pub struct DataGuard {
    keys: ApiKeys,
    limit: Limit,
    metrics: RequestMetrics,
}

impl DataGuard {
    pub fn new(keys: ApiKeys, bounds: &Bounds, metrics: RequestMetrics) -> Self {
        Self {
            keys,
            limit: Limit::new(bounds),
            metrics,
        }
    }
}

/// As `require_key`, for the operations endpoints that keys protect only
/// when `protect_ops` is set.
pub async fn require_key_for_ops(
    State(keys): State<ApiKeys>,
    req: Request,
    next: Next,
) -> Response {
    if !keys.protect_ops || keys.admits(req.headers()) {
        next.run(req).await
    } else {
        unauthorized()
    }
}

/// Whether the caller may see details (`/ready`'s checks): with keys
/// configured and `protect_ops`, only a caller with a key.
#[derive(Clone, Copy, Debug)]
pub struct SeesDetails(pub bool);

pub async fn mark_details(State(keys): State<ApiKeys>, mut req: Request, next: Next) -> Response {
    let sees = !keys.protect_ops || keys.admits(req.headers());
    req.extensions_mut().insert(SeesDetails(sees));
    next.run(req).await
}

/// The API's bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Longest a request may take to be answered (its response headers).
    pub request_timeout: Duration,
    /// Requests handled at once; past that 503 `overloaded`.
    pub max_in_flight: usize,
    /// Live-page streams open at once; past that 503 `overloaded`.
    pub max_streams: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(15),
            max_in_flight: 512,
            max_streams: 100,
        }
    }
}

/// The in-flight limit and the timeout of `admit`.
#[derive(Clone)]
struct Limit {
    in_flight: Arc<Semaphore>,
    timeout: Duration,
}

impl Limit {
    fn new(bounds: &Bounds) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(bounds.max_in_flight.max(1))),
            timeout: bounds.request_timeout,
        }
    }
}

pub fn overloaded(message: &str) -> Response {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
    }
    .into_response()
}

/// Drops an `X-Request-Id` that is too long or not printable ASCII, so the
/// next layer gives the request a fresh one.
pub fn sanitize_request_id(mut req: Request) -> Request {
    let acceptable = |v: &HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= REQUEST_ID_MAX && b.iter().all(|c| (0x21..=0x7e).contains(c))
    };
    if req
        .headers()
        .get(REQUEST_ID_HEADER)
        .is_some_and(|v| !acceptable(v))
    {
        req.headers_mut().remove(REQUEST_ID_HEADER);
    }
    req
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h
    }

    #[test]
    fn keys_come_from_a_list_or_a_file_and_only_they_are_admitted() {
        let keys = ApiKeys::parse("k-one, k-two\n# a comment\n\nk-three\n", true);
        assert_eq!(keys.len(), 3);
        for k in ["k-one", "k-two", "k-three"] {
            assert!(keys.admits(&bearer(k)), "{k}");
        }
        for bad in ["k-on", "k-one2", "", "# a comment"] {
            assert!(!keys.admits(&bearer(bad)), "{bad:?}");
        }
        assert!(!keys.admits(&HeaderMap::new()), "no header");
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic k-one"),
        );
        assert!(!keys.admits(&basic), "another scheme");
    }

    #[test]
    fn without_keys_everyone_is_admitted() {
        let keys = ApiKeys::parse(" , \n", true);
        assert!(!keys.enabled());
        assert!(keys.admits(&HeaderMap::new()));
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let shown = format!("{:?}", ApiKeys::parse("s3cret-key", true));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("1 configured"), "{shown}");
    }
}
