//! Login hardening: growing delays and a lockout that ends by itself, per source address and
//! per user; the cap on sessions per user; the same answer for unknown users.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Client, TestServer};
use ferry_proto::{ErrorCode, Request};
use ferry_server::throttle::ThrottlePolicy;

fn quick_policy() -> ThrottlePolicy {
    ThrottlePolicy {
        free_failures: 1,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        lockout_after: 4,
        lockout: Duration::from_millis(1500),
        forget_after: Duration::from_secs(60),
    }
}

async fn login(c: &mut Client, user: &str, pw: &str) -> Result<(), (ErrorCode, String)> {
    c.call(Request::login_password(user, pw))
        .await
        .map(|_| ())
        .map_err(|e| (e.code, e.message))
}

async fn greeted(srv: &TestServer, from: &str) -> Client {
    let mut c = Client::connect_from(srv.addr, from.parse::<IpAddr>().unwrap()).await;
    c.hello().await;
    c
}

#[tokio::test]
async fn guessing_locks_the_address_and_the_user_out_for_a_while() {
    let srv = TestServer::start_with(|c| c.throttle = quick_policy()).await;
    let mut guesser = greeted(&srv, "127.0.0.1").await;
    for _ in 0..4 {
        let (code, msg) = login(&mut guesser, "alice", "wrong").await.unwrap_err();
        assert_eq!(code, ErrorCode::AuthFailed);
        assert_eq!(msg, "unknown user or wrong password");
    }
    // Locked: even the right password is refused, without being checked.
    let (code, msg) = login(&mut guesser, "alice", "alice-pw").await.unwrap_err();
    assert_eq!(code, ErrorCode::AuthFailed);
    assert!(msg.contains("too many failed logins"), "{msg}");
    // The user is locked from other addresses too (many machines guessing one password)...
    let mut elsewhere = greeted(&srv, "127.0.0.2").await;
    let (_, msg) = login(&mut elsewhere, "alice", "alice-pw")
        .await
        .unwrap_err();
    assert!(msg.contains("too many failed logins"), "{msg}");
    // ...and the address for other users (one machine guessing many users).
    let (_, msg) = login(&mut guesser, "bob", "bob-pw").await.unwrap_err();
    assert!(msg.contains("too many failed logins"), "{msg}");
    // Other users from other addresses are served meanwhile.
    let mut bystander = greeted(&srv, "127.0.0.3").await;
    login(&mut bystander, "bob", "bob-pw").await.unwrap();
    bystander.put("/still-served", b"yes").await.unwrap();

    // The lockout ends by itself.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    login(&mut guesser, "alice", "alice-pw").await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn failures_get_slower_and_unknown_users_look_the_same() {
    let srv = TestServer::start_with(|c| {
        c.throttle = ThrottlePolicy {
            lockout_after: 100,
            ..quick_policy()
        }
    })
    .await;
    let mut c = greeted(&srv, "127.0.0.4").await;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        login(&mut c, "alice", "wrong").await.unwrap_err();
        times.push(t.elapsed());
    }
    // Delays 20, 40, 80, 160, 200 ms on top of the password check: the last failures wait
    // at least the capped delay, far longer than the first.
    assert!(times[4] >= Duration::from_millis(200), "{times:?}");
    assert!(
        times[4] > times[0] + Duration::from_millis(100),
        "{times:?}"
    );

    // An unknown user gets the same code and message as a wrong password.
    let mut d = greeted(&srv, "127.0.0.5").await;
    let unknown = login(&mut d, "nobody", "whatever").await.unwrap_err();
    let mut e = greeted(&srv, "127.0.0.6").await;
    let wrong = login(&mut e, "bob", "whatever").await.unwrap_err();
    assert_eq!(unknown, wrong);
    srv.stop().await;
}

#[tokio::test]
async fn a_user_may_hold_only_so_many_sessions() {
    let srv = TestServer::start_with(|c| c.max_sessions_per_user = 2).await;
    let a = srv.login("alice").await;
    let mut b = srv.login("alice").await;
    let mut third = srv.client().await;
    third.hello().await;
    let (code, msg) = login(&mut third, "alice", "alice-pw").await.unwrap_err();
    assert_eq!(code, ErrorCode::Busy, "{msg}");
    // Other users are not affected.
    let _bob = srv.login("bob").await;
    // Closing a session frees its slot.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match login(&mut third, "alice", "alice-pw").await {
            Ok(()) => break,
            Err((ErrorCode::Busy, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    b.put("/ok", b"1").await.unwrap();
    srv.stop().await;
}
