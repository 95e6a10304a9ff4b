//! The CLI's session tokens end to end: the real binary against a real server on loopback,
//! with the clients' config directory (known_hosts, sessions) in a temp dir.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{Server, ok, run};

fn sessions_file(srv: &Server) -> PathBuf {
    srv.config.path().join("sessions")
}

fn sessions(srv: &Server) -> serde_json::Value {
    let text = fs::read_to_string(sessions_file(srv)).expect("sessions file");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The cached entry for `user` on this server, if any.
fn entry(srv: &Server, user: &str) -> Option<serde_json::Value> {
    sessions(srv)["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["user"] == user && s["server"] == srv.addr.to_string())
        .cloned()
}

/// A client command with no password anywhere: it must log in with the cached token or fail.
fn no_password(srv: &Server, user: &str) -> Command {
    let mut c = srv.ferry(user);
    c.env_remove("FERRY_PASSWORD");
    c
}

fn log(srv: &Server) -> String {
    fs::read_to_string(&srv.log).unwrap()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn after_one_password_login_commands_need_no_password() {
    let srv = Server::start(&["alice"]);
    assert!(!sessions_file(&srv).exists());
    // Without a token and without a password there is nothing to log in with.
    let out = run(no_password(&srv, "alice").arg("pwd"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("FERRY_PASSWORD"), "{}", stderr(&out));

    assert_eq!(ok(srv.ferry("alice").arg("pwd")).trim(), "/");
    let mode = fs::metadata(sessions_file(&srv))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let e = entry(&srv, "alice").expect("an entry for alice");
    assert_eq!(e["token"].as_str().unwrap().len(), 64, "{e}");
    // Over TLS the entry names the certificate it was issued over.
    assert_eq!(e["fingerprint"], srv.fingerprint(), "{e}");
    let text = fs::read_to_string(sessions_file(&srv)).unwrap();
    assert!(!text.contains("pw-alice"), "{text}");

    let local = tempfile::tempdir().unwrap();
    fs::write(local.path().join("a.txt"), b"via token").unwrap();
    ok(no_password(&srv, "alice")
        .args(["put", "-q"])
        .arg(local.path().join("a.txt")));
    assert_eq!(
        fs::read(srv.home("alice").join("a.txt")).unwrap(),
        b"via token"
    );
    assert!(ok(no_password(&srv, "alice").arg("ls")).contains("a.txt"));
    let log = log(&srv);
    assert_eq!(count(&log, "logged in with a session token"), 2, "{log}");
    assert!(!log.contains(e["token"].as_str().unwrap()), "{log}");
}

#[test]
fn tokens_are_kept_per_user_and_never_used_for_another() {
    let srv = Server::start_plain(&["alice", "bob"]);
    ok(srv.ferry("alice").arg("pwd"));
    // Bob has no token of his own; alice's is not offered for him.
    let out = run(no_password(&srv, "bob").arg("pwd"));
    assert!(!out.status.success(), "{}", stderr(&out));
    ok(srv.ferry("bob").arg("pwd"));
    let (a, b) = (entry(&srv, "alice").unwrap(), entry(&srv, "bob").unwrap());
    assert_ne!(a["token"], b["token"]);
    assert!(a.get("fingerprint").is_none(), "plain TCP: {a}");
    ok(no_password(&srv, "alice").arg("pwd"));
    ok(no_password(&srv, "bob").arg("pwd"));
}

#[test]
fn a_refused_token_falls_back_to_the_password_and_is_replaced() {
    let srv = Server::start_plain(&["carol"]);
    ok(srv.ferry("carol").arg("pwd"));
    let first = entry(&srv, "carol").unwrap()["token"].clone();

    // A password change revokes the token on the server.
    let mut passwd = Command::new(common::BIN)
        .args(["user", "passwd", "carol", "--password-stdin", "--root"])
        .arg(srv.root.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(passwd.stdin.take().unwrap(), "new-pw").unwrap();
    assert!(passwd.wait_with_output().unwrap().status.success());

    // No password to fall back to: refused, and the dead token is dropped from the cache.
    let out = run(no_password(&srv, "carol").arg("pwd"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("FERRY_PASSWORD"), "{}", stderr(&out));
    assert_eq!(entry(&srv, "carol"), None);
    assert!(log(&srv).contains("token login refused"));

    ok(srv
        .ferry("carol")
        .env("FERRY_PASSWORD", "new-pw")
        .arg("pwd"));
    let second = entry(&srv, "carol").unwrap()["token"].clone();
    assert_ne!(first, second);
    ok(no_password(&srv, "carol").arg("pwd"));

    // A token the server never issued (here: a tampered one) also falls back to the password.
    let mut file = sessions(&srv);
    file["sessions"][0]["token"] = "0".repeat(64).into();
    fs::write(sessions_file(&srv), file.to_string()).unwrap();
    let out = run(srv
        .ferry("carol")
        .env("FERRY_PASSWORD", "new-pw")
        .arg("pwd"));
    assert!(out.status.success(), "{}", stderr(&out));
    let third = entry(&srv, "carol").unwrap()["token"].clone();
    assert_ne!(third, "0".repeat(64));
    assert_ne!(third, second);
    // A wrong password after a refused token is an ordinary authentication failure.
    let mut file = sessions(&srv);
    file["sessions"][0]["token"] = "1".repeat(64).into();
    fs::write(sessions_file(&srv), file.to_string()).unwrap();
    let out = run(srv.ferry("carol").env("FERRY_PASSWORD", "wrong").arg("pwd"));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("auth_failed"), "{}", stderr(&out));
}

#[test]
fn a_corrupt_sessions_file_is_ignored_and_rewritten() {
    let srv = Server::start_plain(&["dan"]);
    fs::create_dir_all(srv.config.path()).unwrap();
    for junk in ["", "{not json", "[]", "{\"sessions\":\"x\"}", "\u{0}\u{1}"] {
        fs::write(sessions_file(&srv), junk).unwrap();
        fs::set_permissions(sessions_file(&srv), fs::Permissions::from_mode(0o644)).unwrap();
        let out = run(no_password(&srv, "dan").arg("pwd"));
        assert!(!out.status.success(), "{junk:?}");
        ok(srv.ferry("dan").arg("pwd"));
        assert!(entry(&srv, "dan").is_some(), "{junk:?}");
        let mode = fs::metadata(sessions_file(&srv))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{junk:?}: {mode:o}");
        ok(no_password(&srv, "dan").arg("pwd"));
    }
    // The atomic rewrites leave no temp files behind, only the empty file they lock.
    let mut names: Vec<String> = fs::read_dir(srv.config.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["sessions", "sessions.lock"], "{names:?}");
}

#[test]
fn a_token_is_not_sent_to_a_server_with_another_certificate() {
    let srv = Server::start(&["erin"]);
    ok(srv.ferry("erin").arg("pwd"));
    // As if the token had been issued by a different server at this address.
    let mut file = sessions(&srv);
    file["sessions"][0]["fingerprint"] = format!("sha256:{}", "ab".repeat(32)).into();
    fs::write(sessions_file(&srv), file.to_string()).unwrap();
    let out = run(no_password(&srv, "erin").arg("pwd"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("FERRY_PASSWORD"), "{}", stderr(&out));
    // Never even offered: the server saw no token login at all.
    let log = log(&srv);
    assert!(!log.contains("token login refused"), "{log}");
    assert!(!log.contains("with a session token"), "{log}");
}

#[test]
fn logout_forgets_the_token() {
    let srv = Server::start_plain(&["fay", "gus"]);
    ok(srv.ferry("fay").arg("pwd"));
    ok(srv.ferry("gus").arg("pwd"));
    let before = fs::read(sessions_file(&srv)).unwrap();
    let out = run(no_password(&srv, "fay").arg("logout"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("logged out fay@") && stderr(&out).contains("server ended"),
        "{}",
        stderr(&out)
    );
    assert_eq!(entry(&srv, "fay"), None);
    assert!(entry(&srv, "gus").is_some(), "other users' tokens stay");
    let mode = fs::metadata(sessions_file(&srv))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let out = run(no_password(&srv, "fay").arg("pwd"));
    assert!(
        !out.status.success(),
        "logged out: the password is needed again"
    );
    ok(no_password(&srv, "gus").arg("pwd"));
    // The server ended it too: a copy of the file taken before is worth nothing for fay.
    let after = fs::read(sessions_file(&srv)).unwrap();
    fs::write(sessions_file(&srv), &before).unwrap();
    let out = run(no_password(&srv, "fay").arg("pwd"));
    assert!(!out.status.success(), "the server still took the token");
    assert!(log(&srv).contains("token login refused"));
    fs::write(sessions_file(&srv), &after).unwrap();
    // Logging out twice is fine and says so.
    let out = run(no_password(&srv, "fay").arg("logout"));
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("no session token"),
        "{}",
        stderr(&out)
    );

    // With the server gone, logout still forgets the local copy, and says the server could
    // not be told.
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut file = sessions(&srv);
    file["sessions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "server": unreachable.to_string(),
            "user": "gus",
            "token": "ab".repeat(32),
            "expires": u64::MAX / 2,
        }));
    fs::write(sessions_file(&srv), file.to_string()).unwrap();
    let out = run(srv
        .ferry_at(&unreachable.to_string(), "gus")
        .env_remove("FERRY_PASSWORD")
        .arg("logout"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("could not reach"), "{}", stderr(&out));
    let left = sessions(&srv);
    assert!(
        !left["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["server"] == unreachable.to_string()),
        "{left}"
    );

    let out = run(no_password(&srv, "gus").args(["logout", "--all"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!sessions_file(&srv).exists());
    let out = run(no_password(&srv, "gus").arg("pwd"));
    assert!(!out.status.success());
}

#[test]
fn a_server_with_tokens_off_keeps_asking_for_the_password() {
    let srv = Server::start_with(&["hal"], &["--plain", "--session-ttl", "0"]);
    ok(srv.ferry("hal").arg("pwd"));
    assert!(!sessions_file(&srv).exists());
    let out = run(no_password(&srv, "hal").arg("pwd"));
    assert!(!out.status.success());
}

#[test]
fn help_says_how_to_skip_the_password() {
    let out = ok(Command::new(common::BIN).args(["get", "--help"]));
    assert!(out.contains("session token"), "{out}");
    assert!(out.contains("ferry logout"), "{out}");
    let out = ok(Command::new(common::BIN).args(["serve", "--help"]));
    assert!(out.contains("--session-ttl"), "{out}");
}

#[test]
fn logout_all_ends_every_token_on_its_server() {
    let tls = Server::start(&["ivy"]);
    let plain = Server::start_plain(&["ivy"]);
    // Both servers' clients share one config directory, as one user's commands do.
    let config = tls.config.path();
    let on = |srv: &Server| {
        let mut c = srv.ferry("ivy");
        c.env("FERRY_CONFIG_DIR", config);
        c
    };
    ok(on(&tls).arg("pwd"));
    ok(on(&plain).arg("pwd"));
    let file = config.join("sessions");
    let before = fs::read(&file).unwrap();
    let text = String::from_utf8_lossy(&before).into_owned();
    assert!(text.contains(&tls.addr.to_string()) && text.contains(&plain.addr.to_string()));

    let out = run(on(&tls)
        .env_remove("FERRY_PASSWORD")
        .args(["logout", "--all"]));
    let said = stderr(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.matches("the server ended the token").count(),
        2,
        "{said}"
    );
    assert!(!file.exists());
    // No scratch known-hosts file is left, and the user's pins are as they were.
    let mut names: Vec<String> = fs::read_dir(config)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["known_hosts", "sessions.lock"], "{names:?}");
    // A copy of the file taken before is worth nothing on either server.
    fs::write(&file, &before).unwrap();
    for srv in [&tls, &plain] {
        let out = run(on(srv).env_remove("FERRY_PASSWORD").arg("pwd"));
        assert!(!out.status.success(), "{}: the token still works", srv.addr);
        assert!(log(srv).contains("token login refused"), "{}", srv.addr);
    }
}

#[test]
fn logout_all_does_not_send_a_token_to_a_server_with_another_certificate() {
    let srv = Server::start(&["jon"]);
    ok(srv.ferry("jon").arg("pwd"));
    // As if the token had been issued over another certificate at this address.
    let mut file = sessions(&srv);
    file["sessions"][0]["fingerprint"] = format!("sha256:{}", "cd".repeat(32)).into();
    fs::write(sessions_file(&srv), file.to_string()).unwrap();
    let logins_before = log(&srv).matches("logged in").count();
    let out = run(no_password(&srv, "jon").args(["logout", "--all"]));
    let said = stderr(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("another certificate") && said.contains("not sent"),
        "{said}"
    );
    assert!(!sessions_file(&srv).exists());
    assert_eq!(log(&srv).matches("logged in").count(), logins_before);
    assert!(!log(&srv).contains("token login refused"));
}
