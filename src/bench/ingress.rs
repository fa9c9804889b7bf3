//! `escalator bench --ingress`: latency and throughput of the webhook
//! ingress, end to end as Zendesk sees it: HTTP request -> token and
//! signature checks -> publish to escalator.inbound -> broker confirm
//! (quorum intake queue) -> 200.
//!
//! Runs on a scratch vhost of its own (topology declared there, removed at
//! the end, also after an error or Ctrl-C); needs no Redis.
use super::{WARMUP, isolation};
use crate::config::Config;
use crate::ingress::auth::{ORG_HEADER, SIGNATURE_HEADER, SIGNATURE_TIMESTAMP_HEADER, sign};
use crate::settings::Settings;
use crate::topology::Topology;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Zendesk counts slow answers as failures; this is what the ingress aims for.
pub const P99_TARGET: Duration = Duration::from_millis(100);

const ORG: &str = "bench-org";
const TOKEN: &str = "bench-webhook-token-0123456789";
const SIGNING_SECRET: &str = "bench-signing-secret";

fn config() -> Result<Config, String> {
    let text = format!(
        r#"
[orgs.{ORG}]
provider = "zendesk"
[orgs.{ORG}.zendesk]
subdomain = "bench"
email = "bench@example.com"
api_token = "unused"
[orgs.{ORG}.zendesk.live]
app_id = "bench_app"
key_id = "app_bench"
secret = "unused"
webhook_token = "{TOKEN}"
webhook_signing_secret = "{SIGNING_SECRET}"
"#
    );
    Config::parse(&text, "bench", &|_| None).map_err(|e| e.to_string())
}

/// A "Message added" webhook as Zendesk sends it (about 500 bytes).
fn body(i: usize) -> String {
    serde_json::json!({
        "account_id": 12345678,
        "id": format!("01HBENCH{i:016}"),
        "type": "zen:event-type:messaging_ticket.message_added",
        "subject": format!("zen:ticket:{}", 1000 + i),
        "time": "2026-12-02T04:00:00Z",
        "zendesk_event_version": "2022-11-06",
        "detail": { "id": (1000 + i).to_string() },
        "event": {
            "actor": { "id": "1900000000001", "name": "Agent Smith", "type": "agent" },
            "conversation_id": format!("6541f0c3b2a1e0001c{i:06}"),
            "message": {
                "id": format!("6541f0c3b2a1e0001d{i:06}"),
                "body": "Hello, I am looking at your account now. Could you tell me which e-mail address you signed up with?"
            }
        }
    })
    .to_string()
}

struct Figures {
    latencies: Vec<Duration>,
    wall: Duration,
    body_bytes: usize,
}

pub async fn run(settings: &Settings, count: usize, clients: usize) -> Result<(), String> {
    if count == 0 || clients == 0 {
        return Err("--count and --clients must be at least 1".into());
    }
    println!("escalator bench --ingress: {count} webhooks from {clients} concurrent clients");
    let scratch = isolation::create(settings).await?;
    println!(
        "  RabbitMQ  {} (vhost {}, made for this run with {})",
        crate::settings::redact_url(&scratch.amqp_url),
        scratch.vhost,
        scratch.admin.describe()
    );
    let mut settings = settings.clone();
    settings.amqp_url = scratch.amqp_url.clone();
    let outcome = tokio::select! {
        r = measure(&settings, count, clients) => r,
        r = tokio::signal::ctrl_c() => Err(match r {
            Ok(()) => "interrupted (Ctrl-C): cleaning up".to_string(),
            Err(e) => format!("cannot listen for Ctrl-C: {e}"),
        }),
    };
    let cleanup = scratch.admin.delete_vhost(&scratch.vhost).await;
    let figures = outcome?;
    print(&figures, count, clients);
    cleanup.map_err(|e| format!("the benchmark ran, but cleaning up failed: {e}"))
}

async fn measure(settings: &Settings, count: usize, clients: usize) -> Result<Figures, String> {
    let conn = crate::amqp::connect_explained(settings, "escalator-bench-topology").await?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    Topology::new(settings.shards, settings.delivery_limit)
        .declare(&channel)
        .await
        .map_err(|e| format!("declaring the topology failed: {e}"))?;
    let _ = conn.close(200, "bye".into()).await;

    let handle = crate::ingress::start(settings, config()?, ([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| e.to_string())?;
    if !handle.ready() {
        handle.shutdown().await;
        return Err("the ingress could not connect to RabbitMQ".into());
    }
    let url = handle.webhook_url();
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let send = {
        let http = http.clone();
        let url = url.clone();
        move |i: usize| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let body = body(i);
                let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let signature = sign(SIGNING_SECRET, &ts, body.as_bytes());
                let started = Instant::now();
                let resp = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header(ORG_HEADER, ORG)
                    .header("content-type", "application/json")
                    .header("x-zendesk-webhook-id", "01HBENCHWEBHOOK")
                    .header("x-zendesk-webhook-invocation-id", format!("inv-{i}"))
                    .header(SIGNATURE_TIMESTAMP_HEADER, ts)
                    .header(SIGNATURE_HEADER, signature)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("webhook {i}: {e}"))?;
                let elapsed = started.elapsed();
                match resp.status().as_u16() {
                    200 => Ok(elapsed),
                    s => Err(format!("webhook {i} was answered HTTP {s}")),
                }
            }
        }
    };
    let result = async {
        for i in 0..WARMUP.min(count) {
            send(count + i).await?;
        }
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients.min(count) {
            let next = next.clone();
            let send = send.clone();
            tasks.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<_, String>(mine);
                    }
                    mine.push(send(i).await?);
                }
            });
        }
        let mut latencies = Vec::with_capacity(count);
        while let Some(joined) = tasks.join_next().await {
            latencies.extend(joined.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(Figures {
            latencies,
            wall: started.elapsed(),
            body_bytes: body(0).len(),
        })
    }
    .await;
    handle.shutdown().await;
    result
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn print(f: &Figures, count: usize, clients: usize) {
    let mut sorted = f.latencies.clone();
    sorted.sort();
    let p50 = percentile(&sorted, 50.0);
    let p99 = percentile(&sorted, 99.0);
    let max = sorted.last().copied().unwrap_or_default();
    let rate = count as f64 / f.wall.as_secs_f64().max(f64::EPSILON);
    let ratio = p99.as_secs_f64() / P99_TARGET.as_secs_f64();
    println!();
    println!("escalator bench --ingress report");
    println!("================================");
    println!("  webhooks (N)             {count} (+{WARMUP} warm-up, not counted)");
    println!("  concurrent clients (C)   {clients}");
    println!(
        "  webhook body             {} bytes, signed (HMAC-SHA256)",
        f.body_bytes
    );
    println!("  answered                 200 after the broker's confirm (quorum intake queue)");
    println!();
    println!("  throughput               {rate:.1} requests/s");
    println!("  latency p50              {}", ms(p50));
    println!("  latency p99              {}", ms(p99));
    println!("  latency max              {}", ms(max));
    println!(
        "  p99 / target ({} ms)    {ratio:.3} ({})",
        P99_TARGET.as_millis(),
        if ratio <= 1.0 {
            "within target"
        } else {
            "OVER TARGET"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }

    #[test]
    fn the_bench_config_has_webhook_credentials() {
        let cfg = config().unwrap();
        let live = cfg.org(ORG).unwrap().zendesk().unwrap().live.as_ref();
        assert!(live.is_some_and(|l| l.webhook_signing_secret.is_some()));
    }
}
