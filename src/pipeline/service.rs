//! The worker service: one RabbitMQ session at a time, re-established after
//! any failure, drained on shutdown.
use super::{Context, intake, membership, shard};
use crate::amqp::{self, ChannelKeeper, Publisher};
use crate::config::Config;
use crate::error::InfraError;
use crate::explain;
use crate::provider::retry::RetryPolicy;
use crate::provider::{HttpSettings, Providers};
use crate::schema::Schemas;
use crate::settings::Settings;
use crate::store::Store;
use crate::topology::Topology;
use lapin::types::ShortString;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why the worker could not start. Each message names what failed and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Redis is down, refuses the login, or the URL does not parse
    /// (explained, without the password).
    #[error("{0}")]
    Redis(String),
    /// RabbitMQ is down, refuses the login, has no such vhost, or the URL
    /// does not parse (explained, without the password).
    #[error("{0}")]
    Amqp(String),
    #[error("cannot declare the AMQP topology: {0}")]
    Topology(lapin::Error),
    /// Another shard count or delivery limit than the deployment's.
    #[error("{0}")]
    Deployment(#[from] crate::deployment::DeploymentError),
    #[error("{0}")]
    Setup(String),
}

pub struct Worker {
    ctx: Arc<Context>,
    /// What `/readyz` reports about the RabbitMQ session.
    readiness: Arc<crate::health::Readiness>,
}

impl Worker {
    /// Connect to Redis and build the provider clients. RabbitMQ is checked
    /// once too, so that a wrong URL fails at start instead of looping.
    pub async fn start(settings: Settings, config: Config) -> Result<Worker, StartError> {
        settings.validate().map_err(StartError::Setup)?;
        crate::observability::metrics::install();
        let store = Store::connect(
            &settings.redis_url,
            &settings.key_prefix,
            settings.state_ttl(),
        )
        .await
        .map_err(|e| StartError::Redis(explain::redis(&settings.redis_url, &e)))?;
        store
            .ping()
            .await
            .map_err(|e| StartError::Redis(explain::redis(&settings.redis_url, &e)))?;
        let schemas = Schemas::load().map_err(|e| StartError::Setup(format!("schemas: {e}")))?;
        let http = HttpSettings {
            timeout: Duration::from_millis(settings.http_timeout_ms),
        };
        let providers = Providers::build(&config, &store, &http).map_err(StartError::Setup)?;
        let conn = amqp::connect(&settings.amqp_url, "escalator-worker-check")
            .await
            .map_err(|e| StartError::Amqp(explain::amqp(&settings.amqp_url, &e)))?;
        crate::deployment::check_worker(
            &conn,
            &mut store.connection(),
            &settings.key_prefix,
            settings.shards,
            settings.delivery_limit,
        )
        .await?;
        let channel = conn.create_channel().await.map_err(StartError::Topology)?;
        Topology::new(settings.shards, settings.delivery_limit)
            .declare(&channel)
            .await
            .map_err(StartError::Topology)?;
        let _ = conn.close(200, ShortString::from("checked")).await;
        if providers.any_miaw() {
            raise_open_file_limit(settings.max_streams)?;
        }
        let instance_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let streams = crate::live_stream::Streams::new(
            &instance_id,
            settings.stream_settings(),
            &store,
            providers.clone(),
        );
        let ctx = Context {
            retry: RetryPolicy::from_settings(&settings),
            settings,
            config,
            schemas,
            store,
            providers,
            instance_id,
            streams,
            standby_delay: Duration::from_secs(2),
            lanes: Default::default(),
            webhooks: Default::default(),
        };
        Ok(Worker {
            ctx: Arc::new(ctx),
            readiness: Default::default(),
        })
    }

    /// Run only the intake router until `stop`: messages are routed to
    /// their shard queues and stay there (`escalator bench --intake`, the
    /// router's ceiling).
    #[cfg(feature = "tooling")]
    pub async fn route_only(&self, stop: CancellationToken) -> Result<(), InfraError> {
        let conn = amqp::connect(&self.ctx.settings.amqp_url, "escalator-bench-intake").await?;
        let keeper = ChannelKeeper::default();
        let result = intake::run(&self.ctx, &conn, &keeper, stop).await;
        let _ = conn.close(200, ShortString::from("bye")).await;
        result
    }

    /// Serve `/metrics`, `/healthz` and `/readyz` on `ESCALATOR_METRICS_LISTEN`
    /// until `stop` (nothing when it is `off`); the bound address.
    pub async fn serve_health(
        &self,
        stop: CancellationToken,
    ) -> Result<Option<std::net::SocketAddr>, StartError> {
        let Some(addr) = self
            .ctx
            .settings
            .metrics_listen()
            .map_err(StartError::Setup)?
        else {
            return Ok(None);
        };
        let listener = crate::health::bind(addr).await.map_err(StartError::Setup)?;
        let bound = listener
            .local_addr()
            .map_err(|e| StartError::Setup(e.to_string()))?;
        crate::health::spawn(
            listener,
            self.ctx.store.clone(),
            self.readiness.clone(),
            stop,
        );
        tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
        Ok(Some(bound))
    }

