//! docker-compose.yml cannot run here (no Docker engine), so it is checked
//! statically: every ordersaga service starts a real subcommand whose
//! configuration parses from the service's environment, every address the
//! subcommand would otherwise look for on 127.0.0.1 is set to another
//! service, and every long-running service has a health check.

use std::collections::BTreeMap;

use clap::{CommandFactory, Parser};
use ordersaga::config::Cli;
use serde_yaml_ng::Value;

/// The values `.env.example` gives the `${NAME...}` references of the file,
/// as Compose substitutes them from `.env`.
fn example_env() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example");
    std::fs::read_to_string(path)
        .expect(".env.example is readable")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Replaces every `${NAME}`, `${NAME:?message}` and `${NAME:-default}` with
/// NAME's value in `.env.example`; a name it lacks is a failure.
fn substitute(text: &str) -> String {
    let env = example_env();
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closing brace") + start;
        let name = rest[start + 2..end].split([':', '-', '?']).next().unwrap();
        let value = env.get(name).unwrap_or_else(|| {
            panic!("docker-compose.yml uses ${{{name}}}, which .env.example lacks")
        });
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn compose_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml");
    std::fs::read_to_string(path).expect("docker-compose.yml is readable")
}

fn compose() -> Value {
    let text = substitute(&compose_text());
    let mut doc: Value = serde_yaml_ng::from_str(&text).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("merge keys resolve");
    doc
}

fn services(doc: &Value) -> BTreeMap<String, Value> {
    doc["services"]
        .as_mapping()
        .expect("a services mapping")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(map) = service["environment"].as_mapping() {
        for (k, v) in map {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("unexpected environment value {other:?}"),
            };
            env.insert(k.as_str().unwrap().to_owned(), v);
        }
    }
    env
}

fn is_ordersaga(service: &Value) -> bool {
    service["image"].as_str() == Some("ordersaga:local")
}

