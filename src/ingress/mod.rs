//! `escalator ingress`: the HTTP endpoint Zendesk's webhooks call.
//!
//! It authenticates each delivery (the org's Bearer token, named by the
//! `fv-organisation-id` header; the HMAC signature when the org has a signing
//! secret), and publishes it unchanged as a `webhook.zendesk` message on
//! `escalator.inbound` (`schemas/inbound/webhook.zendesk.json`), answering
//! 2xx only after the broker confirmed. Everything else (which conversation,
//! which agent event) is the worker's job, from the queue: Zendesk counts
//! slow answers as failures, so the ingress does nothing slow.
//!
//! - `answer`: every refusal with its status and message;
//! - `auth`: token, org and signature checks;
//! - `publish`: the long-lived broker session and confirmed publishing;
//! - `routes`: the axum router.
mod answer;
pub mod auth;
mod publish;
mod routes;

pub use answer::Rejection;
pub use routes::KEPT_HEADERS;

use crate::config::Config;
use crate::settings::{
    DEFAULT_INGRESS_BODY_LIMIT, DEFAULT_INGRESS_CONFIRM_TIMEOUT_MS, IngressArgs, Settings,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The path of the ingress's own deployment.
pub const WEBHOOK_PATH: &str = "/webhooks/zendesk";
/// The path of the admins' set-up guide (`https://<host>/ai-agent/...`).
pub const GUIDE_WEBHOOK_PATH: &str = "/ai-agent/escalation/webhooks/zendesk/all";
pub const HEALTH_PATH: &str = "/healthz";
pub const READY_PATH: &str = "/readyz";
/// The routing key (and event type) of the published messages.
pub const ROUTING_KEY: &str = "webhook.zendesk";

/// Everything the ingress needs besides the org config.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    pub amqp_url: String,
    pub listen: SocketAddr,
    /// Largest accepted body in bytes.
    pub body_limit: usize,
    /// Longest wait for a publish's confirm before answering 503.
    pub confirm_timeout: Duration,
}

impl IngressOptions {
    /// The broker of `settings`, the default body limit and confirm timeout.
    pub fn new(settings: &Settings, listen: SocketAddr) -> IngressOptions {
        IngressOptions {
            amqp_url: settings.amqp_url.clone(),
            listen,
            body_limit: DEFAULT_INGRESS_BODY_LIMIT,
            confirm_timeout: Duration::from_millis(DEFAULT_INGRESS_CONFIRM_TIMEOUT_MS),
        }
    }

    /// From the `ingress` command's settings.
    pub fn from_args(amqp_url: String, args: &IngressArgs) -> IngressOptions {
        IngressOptions {
            amqp_url,
            listen: args.listen,
            body_limit: args.body_limit,
            confirm_timeout: Duration::from_millis(args.confirm_timeout_ms),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(
        "cannot listen on {addr}: {source} (set ESCALATOR_INGRESS_LISTEN to a free address, e.g. 0.0.0.0:8080)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the webhook server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// A running ingress.
pub struct IngressHandle {
    addr: SocketAddr,
    broker: publish::Broker,
    stop: CancellationToken,
    broker_stop: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    keeper: tokio::task::JoinHandle<()>,
}

/// Start the ingress for every org of `config` on `listen` (tests bind
/// `127.0.0.1:0`), publishing to the broker of `settings`, with the default
/// body limit and confirm timeout ([`start_with`] sets them).
pub async fn start(
    settings: &Settings,
    config: Config,
    listen: SocketAddr,
) -> Result<IngressHandle, IngressError> {
    start_with(IngressOptions::new(settings, listen), config).await
}

/// Start the ingress. The first broker connection is attempted before this
/// returns; an unreachable broker is not fatal (503 and `/readyz` failing
/// until it is reachable, reconnecting in the background).
pub async fn start_with(
    options: IngressOptions,
    config: Config,
) -> Result<IngressHandle, IngressError> {
    if options.body_limit == 0 {
        return Err(IngressError::Setup(
            "the body limit must be at least 1 byte".into(),
        ));
    }
    options.amqp_url.parse::<lapin::uri::AMQPUri>().map_err(|_| {
        IngressError::Setup(format!(
            "ESCALATOR_AMQP_URL ({}) is not a valid AMQP URL: use amqp://USER:PASSWORD@HOST:5672/VHOST",
            crate::settings::redact_url(&options.amqp_url)
        ))
    })?;
    crate::observability::metrics::install();
    let credentials = auth::Credentials::from_config(&config);
    let orgs = credentials.len();
    if credentials.is_empty() {
        tracing::warn!(
            "no org has a [orgs.<org>.zendesk.live] table: every webhook will be refused (403)"
        );
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| IngressError::Bind {
            addr: options.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| IngressError::Bind {
        addr: options.listen,
        source,
    })?;
    let stop = CancellationToken::new();
    // Cancelled after the server drained, so in-flight requests keep the
    // broker session until they are answered.
    let broker_stop = CancellationToken::new();
    let (broker, keeper) = publish::Broker::start(
        options.amqp_url.clone(),
        options.confirm_timeout,
        broker_stop.clone(),
    )
    .await;
    let state = Arc::new(routes::AppState {
        credentials,
        broker: broker.clone(),
        body_limit: options.body_limit,
    });
    let app = routes::router(state);
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await
    });
    tracing::info!(
        %addr,
        orgs,
        body_limit = options.body_limit,
        "webhook ingress listening on {WEBHOOK_PATH} and {GUIDE_WEBHOOK_PATH}"
    );
    Ok(IngressHandle {
        addr,
        broker,
        stop,
        broker_stop,
        server,
        keeper,
    })
}

impl IngressHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `{base}/webhooks/zendesk`.
    pub fn webhook_url(&self) -> String {
        format!("{}{WEBHOOK_PATH}", self.base_url())
    }

    /// Whether a publish can be attempted now (what `/readyz` says).
    pub fn ready(&self) -> bool {
        self.broker.ready()
    }

    /// Serve until `stop` is cancelled (or the server fails), then shut down.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), IngressError> {
        let result = tokio::select! {
            _ = stop.cancelled() => Ok(()),
            r = &mut self.server => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(IngressError::Serve(e)),
                Err(e) => Err(IngressError::Serve(std::io::Error::other(e))),
            },
        };
        self.shutdown().await;
        result
    }

    /// Stop accepting, finish the requests in progress (each ends within
    /// its confirm timeout), close the broker connection.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if !self.server.is_finished() {
            let _ = self.server.await;
        }
        self.broker_stop.cancel();
        let _ = self.keeper.await;
        tracing::info!("webhook ingress stopped");
    }
}
