//! The deployment files agree with the code: docker-compose.yml and every
//! deploy/k8s/*.yaml run subcommands that exist, set only variables the
//! command they run reads, probe the ingress's real health paths on the
//! port it listens on, and route the webhook paths (and only those) to it.
use escalator::ingress::{GUIDE_WEBHOOK_PATH, HEALTH_PATH, READY_PATH, WEBHOOK_PATH};
use escalator::settings::{
    INGRESS_BODY_LIMIT_ENV, INGRESS_CONFIRM_TIMEOUT_ENV, INGRESS_LISTEN_ENV,
};
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The subcommands of the production image (`--no-default-features`),
/// which the Kubernetes manifests run.
const PRODUCTION_COMMANDS: &[&str] = &["worker", "ingress", "topology"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a (multi-document) YAML file.
fn documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn k8s_documents() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
        .iter()
        .flat_map(|p| {
            let rel = p.strip_prefix(root()).unwrap().display().to_string();
            documents(&rel).into_iter().map(move |d| (rel.clone(), d))
        })
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `escalator <command> --help`: it exists in this build, and its text
/// names every variable the command reads (`[env: NAME`) and the global ones.
fn help_of(command: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args([command, "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`escalator {command}` is not a subcommand: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `command` reads variable `name`.
fn reads(help: &str, name: &str) -> bool {
    help.contains(&format!("[env: {name}")) || help.contains(&format!("  {name} "))
}

fn is_setting(name: &str) -> bool {
    name.starts_with("ESCALATOR_") || name == "RUST_LOG" || name.starts_with("OTEL_")
}

// ------------------------------------------------------------------ compose

/// docker-compose.yml with its `<<: *escalator-image` merges applied.
fn compose() -> Value {
    let mut compose = documents("docker-compose.yml").remove(0);
    compose.apply_merge().unwrap();
    compose
}

#[test]
fn compose_runs_existing_commands_with_variables_they_read() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let mut commands = BTreeMap::new();
    for (name, service) in services {
        let name = str_of(name);
        let ours = service["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("escalator"));
        let Some(command) = service["command"].as_sequence().filter(|_| ours) else {
            continue;
        };
        let sub = str_of(&command[0]);
        let help = help_of(&sub);
        if let Some(env) = service["environment"].as_mapping() {
            for key in env.keys().map(str_of).filter(|k| is_setting(k)) {
                assert!(
                    reads(&help, &key),
                    "compose service {name} sets {key}, which `escalator {sub}` does not read"
                );
            }
        }
        commands.insert(name, sub);
    }
    assert_eq!(commands.get("worker").map(String::as_str), Some("worker"));
    assert_eq!(commands.get("ingress").map(String::as_str), Some("ingress"));
}

#[test]
fn compose_ingress_listens_where_it_is_published_and_probed() {
    let compose = &compose();
    let ingress = &compose["services"]["ingress"];
    let env = &ingress["environment"];
    let listen: std::net::SocketAddr = str_of(&env[INGRESS_LISTEN_ENV]).parse().unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "the container must listen on all interfaces, not {listen}"
    );
    let port = listen.port().to_string();
    let ports: Vec<String> = ingress["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert!(
        ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
        "port {port} is not published: {ports:?}"
    );
    assert!(
        env["ESCALATOR_AMQP_URL"]
            .as_str()
            .is_some_and(|u| u.contains("@rabbitmq:"))
    );
    // The org config is mounted where ESCALATOR_CONFIG points.
    let config = str_of(&env["ESCALATOR_CONFIG"]);
    let mounted = ingress["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v["target"].as_str() == Some(config.as_str()));
    assert!(mounted, "{config} is not mounted");
    // The health check asks /readyz on that port.
    let check = ingress["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        check.contains(&format!("/127.0.0.1/{port}"))
            && check.contains(&format!("GET {READY_PATH} ")),
        "{check}"
    );
}

/// The simulator's Zendesk webhook (what its Webhooks API lists and where
/// it delivers) aims at the compose ingress with an org and token of the
/// mounted sim config: otherwise agent replies never arrive and `doctor`
/// fails the webhook checks in the sandbox.
#[test]
fn compose_sim_webhook_targets_the_ingress_with_the_configs_org_and_token() {
    let compose = &compose();
    let services = &compose["services"];
    let sim = &services["sim"]["environment"];
    let url = str_of(&sim["ESCALATOR_SIM_WEBHOOK_URL"]);
    let listen: std::net::SocketAddr =
        str_of(&services["ingress"]["environment"][INGRESS_LISTEN_ENV])
            .parse()
            .unwrap();
    assert!(
        url == format!("http://ingress:{}{WEBHOOK_PATH}", listen.port())
            || url == format!("http://ingress:{}{GUIDE_WEBHOOK_PATH}", listen.port()),
        "{url} is not the ingress's webhook path"
    );
    let config: toml::Value = toml::from_str(&read("deploy/config/escalator.sim.toml")).unwrap();
    let org = str_of(&sim["ESCALATOR_SIM_WEBHOOK_ORG"]);
    let live = &config["orgs"][org.as_str()]["zendesk"]["live"];
    assert_eq!(
        live["webhook_token"].as_str(),
        Some(str_of(&sim["ESCALATOR_SIM_WEBHOOK_TOKEN"]).as_str()),
        "the sim's Bearer token is not org {org}'s webhook_token"
    );
}

// --------------------------------------------------------------- kubernetes

struct Container<'a> {
    file: String,
    workload: String,
    pod_labels: &'a Value,
    container: &'a Value,
}

fn containers(docs: &[(String, Value)]) -> Vec<Container<'_>> {
    let mut out = Vec::new();
    for (file, doc) in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let template = match kind {
            "Deployment" | "Job" | "StatefulSet" | "DaemonSet" => &doc["spec"]["template"],
            _ => continue,
        };
        for c in template["spec"]["containers"].as_sequence().unwrap() {
            out.push(Container {
                file: file.clone(),
                workload: str_of(&doc["metadata"]["name"]),
                pod_labels: &template["metadata"]["labels"],
                container: c,
            });
        }
    }
    out
}

fn config_map<'a>(docs: &'a [(String, Value)], name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name}"))
}

