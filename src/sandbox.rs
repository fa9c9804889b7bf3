//! An in-process sandbox: the provider simulator, a worker configured with
//! sandbox orgs that point at it, and helpers to publish inbound events and
//! listen to outbound ones. The demo, the benchmark and the tests use it.
use crate::amqp::{self, Publisher, json_properties};
use crate::config::Config;
use crate::contract::OutboundEvent;
use crate::ingress::IngressHandle;
use crate::pipeline::service::Worker;
use crate::settings::Settings;
use crate::sim::{self, SimHandle, SimSettings, WebhookTarget};
use crate::topology::{INBOUND_EXCHANGE, OUTBOUND_EXCHANGE};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, Consumer};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const ZENDESK_ORG: &str = "sandbox-zendesk";
pub const SALESFORCE_ORG: &str = "sandbox-salesforce";
/// The Bearer token of the sandbox Zendesk org's webhook (a test value).
pub const SANDBOX_WEBHOOK_TOKEN: &str = "sandbox-webhook-token-0123456789";

/// Config of the sandbox orgs, pointing at the simulator at `sim_url`.
pub fn sandbox_config(sim_url: &str) -> String {
    format!(
        r#"
[orgs.{ZENDESK_ORG}]
provider = "zendesk"

[orgs.{ZENDESK_ORG}.zendesk]
subdomain = "sandbox"
email = "agent@example.com"
api_token = "sim-zendesk-token"
base_url = "{sim_url}"
assignee_id = 1000
group_id = 77
tags = ["escalator", "ai_handoff"]

[orgs.{ZENDESK_ORG}.zendesk.live]
app_id = "sim-app"
key_id = "sim-key"
secret = "sim-sunshine-secret"
base_url = "{sim_url}/sc"
webhook_token = "{SANDBOX_WEBHOOK_TOKEN}"

[orgs.{SALESFORCE_ORG}]
provider = "salesforce"

[orgs.{SALESFORCE_ORG}.salesforce]
my_domain = "{sim_url}"
client_id = "sim-client-id"
client_secret = "sim-client-secret"
origin = "Chat"
priority = "Medium"

[orgs.{SALESFORCE_ORG}.salesforce.live]
org_id = "00DSIM000000001"
developer_name = "Sim_Messaging"
scrt_url = "{sim_url}"

[orgs.{SALESFORCE_ORG}.salesforce.live.prechat]
_firstName = "customer.name"
_email = "customer.email"
"#
    )
}

/// A realistic `escalation.requested` body (ticket mode) for `org` and `conversation_id`.
pub fn sample_escalation(org: &str, conversation_id: &str) -> serde_json::Value {
    let now = chrono::Utc::now();
    serde_json::json!({
        "org_id": org,
        "conversation_id": conversation_id,
        "mode": "ticket",
        "customer": { "id": "cust-42", "name": "Ada Lovelace", "email": "ada@example.com" },
        "subject": "Refund for a double charge",
        "summary": "Customer was charged twice for order 4711 and wants a refund.",
        "transcript": [
            { "role": "customer", "text": "I was charged twice!", "sent_at": now },
            { "role": "ai", "text": "Sorry about that. Let me get a human to help.", "sent_at": now },
        ],
        "context": { "plan": "pro", "locale": "en-GB", "page_url": "https://shop.example.com/orders/4711" },
        "requested_at": now,
    })
}

pub struct Sandbox {
    pub sim: SimHandle,
    pub settings: Settings,
    pub config: Config,
    pub worker: Arc<Worker>,
    pub client: Client,
    /// The webhook ingress, when started ([`Sandbox::with_ingress`]).
    pub ingress: Option<IngressHandle>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The sandbox publishes and listens as its client does.
impl std::ops::Deref for Sandbox {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// A producer and widget-side consumer: publishes inbound events, listens to outbound ones.
pub struct Client {
    conn: Connection,
    publisher: Publisher,
}

impl Client {
    pub async fn connect(settings: &Settings) -> Result<Client, String> {
        let conn = amqp::connect_explained(settings, "escalator-client").await?;
        let publisher = Publisher::open(&conn).await.map_err(|e| e.to_string())?;
        Ok(Client { conn, publisher })
    }

