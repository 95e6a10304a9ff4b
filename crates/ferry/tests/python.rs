//! The standard-library Python client (interop/python/ferry_client.py) against the real
//! server: proof that docs/PROTOCOL.md is enough to write a client.

mod common;

use std::fs;
use std::process::Command;

use common::{Server, bytes, run};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../interop/python/ferry_client.py"
);

fn python(srv: &Server, user: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(SCRIPT)
        .args(["--server", &srv.addr.to_string(), "--user", user])
        .env("FERRY_PASSWORD", format!("pw-{user}"));
    if srv.plain {
        c.arg("--plain");
    } else {
        c.args(["--fingerprint", &srv.fingerprint()]);
    }
    c
}

#[test]
fn python_client_lists_uploads_and_downloads_with_md5() {
    let srv = Server::start_plain(&["pyuser"]);
    let work = tempfile::tempdir().unwrap();
    let data = bytes(42, 300_000);
    let local = work.path().join("course.bin");
    fs::write(&local, &data).unwrap();

    let out = run(python(&srv, "pyuser").arg("put").arg(&local));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("connected to"), "{stdout}");
    assert!(stdout.contains("put "), "{stdout}");
    assert_eq!(
        fs::read(srv.home("pyuser").join("course.bin")).unwrap(),
        data
    );

    let out = run(python(&srv, "pyuser").arg("ls"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("course.bin") && stdout.contains("300000"),
        "{stdout}"
    );

    let back = work.path().join("back");
    fs::create_dir(&back).unwrap();
    let out = run(python(&srv, "pyuser")
        .args(["get", "course.bin"])
        .arg(&back));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");
    assert_eq!(fs::read(back.join("course.bin")).unwrap(), data);

    // A Rust-side download of the Python upload verifies too (hash of record is consistent).
    let rust = tempfile::tempdir().unwrap();
    let out = run(srv
        .ferry("pyuser")
        .args(["get", "-q", "course.bin"])
        .arg(rust.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(rust.path().join("course.bin")).unwrap(), data);

    // Errors arrive as codes: a missing file.
    let out = run(python(&srv, "pyuser").args(["get", "nope.bin"]).arg(&back));
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
}

#[test]
fn python_client_speaks_tls_with_a_pinned_fingerprint_or_a_cafile() {
    let srv = Server::start(&["tlsuser"]);
    let work = tempfile::tempdir().unwrap();
    let data = bytes(43, 100_000);
    let local = work.path().join("secret.bin");
    fs::write(&local, &data).unwrap();
    let out = run(python(&srv, "tlsuser").arg("put").arg(&local));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(srv.home("tlsuser").join("secret.bin")).unwrap(),
        data
    );

    // The server's own certificate works as a CA file for the loopback names it was made for.
    let cafile = srv.root.path().join("tls/cert.pem");
    let out = run(Command::new("python3")
        .arg(SCRIPT)
        .args([
            "--server",
            &format!("localhost:{}", srv.addr.port()),
            "--user",
            "tlsuser",
        ])
        .arg("--cafile")
        .arg(&cafile)
        .arg("ls")
        .env("FERRY_PASSWORD", "pw-tlsuser"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("secret.bin"));

    // A wrong fingerprint is refused before anything is sent.
    let wrong = format!("sha256:{}", "00".repeat(32));
    let out = run(Command::new("python3")
        .arg(SCRIPT)
        .args(["--server", &srv.addr.to_string(), "--user", "tlsuser"])
        .args(["--fingerprint", &wrong, "ls"])
        .env("FERRY_PASSWORD", "pw-tlsuser"));
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the pinned"));

    // Plain TCP against a TLS server fails rather than leaking the password in clear.
    let out = run(Command::new("python3")
        .arg(SCRIPT)
        .args([
            "--server",
            &srv.addr.to_string(),
            "--user",
            "tlsuser",
            "--plain",
            "ls",
        ])
        .env("FERRY_PASSWORD", "pw-tlsuser"));
    assert!(!out.status.success());
}
