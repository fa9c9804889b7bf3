//! TLS material of the two brokers: reads the CA bundles and client
//! certificates named by the settings ([`crate::settings::TlsArgs`]) once,
//! checks that they are PEM, and hands them to lapin (`amqps://`) and the
//! redis crate (`rediss://`) in the shapes those take.
//!
//! The process loads them once: the worker installs its parsed settings
//! ([`install`]); any other user of [`crate::amqp::connect`] or
//! [`crate::store::Store::connect`] gets them from the environment on first
//! use ([`process`]). Nothing here prints a file's contents: errors name the
//! setting and the path only, and `Debug` shows whether a part is set.
use crate::settings::TlsArgs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub const AMQP_CA_FILE_ENV: &str = "ESCALATOR_AMQP_CA_FILE";
pub const AMQP_CLIENT_CERT_FILE_ENV: &str = "ESCALATOR_AMQP_CLIENT_CERT_FILE";
pub const AMQP_CLIENT_KEY_FILE_ENV: &str = "ESCALATOR_AMQP_CLIENT_KEY_FILE";
pub const REDIS_CA_FILE_ENV: &str = "ESCALATOR_REDIS_CA_FILE";
pub const REDIS_CLIENT_CERT_FILE_ENV: &str = "ESCALATOR_REDIS_CLIENT_CERT_FILE";
pub const REDIS_CLIENT_KEY_FILE_ENV: &str = "ESCALATOR_REDIS_CLIENT_KEY_FILE";
pub const INSECURE_SKIP_VERIFY_ENV: &str = "ESCALATOR_TLS_INSECURE_SKIP_VERIFY";

/// Why the TLS files cannot be used. Each names the setting and the fix,
/// never the file's contents.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: cannot read {path}: {reason}; point {setting} at a readable PEM file")]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{setting}: {path} holds no PEM {what} (a file with -----BEGIN {marker}----- blocks is \
         needed; convert DER with: openssl x509 -inform der -in FILE -out FILE.pem)"
    )]
    NotPem {
        setting: &'static str,
        path: PathBuf,
        what: &'static str,
        marker: &'static str,
    },
    #[error(
        "{given} is set but {missing} is not: a client certificate needs its key and vice versa, set both or neither"
    )]
    HalfIdentity {
        given: &'static str,
        missing: &'static str,
    },
}

/// A client certificate (chain) and its key, PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(<redacted>)")
    }
}

/// The TLS material of one broker.
#[derive(Clone, Debug, Default)]
pub struct BrokerTls {
    /// CA bundle (PEM) that the server's certificate must chain to; none:
    /// the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Certificate and key presented to the server (mutual TLS).
    pub client: Option<ClientIdentity>,
    /// Accept any server certificate (tests only).
    pub insecure_skip_verify: bool,
}

impl BrokerTls {
    /// Whether anything differs from the library's defaults.
    pub fn is_default(&self) -> bool {
        self.ca_pem.is_none() && self.client.is_none() && !self.insecure_skip_verify
    }
}

/// The TLS material of both brokers.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    pub amqp: BrokerTls,
    pub redis: BrokerTls,
}

impl Tls {
    /// Read and check every file the settings name.
    pub fn load(args: &TlsArgs) -> Result<Tls, Vec<TlsError>> {
        let mut problems = Vec::new();
        let amqp = broker(
            (AMQP_CA_FILE_ENV, args.amqp.amqp_ca_file.as_deref()),
            (
                AMQP_CLIENT_CERT_FILE_ENV,
                args.amqp.amqp_client_cert_file.as_deref(),
            ),
            (
                AMQP_CLIENT_KEY_FILE_ENV,
                args.amqp.amqp_client_key_file.as_deref(),
            ),
            args.amqp.tls_insecure_skip_verify,
            &mut problems,
        );
        let redis = broker(
            (REDIS_CA_FILE_ENV, args.redis.redis_ca_file.as_deref()),
            (
                REDIS_CLIENT_CERT_FILE_ENV,
                args.redis.redis_client_cert_file.as_deref(),
            ),
            (
                REDIS_CLIENT_KEY_FILE_ENV,
                args.redis.redis_client_key_file.as_deref(),
            ),
            args.amqp.tls_insecure_skip_verify,
            &mut problems,
        );
        if problems.is_empty() {
            Ok(Tls { amqp, redis })
        } else {
            Err(problems)
        }
    }
}

type Setting<'a> = (&'static str, Option<&'a Path>);

