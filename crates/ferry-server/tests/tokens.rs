//! Session tokens over real connections: a password login issues one (when asked), a later
//! login presents it instead of the password; it is bound to its user, revoked by a password
//! change or user removal, expires, and a bad one is answered `token_invalid` at once without
//! feeding the password lockout.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer};
use ferry_proto::message::SESSION_TOKEN;
use ferry_proto::{ErrorCode, Reply, Request};
use ferry_server::ServerConfig;
use ferry_server::throttle::ThrottlePolicy;
use ferry_server::tokens::TokenPolicy;

/// One frame of header JSON text, written by hand as another client would.
fn raw_frame_json(json: &str) -> Vec<u8> {
    let mut v = (json.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v
}

/// Greets asking for session tokens (or not); returns the features the server shared.
async fn greet(c: &mut Client, want_tokens: bool) -> Vec<String> {
    let mut features = vec!["pipelining".to_owned()];
    if want_tokens {
        features.push(SESSION_TOKEN.to_owned());
    }
    match c
        .call(Request::Hello {
            version: 1,
            features,
            client: Some("tokens-test".into()),
        })
        .await
        .expect("hello")
    {
        Reply::Hello { features, .. } => features,
        other => panic!("{other:?}"),
    }
}

/// A password login on a fresh connection that asks for a token; returns it and its TTL.
async fn issue(srv: &TestServer, user: &str) -> (String, u64) {
    let mut c = srv.client().await;
    assert!(
        greet(&mut c, true)
            .await
            .contains(&SESSION_TOKEN.to_owned())
    );
    match c
        .call(Request::login_password(user, format!("{user}-pw")))
        .await
        .expect("password login")
    {
        Reply::Login {
            user: u,
            cwd,
            token: Some(token),
            token_ttl: Some(ttl),
        } => {
            assert_eq!((u.as_str(), cwd.as_str()), (user, "/"));
            assert_eq!(token.len(), 64, "{token}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{token}"
            );
            (token, ttl)
        }
        other => panic!("expected a token, got {other:?}"),
    }
}

/// A token login on a fresh connection: the client, or the refusal.
async fn with_token(srv: &TestServer, user: &str, token: &str) -> Result<Client, ErrorCode> {
    let mut c = srv.client().await;
    greet(&mut c, true).await;
    match c.call(Request::login_token(user, token)).await {
        Ok(Reply::Login {
            user: u,
            cwd,
            token: None,
            token_ttl: Some(_),
        }) => {
            assert_eq!((u.as_str(), cwd.as_str()), (user, "/"));
            Ok(c)
        }
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.code),
    }
}

