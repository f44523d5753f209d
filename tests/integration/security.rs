//! TLS and credentials to every dependency, with a certificate authority made
//! at test time: PostgreSQL over TLS (`sslmode=verify-full`), Kafka over
//! SASL_SSL (SCRAM-SHA-512) and over mutual TLS, MongoDB over TLS. Each works
//! end to end, and a wrong CA or password stops start-up at once with a
//! message naming the dependency, never showing the password.

use std::time::{Duration, Instant};

use crate::common::tls::TestCa;
use crate::common::{Launcher, PrivateServer, Process, SystemEnv, place};

const SETTLE: Duration = Duration::from_secs(60);
/// A refusal must stop start-up well before the 30 s it retries a dependency that is down.
const REFUSED_WITHIN: Duration = Duration::from_secs(25);

/// Starts `ordersaga <subcommand>` and expects it to give up at once,
/// naming `dependency`, without ever writing `secret` to its log.
fn expect_refused(
    launcher: &Launcher,
    subcommand: &str,
    vars: &[(&str, &str)],
    dependency: &str,
    why: &[&str],
    secret: &str,
) {
    let started = Instant::now();
    let mut process = launcher.spawn(subcommand, vars);
    let status = process
        .exit_within(REFUSED_WITHIN)
        .unwrap_or_else(|| panic!("{subcommand} still runs; log: {}", process.log()));
    assert!(
        !status.success(),
        "{subcommand} exited 0: {}",
        process.log()
    );
    let log = process.log();
    assert!(
        log.contains(&format!("{dependency} at ")) && log.contains("refused the connection"),
        "the start-up error names {dependency}: {log}"
    );
    assert!(
        why.iter().any(|w| log.contains(w)),
        "the start-up error says why ({why:?}): {log}"
    );
    assert!(!log.contains(secret), "the log shows the password: {log}");
    eprintln!(
        "{subcommand} refused in {} ms",
        started.elapsed().as_millis()
    );
}

/// `ordersaga all`, up and settling an order, on the given environment.
async fn settles_an_order(launcher: &Launcher, vars: &[(&str, &str)], secret: &str) {
    let mut all = launcher.spawn("all", vars);
    let api = launcher.api();
    api.wait_healthy(SETTLE).await;
    let id = place(&api, "10.00", "tls-user", "1", "cash").await;
    let order = api.wait_settled(&id, SETTLE).await;
    assert_eq!(order["status"], "APPROVED", "{order}");
    let events = crate::common::eventually("the event log to show the order", SETTLE, || async {
        let (_, e) = api.get_json(&format!("/api/order/{id}/events")).await;
        // The whole timeline: created, two commands, two replies, the settlement.
        let n = e["events"].as_array().map_or(0, Vec::len);
        (n >= 6).then_some(e)
    })
    .await;
    assert_eq!(events["events"][0]["type"], "order_created");
    assert!(all.is_running());
    assert!(!all.log().contains(secret), "the log shows the password");
}

#[tokio::test]
async fn postgres_over_tls_verifies_the_server_and_a_wrong_ca_or_password_stops_start_up() {
    let (ca, other) = (TestCa::new(), TestCa::new());
    let password = "pg-Secret-4242";
    let pg = PrivateServer::postgres_tls(&ca, password);
    let env = SystemEnv::new().await;
    let tls = |ca: &TestCa| format!("sslmode=verify-full&sslrootcert={}", ca.ca());
    let url = pg.postgres_url(password, "ordersaga_tls", &tls(&ca));
    let launcher = Launcher::new(env).set("DATABASE_URL", &url);

    // The right CA and password: migrations apply and an order goes through.
    let mut migrate = launcher.spawn("migrate", &[]);
    let status = migrate.exit_within(SETTLE).expect("migrate ends");
    assert!(status.success(), "{}", migrate.log());
    settles_an_order(&launcher, &[], password).await;

    // Another CA: the server's certificate does not verify.
    let wrong_ca = pg.postgres_url(password, "ordersaga_tls", &tls(&other));
    expect_refused(
        &launcher,
        "api",
        &[("DATABASE_URL", &wrong_ca)],
        "PostgreSQL",
        &["certificate", "UnknownIssuer", "tls"],
        password,
    );
    // The wrong password.
    let wrong_password = pg.postgres_url("not-the-password", "ordersaga_tls", &tls(&ca));
    expect_refused(
        &launcher,
        "migrate",
        &[("DATABASE_URL", &wrong_password)],
        "PostgreSQL",
        &["password authentication failed"],
        "not-the-password",
    );
    // The URL can come from a file (a mounted secret).
    let file = std::env::temp_dir().join(crate::common::unique("pg-url-"));
    std::fs::write(&file, format!("{url}\n")).unwrap();
    let mut migrate = Process::spawn(
        "migrate",
        &["migrate"],
        &launcher.vars(&[
            ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            ("DATABASE_URL_FILE", file.to_str().unwrap()),
        ]),
    );
    let status = migrate.exit_within(SETTLE).expect("migrate ends");
    let _ = std::fs::remove_file(&file);
    assert!(
        status.success(),
        "DATABASE_URL_FILE wins: {}",
        migrate.log()
    );
}

