//! `escalator`: one binary, one subcommand per job.
use clap::{Parser, Subcommand};
use escalator::config::Config;
use escalator::pipeline::service::Worker;
use escalator::settings::{
    AmqpArgs, AmqpTlsArgs, DlqArgs, DoctorArgs, IngressArgs, Settings, ShapeArgs,
};
#[cfg(feature = "tooling")]
use escalator::settings::{IngressBenchArgs, LoadArgs, RedisArgs, RedisTlsArgs, TlsArgs};
use escalator::topology::Topology;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Variables that every command reads, whatever its flags (shown in `--help`).
const ENVIRONMENT_HELP: &str = "\
Environment (every command):
  RUST_LOG                     Log filter, e.g. info or escalator=debug (default: info for
                               worker and sim, warn for demo, error for bench). Libraries
                               (lapin, amq_protocol, redis, hyper, reqwest, h2, rustls, ...)
                               are capped at info even under RUST_LOG=trace, since they log
                               message bodies: name one (RUST_LOG=trace,lapin=trace) to lift it.
  ESCALATOR_LOG_FORMAT         json or text (default: JSON lines when stderr is not a terminal,
                               human-readable on a terminal or with --pretty).
  OTEL_EXPORTER_OTLP_ENDPOINT  Export spans over OTLP/HTTP to this endpoint (and the other
                               standard OTEL_* variables configure the exporter).";