fn slow_lockout() -> ThrottlePolicy {
    ThrottlePolicy {
        free_failures: 0,
        base_delay: Duration::from_millis(300),
        max_delay: Duration::from_millis(300),
        lockout_after: 3,
        lockout: Duration::from_secs(60),
        forget_after: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn a_token_logs_in_without_the_password_and_serves_the_session() {
    let srv = TestServer::start_with(|c| c.throttle = slow_lockout()).await;
    let (token, ttl) = issue(&srv, "alice").await;
    assert_eq!(ttl, 3600);
    let mut c = with_token(&srv, "alice", &token).await.unwrap();
    c.put("/via-token", b"hello").await.unwrap();
    assert_eq!(c.get("/via-token").await.unwrap().1, b"hello");
    // The token is reusable, from many connections.
    for _ in 0..3 {
        with_token(&srv, "alice", &token).await.unwrap();
    }

    // The password is not consulted at all: with alice's password logins locked out by a
    // guesser, her token still logs her in.
    let mut guesser = srv.client().await;
    greet(&mut guesser, false).await;
    for _ in 0..3 {
        guesser
            .expect_err(
                Request::login_password("alice", "guess"),
                ErrorCode::AuthFailed,
            )
            .await;
    }
    let mut locked = srv.client().await;
    greet(&mut locked, true).await;
    let e = locked
        .expect_err(
            Request::login_password("alice", "alice-pw"),
            ErrorCode::AuthFailed,
        )
        .await;
    assert!(e.message.contains("too many failed logins"), "{e}");
    let mut c = with_token(&srv, "alice", &token).await.unwrap();
    assert_eq!(c.get("/via-token").await.unwrap().1, b"hello");
    srv.stop().await;
}

#[tokio::test]
async fn clients_that_do_not_ask_get_the_reply_they_always_got() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let features = greet(&mut c, false).await;
    assert!(
        !features.contains(&SESSION_TOKEN.to_owned()),
        "{features:?}"
    );
    let reply = c
        .call(Request::login_password("alice", "alice-pw"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        Reply::Login {
            user: "alice".into(),
            cwd: "/".into(),
            token: None,
            token_ttl: None,
        }
    );
    // And the exact bytes of an old client's login are still answered the same way.
    let mut raw = srv.client().await;
    greet(&mut raw, false).await;
    raw.write_raw(&raw_frame_json(
        r#"{"id":7,"op":"login","user":"bob","password":"bob-pw"}"#,
    ))
    .await;
    let (frame, _) = raw.recv().await;
    assert_eq!(frame.id, 7);
    assert_eq!(
        frame.result.unwrap(),
        Reply::Login {
            user: "bob".into(),
            cwd: "/".into(),
            token: None,
            token_ttl: None,
        }
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_token_is_only_good_for_its_own_user() {
    let srv = TestServer::start().await;
    let (alice, _) = issue(&srv, "alice").await;
    let (bob, _) = issue(&srv, "bob").await;
    assert_ne!(alice, bob);
    assert_eq!(
        with_token(&srv, "bob", &alice).await.err(),
        Some(ErrorCode::TokenInvalid)
    );
    assert_eq!(
        with_token(&srv, "alice", &bob).await.err(),
        Some(ErrorCode::TokenInvalid)
    );
    assert_eq!(
        with_token(&srv, "nobody", &alice).await.err(),
        Some(ErrorCode::TokenInvalid)
    );
    // Trying it as someone else does not spoil it for its owner.
    let mut c = with_token(&srv, "alice", &alice).await.unwrap();
    c.put("/mine", b"a").await.unwrap();
    assert!(!srv.home("bob").join("mine").exists());
    with_token(&srv, "bob", &bob).await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn a_password_change_or_removal_revokes_the_users_tokens() {
    let srv = TestServer::start().await;
    let root = srv.data_root();
    let (alice, _) = issue(&srv, "alice").await;
    let (bob, _) = issue(&srv, "bob").await;
    with_token(&srv, "alice", &alice).await.unwrap();

    ferry_server::users::passwd(&root, "alice", "new-pw").unwrap();
    assert_eq!(
        with_token(&srv, "alice", &alice).await.err(),
        Some(ErrorCode::TokenInvalid)
    );
    // Bob's password did not change: his token still works.
    with_token(&srv, "bob", &bob).await.unwrap();
    // The new password works and gives a new token.
    let mut c = srv.client().await;
    greet(&mut c, true).await;
    let Reply::Login {
        token: Some(fresh), ..
    } = c
        .call(Request::login_password("alice", "new-pw"))
        .await
        .unwrap()
    else {
        panic!("no token")
    };
    with_token(&srv, "alice", &fresh).await.unwrap();

    // Removing bob revokes his token, and re-adding him (same password, new salt) does not
    // bring it back.
    ferry_server::users::del(&root, "bob", false).unwrap();
    assert_eq!(
        with_token(&srv, "bob", &bob).await.err(),
        Some(ErrorCode::TokenInvalid)
    );
    common::add_user(&root, "bob", "bob-pw", u64::MAX, u64::MAX);
    assert_eq!(
        with_token(&srv, "bob", &bob).await.err(),
        Some(ErrorCode::TokenInvalid)
    );
    srv.stop().await;
}

fn short_ttl(ttl: Duration) -> impl FnOnce(&mut ServerConfig) {
    move |c| {
        c.tokens = TokenPolicy {
            ttl,
            ..TokenPolicy::default()
        }
    }
}

#[tokio::test]
async fn tokens_expire_when_unused_for_the_ttl() {
    let srv = TestServer::start_with(short_ttl(Duration::from_millis(1500))).await;
    let (token, ttl) = issue(&srv, "alice").await;
    assert_eq!(ttl, 2, "a sub-second remainder rounds up, never down to 0");
    // Each use pushes the expiry forward: used at ~0.9 s and ~1.8 s, alive past 1.5 s.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        with_token(&srv, "alice", &token).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        with_token(&srv, "alice", &token).await.err(),
        Some(ErrorCode::TokenInvalid)
    );
    srv.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_at_once_and_never_lock_anyone_out() {
    let srv = TestServer::start_with(|c| c.throttle = slow_lockout()).await;
    let (good, _) = issue(&srv, "alice").await;
    let mut flipped = good.clone().into_bytes();
    flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    let bad = [
        String::new(),
        "garbage".into(),
        "0".repeat(64),
        flipped,
        good.to_uppercase(),
        format!("{good}0"),
        good[..63].to_owned(),
        "zz".repeat(32),
        "é".repeat(32),
        "a".repeat(3900),
        format!("{good}\n"),
        format!(" {good}"),
    ];
    let mut c = srv.client().await;
    greet(&mut c, true).await;
    let started = Instant::now();
    // Each bad token four times over: well past the password lockout's threshold of 3.
    for _ in 0..4 {
        for t in &bad {
            let e = c
                .expect_err(Request::login_token("alice", t), ErrorCode::TokenInvalid)
                .await;
            assert!(!e.message.contains(t.as_str()) || t.is_empty(), "{e}");
        }
    }
    // No failure delay (300 ms each for passwords): 48 refusals in well under one delay each.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Neither the address nor the user was locked: the same connection logs in by password.
    c.call(Request::login_password("alice", "alice-pw"))
        .await
        .unwrap();
    with_token(&srv, "alice", &good).await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn a_login_with_both_or_neither_is_a_bad_request() {
    let srv = TestServer::start().await;
    let (token, _) = issue(&srv, "alice").await;
    let mut c = srv.client().await;
    greet(&mut c, true).await;
    for (password, tok) in [
        (Some("alice-pw".to_owned()), Some(token.clone())),
        (Some("wrong".to_owned()), Some(token.clone())),
        (None, None),
    ] {
        c.expect_err(
            Request::Login {
                user: "alice".into(),
                password,
                token: tok,
            },
            ErrorCode::BadRequest,
        )
        .await;
    }
    for json in [
        format!(
            r#"{{"id":40,"op":"login","user":"alice","password":"alice-pw","token":"{token}"}}"#
        ),
        r#"{"id":40,"op":"login","user":"alice"}"#.to_owned(),
        r#"{"id":40,"op":"login","user":"alice","token":64}"#.to_owned(),
    ] {
        c.write_raw(&raw_frame_json(&json)).await;
        let (frame, _) = c.recv().await;
        assert_eq!(frame.id, 40);
        assert_eq!(
            frame.result.unwrap_err().code,
            ErrorCode::BadRequest,
            "{json}"
        );
    }
    // Still greeted and not logged in; a proper login goes through on the same connection.
    c.expect_err(Request::Pwd, ErrorCode::AuthRequired).await;
    c.call(Request::login_token("alice", &token)).await.unwrap();
    c.expect_err(Request::login_token("alice", &token), ErrorCode::BadRequest)
        .await;
    srv.stop().await;
}

#[tokio::test]
async fn tokens_can_be_turned_off() {
    let srv = TestServer::start_with(short_ttl(Duration::ZERO)).await;
    let mut c = srv.client().await;
    let features = greet(&mut c, true).await;
    assert!(
        !features.contains(&SESSION_TOKEN.to_owned()),
        "{features:?}"
    );
    let reply = c
        .call(Request::login_password("alice", "alice-pw"))
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            Reply::Login {
                token: None,
                token_ttl: None,
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(
        with_token(&srv, "alice", &"ab".repeat(32)).await.err(),
        Some(ErrorCode::TokenInvalid)
    );
    srv.stop().await;
}

#[tokio::test]
async fn each_user_keeps_only_so_many_tokens() {
    let srv = TestServer::start_with(|c| {
        c.tokens = TokenPolicy {
            per_user: 2,
            total: 3,
            ..TokenPolicy::default()
        }
    })
    .await;
    let mut alice = Vec::new();
    for _ in 0..4 {
        alice.push(issue(&srv, "alice").await.0);
    }
    // Only the two newest are kept.
    for (i, t) in alice.iter().enumerate() {
        let r = with_token(&srv, "alice", t).await.err();
        assert_eq!(r, (i < 2).then_some(ErrorCode::TokenInvalid), "token {i}");
    }
    // The total bound holds across users: bob's two push out alice's least recently used.
    let b0 = issue(&srv, "bob").await.0;
    let b1 = issue(&srv, "bob").await.0;
    with_token(&srv, "bob", &b0).await.unwrap();
    with_token(&srv, "bob", &b1).await.unwrap();
    let kept = [
        with_token(&srv, "alice", &alice[2]).await.is_ok(),
        with_token(&srv, "alice", &alice[3]).await.is_ok(),
    ];
    assert_eq!(kept.iter().filter(|k| **k).count(), 1, "{kept:?}");
    srv.stop().await;
}

#[tokio::test]
async fn logout_ends_the_sessions_token_on_the_server() {
    let srv = TestServer::start().await;
    let (token, _) = issue(&srv, "alice").await;
    let (other, _) = issue(&srv, "alice").await;
    // Before login there is nothing to log out of.
    let mut c = srv.client().await;
    greet(&mut c, true).await;
    c.expect_err(Request::Logout, ErrorCode::AuthRequired).await;

    let mut c = with_token(&srv, "alice", &token).await.unwrap();
    assert_eq!(
        c.call(Request::Logout).await.unwrap(),
        Reply::Logout { revoked: true }
    );
    // The session itself goes on; only the token is gone, and only that one.
    c.put("/after-logout", b"x").await.unwrap();
    assert_eq!(
        c.call(Request::Logout).await.unwrap(),
        Reply::Logout { revoked: false }
    );
    assert_eq!(
        with_token(&srv, "alice", &token).await.err(),
        Some(ErrorCode::TokenInvalid)
    );
    with_token(&srv, "alice", &other).await.unwrap();

    // A password session has no token to end.
    let mut p = srv.login("bob").await;
    assert_eq!(
        p.call(Request::Logout).await.unwrap(),
        Reply::Logout { revoked: false }
    );
    srv.stop().await;
}