#[tokio::test]
async fn kafka_over_sasl_ssl_and_mutual_tls_works_and_a_wrong_ca_or_password_stops_start_up() {
    let (ca, other) = (TestCa::new(), TestCa::new());
    let (user, password) = ("ordersaga", "kafka-Secret-4242");
    let kafka = PrivateServer::kafka_secure(&ca, user, password);
    let sasl = format!("127.0.0.1:{}", kafka.sasl_ssl_port.unwrap());
    let mtls = format!("127.0.0.1:{}", kafka.ssl_port.unwrap());
    let password_file = std::env::temp_dir().join(crate::common::unique("kafka-pw-"));
    std::fs::write(&password_file, format!("{password}\n")).unwrap();

    // SASL_SSL with SCRAM-SHA-512, the password from a file.
    let launcher = Launcher::new(SystemEnv::on(Some(&kafka), None).await)
        .set("KAFKA_BROKERS", &sasl)
        .set("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
        .set("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        .set("KAFKA_SASL_USERNAME", user);
    let from_file = ("KAFKA_SASL_PASSWORD_FILE", password_file.to_str().unwrap());
    let right_ca = ("KAFKA_SSL_CA_LOCATION", ca.ca());
    let right_ca = (right_ca.0, right_ca.1.as_str());
    settles_an_order(&launcher, &[from_file, right_ca], password).await;
    expect_refused(
        &launcher,
        "balance-validator",
        &[right_ca, ("KAFKA_SASL_PASSWORD", "not-the-password")],
        "Kafka",
        &["Authentication", "authentication"],
        "not-the-password",
    );
    expect_refused(
        &launcher,
        "balance-validator",
        &[from_file, ("KAFKA_SSL_CA_LOCATION", &other.ca())],
        "Kafka",
        &["SSL handshake failed", "certificate verify failed"],
        password,
    );
    let _ = std::fs::remove_file(&password_file);

    // Mutual TLS: the broker requires a client certificate of its CA.
    let launcher = Launcher::new(SystemEnv::on(Some(&kafka), None).await)
        .set("KAFKA_BROKERS", &mtls)
        .set("KAFKA_SECURITY_PROTOCOL", "ssl")
        .set("KAFKA_SSL_CA_LOCATION", ca.ca());
    let (cert, key) = (ca.path("client.pem"), ca.path("client.key"));
    let client_cert = [
        ("KAFKA_SSL_CERTIFICATE_LOCATION", cert.as_str()),
        ("KAFKA_SSL_KEY_LOCATION", key.as_str()),
    ];
    settles_an_order(&launcher, &client_cert, password).await;
    // Without a client certificate the broker ends the handshake.
    expect_refused(
        &launcher,
        "balance-validator",
        &[],
        "Kafka",
        &["SSL", "handshake"],
        password,
    );
}

#[tokio::test]
async fn mongodb_over_tls_works_and_a_wrong_ca_stops_start_up() {
    let (ca, other) = (TestCa::new(), TestCa::new());
    let mongo = PrivateServer::mongo_tls(&ca);
    let uri = |ca: &TestCa| {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&tls=true&tlsCAFile={}",
            mongo.port,
            ca.ca()
        )
    };
    let env = SystemEnv::on(None, None).await;
    let launcher = Launcher::new(env)
        .set("MONGODB_URI", uri(&ca))
        .set("MONGODB_TIMEOUT_MS", 3000);
    settles_an_order(&launcher, &[], "no password").await;
    expect_refused(
        &launcher,
        "api",
        &[("MONGODB_URI", &uri(&other))],
        "MongoDB",
        &["certificate", "UnknownIssuer"],
        "no password",
    );
}
