//! TLS for the client: certificates that chain to a trusted root are accepted as usual; a
//! self-signed server certificate (what `ferry serve` makes on first start) is trusted on
//! first use and pinned by its SHA-256 fingerprint in a known-hosts file, as ssh does.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_proto::{Digest, HashAlgo};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{ClientError, Result};

/// How the client secures its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP: only for servers started with `--plain` (the course's Python client).
    Plain,
    /// TLS. With `ca`, the server's certificate must chain to it. Without, it must chain to
    /// the system's roots or, failing that, match the fingerprint pinned for this server in
    /// `known_hosts` (recorded there on first use).
    Tls {
        ca: Option<PathBuf>,
        known_hosts: PathBuf,
    },
}

impl Default for TlsMode {
    fn default() -> Self {
        TlsMode::Tls {
            ca: None,
            known_hosts: default_known_hosts(),
        }
    }
}

/// `$FERRY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/ferry`, else `~/.config/ferry`.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ferry");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".config").join("ferry")
}

pub fn default_known_hosts() -> PathBuf {
    config_dir().join("known_hosts")
}

/// Where the CLI keeps session tokens (see [`crate::sessions`]).
pub fn default_sessions() -> PathBuf {
    config_dir().join("sessions")
}

/// Where the CLI keeps the hashes of uploaded files (see [`crate::hash_cache`]).
pub fn default_hash_cache() -> PathBuf {
    config_dir().join("hashes")
}

/// The fingerprint of a DER certificate, as `ferry serve` prints it: `sha256:<hex>`.
pub fn fingerprint(cert_der: &[u8]) -> Digest {
    Digest::of(HashAlgo::Sha256, cert_der)
}

/// What trust-on-first-use decided during a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The certificate chains to a trusted root.
    Verified,
    /// The pinned fingerprint matched.
    Pinned,
    /// No fingerprint was pinned for this server; this one is, once the handshake succeeds.
    FirstUse(Digest),
    /// The server offered a different certificate from the pinned one.
    Changed { pinned: Digest, offered: Digest },
}

pub(crate) struct Prepared {
    pub config: Arc<rustls::ClientConfig>,
    pub verifier: Option<Arc<TofuVerifier>>,
}

/// aws-lc-rs's suites with AES-128-GCM offered first. The server follows the client's order,
/// and rustls's default puts AES-256-GCM first: 14 AES rounds a block instead of 10, which made
/// encryption and decryption of a 1 GiB transfer about a fifth dearer on each end, for no
/// security a file transfer needs (scp's benchmark cipher is aes128-gcm too).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let aes128 = |s: &rustls::SupportedCipherSuite| {
        matches!(
            s.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    };
    // Stable: TLS 1.3 suites stay ahead of TLS 1.2 ones, and the rest keep rustls's order.
    provider
        .cipher_suites
        .sort_by_key(|s| (s.tls13().is_none(), !aes128(s)));
    Arc::new(provider)
}

/// Builds the rustls configuration for one connection to `host_port`.
pub(crate) fn prepare(ca: Option<&Path>, known_hosts: &Path, host_port: &str) -> Result<Prepared> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Local(format!("TLS set-up: {e}")))?;
    if let Some(ca) = ca {
        let mut roots = RootCertStore::empty();
        let pem = fs::read(ca).map_err(|e| ClientError::local_file(ca, e))?;
        let mut added = 0;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: CertificateDer<'static> =
                cert.map_err(|e| ClientError::Local(format!("{}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Local(format!("{}: {e}", ca.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(ClientError::Local(format!(
                "{}: no certificates found",
                ca.display()
            )));
        }
        let config = builder.with_root_certificates(roots).with_no_client_auth();
        return Ok(Prepared {
            config: Arc::new(config),
            verifier: None,
        });
    }
    let verifier = Arc::new(TofuVerifier {
        algorithms: provider.signature_verification_algorithms,
        known_hosts: known_hosts.to_path_buf(),
        host_port: host_port.to_owned(),
        decision: Mutex::new(None),
    });
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok(Prepared {
        config: Arc::new(config),
        verifier: Some(verifier),
    })
}

/// The server name to present and check: an IP address or a DNS name from `host:port`.
pub(crate) fn server_name(host_port: &str) -> Result<ServerName<'static>> {
    let host = match host_port.rsplit_once(':') {
        Some((h, _)) => h,
        None => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|_| ClientError::Local(format!("{host:?} is not a valid server name")))
}

