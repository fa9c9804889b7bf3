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

// ------------------------------------------------------------ first run (issue 6, item 14)

/// Run the binary with `args` and `envs` (off the async runtime), within 60 s.
async fn run_escalator(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_escalator"));
    cmd.args(args).kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("escalator did not exit within 60 s")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `rabbitmqctl` output lines (headers and table chrome left out).
fn rabbitmqctl_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .args(["--quiet", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl is needed for this test");
    assert!(out.status.success(), "rabbitmqctl {args:?} failed");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    lines
}

fn redis_keys(pattern: &str) -> Vec<String> {
    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_works_in_its_own_vhost_and_key_prefix_and_removes_both() {
    let default_queues = || rabbitmqctl_lines(&["list_queues", "-p", "/", "name", "messages"]);
    let default_exchanges = || rabbitmqctl_lines(&["list_exchanges", "-p", "/", "name"]);
    let (queues_before, exchanges_before) = (default_queues(), default_exchanges());
    // The production prefix's keys, as a worker on this Redis would have them.
    let production_keys_before = redis_keys("escalator:*");

    // The default AMQP URL: the default vhost "/" of the shared broker.
    let (ok, stdout, stderr) = run_escalator(&["demo"], &[]).await;
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("escalation.created"), "{stdout}");
    let vhost = stdout
        .split_whitespace()
        .find(|w| w.starts_with("escalator-demo-"))
        .unwrap_or_else(|| panic!("the demo names its vhost: {stdout}"))
        .to_string();
    let prefix = stdout
        .split_whitespace()
        .find(|w| w.starts_with("escalator-demo:"))
        .unwrap_or_else(|| panic!("the demo names its key prefix: {stdout}"))
        .to_string();

    let vhosts = rabbitmqctl_lines(&["list_vhosts", "name"]);
    assert!(!vhosts.contains(&vhost), "{vhost} left behind: {vhosts:?}");
    assert!(
        redis_keys(&format!("{prefix}:*")).is_empty(),
        "keys of {prefix} left behind"
    );
    assert_eq!(
        default_queues(),
        queues_before,
        "the default vhost's queues changed"
    );
    assert_eq!(
        default_exchanges(),
        exchanges_before,
        "the default vhost's exchanges changed"
    );
    assert_eq!(
        redis_keys("escalator:*"),
        production_keys_before,
        "the demo wrote under the production key prefix"
    );
}

#[tokio::test]
async fn a_refused_login_is_not_told_to_start_the_broker() {
    let (ok, _, stderr) = run_escalator(
        &["topology"],
        &[(
            "ESCALATOR_AMQP_URL",
            "amqp://guest:wrong-CANARY-pw@127.0.0.1:5672/%2f",
        )],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("refused the login"), "{stderr}");
    assert!(stderr.contains("password"), "{stderr}");
    assert!(!stderr.contains("rabbitmq-server -detached"), "{stderr}");
    assert!(!stderr.contains("CANARY"), "{stderr}");
}

#[tokio::test]
async fn a_missing_vhost_is_named_with_how_to_create_it() {
    let (ok, _, stderr) = run_escalator(
        &["topology"],
        &[(
            "ESCALATOR_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/escalator-no-such-vhost",
        )],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("the vhost \"escalator-no-such-vhost\" does not exist"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rabbitmqctl add_vhost escalator-no-such-vhost"),
        "{stderr}"
    );
    assert!(!stderr.contains("rabbitmq-server -detached"), "{stderr}");
}

#[tokio::test]
async fn redis_on_a_closed_port_fails_as_fast_as_rabbitmq() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("orgs.toml");
    std::fs::write(
        &config,
        escalator::sandbox::sandbox_config("http://127.0.0.1:1"),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    let (ok, _, stderr) = run_escalator(
        &["worker", "--config", &config],
        &[("ESCALATOR_REDIS_URL", "redis://127.0.0.1:1/")],
    )
    .await;
    let took = started.elapsed();
    assert!(!ok);
    assert!(
        stderr.contains("cannot reach Redis at redis://127.0.0.1:1/"),
        "{stderr}"
    );
    // Measured before: 10 s (the connection manager retried six times).
    assert!(
        took < std::time::Duration::from_secs(3),
        "took {took:?}: {stderr}"
    );
}

fn help(args: &[&str]) -> String {
    let out = escalator().args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn each_command_lists_only_the_flags_that_apply() {
    let worker_only = [
        "--concurrency",
        "--http-timeout-ms",
        "--inline-attempts",
        "--state-ttl-days",
        "--shutdown-grace-ms",
        "--retry-delay-ms",
        "--key-prefix",
    ];
    let cases: [(&str, &[&str], &[&str]); 3] = [
        (
            "topology",
            &[
                "--amqp-url",
                "--shards",
                "--delivery-limit",
                "--print",
                "--vhost",
            ],
            &["--redis-url", "--prefetch", "--concurrency"],
        ),
        (
            "demo",
            &["--amqp-url", "--redis-url", "--management-url"],
            &["--shards", "--prefetch", "--delivery-limit"],
        ),
        (
            "bench",
            &[
                "--amqp-url",
                "--redis-url",
                "--prefetch",
                "--concurrency",
                "--shards",
                "--count",
            ],
            &["--delivery-limit"],
        ),
    ];
    for (command, present, absent) in cases {
        let text = help(&[command]);
        for flag in present {
            assert!(
                text.contains(flag),
                "{command} --help lacks {flag}:\n{text}"
            );
        }
        for flag in absent
            .iter()
            .chain(worker_only.iter().filter(|f| !present.contains(f)))
        {
            assert!(
                !text.contains(&format!("{flag} ")) && !text.contains(&format!("{flag}\n")),
                "{command} --help lists {flag}, which it does not use:\n{text}"
            );
        }
    }
    let worker = help(&["worker"]);
    for flag in worker_only {
        assert!(worker.contains(flag), "worker --help lacks {flag}");
    }
}

/// Every `ESCALATOR_*` variable the sources read, and the standard ones.
fn variables_in_sources() -> std::collections::BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("ESCALATOR_") {
                    let name: String = text[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    out.insert(name.trim_end_matches('_').to_string());
                }
            }
        }
    }
    let mut vars = std::collections::BTreeSet::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut vars,
    );
    vars.extend(["RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT"].map(String::from));
    vars
}

#[test]
fn every_environment_variable_is_in_some_help() {
    let all_help: String = [
        vec![],
        vec!["worker"],
        vec!["topology"],
        vec!["ingress"],
        vec!["demo"],
        vec!["bench"],
        vec!["sim"],
        vec!["doctor"],
    ]
    .iter()
    .map(|args| help(args))
    .collect();
    let vars = variables_in_sources();
    assert!(vars.len() > 15, "{vars:?}");
    let missing: Vec<_> = vars
        .iter()
        .filter(|v| !all_help.contains(v.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in any --help: {missing:?}");
}

#[test]
fn help_never_shows_the_password_of_a_url_in_the_environment() {
    for command in ["worker", "ingress", "topology", "demo", "bench"] {
        let out = escalator()
            .args([command, "--help"])
            .env("ESCALATOR_AMQP_URL", "amqp://u:CANARY-pw-4711@h:5672/%2f")
            .env("ESCALATOR_REDIS_URL", "redis://:CANARY-pw-4711@h:6379/")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("CANARY"), "{command} --help: {text}");
    }
}
