//! TLS for the server: a certificate of its own, made on first start, or one given with
//! `--cert`/`--key`.
//!
//! The self-signed certificate lives in the data root (`tls/cert.pem`, `tls/key.pem`, the key
//! readable by the owner only) so it survives restarts: clients pin its fingerprint on first
//! use, and a new one each start would look like an attack to every one of them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_proto::{Digest, HashAlgo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("creating a certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A ready server configuration and the fingerprint of its certificate.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// `sha256:<hex>` of the leaf certificate's DER, as clients pin it.
    pub fingerprint: Digest,
    /// Whether the certificate was created just now.
    pub created: bool,
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("fingerprint", &self.fingerprint)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// Uses `cert`/`key` when given, else the data root's own certificate, creating it (for
/// `localhost`, 127.0.0.1, ::1 and `extra_names`) when missing.
pub fn load_or_create(
    tls_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    extra_names: &[String],
) -> Result<ServerTls, TlsError> {
    let (cert_path, key_path, created) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
        (Some(_), None) | (None, Some(_)) => {
            return Err(TlsError::Config("--cert and --key go together".into()));
        }
        (None, None) => {
            let c = tls_dir.join("cert.pem");
            let k = tls_dir.join("key.pem");
            let created = if c.exists() && k.exists() {
                false
            } else {
                generate(tls_dir, &c, &k, extra_names)?;
                true
            };
            (c, k, created)
        }
    };
    let pem = |p: &Path| {
        fs::read(p).map_err(|source| TlsError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = pem(&cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem {
            path: cert_path,
            message: "no certificate found".into(),
        });
    };
    let fingerprint = Digest::of(HashAlgo::Sha256, leaf.as_ref());
    let key_pem = pem(&key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key_path.clone(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(ServerTls {
        config: Arc::new(config),
        fingerprint,
        created,
        cert_path,
    })
}

fn generate(dir: &Path, cert: &Path, key: &Path, extra_names: &[String]) -> Result<(), TlsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names.iter().cloned());
    names.dedup();
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(key, certified.signing_key.serialize_pem().as_bytes()).map_err(io(key))?;
    fs::write(cert, certified.cert.pem()).map_err(io(cert))?;
    Ok(())
}

/// Writes a file only its owner can read, created that way rather than narrowed afterwards.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_once_then_reuses_the_same_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), None, None, &[]).unwrap();
        assert!(first.created);
        let mode = fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_create(dir.path(), None, None, &[]).unwrap();
        assert!(!second.created);
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(first.fingerprint.algo(), HashAlgo::Sha256);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.pem");
        let k = dir.path().join("k.pem");
        fs::write(&c, "not a certificate").unwrap();
        fs::write(&k, "not a key").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), Some(&c), Some(&k), &[]),
            Err(TlsError::Pem { .. })
        ));
        assert!(matches!(
            load_or_create(dir.path(), Some(&c), None, &[]),
            Err(TlsError::Config(_))
        ));
        assert!(matches!(
            load_or_create(dir.path(), Some(&dir.path().join("missing")), Some(&k), &[]),
            Err(TlsError::Io { .. })
        ));
    }
}
