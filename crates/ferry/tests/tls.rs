//! TLS end to end: trust on first use with pinning, a changed certificate refused loudly,
//! CA-verified certificates, plain TCP only when both sides ask, no password in clear, and
//! bodies of every size (and broken streams) through the TLS data paths.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;

use common::{BIN, Server, SlowProxy, add_user, bytes, json, ok, run};
use ferry_proto::{Digest, HashAlgo};

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
fn a_pinned_server_is_trusted_without_reading_the_system_roots() {
    let srv = Server::start(&["pia"]);
    // First use: no pin yet, so the system roots are consulted, then the certificate pinned.
    ok(srv.ferry("pia").arg("pwd"));
    // The system roots now come from a FIFO nobody writes: opening it would block, so the
    // command finishes only if it never reads them.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("roots.pem");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let mut child = srv
        .ferry("pia")
        .arg("pwd")
        .env("SSL_CERT_FILE", &fifo)
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the client read the system roots for a pinned server (blocked on the FIFO)");
        }
        thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success());
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

    // A CA file that is not there is a local problem (exit code 1), named.
    let missing = dir.path().join("missing.pem");
    let out = run(srv.ferry("carol").arg("pwd").arg("--ca").arg(&missing));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
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

/// Sizes around the edges of the TLS data paths: a record (16 KiB of plaintext), the
/// server's body buffer (256 KiB; larger bodies are read into recycled buffers), and the
/// client's 1 MiB buffers and large-file threshold (above it, an upload's hash is computed
/// from the buffers sent and follows the body).
const EDGE_SIZES: [usize; 14] = [
    0,
    1,
    16 * 1024 - 1,
    16 * 1024,
    16 * 1024 + 1,
    64 * 1024,
    256 * 1024 - 1,
    256 * 1024,
    256 * 1024 + 1,
    1024 * 1024 - 1,
    1024 * 1024,
    1024 * 1024 + 1,
    2 * 1024 * 1024 + 16 * 1024 + 5,
    5 * 1024 * 1024 + 17,
];

#[test]
fn bodies_of_every_edge_size_cross_tls_whole_both_ways() {
    let srv = Server::start(&["fay"]);
    let local = tempfile::tempdir().unwrap();
    let names: Vec<String> = EDGE_SIZES.iter().map(|n| format!("f{n}.bin")).collect();
    for (i, (name, size)) in names.iter().zip(EDGE_SIZES).enumerate() {
        fs::write(local.path().join(name), bytes(100 + i as u64, size)).unwrap();
    }
    // One invocation each way, so the bodies are pipelined back to back on one connection.
    let out = json(
        srv.ferry("fay")
            .args(["put", "--json"])
            .args(names.iter().map(|n| local.path().join(n)))
            .arg("/"),
    );
    assert_eq!(out["uploaded"], EDGE_SIZES.len(), "{out}");
    for (i, (name, size)) in names.iter().zip(EDGE_SIZES).enumerate() {
        let data = bytes(100 + i as u64, size);
        assert!(
            fs::read(srv.home("fay").join(name)).unwrap() == data,
            "{name} arrived changed"
        );
        let entry = out["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["remote"].as_str().unwrap().ends_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} in {out}"));
        assert_eq!(
            entry["hash"],
            Digest::of(HashAlgo::Blake3, &data).to_string(),
            "{name}"
        );
    }

    let back = tempfile::tempdir().unwrap();
    let out = json(
        srv.ferry("fay")
            .args(["get", "--json"])
            .args(&names)
            .arg(back.path()),
    );
    assert_eq!(out["downloaded"], EDGE_SIZES.len(), "{out}");
    for (i, (name, size)) in names.iter().zip(EDGE_SIZES).enumerate() {
        assert!(
            fs::read(back.path().join(name)).unwrap() == bytes(100 + i as u64, size),
            "{name} came back changed"
        );
    }
}