#[test]
fn k8s_workloads_run_production_commands_with_variables_they_read() {
    let docs = k8s_documents();
    let all = containers(&docs);
    assert!(!all.is_empty());
    let mut readers_of_settings: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    for c in &all {
        let args = c.container["args"].as_sequence().unwrap();
        let sub = str_of(&args[0]);
        assert!(
            PRODUCTION_COMMANDS.contains(&sub.as_str()),
            "{} runs `{sub}`, which the production image does not have",
            c.file
        );
        let help = help_of(&sub);
        for e in c.container["env"].as_sequence().into_iter().flatten() {
            let key = str_of(&e["name"]);
            if is_setting(&key) {
                assert!(
                    reads(&help, &key),
                    "{}: `{sub}` does not read {key}",
                    c.workload
                );
            }
        }
        for from in c.container["envFrom"].as_sequence().into_iter().flatten() {
            if from["configMapRef"]["name"] == "escalator-settings" {
                readers_of_settings.push(help.clone());
            }
        }
        seen.push(sub);
    }
    for want in ["worker", "ingress", "topology"] {
        assert!(seen.iter().any(|s| s == want), "no workload runs `{want}`");
    }
    // Every key of the shared settings is read by some command that loads them.
    let settings = config_map(&docs, "escalator-settings");
    for key in settings["data"].as_mapping().unwrap().keys().map(str_of) {
        assert!(
            readers_of_settings.iter().any(|h| reads(h, &key)),
            "escalator-settings has {key}, which no command that loads it reads"
        );
    }
    for key in [INGRESS_BODY_LIMIT_ENV, INGRESS_CONFIRM_TIMEOUT_ENV] {
        assert!(
            !settings["data"][key].is_null(),
            "{key} missing from escalator-settings"
        );
    }
}

