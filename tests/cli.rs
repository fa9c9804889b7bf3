//! The binary as a user meets it: the demo, start-up errors, topology printing.
mod common;

use common::TestEnv;
use std::process::Command;

fn escalator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_escalator"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_whole_flow_and_exits_zero() {
    let env = TestEnv::new("demo").await;
    let settings = env.settings.clone();
    let out = tokio::task::spawn_blocking(move || {
        escalator()
            .arg("demo")
            .env("ESCALATOR_AMQP_URL", &settings.amqp_url)
            .env("ESCALATOR_KEY_PREFIX", &settings.key_prefix)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("escalation.created"), "{stdout}");
    assert!(
        stdout.contains("https://sandbox.zendesk.com/agent/tickets/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/lightning/r/Case/"),
        "Salesforce case shown: {stdout}"
    );
    assert!(
        stdout.contains("<redacted>"),
        "password of the AMQP URL hidden: {stdout}"
    );
    env.cleanup().await;
}

#[test]
fn unreachable_rabbitmq_is_named_with_its_address_and_the_fix() {
    let out = escalator()
        .arg("demo")
        .env("ESCALATOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach RabbitMQ at amqp://guest:<redacted>@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rabbitmq-server"),
        "says how to start it: {stderr}"
    );
}

#[test]
fn unreachable_redis_is_named_with_its_address_and_the_fix() {
    let out = escalator()
        .arg("demo")
        .env("ESCALATOR_REDIS_URL", "redis://127.0.0.1:1/")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach Redis at redis://127.0.0.1:1/"),
        "{stderr}"
    );
    assert!(
        stderr.contains("redis-server"),
        "says how to start it: {stderr}"
    );
}

#[test]
fn invalid_config_fails_at_start_naming_org_field_and_fix_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[orgs.acme]\nprovider = \"zendesk\"\n[orgs.acme.zendesk]\nsubdomain = \"acme.zendesk.com\"\nemail = \"bot@acme.example\"\napi_token = \"${ESCALATOR_TEST_UNSET_TOKEN}\"\n\n[orgs.globex]\nprovider = \"salesforce\"\n[orgs.globex.salesforce]\nmy_domain = \"login.salesforce.com\"\nclient_id = \"id\"\nclient_secret = \"super-secret-value\"\n",
    )
    .unwrap();
    let out = escalator()
        .arg("worker")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("org `acme`, field `zendesk.subdomain`"),
        "{stderr}"
    );
    assert!(stderr.contains("org `acme`, field `zendesk.api_token`: environment variable ESCALATOR_TEST_UNSET_TOKEN is not set"), "{stderr}");
    assert!(
        stderr.contains("org `globex`, field `salesforce.my_domain`"),
        "{stderr}"
    );
    assert!(stderr.contains("My Domain"), "{stderr}");
    assert!(!stderr.contains("super-secret-value"), "{stderr}");
}

#[test]
fn topology_prints_rabbitmq_definitions() {
    let out = escalator()
        .args(["topology", "--print", "--vhost", "prod"])
        .env("ESCALATOR_SHARDS", "8")
        .output()
        .unwrap();
    assert!(out.status.success());
    let defs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let queues: Vec<&str> = defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    for q in [
        "escalator.intake",
        "escalator.work.00",
        "escalator.work.07",
        "escalator.retry",
        "escalator.dead-letter",
        "escalator.outbound.unrouted",
    ] {
        assert!(queues.contains(&q), "{q} in {queues:?}");
    }
    assert!(!queues.contains(&"escalator.work.08"));
    assert!(
        defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["vhost"] == "prod")
    );
}
