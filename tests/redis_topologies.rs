//! Redis Cluster and Sentinel (issue 10, item 2): the escalator's state on
//! a local three-master Cluster and on a Sentinel group, each started by the
//! test on spare ports, with a forced failover in the middle of a run.
mod common;

use common::{TestEnv, customer_message, escalation, until_sim};
use escalator::sandbox::ZENDESK_ORG as ORG;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `n` distinct free ports (each held until all are chosen).
fn spare_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `redis-cli -p PORT ARGS...`, its output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `check` (a server's own state, there is no event to wait on) for
/// up to 60 s.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// redis-server processes killed on drop.
struct Servers {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis_server(dir: &std::path::Path, port: u16, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server")
}

/// Three masters, one replica each.
struct LocalCluster {
    ports: Vec<u16>,
    _servers: Servers,
}

impl LocalCluster {
    async fn start() -> LocalCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = spare_ports(12);
        // The cluster bus on a spare port of its own: by default it is the
        // port + 10000, which may be taken or past 65535.
        let buses = ports.split_off(6);
        let children = ports
            .iter()
            .zip(&buses)
            .map(|(p, bus)| {
                let conf = format!("nodes-{p}.conf");
                let bus = bus.to_string();
                redis_server(
                    dir.path(),
                    *p,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "3000",
                    ],
                )
            })
            .collect();
        let servers = Servers {
            children,
            _dir: dir,
        };
        for p in &ports {
            until("a cluster node", || cli(*p, &["ping"]).contains("PONG")).await;
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for p in &ports {
            until("cluster_state:ok", || {
                cli(*p, &["cluster", "info"]).contains("cluster_state:ok")
            })
            .await;
        }
        for p in &ports {
            until("every replica in sync", || {
                let info = cli(*p, &["info", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
            .await;
        }
        LocalCluster {
            ports,
            _servers: servers,
        }
    }

    fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.ports[0])
    }

    fn role(&self, port: u16) -> String {
        cli(port, &["role"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// A master, a replica and three sentinels.
struct LocalSentinel {
    master: u16,
    replica: u16,
    sentinels: Vec<u16>,
    _servers: Servers,
}

impl LocalSentinel {
    async fn start() -> LocalSentinel {
        let dir = tempfile::tempdir().unwrap();
        let ports = spare_ports(5);
        let (master, replica) = (ports[0], ports[1]);
        let mut children = vec![
            redis_server(dir.path(), master, &[]),
            redis_server(
                dir.path(),
                replica,
                &["--replicaof", "127.0.0.1", &master.to_string()],
            ),
        ];
        until("the master", || cli(master, &["ping"]).contains("PONG")).await;
        let sentinels: Vec<u16> = ports[2..].to_vec();
        for s in &sentinels {
            let conf = dir.path().join(format!("sentinel-{s}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {s}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds mymaster 3000\n\
                     sentinel failover-timeout mymaster 10000\n"
                ),
            )
            .unwrap();
            children.push(
                Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server --sentinel"),
            );
        }
        let servers = Servers {
            children,
            _dir: dir,
        };
        until("the replica in sync", || {
            cli(replica, &["info", "replication"]).contains("master_link_status:up")
        })
        .await;
        for s in &sentinels {
            until("every sentinel sees the replica and the others", || {
                let info = cli(*s, &["sentinel", "master", "mymaster"]);
                let field = |name: &str| {
                    let mut lines = info.lines();
                    while let Some(l) = lines.next() {
                        if l.trim() == name {
                            return lines.next().unwrap_or_default().trim().to_string();
                        }
                    }
                    String::new()
                };
                field("num-slaves") == "1" && field("num-other-sentinels") == "2"
            })
            .await;
        }
        LocalSentinel {
            master,
            replica,
            sentinels,
            _servers: servers,
        }
    }

    fn url(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{s}"))
            .collect();
        format!("redis+sentinel://{}/mymaster", list.join(","))
    }
}

const CONVERSATIONS: usize = 6;
const MESSAGES: usize = 6;

fn text(conv: usize, i: usize) -> String {
    format!("message {i} of conversation {conv}")
}

async fn publish_messages(sb: &escalator::sandbox::Sandbox, range: std::ops::Range<usize>) {
    for i in range {
        for c in 0..CONVERSATIONS {
            let conv = format!("conv-{c}");
            sb.publish(
                "customer.message",
                &format!("m-{c}-{i}"),
                &customer_message(ORG, &conv, &format!("cm-{c}-{i}"), &text(c, i)),
            )
            .await
            .unwrap();
        }
    }
}

/// Escalations and follow-up messages with `failover` run half-way: then
/// exactly one ticket per conversation and one comment per message, in order.
async fn run_with_failover(name: &str, redis_url: String, failover: impl AsyncFnOnce()) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,escalator=info")
        .with_test_writer()
        .try_init();
    let mut env = TestEnv::new(name).await;
    env.settings.redis_url = redis_url;
    let sb = env.sandbox().await;
    for c in 0..CONVERSATIONS {
        let conv = format!("conv-{c}");
        sb.publish(
            "escalation.requested",
            &format!("e-{c}"),
            &escalation(ORG, &conv),
        )
        .await
        .unwrap();
    }
    publish_messages(&sb, 0..MESSAGES / 2).await;
    until_sim(&sb.sim, || {
        sb.sim.zendesk_tickets().len() >= CONVERSATIONS / 2
    })
    .await;
    failover().await;
    publish_messages(&sb, MESSAGES / 2..MESSAGES).await;
    let ours = |body: &Option<String>| body.as_deref().is_some_and(|b| b.contains("message "));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let tickets = sb.sim.zendesk_tickets();
        let done = tickets.len() >= CONVERSATIONS
            && tickets
                .iter()
                .all(|t| t.comments.iter().filter(|c| ours(&c.body)).count() >= MESSAGES);
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every message arrived: {:?}",
            tickets
                .iter()
                .map(|t| t.comments.iter().filter(|c| ours(&c.body)).count())
                .collect::<Vec<_>>()
        );
        let mut rx = sb.sim.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    }
    let tickets = sb.sim.zendesk_tickets();
    assert_eq!(tickets.len(), CONVERSATIONS, "one ticket per conversation");
    for t in &tickets {
        let conv: usize = t
            .external_id
            .as_deref()
            .and_then(|id| id.rsplit('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("ticket {} external id {:?}", t.id, t.external_id));
        let bodies: Vec<String> = t
            .comments
            .iter()
            .filter(|c| ours(&c.body))
            .map(|c| c.body.clone().unwrap_or_default())
            .collect();
        let expected: Vec<String> = (0..MESSAGES).map(|i| text(conv, i)).collect();
        assert_eq!(
            bodies.len(),
            MESSAGES,
            "one comment per message: {bodies:?}"
        );
        for (body, want) in bodies.iter().zip(&expected) {
            assert!(body.contains(want.as_str()), "order: {bodies:?}");
        }
    }
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_mid_run_loses_and_duplicates_nothing() {
    let cluster = LocalCluster::start().await;
    let replica = *cluster
        .ports
        .iter()
        .find(|p| cluster.role(**p) == "slave")
        .expect("a replica");
    run_with_failover("redis-cluster", cluster.url(), async || {
        let out = cli(replica, &["cluster", "failover"]);
        assert!(out.contains("OK"), "CLUSTER FAILOVER: {out}");
        until("the replica promoted", || cluster.role(replica) == "master").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_run_loses_and_duplicates_nothing() {
    let group = LocalSentinel::start().await;
    let sentinel = group.sentinels[0];
    run_with_failover("redis-sentinel", group.url(), async || {
        let out = cli(sentinel, &["sentinel", "failover", "mymaster"]);
        assert!(out.contains("OK"), "SENTINEL FAILOVER: {out}");
        until("the replica promoted", || {
            cli(group.replica, &["role"]).starts_with("master")
        })
        .await;
        assert!(cli(group.master, &["ping"]).contains("PONG"));
    })
    .await;
}

/// The whole demo (ticket, Zendesk live, Salesforce live: every Lua script
/// and MULTI of the serving path) on a Cluster, which refuses any command
/// whose keys span slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_of_the_demo_runs_on_a_cluster() {
    let cluster = LocalCluster::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("demo")
        .env("ESCALATOR_REDIS_URL", cluster.url())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("the demo ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("every step behaved as expected"),
        "demo on a cluster failed:\n{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("CROSSSLOT"), "{stderr}");
    // The scripts ran on the cluster's masters (not on some other Redis).
    let scripts: u64 = cluster
        .ports
        .iter()
        .map(|p| {
            let stats = cli(*p, &["info", "commandstats"]);
            stats
                .lines()
                .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
        })
        .sum();
    assert!(
        scripts > 20,
        "only {scripts} script calls reached the cluster"
    );
}