#[derive(Parser)]
#[command(
    name = "escalator",
    version,
    about = "Hands AI-chat conversations over to Salesforce and Zendesk, and carries agent replies back",
    after_help = ENVIRONMENT_HELP
)]
struct Cli {
    /// Human-readable log lines even when stderr is not a terminal (the
    /// default there is JSON lines).
    #[arg(long, global = true)]
    pretty: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the worker's settings (with their TLS group)
// make its variant large, which costs nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the worker service (consumes escalator.inbound).
    #[command(after_help = ENVIRONMENT_HELP)]
    Worker {
        #[command(flatten)]
        settings: Settings,
        /// Per-org configuration file (TOML).
        #[arg(long, env = "ESCALATOR_CONFIG", default_value = "escalator.toml")]
        config: PathBuf,
    },
    /// Run the webhook ingress: the HTTP endpoint for Zendesk webhooks.
    ///
    /// Checks each delivery (Bearer token of the org named in
    /// fv-organisation-id; the signature when the org has a signing secret)
    /// and publishes it to escalator.inbound (routing key webhook.zendesk),
    /// answering 200 only after the broker confirmed. Routes: POST
    /// /webhooks/zendesk and /ai-agent/escalation/webhooks/zendesk/all, GET
    /// /healthz and /readyz. It does not declare the topology: run the
    /// worker or `escalator topology` first.
    #[command(after_help = ENVIRONMENT_HELP)]
    Ingress {
        #[command(flatten)]
        amqp: AmqpArgs,
        #[command(flatten)]
        tls: AmqpTlsArgs,
        #[command(flatten)]
        ingress: IngressArgs,
        /// Per-org configuration file (TOML): the same file as the worker's.
        #[arg(long, env = "ESCALATOR_CONFIG", default_value = "escalator.toml")]
        config: PathBuf,
    },
    /// Run the provider simulator (Zendesk, Salesforce) on a local port.
    #[cfg(feature = "tooling")]
    #[command(after_help = ENVIRONMENT_HELP)]
    Sim {
        #[arg(long, env = "ESCALATOR_SIM_ADDR", default_value = "127.0.0.1:8089")]
        addr: std::net::SocketAddr,
        /// Where the simulated Zendesk sends its webhooks (the ingress's
        /// /webhooks/zendesk); also what its Webhooks API lists, so that
        /// `doctor` finds the webhook of the set-up guide. Unset: none is
        /// sent until a test sets a target.
        #[arg(long, env = "ESCALATOR_SIM_WEBHOOK_URL")]
        webhook_url: Option<String>,
        /// The webhook's `fv-organisation-id` header (the org id in the config).
        #[arg(
            long,
            env = "ESCALATOR_SIM_WEBHOOK_ORG",
            default_value = "sandbox-zendesk"
        )]
        webhook_org: String,
        /// The webhook's Bearer token (the org's `zendesk.live.webhook_token`).
        #[arg(long, env = "ESCALATOR_SIM_WEBHOOK_TOKEN", default_value = "")]
        webhook_token: String,
    },
    /// Run the whole flow once against the simulator and print what the widget hears.
    ///
    /// The demo works in a vhost and a Redis key prefix of its own
    /// (`escalator-demo-<id>`, `escalator-demo:<id>`), removed when it ends,
    /// so it can run against a broker and Redis that serve real workers.
    #[cfg(feature = "tooling")]
    #[command(after_help = ENVIRONMENT_HELP)]
    Demo {
        #[command(flatten)]
        amqp: AmqpArgs,
        #[command(flatten)]
        tls: AmqpTlsArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        redis_tls: RedisTlsArgs,
        /// RabbitMQ management API, used to create the demo's vhost
        /// (without it, `rabbitmqctl` on the PATH is used).
        #[arg(long, env = "ESCALATOR_MANAGEMENT_URL", default_value = escalator::scratch::MANAGEMENT_URL)]
        management_url: String,
    },
    /// Declare the AMQP topology, or print it as RabbitMQ definitions JSON.
    ///
    /// Refuses to declare when the broker already has the work queues of
    /// another shard count (the count is fixed per deployment).
    #[command(after_help = ENVIRONMENT_HELP)]
    Topology {
        #[command(flatten)]
        amqp: AmqpArgs,
        #[command(flatten)]
        tls: AmqpTlsArgs,
        #[command(flatten)]
        shape: ShapeArgs,
        /// Print definitions JSON instead of declaring.
        #[arg(long)]
        print: bool,
        /// The vhost named in the printed definitions.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Read, replay and purge dead letters (escalator.dead-letter), safely while workers run.
    ///
    /// Every command reads at most the messages the queue holds when it
    /// starts and hands back, in their order, all it does not remove. A
    /// replayed message is removed only after its republish was confirmed.
    #[command(after_help = ENVIRONMENT_HELP)]
    Dlq {
        #[command(flatten)]
        amqp: AmqpArgs,
        #[command(flatten)]
        tls: AmqpTlsArgs,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Measure throughput and latency through RabbitMQ -> worker -> simulator -> Redis -> outbound
    /// (with --ingress: of the webhook ingress, answered after the broker's confirm).
    #[cfg(feature = "tooling")]
    #[command(after_help = BENCH_HELP)]
    Bench {
        #[command(flatten)]
        amqp: AmqpArgs,
        #[command(flatten)]
        tls: AmqpTlsArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        redis_tls: RedisTlsArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        ingress: IngressBenchArgs,
        /// Escalations (with --ingress: webhooks) to push through.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Instead of throughput: push this many distinct conversations
        /// through and print the RSS after 2k, 10k and this many.
        #[arg(long)]
        conversations: Option<usize>,
        /// Instead of throughput: hold this many live Salesforce chats in
        /// one worker (simulator in its own process) and print RSS per idle
        /// stream, idle CPU and agent-message relay latency at 500/s.
        #[arg(long)]
        live: Option<usize>,
        /// Instead of throughput: the intake router alone (the deployment's
        /// ceiling): --count escalations routed to the shard queues.
        #[arg(long)]
        intake: bool,
        /// Instead of throughput: --count escalations through each of these
        /// numbers of worker processes (e.g. 1,2,4).
        #[arg(long, value_delimiter = ',')]
        workers: Option<Vec<usize>>,
    },
    /// Check each org's provider set-up against its admin guide (read-only).
    ///
    /// One line per check (PASS, FAIL, WARN, SKIP), with the fix for each
    /// failure. Makes only GET requests and the Salesforce token grant.
    /// Exit status: 0 all required checks pass, 1 one failed, 2 usage or
    /// configuration error.
    #[command(after_help = ENVIRONMENT_HELP)]
    Doctor {
        #[command(flatten)]
        doctor: DoctorArgs,
        /// Per-org configuration file (TOML): the same file as the worker's.
        #[arg(long, env = "ESCALATOR_CONFIG", default_value = "escalator.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Table of dead letters (age, routing key, org, conversation, class, attempts, reason).
    List {
        #[command(flatten)]
        filter: DlqArgs,
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: properties, headers (x-death too) and body, secrets redacted.
    Show {
        /// The id from `dlq list`.
        id: String,
    },
    /// Republish dead letters to escalator.inbound under their original routing
    /// key and message id, without the failure headers, then remove them.
    Replay {
        /// Ids from `dlq list` (with filters: both must match).
        ids: Vec<String>,
        #[command(flatten)]
        filter: DlqArgs,
        /// Replay every dead letter (needed when no id or filter is given).
        #[arg(long)]
        all: bool,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove dead letters for good (only with --yes).
    Purge {
        /// Ids from `dlq list` (with filters: both must match).
        ids: Vec<String>,
        #[command(flatten)]
        filter: DlqArgs,
        /// Purge every dead letter (needed when no id or filter is given).
        #[arg(long)]
        all: bool,
        /// Really remove them.
        #[arg(long)]
        yes: bool,
    },
}

#[cfg(feature = "tooling")]
const BENCH_HELP: &str = "\
Environment:
  ESCALATOR_MANAGEMENT_URL     RabbitMQ management API used to create the benchmark's own
                               vhost (default http://127.0.0.1:15672); without it,
                               rabbitmqctl on the PATH is used, else the run stops and
                               says how to provide one (it never uses the default vhost).
  RUST_LOG, ESCALATOR_LOG_FORMAT, OTEL_EXPORTER_OTLP_ENDPOINT: as for every command
                               (see escalator --help).";

fn main() -> ExitCode {
    let cli = Cli::parse();
    escalator::telemetry::prefer_pretty(cli.pretty);
    if let Command::Doctor { doctor, config } = cli.command {
        return run_doctor(doctor, config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("escalator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("escalator: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Worker { settings, config } => {
            let _telemetry = escalator::telemetry::init("info");
            escalator::tls::install(&settings.tls)?;
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            let worker = Worker::start(settings, config)
                .await
                .map_err(|e| e.to_string())?;
            let stop = shutdown_signal();
            worker
                .serve_health(stop.clone())
                .await
                .map_err(|e| e.to_string())?;
            worker.run(stop).await;
            Ok(())
        }
        Command::Ingress {
            amqp,
            tls,
            ingress,
            config,
        } => {
            let _telemetry = escalator::telemetry::init("info");
            escalator::tls::install(&tls.into())?;
            ingress.validate()?;
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            let options = escalator::ingress::IngressOptions::from_args(amqp.amqp_url, &ingress);
            let handle = escalator::ingress::start_with(options, config)
                .await
                .map_err(|e| e.to_string())?;
            handle
                .run(shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        #[cfg(feature = "tooling")]
        Command::Sim {
            addr,
            webhook_url,
            webhook_org,
            webhook_token,
        } => {
            let _telemetry = escalator::telemetry::init("info");
            let webhook = webhook_url.map(|url| escalator::sim::WebhookTarget {
                url,
                org_id: webhook_org,
                bearer_token: webhook_token,
                signing_secret: None,
                session_end_trigger: true,
            });
            escalator::sim::run(addr, escalator::sim::SimSettings::default(), webhook)
                .await
                .map_err(|e| format!("simulator: {e}"))
        }
        #[cfg(feature = "tooling")]
        Command::Demo {
            amqp,
            tls,
            redis,
            redis_tls,
            management_url,
        } => {
            let _telemetry = escalator::telemetry::init("warn");
            escalator::tls::install(&TlsArgs {
                amqp: tls,
                redis: redis_tls,
            })?;
            let mut settings = Settings::defaults();
            settings.amqp_url = amqp.amqp_url;
            settings.redis_url = redis.redis_url;
            escalator::demo::run(settings, &management_url).await
        }
        Command::Topology {
            amqp,
            tls,
            shape,
            print,
            vhost,
        } => {
            escalator::tls::install(&tls.into())?;
            let mut settings = Settings::defaults();
            settings.amqp_url = amqp.amqp_url;
            settings.shards = shape.shards;
            settings.delivery_limit = shape.delivery_limit;
            settings.validate()?;
            let topology = Topology::new(settings.shards, settings.delivery_limit);
            if print {
                let json = serde_json::to_string_pretty(&topology.definitions_json(&vhost))
                    .map_err(|e| e.to_string())?;
                println!("{json}");
                return Ok(());
            }
            let conn = escalator::amqp::connect_explained(&settings, "escalator-topology").await?;
            let checked = escalator::deployment::check_broker(&conn, settings.shards)
                .await
                .map_err(|e| e.to_string());
            let declared = match checked {
                Ok(()) => declare(&conn, &topology).await,
                Err(e) => Err(e),
            };
            let _ = conn.close(200, "bye".into()).await;
            declared?;
            println!(
                "declared {} exchanges, {} queues, {} bindings on {}",
                topology.exchanges.len(),
                topology.queues.len(),
                topology.bindings.len(),
                settings.amqp_url_redacted()
            );
            Ok(())
        }
        Command::Dlq { amqp, tls, command } => {
            escalator::tls::install(&tls.into())?;
            dlq(&amqp.amqp_url, command).await
        }
        #[cfg(feature = "tooling")]
        Command::Bench {
            amqp,
            tls,
            redis,
            redis_tls,
            load,
            ingress,
            count,
            conversations,
            live,
            intake,
            workers,
        } => {
            let _telemetry = escalator::telemetry::init("error");
            escalator::tls::install(&TlsArgs {
                amqp: tls,
                redis: redis_tls,
            })?;
            let mut settings = Settings::defaults();
            settings.amqp_url = amqp.amqp_url;
            settings.redis_url = redis.redis_url;
            settings.prefetch = load.prefetch;
            settings.concurrency = load.concurrency;
            settings.shards = load.shards;
            let mode = match (conversations, live) {
                (_, Some(streams)) => escalator::bench::Mode::Live { streams },
                (Some(conversations), None) => escalator::bench::Mode::Memory { conversations },
                (None, None) if intake => escalator::bench::Mode::Intake { count },
                (None, None) if workers.is_some() => escalator::bench::Mode::Workers {
                    count,
                    workers: workers.unwrap_or_default(),
                },
                (None, None) if ingress.ingress => escalator::bench::Mode::Ingress {
                    count,
                    clients: ingress.clients,
                },
                (None, None) => escalator::bench::Mode::Throughput { count },
            };
            escalator::bench::run(settings, mode).await
        }
        Command::Doctor { .. } => Err("doctor runs outside this dispatcher".into()),
    }
}

/// `escalator doctor`: exit 0 (all required checks pass), 1 (one failed) or
/// 2 (usage or configuration error).
fn run_doctor(args: DoctorArgs, config: PathBuf) -> ExitCode {
    let _telemetry = escalator::telemetry::init("error");
    let config = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("escalator: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("escalator: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let options = escalator::doctor::DoctorOptions {
        org: args.org,
        webhook_url: args.webhook_url,
    };
    match runtime.block_on(escalator::doctor::run(&config, &options)) {
        Ok(report) => {
            if args.json {
                print!("{}", report.to_json_lines());
            } else {
                print!("{}", report.to_text());
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("escalator: {e}");
            ExitCode::from(2)
        }
    }
}

fn selection(ids: Vec<String>, f: DlqArgs) -> Result<escalator::dlq::select::Selection, String> {
    use escalator::dlq::select::parse_duration;
    Ok(escalator::dlq::select::Selection {
        ids,
        org: f.org,
        conversation: f.conversation,
        class: f.class,
        routing_key: f.routing_key,
        older_than: f.older_than.as_deref().map(parse_duration).transpose()?,
        newer_than: f.newer_than.as_deref().map(parse_duration).transpose()?,
    })
}

/// Replay and purge act on everything only when told `--all`.
fn require_scope(
    sel: &escalator::dlq::select::Selection,
    all: bool,
    verb: &str,
) -> Result<(), String> {
    if !sel.is_narrowed() && !all {
        return Err(format!(
            "nothing selected: give ids or filters (see `escalator dlq {verb} --help`), or --all to {verb} every dead letter"
        ));
    }
    Ok(())
}

async fn dlq(amqp_url: &str, command: DlqCommand) -> Result<(), String> {
    use escalator::dlq::{replay, table};
    use std::io::IsTerminal;
    if let DlqCommand::Purge { yes: false, .. } = &command {
        return Err(
            "purge removes dead letters for good: add --yes to do it (run `escalator dlq list` with the same filters to see what it would remove)".into(),
        );
    }
    let conn = escalator::dlq::connect(amqp_url)
        .await
        .map_err(|e| e.to_string())?;
    let now = chrono::Utc::now();
    let result: Result<(), String> = async {
        match command {
            DlqCommand::List { filter, json } => {
                let sel = selection(vec![], filter)?;
                let letters = replay::list(&conn, &sel).await.map_err(|e| e.to_string())?;
                if json {
                    let v: Vec<_> = letters.iter().map(|d| table::summary_json(d, now)).collect();
                    println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
                } else {
                    print!("{}", table::render(&letters.iter().collect::<Vec<_>>(), now));
                    eprintln!("{} dead letter(s)", letters.len());
                }
                Ok(())
            }
            DlqCommand::Show { id } => {
                let sel = selection(vec![id.clone()], DlqArgs::default())?;
                let letters = replay::list(&conn, &sel).await.map_err(|e| e.to_string())?;
                if letters.is_empty() {
                    return Err(escalator::dlq::DlqError::UnknownId(id).to_string());
                }
                for d in &letters {
                    let v = table::show(d, now);
                    println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
                }
                Ok(())
            }
            DlqCommand::Replay { ids, filter, all, dry_run } => {
                let sel = selection(ids, filter)?;
                require_scope(&sel, all, "replay")?;
                let opts = replay::ReplayOptions {
                    dry_run,
                    progress: std::io::stderr().is_terminal(),
                    crash_after_confirms: None,
                };
                let s = replay::replay(&conn, &sel, &opts).await.map_err(|e| e.to_string())?;
                for id in &s.ids {
                    println!("{} {id}", if dry_run { "would replay" } else { "replayed" });
                }
                if dry_run {
                    println!("dry run: {} of {} dead letter(s) would be replayed", s.matched, s.read);
                } else {
                    println!("replayed {} of {} dead letter(s) to escalator.inbound; {} left in the queue", s.done, s.read, s.read - s.done);
                }
                Ok(())
            }
            DlqCommand::Purge { ids, filter, all, .. } => {
                let sel = selection(ids, filter)?;
                require_scope(&sel, all, "purge")?;
                let s = replay::purge(&conn, &sel).await.map_err(|e| e.to_string())?;
                for id in &s.ids {
                    println!("purged {id}");
                }
                println!("purged {} of {} dead letter(s); {} left in the queue", s.done, s.read, s.read - s.done);
                Ok(())
            }
        }
    }
    .await;
    let closing = conn.close(200, "bye".into());
    let _ = tokio::time::timeout(escalator::dlq::read::CLOSE_TIMEOUT, closing).await;
    result
}

async fn declare(conn: &lapin::Connection, topology: &Topology) -> Result<(), String> {
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    topology
        .declare(&channel)
        .await
        .map_err(|e| format!("declaring the topology failed: {e}"))
}

/// Cancelled on SIGTERM or Ctrl-C.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested: draining");
        t.cancel();
    });
    token
}
