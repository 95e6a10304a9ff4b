//! TLS end to end: trust on first use with pinning, a changed certificate refused loudly,
//! CA-verified certificates, plain TCP only when both sides ask, and no password in clear.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::{BIN, Server, SlowProxy, add_user, ok, run};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn first_connection_pins_the_certificate_and_later_ones_check_it() {
    let srv = Server::start(&["alice"]);
    let fp = srv.fingerprint();
    let out = run(srv.ferry("alice").arg("pwd"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("trusting"), "{}", stderr(&out));
    assert!(stderr(&out).contains(&fp), "{}", stderr(&out));
    let known = fs::read_to_string(srv.config.path().join("known_hosts")).unwrap();
    assert_eq!(known.trim(), format!("{} {fp}", srv.addr));

    let out = run(srv.ferry("alice").arg("pwd"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("trusting"), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(srv.config.path().join("known_hosts")).unwrap(),
        known,
        "nothing more is recorded"
    );
}

#[test]
fn a_changed_certificate_is_refused_with_a_loud_message() {
    let srv = Server::start(&["bob"]);
    let pinned = format!("sha256:{}", "ab".repeat(32));
    let known_hosts = srv.config.path().join("known_hosts");
    fs::write(&known_hosts, format!("{} {pinned}\n", srv.addr)).unwrap();
    let local = tempfile::tempdir().unwrap();
    fs::write(local.path().join("f.txt"), b"data").unwrap();

    let out = run(srv.ferry("bob").arg("put").arg(local.path().join("f.txt")));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("HAS CHANGED"), "{err}");
    assert!(
        err.contains(&pinned) && err.contains(&srv.fingerprint()),
        "{err}"
    );
    assert!(err.contains(&known_hosts.display().to_string()), "{err}");
    assert!(!srv.home("bob").join("f.txt").exists(), "nothing was sent");
}

#[test]
fn certificates_from_a_ca_are_verified_with_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert_pem, key_pem) = ca_and_leaf();
    let (other_ca, _, _) = ca_and_leaf();
    for (name, body) in [
        ("ca.pem", &ca_pem),
        ("cert.pem", &cert_pem),
        ("key.pem", &key_pem),
        ("other.pem", &other_ca),
    ] {
        fs::write(dir.path().join(name), body).unwrap();
    }
    let root = tempfile::tempdir().unwrap();
    add_user(root.path(), "carol", &[]);
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let srv = Server::start_on(
        root,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let out = run(srv
        .ferry("carol")
        .arg("pwd")
        .arg("--ca")
        .arg(dir.path().join("ca.pem")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("trusting"));
    assert!(!srv.config.path().join("known_hosts").exists());

    let out = run(srv
        .ferry("carol")
        .arg("pwd")
        .arg("--ca")
        .arg(dir.path().join("other.pem")));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
}

/// A CA, and a certificate it signed for 127.0.0.1 and localhost, all PEM.
fn ca_and_leaf() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

#[test]
fn plain_tcp_needs_both_sides_to_ask() {
    // A TLS client meets a plain server: a clear TLS error that names --plain.
    let srv = Server::start_plain(&["dave"]);
    let out = run(srv.ferry("dave").env_remove("FERRY_PLAIN").arg("pwd"));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("--plain"), "{}", stderr(&out));
    // With --plain on both sides it works.
    assert_eq!(ok(srv.ferry("dave").arg("pwd")).trim(), "/");

    // A plain client meets a TLS server: refused, no session.
    let tls = Server::start(&["dave"]);
    let out = run(tls.ferry("dave").env("FERRY_PLAIN", "1").arg("pwd"));
    assert!(!out.status.success());
}

#[test]
fn plain_tcp_is_refused_on_a_non_loopback_address_unless_allowed() {
    let root = tempfile::tempdir().unwrap();
    let out = run(Command::new(BIN)
        .args(["serve", "--plain", "--listen", "0.0.0.0:0", "--root"])
        .arg(root.path()));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refusing plain TCP"),
        "{}",
        stderr(&out)
    );

    // With --allow-plain-remote it starts (and is stopped at once; nothing connects to it).
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--plain",
            "--allow-plain-remote",
            "--listen",
            "0.0.0.0:0",
        ])
        .arg("--root")
        .arg(root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.starts_with("ferry listening on 0.0.0.0:"), "{line}");
}

#[test]
fn the_password_never_crosses_the_wire_in_clear_over_tls() {
    for plain in [false, true] {
        let srv = if plain {
            Server::start_plain(&["erin"])
        } else {
            Server::start(&["erin"])
        };
        let proxy = SlowProxy::start(srv.addr, 1 << 20);
        ok(srv.ferry_at(&proxy.addr.to_string(), "erin").arg("pwd"));
        let seen = proxy.recorded.lock().unwrap().clone();
        let leaked = seen.windows(7).any(|w| w == b"pw-erin");
        // The plain run proves the check can see a password when there is one to see.
        assert_eq!(leaked, plain, "plain={plain}");
    }
}
