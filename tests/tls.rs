//! TLS to both brokers (issue 10, item 1): `amqps://` through a
//! TLS-terminating proxy in front of the test RabbitMQ, `rediss://` to a
//! private TLS redis-server, with a throwaway CA made here; a wrong CA is
//! refused naming the CA setting, and Redis's client-certificate check works.
mod common;

use common::{TestEnv, WAIT, created, escalation, next_event};
use escalator::amqp::{self, Publisher, json_properties};
use escalator::sandbox::{Client, ZENDESK_ORG};
use escalator::store::Store;
use escalator::tls::{BrokerTls, ClientIdentity};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;

// ------------------------------------------------------------ certificates

/// A throwaway certificate authority.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for localhost and 127.0.0.1.
    fn server(&self) -> Leaf {
        self.leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Leaf {
        self.leaf(
            vec!["escalator-test-client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn leaf(&self, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn trusting(ca: &Ca) -> BrokerTls {
    BrokerTls {
        ca_pem: Some(ca.pem.clone().into_bytes()),
        ..BrokerTls::default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ------------------------------------------------------------ AMQP over TLS

/// Accepts TLS on a free port and copies the bytes both ways to the test
/// RabbitMQ (127.0.0.1:5672): `amqps://` without a TLS listener on the broker.
struct TlsProxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    async fn start(server: &Leaf) -> TlsProxy {
        TlsProxy::start_with(server, None).await
    }

    /// `client_ca`: clients must present a certificate this CA signed.
    async fn start_with(server: &Leaf, client_ca: Option<&Ca>) -> TlsProxy {
        let certs: Vec<_> =
            rustls::pki_types::CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    // A failed handshake (a client that refuses our
                    // certificate) just ends this connection.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
        TlsProxy { port, task }
    }

    fn url(&self, env: &TestEnv) -> String {
        format!(
            "amqps://guest:guest@localhost:{}/{}",
            self.port,
            env.vhost.replace('/', "%2F")
        )
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet: every proxied
        // connection ends with it.
        self.task.abort();
    }
}

/// Publish with a confirm and consume it back, over `conn`.
async fn round_trip(conn: &lapin::Connection) {
    let publisher = Publisher::open(conn).await.unwrap();
    let queue = publisher
        .channel()
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
        .unwrap();
    let name = queue.name().as_str().to_string();
    publisher
        .publish("", &name, b"{\"over\":\"tls\"}", json_properties())
        .await
        .unwrap();
    let mut consumer = publisher
        .channel()
        .basic_consume(
            ShortString::from(name.as_str()),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("no message within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"{\"over\":\"tls\"}");
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_the_ca_publishes_and_consumes_and_a_wrong_ca_is_refused() {
    let env = TestEnv::new("tls-amqp").await;
    let ca = Ca::new("escalator test CA");
    let proxy = TlsProxy::start(&ca.server()).await;
    let url = proxy.url(&env);

    let conn = amqp::connect_with(&url, "test-tls", &trusting(&ca))
        .await
        .unwrap();
    round_trip(&conn).await;
    let _ = conn.close(200, ShortString::from("bye")).await;

    // Another CA did not sign the proxy's certificate.
    let other = Ca::new("another CA");
    let err = amqp::connect_with(&url, "test-tls-wrong", &trusting(&other))
        .await
        .unwrap_err();
    let message = escalator::explain::amqp(&url, &err);
    assert!(
        message.contains("not signed by the CA in ESCALATOR_AMQP_CA_FILE"),
        "{message}"
    );
    assert!(!message.contains("guest:guest"), "{message}");

    // Verification off (tests only): any certificate is accepted.
    let insecure = BrokerTls {
        insecure_skip_verify: true,
        ..BrokerTls::default()
    };
    let conn = amqp::connect_with(&url, "test-tls-insecure", &insecure)
        .await
        .unwrap();
    round_trip(&conn).await;
    let _ = conn.close(200, ShortString::from("bye")).await;

    drop(proxy);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_that_requires_a_client_certificate_takes_ours_and_refuses_none() {
    let env = TestEnv::new("tls-amqp-mtls").await;
    let ca = Ca::new("escalator test CA");
    let proxy = TlsProxy::start_with(&ca.server(), Some(&ca)).await;
    let url = proxy.url(&env);
    let client = ca.client();
    let with_cert = BrokerTls {
        client: Some(ClientIdentity {
            cert_pem: client.cert_pem.into_bytes(),
            key_pem: client.key_pem.into_bytes(),
        }),
        ..trusting(&ca)
    };
    let conn = amqp::connect_with(&url, "test-tls-mtls", &with_cert)
        .await
        .unwrap();
    round_trip(&conn).await;
    let _ = conn.close(200, ShortString::from("bye")).await;

    let err = amqp::connect_with(&url, "test-tls-no-cert", &trusting(&ca))
        .await
        .unwrap_err();
    let message = escalator::explain::amqp(&url, &err);
    assert!(
        message.contains("ESCALATOR_AMQP_CLIENT_CERT_FILE"),
        "{message}"
    );
    drop(proxy);
    env.cleanup().await;
}

// ------------------------------------------------------------ Redis over TLS

/// A private redis-server that speaks only TLS, on a free port.
struct TlsRedis {
    port: u16,
    _dir: tempfile::TempDir,
    child: std::process::Child,
}

impl TlsRedis {
    /// `client_certs`: whether clients must present a certificate signed by `ca`.
    fn start(ca: &Ca, client_certs: bool) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let server = ca.server();
        let cert = write(dir.path(), "server.pem", &server.cert_pem);
        let key = write(dir.path(), "server.key", &server.key_pem);
        let ca_file = write(dir.path(), "ca.pem", &ca.pem);
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .args([
                "--tls-auth-clients",
                if client_certs { "yes" } else { "no" },
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is needed for this test");
        // Ready when its TLS port accepts connections (it binds once set up).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "TLS redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis {
            port,
            _dir: dir,
            child,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real store operation: write a key under the prefix, read it back, and
/// delete everything under the prefix.
async fn store_works(store: &Store) {
    store.ping().await.unwrap();
    let mut c = store.connection();
    let key = format!("{}:tls-probe", store.prefix());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("over tls")
        .query_async(&mut c)
        .await
        .unwrap();
    let got: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got, "over tls");
    assert_eq!(store.delete_all().await.unwrap(), 1);
}

const TTL: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_ca_stores_and_a_wrong_ca_is_refused() {
    let ca = Ca::new("escalator test CA");
    let redis = TlsRedis::start(&ca, false);
    let url = redis.url();

    let store = Store::connect_with(&url, "escalator-test:tls", TTL, &trusting(&ca))
        .await
        .unwrap();
    store_works(&store).await;

    let other = Ca::new("another CA");
    let err = match Store::connect_with(&url, "escalator-test:tls", TTL, &trusting(&other)).await {
        Ok(_) => panic!("a server certificate of another CA was accepted"),
        Err(e) => e,
    };
    let message = escalator::explain::redis(&url, &err);
    assert!(
        message.contains("not signed by the CA in ESCALATOR_REDIS_CA_FILE"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_that_requires_a_client_certificate_takes_ours_and_refuses_none() {
    let ca = Ca::new("escalator test CA");
    let redis = TlsRedis::start(&ca, true);
    let url = redis.url();
    let client = ca.client();
    let with_cert = BrokerTls {
        client: Some(ClientIdentity {
            cert_pem: client.cert_pem.into_bytes(),
            key_pem: client.key_pem.into_bytes(),
        }),
        ..trusting(&ca)
    };
    let store = Store::connect_with(&url, "escalator-test:tls-mtls", TTL, &with_cert)
        .await
        .unwrap();
    store_works(&store).await;

    let err = match Store::connect_with(&url, "escalator-test:tls-mtls", TTL, &trusting(&ca)).await
    {
        Ok(s) => match s.ping().await {
            Ok(()) => panic!("Redis took a client without a certificate"),
            Err(e) => e,
        },
        Err(e) => e,
    };
    let message = escalator::explain::redis(&url, &err);
    assert!(
        message.contains("ESCALATOR_REDIS_CLIENT_CERT_FILE"),
        "{message}"
    );
}

// ------------------------------------------------------------ a worker over TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_amqps_and_rediss_escalates_and_a_wrong_ca_stops_it_at_start() {
    let env = TestEnv::new("tls-worker").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("escalator test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let proxy = TlsProxy::start(&ca.server()).await;
    let redis = TlsRedis::start(&ca, false);
    let amqps = proxy.url(&env);
    let rediss = redis.url();
    let ca_path = ca_file.to_string_lossy().into_owned();
    let sim = env.sim().await;
    let config = escalator::sandbox::sandbox_config(&sim.base_url());

    // A wrong CA: the worker exits at start, naming the setting.
    let other_file = write(dir.path(), "other-ca.pem", &Ca::new("another CA").pem);
    let other_path = other_file.to_string_lossy().into_owned();
    let mut wrong = env.spawn_worker_env(
        &config,
        dir.path(),
        "wrong-ca",
        &[
            ("ESCALATOR_AMQP_URL", &amqps),
            ("ESCALATOR_AMQP_CA_FILE", &ca_path),
            ("ESCALATOR_REDIS_URL", &rediss),
            ("ESCALATOR_REDIS_CA_FILE", &other_path),
        ],
    );
    let status = tokio::time::timeout(WAIT, wrong.child.wait())
        .await
        .expect("a worker with a wrong CA did not exit within 30 s")
        .unwrap();
    assert!(!status.success());
    let log = wrong.log_text();
    assert!(
        log.contains("not signed by the CA in ESCALATOR_REDIS_CA_FILE"),
        "{log}"
    );

    // The right CA: one escalation end to end, the worker on TLS only.
    let worker = env.spawn_worker_env(
        &config,
        dir.path(),
        "tls",
        &[
            ("ESCALATOR_AMQP_URL", &amqps),
            ("ESCALATOR_AMQP_CA_FILE", &ca_path),
            ("ESCALATOR_REDIS_URL", &rediss),
            ("ESCALATOR_REDIS_CA_FILE", &ca_path),
        ],
    );
    let client = Client::connect(&env.settings).await.unwrap();
    let mut widget = client.listen(&format!("{ZENDESK_ORG}.#")).await.unwrap();
    client
        .publish(
            "escalation.requested",
            "tls-1",
            &escalation(ZENDESK_ORG, "conv-tls"),
        )
        .await
        .unwrap();
    let e = next_event(&mut widget, "conv-tls").await;
    assert_eq!(
        created(&e).external_id,
        sim.zendesk_tickets()[0].id.to_string()
    );
    let log = worker.log_text();
    assert!(!log.contains("VERIFICATION IS OFF"), "{log}");
    let status = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    client.close().await;
    drop(proxy);
    drop(redis);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_verification_is_logged_as_a_warning_at_start() {
    let env = TestEnv::new("tls-insecure").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("unknown CA");
    let proxy = TlsProxy::start(&ca.server()).await;
    let redis = TlsRedis::start(&ca, false);
    let amqps = proxy.url(&env);
    let rediss = redis.url();
    let sim = env.sim().await;
    let worker = env.spawn_worker_env(
        &escalator::sandbox::sandbox_config(&sim.base_url()),
        dir.path(),
        "insecure",
        &[
            ("ESCALATOR_AMQP_URL", &amqps),
            ("ESCALATOR_REDIS_URL", &rediss),
            ("ESCALATOR_TLS_INSECURE_SKIP_VERIFY", "true"),
        ],
    );
    // Consuming means both TLS sessions were made without any CA.
    let deadline = tokio::time::Instant::now() + WAIT;
    let log = loop {
        let log = worker.log_text();
        if log.contains("connected to RabbitMQ, consuming") {
            break log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not start within 30 s:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let warning = log
        .lines()
        .find(|l| l.contains("VERIFICATION IS OFF"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    let status = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    drop(proxy);
    drop(redis);
    env.cleanup().await;
}

// ------------------------------------------------------------ settings at start

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tls_file_stops_a_command_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "client.key", &Ca::new("x").client().key_pem);
    // (variables, what stderr must say)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 2] = [
        (
            &[("ESCALATOR_AMQP_CA_FILE", "/nonexistent/escalator/ca.pem")],
            &["ESCALATOR_AMQP_CA_FILE", "cannot read"],
        ),
        (
            &[("ESCALATOR_AMQP_CLIENT_KEY_FILE", key.to_str().unwrap())],
            &["ESCALATOR_AMQP_CLIENT_KEY_FILE is set but ESCALATOR_AMQP_CLIENT_CERT_FILE is not"],
        ),
    ];
    for (vars, wanted) in cases {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_escalator"))
            .arg("topology")
            // Never reached: the settings are refused first.
            .env("ESCALATOR_AMQP_URL", "amqps://guest:guest@127.0.0.1:1/%2f")
            .envs(vars.iter().copied())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        for w in wanted {
            assert!(stderr.contains(w), "{w} missing: {stderr}");
        }
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    }
}
