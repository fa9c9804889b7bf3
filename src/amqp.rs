//! RabbitMQ connection and confirmed publishing.
use crate::error::InfraError;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use std::time::Duration;

/// Connect to RabbitMQ, with the process's TLS material for `amqps://`
/// URLs ([`crate::tls::process`]). `name` shows up in the management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let tls = crate::tls::process().map_err(|e| lapin::Error::from(std::io::Error::other(e)))?;
    connect_with(url, name, &tls.amqp).await
}

/// Connect to RabbitMQ with this TLS material (the one code path of every
/// connection; a plain `amqp://` URL ignores it). A URL that lists several
/// nodes (`amqp://u:p@a:5672,b:5672/vh`) tries them in turn
/// (`amqp_addresses`).
pub async fn connect_with(
    url: &str,
    name: &str,
    tls: &crate::tls::BrokerTls,
) -> Result<Connection, lapin::Error> {
    crate::amqp_addresses::connect_any(url, |node| connect_node(node, name, tls)).await
}

/// Connect to one node.
async fn connect_node(
    url: String,
    name: &str,
    tls: &crate::tls::BrokerTls,
) -> Result<Connection, lapin::Error> {
    let url = url.as_str();
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    let runtime = lapin::runtime::default_runtime()?;
    if !tls.insecure_skip_verify {
        let config = lapin::tcp::OwnedTLSConfig {
            identity: tls
                .client
                .as_ref()
                .map(|id| lapin::tcp::OwnedIdentity::PKCS8 {
                    pem: id.cert_pem.clone(),
                    key: id.key_pem.clone(),
                }),
            cert_chain: tls
                .ca_pem
                .as_ref()
                .map(|pem| String::from_utf8_lossy(pem).into_owned()),
        };
        return Connection::connect_with_config(url, props, config, runtime).await;
    }
    // Any server certificate accepted (tests only): lapin's own TLS setup
    // always verifies, so the TLS session is made here with a rustls
    // configuration that does not.
    let uri: lapin::uri::AMQPUri = url.parse().map_err(|e: String| {
        lapin::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    })?;
    let config = crate::tls::insecure_client_config(tls.client.as_ref())
        .map_err(|e| lapin::Error::from(std::io::Error::other(e)))?;
    let connector = std::sync::Arc::new(lapin::tcp::RustlsConnector::from(config));
    Connection::connector(
        uri,
        runtime,
        async move |uri: lapin::uri::AMQPUri, runtime| {
            let host = uri.authority.host.clone();
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), uri.authority.port))
                    .await?
                    .collect();
            let stream = lapin::tcp::AsyncTcpStream::connect(&runtime, addrs).await?;
            match uri.scheme {
                lapin::uri::AMQPScheme::AMQPS => Ok(stream.into_rustls(&connector, &host).await?),
                _ => Ok(stream),
            }
        },
        props,
    )
    .await
}

/// Connect, or explain which broker could not be reached, why, and what to
/// do (start it, fix the login, create the vhost).
pub async fn connect_explained(
    settings: &crate::settings::Settings,
    name: &str,
) -> Result<Connection, String> {
    connect(&settings.amqp_url, name)
        .await
        .map_err(|e| crate::explain::amqp(&settings.amqp_url, &e))
}

/// Channels of one session, kept open until the connection itself is closed:
/// a dropped lapin channel closes itself in the background, which races with
/// the connection's close (and makes lapin log a spurious error).
#[derive(Clone, Default)]
pub struct ChannelKeeper(std::sync::Arc<std::sync::Mutex<Vec<Channel>>>);

impl ChannelKeeper {
    pub fn keep(&self, channel: &Channel) {
        if let Ok(mut v) = self.0.lock() {
            v.push(channel.clone());
        }
    }
}

/// Default of `ESCALATOR_CONFIRM_TIMEOUT_MS`.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

/// A channel in confirm mode: every publish is confirmed by the broker,
/// within the confirm timeout (a quorum queue without a quorum never
/// confirms: the wait ends with [`InfraError::ConfirmTimeout`]).
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    confirm_timeout: Duration,
}

impl Publisher {
    pub async fn open(conn: &Connection) -> Result<Publisher, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
        })
    }

    /// How long a publish may wait for its confirm.
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Publisher {
        self.confirm_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Publish and wait for the broker's confirm. A nack is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), InfraError> {
        let pending = self.start(exchange, routing_key, body, props).await?;
        pending.wait().await
    }

    /// Publish without waiting: the caller awaits the returned confirm later
    /// (publishes on one channel are confirmed in order, so this pipelines).
    pub async fn start(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<PendingConfirm, InfraError> {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                // Mandatory: a message no queue takes comes back instead of
                // vanishing (the outbound exchange's alternate exchange takes
                // every event, so only real topology gaps return).
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?;
        Ok(PendingConfirm {
            confirm,
            target: exchange.to_string(),
            timeout: self.confirm_timeout,
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// A publish the broker has not confirmed yet.
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    target: String,
    timeout: Duration,
}

impl PendingConfirm {
    /// The broker's answer: an ack is `Ok`, a nack or a return is an error,
    /// and no answer within the confirm timeout is [`InfraError::ConfirmTimeout`]
    /// (the caller tears the session down: confirms on this channel are stuck).
    pub async fn wait(self) -> Result<(), InfraError> {
        let answer = tokio::time::timeout(self.timeout, self.confirm)
            .await
            .map_err(|_| InfraError::ConfirmTimeout {
                target: self.target.clone(),
                waited_ms: self.timeout.as_millis() as u64,
            })?;
        match answer? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => {
                crate::observability::metrics::outbound_returned();
                Err(InfraError::Unroutable(self.target))
            }
            Confirmation::Nack(_) => Err(InfraError::PublishNacked(self.target)),
        }
    }
}

/// Hand a delivery back to its queue (a failed requeue needs no handling:
/// the broker redelivers unacked messages when the channel closes).
pub async fn requeue(acker: &lapin::Acker) {
    let options = lapin::options::BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    if let Err(e) = acker.nack(options).await {
        tracing::warn!(error = %e, "requeue failed (connection lost?): the broker will redeliver");
    }
}

/// Properties of a persistent JSON message.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
}
