//! The standard-library Python client (interop/python/ferry_client.py) against the real
//! server: proof that docs/PROTOCOL.md is enough to write a client.

mod common;

use std::fs;
use std::process::Command;

use common::{Server, bytes, run};

fn python(srv: &Server, user: &str) -> Command {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../interop/python/ferry_client.py"
    );
    let mut c = Command::new("python3");
    c.arg(script)
        .args(["--server", &srv.addr.to_string(), "--user", user])
        .env("FERRY_PASSWORD", format!("pw-{user}"));
    c
}

#[test]
fn python_client_lists_uploads_and_downloads_with_md5() {
    let srv = Server::start(&["pyuser"]);
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