/// A verifier of certificate chains against the system's roots, loaded on first need and
/// then kept for the process: reading and parsing them (147 files here) is most of what a
/// short command's TLS set-up costs, and a server whose pinned certificate is offered again
/// never needs them.
fn system_roots() -> Option<Arc<WebPkiServerVerifier>> {
    static ROOTS: std::sync::OnceLock<Option<Arc<WebPkiServerVerifier>>> =
        std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return None;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .ok()
        })
        .clone()
}

#[derive(Debug)]
pub(crate) struct TofuVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    known_hosts: PathBuf,
    host_port: String,
    decision: Mutex<Option<Trust>>,
}

impl TofuVerifier {
    pub(crate) fn decision(&self) -> Option<Trust> {
        self.decision.lock().expect("trust lock").clone()
    }

    /// Records a first-use fingerprint; called only after the handshake proved the server
    /// holds the certificate's key.
    pub(crate) fn remember(&self, fp: &Digest) -> Result<()> {
        let path = &self.known_hosts;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| ClientError::local_file(dir, e))?;
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ClientError::local_file(path, e))?;
        writeln!(f, "{} {fp}", self.host_port).map_err(|e| ClientError::local_file(path, e))
    }

    pub(crate) fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }
}

/// The fingerprint pinned for `host_port` in a known-hosts file, if any.
pub fn pinned(known_hosts: &Path, host_port: &str) -> Option<Digest> {
    let text = fs::read_to_string(known_hosts).ok()?;
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .filter(|(h, _)| *h == host_port)
        .filter_map(|(_, fp)| fp.trim().parse().ok())
        .next_back()
}

impl ServerCertVerifier for TofuVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let offered = fingerprint(end_entity);
        let pin = pinned(&self.known_hosts, &self.host_port);
        // The pinned certificate again: trusted without the system roots (a certificate a
        // CA vouches for is never pinned, so this skips no check that would decide).
        let chained = || {
            system_roots().is_some_and(|v| {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                    .is_ok()
            })
        };
        let trust = match pin {
            Some(p) if p == offered => Trust::Pinned,
            _ if chained() => Trust::Verified,
            Some(pinned) => Trust::Changed { pinned, offered },
            None => Trust::FirstUse(offered),
        };
        let refused = matches!(trust, Trust::Changed { .. });
        *self.decision.lock().expect("trust lock") = Some(trust);
        if refused {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The loud message for a changed certificate.
pub fn changed_message(host_port: &str, pinned: &Digest, offered: &Digest, file: &Path) -> String {
    format!(
        "\n@@@ WARNING: THE TLS CERTIFICATE OF {host_port} HAS CHANGED @@@\n\
         Someone may be intercepting this connection, or the server was given a new\n\
         certificate. ferry refused to connect.\n\
         \x20 pinned:  {pinned}\n\
         \x20 offered: {offered}\n\
         If you know the change is legitimate (`ferry serve` prints its fingerprint when it\n\
         starts), delete the line for {host_port} from {} and connect again.",
        file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake in memory against a server on the same provider's defaults (as `ferry
    /// serve` builds it): the client's order decides the suite, and its first key share the
    /// group.
    #[test]
    fn offers_aes128_gcm_and_post_quantum_key_exchange_first() {
        use rustls::pki_types::PrivateKeyDer;
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let prepared = prepare(None, &dir.path().join("known_hosts"), "localhost:9696").unwrap();
        let mut client =
            rustls::ClientConnection::new(prepared.config, server_name("localhost:9696").unwrap())
                .unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        let mut wire = Vec::new();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            wire.clear();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking(), "the handshake did not finish");
        assert_eq!(
            client.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(
            client.negotiated_key_exchange_group().map(|g| g.name()),
            Some(rustls::NamedGroup::X25519MLKEM768)
        );
    }

    #[test]
    fn known_hosts_lookup_takes_the_last_matching_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("known_hosts");
        let a = fingerprint(b"a");
        let b = fingerprint(b"b");
        fs::write(
            &f,
            format!("# comment\nhost:1 {a}\nother:2 {b}\nhost:1 {b}\nbroken-line\n"),
        )
        .unwrap();
        assert_eq!(pinned(&f, "host:1"), Some(b.clone()));
        assert_eq!(pinned(&f, "other:2"), Some(b));
        assert_eq!(pinned(&f, "host:2"), None);
        assert_eq!(pinned(&dir.path().join("missing"), "host:1"), None);
    }

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:9696").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:9696").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("files.example.org:9696").unwrap(),
            ServerName::DnsName(_)
        ));
    }
}
