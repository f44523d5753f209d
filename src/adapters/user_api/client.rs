//! `UserDirectory` over HTTP with reqwest: per-request timeouts, retries
//! with jittered exponential backoff on transient failures, and a circuit
//! breaker that fails fast while the API keeps failing.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use reqwest::{StatusCode, Url};

use super::breaker::CircuitBreaker;
use crate::application::ports::{UserDirectory, UserDirectoryError, UserStatus};
use crate::domain::UserId;

/// What the user API answers for a user: `{"user_id","is_valid"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserRecord {
    pub user_id: String,
    pub is_valid: bool,
}

#[derive(Debug, Clone)]
pub struct UserApiSettings {
    /// Base URL; users are looked up at `<base>/api/user/<id>`.
    pub base_url: String,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
    /// Retries after the first attempt, on timeouts, connection errors and 5xx.
    pub retries: usize,
    /// First retry delay; doubles (with jitter) on each retry.
    pub retry_delay: Duration,
    /// Failed lookups in a row that open the circuit (0: no breaker).
    pub breaker_threshold: u32,
    /// How long an open circuit fails fast before a trial lookup.
    pub breaker_cooldown: Duration,
}

pub struct HttpUserDirectory {
    client: reqwest::Client,
    base: Url,
    settings: UserApiSettings,
    breaker: CircuitBreaker,
}

#[derive(Debug)]
enum Attempt {
    /// Worth trying again.
    Transient(String),
    /// Trying again would not help.
    Permanent(String),
}

impl HttpUserDirectory {
    pub fn new(settings: UserApiSettings) -> anyhow::Result<Self> {
        let base = Url::parse(&settings.base_url).context("USER_API_URL is not a valid URL")?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https"),
            "USER_API_URL must be an http(s) URL"
        );
        // reqwest is built without a bundled crypto provider; use ring, which MongoDB's TLS already brings.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .tcp_nodelay(true)
            .build()
            .context("cannot build the HTTP client")?;
        let breaker = CircuitBreaker::new(settings.breaker_threshold, settings.breaker_cooldown);
        Ok(Self {
            client,
            base,
            settings,
            breaker,
        })
    }

    fn url(&self, user: &UserId) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new")
            .pop_if_empty()
            .extend(["api", "user", user.as_str()]);
        url
    }

    async fn attempt(&self, url: &Url) -> Result<UserStatus, Attempt> {
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| Attempt::Transient(describe(&e)))?;
        match response.status() {
            StatusCode::OK => {
                let record: UserRecord = response.json().await.map_err(|e| {
                    Attempt::Permanent(format!("unexpected user API response: {e}"))
                })?;
                Ok(if record.is_valid {
                    UserStatus::Valid
                } else {
                    UserStatus::Invalid
                })
            }
            StatusCode::NOT_FOUND => Ok(UserStatus::Invalid),
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                Err(Attempt::Transient(format!("user API answered {s}")))
            }
            s => Err(Attempt::Permanent(format!("user API answered {s}"))),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "user API timed out".into()
    } else if e.is_connect() {
        "cannot connect to the user API".into()
    } else {
        format!("user API request failed: {e}")
    }
}

#[async_trait]
impl UserDirectory for HttpUserDirectory {
    async fn check(&self, user: &UserId) -> Result<UserStatus, UserDirectoryError> {
        let Ok(permit) = self.breaker.acquire(Instant::now()) else {
            return Err(UserDirectoryError(
                "circuit open after repeated user API failures; failing fast".into(),
            ));
        };
        // If this future is dropped while the lookup is out (a timeout or a
        // shutdown cancels it), the permit records a failure as it goes.
        let result = self.lookup(user).await;
        permit.record(result.is_ok(), Instant::now());
        result
    }
}

impl HttpUserDirectory {
    /// One lookup, with its retries.
    async fn lookup(&self, user: &UserId) -> Result<UserStatus, UserDirectoryError> {
        let url = self.url(user);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.retry_delay)
            .with_max_delay(self.settings.retry_delay * 16)
            .with_max_times(self.settings.retries)
            .with_jitter();
        (|| self.attempt(&url))
            .retry(backoff)
            .when(|e| matches!(e, Attempt::Transient(_)))
            .notify(|e, delay| tracing::debug!(error = ?e, ?delay, "retrying user API"))
            .await
            .map_err(|e| match e {
                Attempt::Transient(m) | Attempt::Permanent(m) => UserDirectoryError(m),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_escaped_into_one_path_segment() {
        let dir = HttpUserDirectory::new(UserApiSettings {
            base_url: "http://127.0.0.1:8001/".into(),
            timeout: Duration::from_secs(1),
            retries: 0,
            retry_delay: Duration::from_millis(10),
            breaker_threshold: 0,
            breaker_cooldown: Duration::from_secs(1),
        })
        .unwrap();
        let url = dir.url(&UserId::parse("a/b c?d#é").unwrap());
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8001/api/user/a%2Fb%20c%3Fd%23%C3%A9"
        );
    }
}
