//! `escalator`: one binary, one subcommand per job.
use clap::{Parser, Subcommand};
use escalator::config::Config;
use escalator::pipeline::service::Worker;
use escalator::settings::Settings;
use escalator::topology::Topology;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "escalator",
    version,
    about = "Hands AI-chat conversations over to Salesforce and Zendesk, and carries agent replies back"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker service (consumes escalator.inbound).
    Worker {
        #[command(flatten)]
        settings: Settings,
        /// Per-org configuration file (TOML).
        #[arg(long, env = "ESCALATOR_CONFIG", default_value = "escalator.toml")]
        config: PathBuf,
    },
    /// Run the provider simulator (Zendesk, Salesforce) on a local port.
    Sim {
        #[arg(long, env = "ESCALATOR_SIM_ADDR", default_value = "127.0.0.1:8089")]
        addr: std::net::SocketAddr,
    },
    /// Run the whole flow once against the simulator and print what the widget hears.
    Demo {
        #[command(flatten)]
        settings: Settings,
    },
    /// Declare the AMQP topology, or print it as RabbitMQ definitions JSON.
    Topology {
        #[command(flatten)]
        settings: Settings,
        /// Print definitions JSON instead of declaring.
        #[arg(long)]
        print: bool,
        /// The vhost named in the printed definitions.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Measure throughput and latency through RabbitMQ -> worker -> simulator -> Redis -> outbound.
    Bench {
        #[command(flatten)]
        settings: Settings,
        /// Escalations to push through.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Instead of throughput: push this many distinct conversations
        /// through and print the RSS after 2k, 10k and this many.
        #[arg(long)]
        conversations: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            let worker = Worker::start(settings, config)
                .await
                .map_err(|e| e.to_string())?;
            let stop = shutdown_signal();
            worker.run(stop).await;
            Ok(())
        }
        Command::Sim { addr } => {
            let _telemetry = escalator::telemetry::init("info");
            escalator::sim::run(addr, escalator::sim::SimSettings::default())
                .await
                .map_err(|e| format!("simulator: {e}"))
        }
        Command::Demo { settings } => {
            let _telemetry = escalator::telemetry::init("warn");
            escalator::demo::run(settings).await
        }
        Command::Topology {
            settings,
            print,
            vhost,
        } => {
            let topology = Topology::new(settings.shards, settings.delivery_limit);
            if print {
                let json = serde_json::to_string_pretty(&topology.definitions_json(&vhost))
                    .map_err(|e| e.to_string())?;
                println!("{json}");
                return Ok(());
            }
            let conn = escalator::amqp::connect_explained(&settings, "escalator-topology").await?;
            let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
            topology
                .declare(&channel)
                .await
                .map_err(|e| format!("declaring the topology failed: {e}"))?;
            println!(
                "declared {} exchanges, {} queues, {} bindings on {}",
                topology.exchanges.len(),
                topology.queues.len(),
                topology.bindings.len(),
                settings.amqp_url_redacted()
            );
            Ok(())
        }
        Command::Bench {
            settings,
            count,
            conversations,
        } => {
            let _telemetry = escalator::telemetry::init("error");
            let mode = match conversations {
                Some(conversations) => escalator::bench::Mode::Memory { conversations },
                None => escalator::bench::Mode::Throughput { count },
            };
            escalator::bench::run(settings, mode).await
        }
    }
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