#[test]
fn k8s_settings_parse_as_the_worker_reads_them() {
    use clap::{Args, FromArgMatches};
    let docs = k8s_documents();
    let data = config_map(&docs, "escalator-settings")["data"]
        .as_mapping()
        .unwrap();
    let command = escalator::settings::Settings::augment_args(clap::Command::new("worker"));
    // Map each variable to its flag, and parse the values as flags.
    let mut argv = vec!["worker".to_string()];
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        if let Some(value) = data.get(env) {
            argv.push(format!("--{}={}", arg.get_long().unwrap(), str_of(value)));
        }
    }
    let matches = command
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| panic!("escalator-settings does not parse: {e}"));
    let settings = escalator::settings::Settings::from_arg_matches(&matches).unwrap();
    settings.validate().unwrap();
}

#[test]
fn k8s_ingress_is_probed_and_routed_on_its_port() {
    let docs = k8s_documents();
    let all = containers(&docs);
    let ingress = all
        .iter()
        .find(|c| c.container["args"][0] == "ingress")
        .expect("no workload runs `escalator ingress`");
    let c = ingress.container;
    let listen = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == INGRESS_LISTEN_ENV)
        .map(|e| str_of(&e["value"]))
        .expect("ESCALATOR_INGRESS_LISTEN is not set (the default is loopback only)");
    let listen: std::net::SocketAddr = listen.parse().unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "{listen} is not reachable from the kubelet"
    );
    let port = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(listen.port())))
        .expect("no containerPort for the listen port");
    let port_name = str_of(&port["name"]);
    let probe_port = |probe: &str| -> (String, String) {
        let get = &c[probe]["httpGet"];
        (str_of(&get["path"]), str_of(&get["port"]))
    };
    for (probe, path) in [
        ("readinessProbe", READY_PATH),
        ("livenessProbe", HEALTH_PATH),
    ] {
        let (p, port) = probe_port(probe);
        assert_eq!(p, path, "{probe}");
        assert!(
            port == port_name || port == listen.port().to_string(),
            "{probe} asks port {port}"
        );
    }

    // The Service selects these pods and targets that port.
    let service = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| {
            d["kind"] == "Service"
                && d["spec"]["selector"].as_mapping().is_some_and(|sel| {
                    sel.iter()
                        .all(|(k, v)| &ingress.pod_labels[str_of(k).as_str()] == v)
                })
        })
        .expect("no Service selects the ingress pods");
    let service_name = str_of(&service["metadata"]["name"]);
    let service_port = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| {
            let t = str_of(&p["targetPort"]);
            t == port_name || t == listen.port().to_string()
        })
        .expect("the Service does not target the ingress port");

    // The Ingress routes exactly the webhook paths to that Service port.
    let route = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "Ingress")
        .expect("no Ingress resource");
    let mut paths = Vec::new();
    for rule in route["spec"]["rules"].as_sequence().unwrap() {
        for p in s(rule, &["http", "paths"]).as_sequence().unwrap() {
            let backend = &p["backend"]["service"];
            assert_eq!(str_of(&backend["name"]), service_name);
            let port = &backend["port"];
            let matches_port = port["name"].as_str() == service_port["name"].as_str()
                && port["name"].is_string()
                || port["number"].as_u64().is_some() && port["number"] == service_port["port"];
            assert!(matches_port, "route {:?} names another port", p["path"]);
            paths.push(str_of(&p["path"]));
        }
    }
    paths.sort();
    let mut want = vec![GUIDE_WEBHOOK_PATH.to_string(), WEBHOOK_PATH.to_string()];
    want.sort();
    assert_eq!(
        paths, want,
        "the public route must carry the webhook paths only"
    );
}

// ------------------------------------------------------------ definitions