    /// Publish an inbound event as a producer would (persistent JSON with a message id).
    pub async fn publish(
        &self,
        routing_key: &str,
        message_id: &str,
        body: &serde_json::Value,
    ) -> Result<(), String> {
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        self.publish_raw(routing_key, Some(message_id), &bytes)
            .await
    }

    pub async fn publish_raw(
        &self,
        routing_key: &str,
        message_id: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let mut props = json_properties();
        if let Some(id) = message_id {
            props = props.with_message_id(ShortString::from(id));
        }
        self.publisher
            .publish(INBOUND_EXCHANGE, routing_key, body, props)
            .await
            .map_err(|e| e.to_string())
    }

    /// Listen to outbound events matching `binding` (e.g. `sandbox-zendesk.#`).
    pub async fn listen(&self, binding: &str) -> Result<Listener, String> {
        Listener::open(&self.conn, binding).await
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

impl Sandbox {
    /// Start the simulator and a worker. `config` maps the simulator's base
    /// URL to the config text (use [`sandbox_config`] for the default orgs).
    pub async fn start(
        settings: Settings,
        config: impl FnOnce(&str) -> String,
    ) -> Result<Sandbox, String> {
        let sim = sim::start(([127, 0, 0, 1], 0).into(), SimSettings::default())
            .await
            .map_err(|e| format!("cannot start the simulator: {e}"))?;
        let text = config(&sim.base_url());
        let config = Config::parse(&text, "sandbox", &|n| std::env::var(n).ok())
            .map_err(|e| e.to_string())?;
        Self::start_with(settings, config, sim).await
    }

    pub async fn start_with(
        settings: Settings,
        config: Config,
        sim: SimHandle,
    ) -> Result<Sandbox, String> {
        let worker = Arc::new(
            Worker::start(settings.clone(), config.clone())
                .await
                .map_err(|e| e.to_string())?,
        );
        let client = Client::connect(&settings).await?;
        let stop = CancellationToken::new();
        let task = {
            let worker = worker.clone();
            let stop = stop.clone();
            tokio::spawn(async move { worker.run(stop).await })
        };
        Ok(Sandbox {
            sim,
            settings,
            config,
            worker,
            client,
            ingress: None,
            stop,
            task,
        })
    }

    /// Start the webhook ingress for the sandbox's orgs and point the
    /// simulator's Zendesk webhook at it: `target` gets the ingress's webhook
    /// URL and says who the simulator delivers as
    /// ([`Sandbox::zendesk_webhook`] for the sandbox Zendesk org).
    pub async fn with_ingress(
        mut self,
        target: impl FnOnce(String) -> WebhookTarget,
    ) -> Result<Sandbox, String> {
        let ingress = crate::ingress::start(
            &self.settings,
            self.config.clone(),
            ([127, 0, 0, 1], 0).into(),
        )
        .await
        .map_err(|e| e.to_string())?;
        self.sim.set_zendesk_webhook(target(ingress.webhook_url()));
        self.ingress = Some(ingress);
        Ok(self)
    }

    /// The sandbox Zendesk org's webhook as the set-up guide has it (Bearer
    /// token, `fv-organisation-id`, the session-end trigger).
    pub fn zendesk_webhook(url: String) -> WebhookTarget {
        WebhookTarget {
            url,
            org_id: ZENDESK_ORG.to_string(),
            bearer_token: SANDBOX_WEBHOOK_TOKEN.to_string(),
            signing_secret: None,
            session_end_trigger: true,
        }
    }

    /// Stop the ingress, the worker (graceful) and the simulator.
    pub async fn stop(self) {
        if let Some(ingress) = self.ingress {
            ingress.shutdown().await;
        }
        self.stop.cancel();
        let _ = self.task.await;
        self.client.close().await;
        self.sim.shutdown().await;
    }
}

/// An exclusive, auto-deleted queue bound to `escalator.outbound`.
pub struct Listener {
    consumer: Consumer,
}

impl Listener {
    pub async fn open(conn: &Connection, binding: &str) -> Result<Listener, String> {
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        let queue = channel
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        channel
            .queue_bind(
                queue.name().clone(),
                ShortString::from(OUTBOUND_EXCHANGE),
                ShortString::from(binding),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(Listener { consumer })
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<OutboundEvent> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        serde_json::from_slice(&delivery.data).ok()
    }
}
