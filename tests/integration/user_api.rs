//! The user API client against real HTTP servers: the stub, and misbehaving ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use ordersaga::adapters::user_api::{HttpUserDirectory, UserApiSettings};
use ordersaga::application::ports::{UserDirectory, UserStatus};
use ordersaga::domain::UserId;
use ordersaga::tools::user_api_stub::router as stub_router;

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn settings(base: &str, retries: usize) -> UserApiSettings {
    UserApiSettings {
        base_url: base.into(),
        timeout: Duration::from_millis(300),
        retries,
        retry_delay: Duration::from_millis(10),
        breaker_threshold: 0,
        breaker_cooldown: Duration::from_secs(60),
    }
}

fn client(base: &str, retries: usize) -> HttpUserDirectory {
    HttpUserDirectory::new(settings(base, retries)).unwrap()
}

/// A user API that fails every call with 503, counting them.
async fn failing_api() -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let router = axum::Router::new().route(
        "/api/user/{id}",
        get(move || {
            let c = c2.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                StatusCode::SERVICE_UNAVAILABLE
            }
        }),
    );
    (serve(router).await, calls)
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

#[tokio::test]
async fn the_stub_says_ids_containing_invalid_are_invalid() {
    let base = serve(stub_router()).await;
    let c = client(&base, 0);
    assert_eq!(
        c.check(&user("uuuu-aaaa-bbbb")).await.unwrap(),
        UserStatus::Valid
    );
    assert_eq!(
        c.check(&user("uuuu-aaaa-bbbb-invalid")).await.unwrap(),
        UserStatus::Invalid
    );
    assert_eq!(
        c.check(&user("a/b?c#d invalid é")).await.unwrap(),
        UserStatus::Invalid,
        "escaped into one segment"
    );
    assert_eq!(
        c.check(&user("a/b?c#d é")).await.unwrap(),
        UserStatus::Valid
    );
}

#[tokio::test]
async fn a_404_means_an_invalid_user_not_an_outage() {
    let base = serve(axum::Router::new()).await;
    assert_eq!(
        client(&base, 3).check(&user("ghost")).await.unwrap(),
        UserStatus::Invalid
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let (base, calls) = failing_api().await;
    let err = client(&base, 2).check(&user("u")).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "first try and two retries");
}

#[tokio::test]
async fn a_flaky_api_succeeds_on_retry() {
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let router = axum::Router::new().route(
        "/api/user/{id}",
        get(move || {
            let c = c2.clone();
            async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(StatusCode::INTERNAL_SERVER_ERROR)
                } else {
                    Ok(axum::Json(
                        serde_json::json!({ "user_id": "u", "is_valid": true }),
                    ))
                }
            }
        }),
    );
    let base = serve(router).await;
    assert_eq!(
        client(&base, 2).check(&user("u")).await.unwrap(),
        UserStatus::Valid
    );
}

#[tokio::test]
async fn a_slow_api_times_out() {
    let router = axum::Router::new().route(
        "/api/user/{id}",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let base = serve(router).await;
    let err = client(&base, 1).check(&user("u")).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn a_dead_api_is_unavailable() {
    let port = crate::common::free_port();
    let err = client(&format!("http://127.0.0.1:{port}"), 1)
        .check(&user("u"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn a_bad_url_is_refused_at_start() {
    for bad in ["not a url", "ftp://host/", "mailto:x@y"] {
        let r = HttpUserDirectory::new(settings(bad, 0));
        assert!(r.is_err(), "{bad}");
    }
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_spares_the_api() {
    let (base, calls) = failing_api().await;
    let c = HttpUserDirectory::new(UserApiSettings {
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(300),
        ..settings(&base, 0)
    })
    .unwrap();
    for _ in 0..3 {
        assert!(c.check(&user("u")).await.is_err());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    for _ in 0..20 {
        let err = c.check(&user("u")).await.unwrap_err();
        assert!(err.to_string().contains("circuit open"), "{err}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "an open circuit sends nothing"
    );
    // After the cooldown one trial goes out (and, failing, opens the circuit again).
    crate::common::eventually(
        "the trial call after the cooldown",
        Duration::from_secs(5),
        || async {
            let _ = c.check(&user("u")).await;
            (calls.load(Ordering::SeqCst) == 4).then_some(())
        },
    )
    .await;
    assert!(
        c.check(&user("u"))
            .await
            .unwrap_err()
            .to_string()
            .contains("circuit open")
    );
}