/// What a [`BreakingProxy`] does to the stream once `after` bytes have passed one way.
#[derive(Clone, Copy)]
enum Break {
    /// Flip one bit of the next byte and carry on.
    Corrupt,
    /// Close both connections.
    Cut,
}

impl Break {
    fn name(self) -> &'static str {
        match self {
            Break::Corrupt => "corrupt",
            Break::Cut => "cut",
        }
    }
}

/// A loopback relay that breaks the stream in one direction after `after` bytes: what a
/// faulty network or a peer dying mid-body does to TLS. `upstream`: client to server.
fn breaking_proxy(target: SocketAddr, upstream: bool, after: u64, how: Break) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(target).unwrap();
            let pairs = [
                (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    upstream,
                ),
                (server, client, !upstream),
            ];
            for (mut from, mut to, breaks) in pairs {
                thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut passed = 0u64;
                    let mut broken = false;
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &mut buf[..n];
                        if breaks && !broken && passed + n as u64 > after {
                            let at = (after - passed) as usize;
                            broken = true;
                            match how {
                                Break::Corrupt => chunk[at] ^= 0x10,
                                Break::Cut => {
                                    let _ = to.write_all(&chunk[..at]);
                                    break;
                                }
                            }
                        }
                        passed += n as u64;
                        if to.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    let _ = from.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    addr
}

/// Bytes past the handshake, login and request: well inside the 6 MiB body.
const BREAK_AT: u64 = 3 * 1024 * 1024 + 12_345;

#[test]
fn a_download_broken_mid_body_over_tls_fails_clearly_and_leaves_no_file() {
    let srv = Server::start(&["gus"]);
    let data = bytes(31, 6 * 1024 * 1024);
    fs::write(srv.home("gus").join("big.bin"), &data).unwrap();
    for how in [Break::Corrupt, Break::Cut] {
        let proxy = breaking_proxy(srv.addr, false, BREAK_AT, how);
        let dst = tempfile::tempdir().unwrap();
        let out = run(srv
            .ferry_at(&proxy.to_string(), "gus")
            .args(["get", "-q", "big.bin"])
            .arg(dst.path()));
        fails_naming_the_connection(&out, how);
        assert!(
            !dst.path().join("big.bin").exists(),
            "nothing under the final name"
        );
        // What did arrive is kept for a resume, and resuming yields the file.
        let out = json(
            srv.ferry("gus")
                .args(["get", "--json", "big.bin"])
                .arg(dst.path()),
        );
        assert_eq!(out["downloaded"], 1, "{out}");
        assert!(fs::read(dst.path().join("big.bin")).unwrap() == data);
    }
}

#[test]
fn an_upload_broken_mid_body_over_tls_fails_clearly_and_leaves_no_file() {
    let srv = Server::start(&["hal"]);
    let local = tempfile::tempdir().unwrap();
    let data = bytes(32, 6 * 1024 * 1024);
    for how in [Break::Corrupt, Break::Cut] {
        let name = format!("up-{}.bin", how.name());
        let file = local.path().join(&name);
        fs::write(&file, &data).unwrap();
        let proxy = breaking_proxy(srv.addr, true, BREAK_AT, how);
        let out = run(srv
            .ferry_at(&proxy.to_string(), "hal")
            .args(["put", "-q"])
            .arg(&file));
        fails_naming_the_connection(&out, how);
        assert!(
            !srv.home("hal").join(&name).exists(),
            "nothing under the final name"
        );
        let out = json(srv.ferry("hal").args(["put", "--json"]).arg(&file));
        assert_eq!(out["uploaded"], 1, "{out}");
        assert!(fs::read(srv.home("hal").join(&name)).unwrap() == data);
    }
}

/// The command failed, and its error says the connection to the server broke.
fn fails_naming_the_connection(out: &std::process::Output, how: Break) {
    let err = stderr(out);
    assert!(!out.status.success(), "{}: {err}", how.name());
    assert!(
        err.contains("server"),
        "{}: the error names the connection: {err}",
        how.name()
    );
}