    /// Whether a RabbitMQ session is up and consuming (what `/readyz` needs
    /// besides Redis).
    pub fn readiness(&self) -> &Arc<crate::health::Readiness> {
        &self.readiness
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Run until `stop` is cancelled; then finish or requeue in-flight
    /// messages and return.
    pub async fn run(&self, stop: CancellationToken) {
        let ctx = &self.ctx;
        tracing::info!(instance = %ctx.instance_id, amqp = %ctx.settings.amqp_url_redacted(), shards = ctx.settings.shards, "worker starting");
        let mut backoff = Duration::from_millis(250);
        let mut first_session = true;
        while !stop.is_cancelled() {
            let result = self.session(&stop, first_session).await;
            first_session = false;
            match result {
                Ok(()) => backoff = Duration::from_millis(250),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ session ended: reconnecting");
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                }
            }
        }
        membership::leave(&ctx.store, &ctx.instance_id, ctx.settings.shards).await;
        tracing::info!("worker stopped");
    }

    async fn session(
        &self,
        stop: &CancellationToken,
        first_session: bool,
    ) -> Result<(), InfraError> {
        let ctx = &self.ctx;
        let conn = amqp::connect(
            &ctx.settings.amqp_url,
            &format!("escalator-worker-{}", ctx.instance_id),
        )
        .await?;
        let channel = conn.create_channel().await?;
        Topology::new(ctx.settings.shards, ctx.settings.delivery_limit)
            .declare(&channel)
            .await?;
        let publisher = Publisher::open(&conn)
            .await?
            .with_confirm_timeout(ctx.settings.confirm_timeout());
        // Announced only now that a session is up; the shard consumers keep
        // the records fresh while they consume, and the session withdraws
        // them when it ends.
        let mut live = membership::heartbeat(&ctx.store, &ctx.instance_id, &[])
            .await
            .unwrap_or_else(|_| vec![ctx.instance_id.clone()]);
        if first_session {
            // Replicas starting together: give the others a moment to announce
            // themselves, so that all see the same live set and split the shards.
            tokio::time::sleep(ctx.standby_delay / 2).await;
            live = membership::heartbeat(&ctx.store, &ctx.instance_id, &[])
                .await
                .unwrap_or(live);
        }
        let (order, preferred) =
            membership::shard_order(&ctx.instance_id, &live, ctx.settings.shards);
        tracing::info!(preferred_shards = ?&order[..preferred], "connected to RabbitMQ, consuming");

        let session = stop.child_token();
        let keeper = ChannelKeeper::default();
        keeper.keep(&channel);
        keeper.keep(publisher.channel());
        let intake = intake::run(ctx, &conn, &keeper, session.clone());
        let stream_publisher = Publisher::open(&conn)
            .await?
            .with_confirm_timeout(ctx.settings.confirm_timeout());
        keeper.keep(stream_publisher.channel());
        let streams = tokio::spawn(crate::live_stream::supervisor::run(
            ctx.streams.clone(),
            stream_publisher,
            session.clone(),
        ));
        let shards = shard::run(
            ctx.clone(),
            &conn,
            &keeper,
            publisher,
            order,
            preferred,
            session.clone(),
        );
        tokio::pin!(intake);
        tokio::pin!(shards);
        self.readiness.set_consuming(true);
        let result = tokio::select! {
            r = &mut intake => { self.readiness.set_consuming(false); session.cancel(); let r2 = shards.await; r.and(r2) }
            r = &mut shards => { self.readiness.set_consuming(false); session.cancel(); let r2 = intake.await; r.and(r2) }
        };
        session.cancel();
        if let Err(e) = streams.await {
            tracing::warn!(error = %e, "the stream supervisor ended abnormally");
        }
        membership::leave(&ctx.store, &ctx.instance_id, ctx.settings.shards).await;
        // The kept channels are dropped after this, with the connection closed.
        let _ = conn.close(200, ShortString::from("bye")).await;
        result
    }
}

/// Each live Salesforce conversation holds a connection: raise the soft
/// open-file limit to the hard one, and refuse to start when even that is
/// too low for `ESCALATOR_MAX_STREAMS`.
fn raise_open_file_limit(max_streams: usize) -> Result<(), StartError> {
    let needed = max_streams as u64 + 1024;
    match rlimit::increase_nofile_limit(needed) {
        Ok(got) if got >= needed => {
            tracing::debug!(open_files = got, "open-file limit");
            Ok(())
        }
        Ok(got) => Err(StartError::Setup(format!(
            "the open-file limit is {got}, but ESCALATOR_MAX_STREAMS={max_streams} live chats need at least {needed}: \
             raise it (`ulimit -n {needed}` in the shell, LimitNOFILE={needed} in a systemd unit, \
             the container runtime's nofile ulimit) or lower ESCALATOR_MAX_STREAMS"
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            Ok(())
        }
    }
}