/// `deploy/rabbitmq/definitions.json` is what `escalator topology --print`
/// prints for the default shape: regenerate it with
/// `escalator topology --print --vhost / > deploy/rabbitmq/definitions.json`
/// whenever the topology changes.
#[test]
fn rabbitmq_definitions_file_matches_the_topology_the_code_declares() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(["topology", "--print", "--vhost", "/"])
        .env_remove("ESCALATOR_SHARDS")
        .env_remove("ESCALATOR_DELIVERY_LIMIT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&read("deploy/rabbitmq/definitions.json")).unwrap();
    assert!(
        printed == file,
        "deploy/rabbitmq/definitions.json drifted from the code: regenerate it with \
         `escalator topology --print --vhost / > deploy/rabbitmq/definitions.json`"
    );
    // It is a real definitions document: queues, exchanges, bindings.
    for key in ["queues", "exchanges", "bindings"] {
        assert!(file[key].as_array().is_some_and(|a| !a.is_empty()), "{key}");
    }
}

// ------------------------------------------------------------ observability

/// The worker's probes hit the health paths the code serves, on the port its
/// metrics listener is given; Prometheus (compose) scrapes that port on the
/// worker service and the ingress on its webhook port; the collector
/// forwards traces to the Jaeger service; services export spans to the
/// collector's OTLP/HTTP port.
#[test]
fn probes_scrapes_and_trace_export_point_where_the_code_listens() {
    use escalator::health::{HEALTH_PATH, METRICS_PATH, READY_PATH};
    let docs = k8s_documents();
    let worker = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("worker"))
        })
        .expect("the worker Deployment");
    let container = &worker["spec"]["template"]["spec"]["containers"][0];
    let listen = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ESCALATOR_METRICS_LISTEN")
        .map(|e| str_of(&e["value"]))
        .expect("the worker listens beyond loopback in a pod");
    let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        container["ports"][0]["containerPort"].as_u64(),
        Some(u64::from(port))
    );
    assert_eq!(
        str_of(&container["livenessProbe"]["httpGet"]["path"]),
        HEALTH_PATH
    );
    assert_eq!(
        str_of(&container["readinessProbe"]["httpGet"]["path"]),
        READY_PATH
    );
    let annotations = &worker["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(str_of(&annotations["prometheus.io/port"]), port.to_string());
    assert_eq!(str_of(&annotations["prometheus.io/path"]), METRICS_PATH);

    let compose = compose();
    let services = &compose["services"];
    let compose_listen = str_of(&services["worker"]["environment"]["ESCALATOR_METRICS_LISTEN"]);
    assert!(compose_listen.starts_with("0.0.0.0:"), "{compose_listen}");
    let compose_port: u64 = compose_listen.rsplit(':').next().unwrap().parse().unwrap();
    let prometheus: Value =
        serde_yaml_ng::from_str(&read("deploy/observability/prometheus.yml")).unwrap();
    let jobs = prometheus["scrape_configs"].as_sequence().unwrap();
    let worker_job = jobs
        .iter()
        .find(|j| j["job_name"] == "escalator-worker")
        .unwrap();
    let sd = &worker_job["dns_sd_configs"][0];
    assert_eq!(str_of(&sd["names"][0]), "worker");
    assert_eq!(sd["port"].as_u64(), Some(compose_port));
    let ingress_job = jobs
        .iter()
        .find(|j| j["job_name"] == "escalator-ingress")
        .unwrap();
    let ingress_listen = str_of(&services["ingress"]["environment"]["ESCALATOR_INGRESS_LISTEN"]);
    let ingress_port = ingress_listen.rsplit(':').next().unwrap();
    assert_eq!(
        str_of(&ingress_job["static_configs"][0]["targets"][0]),
        format!("ingress:{ingress_port}")
    );

    let collector: Value =
        serde_yaml_ng::from_str(&read("deploy/observability/otel-collector.yaml")).unwrap();
    let http = str_of(&collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]);
    let otlp_port = http.rsplit(':').next().unwrap().to_string();
    let jaeger = str_of(&collector["exporters"]["otlp/jaeger"]["endpoint"]);
    assert!(jaeger.starts_with("jaeger:"), "{jaeger}");
    assert!(services["jaeger"].is_mapping());
    for svc in ["worker", "ingress"] {
        let endpoint = str_of(&services[svc]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        assert_eq!(
            endpoint,
            format!("http://otel-collector:{otlp_port}"),
            "{svc}"
        );
    }
}