fn broker(
    ca: Setting<'_>,
    cert: Setting<'_>,
    key: Setting<'_>,
    insecure_skip_verify: bool,
    problems: &mut Vec<TlsError>,
) -> BrokerTls {
    let mut keep = |r: Result<Vec<u8>, TlsError>| match r {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let ca_pem = ca.1.and_then(|p| keep(read_certificates(ca.0, p)));
    let client = match (cert.1, key.1) {
        (None, None) => None,
        (Some(_), None) => {
            problems.push(TlsError::HalfIdentity {
                given: cert.0,
                missing: key.0,
            });
            None
        }
        (None, Some(_)) => {
            problems.push(TlsError::HalfIdentity {
                given: key.0,
                missing: cert.0,
            });
            None
        }
        (Some(c), Some(k)) => {
            let cert_pem = keep(read_certificates(cert.0, c));
            let key_pem = keep(read_key(key.0, k));
            cert_pem
                .zip(key_pem)
                .map(|(cert_pem, key_pem)| ClientIdentity { cert_pem, key_pem })
        }
    };
    BrokerTls {
        ca_pem,
        client,
        insecure_skip_verify,
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Unreadable {
        setting,
        path: path.to_path_buf(),
        reason: e.kind().to_string(),
    })
}

/// The file, if it holds at least one PEM certificate (and only good ones).
fn read_certificates(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(setting, path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(pem),
        _ => Err(TlsError::NotPem {
            setting,
            path: path.to_path_buf(),
            what: "certificate",
            marker: "CERTIFICATE",
        }),
    }
}

/// The file, if it holds a PEM private key (PKCS#8, PKCS#1 or SEC1).
fn read_key(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(setting, path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(_) => Err(TlsError::NotPem {
            setting,
            path: path.to_path_buf(),
            what: "private key",
            marker: "PRIVATE KEY",
        }),
    }
}

static PROCESS: OnceLock<Result<Arc<Tls>, String>> = OnceLock::new();

/// Make `args` the TLS material of this process (the worker calls it with
/// its parsed settings before it connects). Logs a warning when
/// verification is off. A second call keeps the first.
pub fn install(args: &TlsArgs) -> Result<Arc<Tls>, String> {
    PROCESS.get_or_init(|| load_logged(args)).clone()
}

/// The process's TLS material: the installed one, or else the one the
/// environment names (read on first use).
pub fn process() -> Result<Arc<Tls>, String> {
    PROCESS
        .get_or_init(|| match TlsArgs::from_env() {
            Ok(args) => load_logged(&args),
            Err(e) => Err(e),
        })
        .clone()
}

fn load_logged(args: &TlsArgs) -> Result<Arc<Tls>, String> {
    if args.amqp.tls_insecure_skip_verify {
        warn_insecure();
    }
    Tls::load(args).map(Arc::new).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        format!("invalid TLS settings: {}", text.join("; "))
    })
}

/// The warning every start with verification off logs (on stderr when the
/// command logs nothing, as `topology` and `dlq`).
pub fn warn_insecure() {
    if !tracing::dispatcher::has_been_set() {
        eprintln!(
            "escalator: WARNING: TLS certificate verification is off for RabbitMQ and Redis \
             ({INSECURE_SKIP_VERIFY_ENV}): for tests only"
        );
    }
    tracing::warn!(
        setting = INSECURE_SKIP_VERIFY_ENV,
        "TLS CERTIFICATE VERIFICATION IS OFF for RabbitMQ and Redis: any server can pose as \
         them and read every message. For tests only; never set this in production"
    );
}

/// A rustls client configuration that accepts any server certificate (the
/// AMQP side of [`INSECURE_SKIP_VERIFY_ENV`]; lapin's own TLS setup always
/// verifies). Signatures of the handshake are still checked.
pub fn insecure_client_config(
    client: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)));
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&id.cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|_| format!("{AMQP_CLIENT_CERT_FILE_ENV}: not a PEM certificate"))?;
            let key = PrivateKeyDer::from_pem_slice(&id.key_pem)
                .map_err(|_| format!("{AMQP_CLIENT_KEY_FILE_ENV}: not a PEM private key"))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                format!("{AMQP_CLIENT_CERT_FILE_ENV} / {AMQP_CLIENT_KEY_FILE_ENV}: {e}")
            })
        }
    }
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn names_the_setting_of_a_missing_or_non_pem_file_without_its_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut args = TlsArgs::default();
        args.amqp.amqp_ca_file = Some(dir.join("absent.pem"));
        args.redis.redis_ca_file = Some(file(dir, "garbage.pem", "SECRET-CANARY not pem"));
        let problems = Tls::load(&args).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        assert!(text.contains(AMQP_CA_FILE_ENV), "{text}");
        assert!(text.contains(REDIS_CA_FILE_ENV), "{text}");
        assert!(!text.contains("SECRET-CANARY"), "{text}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_its_certificate() {
        let mut args = TlsArgs::default();
        args.amqp.amqp_client_cert_file = Some(PathBuf::from("/nonexistent/cert.pem"));
        args.redis.redis_client_key_file = Some(PathBuf::from("/nonexistent/key.pem"));
        let problems = Tls::load(&args).unwrap_err();
        assert!(problems.iter().any(|p| matches!(
            p,
            TlsError::HalfIdentity {
                given: AMQP_CLIENT_CERT_FILE_ENV,
                missing: AMQP_CLIENT_KEY_FILE_ENV
            }
        )));
        assert!(problems.iter().any(|p| matches!(
            p,
            TlsError::HalfIdentity {
                given: REDIS_CLIENT_KEY_FILE_ENV,
                missing: REDIS_CLIENT_CERT_FILE_ENV
            }
        )));
    }

    #[test]
    fn nothing_set_is_the_libraries_defaults() {
        let tls = Tls::load(&TlsArgs::default()).unwrap();
        assert!(tls.amqp.is_default() && tls.redis.is_default());
    }

    #[test]
    fn debug_never_shows_key_material() {
        let id = ClientIdentity {
            cert_pem: b"CERT-CANARY".to_vec(),
            key_pem: b"KEY-CANARY".to_vec(),
        };
        let b = BrokerTls {
            ca_pem: None,
            client: Some(id),
            insecure_skip_verify: false,
        };
        let d = format!("{b:?}");
        assert!(
            !d.contains("KEY-CANARY") && !d.contains("CERT-CANARY"),
            "{d}"
        );
    }
}