fn command(service: &Value) -> Vec<String> {
    service["command"]
        .as_sequence()
        .map(|s| s.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn mentions_loopback(s: &str) -> bool {
    s.contains("127.0.0.1") || s.contains("localhost")
}

#[test]
fn every_ordersaga_service_gets_the_configuration_its_subcommand_needs() {
    let doc = compose();
    let cli = Cli::command();
    let mut checked = 0;
    for (name, service) in services(&doc).iter().filter(|(_, s)| is_ordersaga(s)) {
        let argv = command(service);
        let sub_name = argv.first().unwrap_or_else(|| panic!("{name}: no command"));
        let sub = cli
            .find_subcommand(sub_name)
            .unwrap_or_else(|| panic!("{name}: `{sub_name}` is not an ordersaga subcommand"));
        let env = environment(service);

        // Turn the service's environment into flags and let the real parser judge them.
        let mut args = vec!["ordersaga".to_owned(), sub_name.clone()];
        args.extend(argv[1..].iter().cloned());
        for arg in sub.get_arguments() {
            let Some(var) = arg.get_env().and_then(|v| v.to_str()) else {
                continue;
            };
            let default_local = arg
                .get_default_values()
                .iter()
                .any(|d| mentions_loopback(&d.to_string_lossy()))
                || arg
                    .get_help()
                    .is_some_and(|h| mentions_loopback(&h.to_string()));
            match env.get(var) {
                Some(value) => {
                    assert!(
                        !mentions_loopback(value) || var.ends_with("HOST"),
                        "{name}: {var}={value} points at the container itself"
                    );
                    let long = arg.get_long().expect("every env setting has a long flag");
                    args.push(format!("--{long}={value}"));
                }
                None => assert!(
                    !default_local,
                    "{name} ({sub_name}): {var} is not set, and its default looks on 127.0.0.1"
                ),
            }
        }
        if let Some(format) = env.get("LOG_FORMAT") {
            args.push(format!("--log-format={format}"));
        }
        let parsed = Cli::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("{name}: {args:?} does not parse:\n{e}"));
        if sub_name != "migrate" {
            parsed
                .command
                .plan()
                .unwrap_or_else(|e| panic!("{name}: bad configuration: {e}"));
        }
        checked += 1;
    }
    assert!(
        checked >= 6,
        "expected the ordersaga services, checked {checked}"
    );
}

#[test]
fn every_long_running_service_has_a_health_check_and_dependencies_exist() {
    let doc = compose();
    let services = services(&doc);
    for (name, service) in &services {
        let one_shot = service["restart"].as_str() == Some("no");
        if !one_shot {
            let test = &service["healthcheck"]["test"];
            assert!(
                test.is_sequence() && !test.as_sequence().unwrap().is_empty(),
                "{name} has no health check"
            );
        }
        if let Some(deps) = service["depends_on"].as_mapping() {
            for (dep, cond) in deps {
                let dep = dep.as_str().unwrap();
                let target = services
                    .get(dep)
                    .unwrap_or_else(|| panic!("{name} depends on unknown {dep}"));
                let condition = cond["condition"].as_str().unwrap_or("service_started");
                let dep_one_shot = target["restart"].as_str() == Some("no");
                match condition {
                    "service_healthy" => assert!(
                        !target["healthcheck"].is_null(),
                        "{name} waits for {dep} to be healthy, but it has no health check"
                    ),
                    "service_completed_successfully" => assert!(
                        dep_one_shot,
                        "{name} waits for {dep} to complete, but {dep} keeps running"
                    ),
                    "service_started" => {}
                    other => panic!("{name}: unknown condition {other}"),
                }
            }
        }
        // A health check through OPS_PORT needs OPS_PORT set.
        if is_ordersaga(service) {
            let probe = serde_yaml_ng::to_string(&service["healthcheck"]["test"]).unwrap();
            if probe.contains(":9000/") {
                assert_eq!(
                    environment(service).get("OPS_PORT").map(String::as_str),
                    Some("9000"),
                    "{name} probes :9000 without OPS_PORT=9000"
                );
            }
        }
    }
}

#[test]
fn the_kafka_service_runs_kraft_and_the_topic_job_creates_every_topic() {
    let doc = compose();
    let services = services(&doc);
    let kafka = environment(&services["kafka"]);
    assert!(
        kafka.contains_key("KAFKA_PROCESS_ROLES"),
        "KRaft: the broker is its own controller"
    );
    assert!(!services.contains_key("zookeeper"));
    let job = serde_yaml_ng::to_string(&services["kafka-topics"]["command"]).unwrap();
    for topic in ordersaga::application::messages::Topic::ALL {
        assert!(
            job.contains(topic.name()),
            "the topic job does not create {}",
            topic.name()
        );
    }
}

#[test]
fn the_compose_stack_keeps_its_secrets_in_env_its_data_in_volumes_and_its_ports_on_loopback() {
    let text = compose_text();
    for needed in ["POSTGRES_PASSWORD", "MONGO_PASSWORD", "ORDERSAGA_API_KEYS"] {
        assert!(
            text.contains(&format!("${{{needed}:?")),
            "{needed} must come from .env, and Compose must refuse to start without it"
        );
    }
    let doc = compose();
    let services = services(&doc);
    for (name, service) in &services {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} on every interface"
            );
        }
    }
    let volumes: Vec<&str> = doc["volumes"]
        .as_mapping()
        .expect("named volumes")
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    for (service, mount) in [
        ("postgres", "/var/lib/postgresql/data"),
        ("mongo", "/data/db"),
        ("kafka", "/var/lib/kafka/data"),
    ] {
        let mounts = serde_yaml_ng::to_string(&services[service]["volumes"]).unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| mounts.contains(&format!("{v}:{mount}"))),
            "{service} keeps {mount} in a named volume: {mounts}"
        );
    }
    let mongo = environment(&services["mongo"]);
    assert!(
        mongo.contains_key("MONGO_INITDB_ROOT_PASSWORD"),
        "MongoDB runs with auth"
    );
    let api = environment(&services["api"]);
    assert!(
        api["MONGODB_URI"].contains("@mongo"),
        "the API logs in to MongoDB"
    );
    assert!(!api["API_KEYS"].is_empty(), "the API needs keys");
}
