//! Connection cap, timeouts, graceful shutdown, and many clients at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_proto::{ErrorCode, Reply, Request};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_at_the_connection_cap() {
    let srv = TestServer::start_with(|c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = srv.client().await;
        c.hello().await; // proves the connection is being served
        held.push(c);
    }
    let mut extra = srv.client().await;
    let (f, _) = extra.recv().await;
    assert_eq!((f.id, f.result.unwrap_err().code), (0, ErrorCode::Busy));
    extra.expect_closed().await;
    // A slot frees up when a client leaves.
    let mut gone = held.pop().unwrap();
    gone.call(Request::Quit).await.unwrap();
    gone.expect_closed().await;
    let mut ok = None;
    for _ in 0..50 {
        let mut c = srv.client().await;
        let id = c
            .send(
                Request::Hello {
                    version: 1,
                    features: vec![],
                    client: None,
                },
                &[],
            )
            .await;
        let (f, _) = c.recv().await;
        if f.id == id && f.result.is_ok() {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok.is_some(), "served again once below the cap");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout() {
    let srv = TestServer::start_with(|c| c.idle_timeout = Duration::from_millis(600)).await;
    let mut c = srv.login("alice").await;
    let t = Instant::now();
    let (f, _) = c.recv().await;
    assert_eq!((f.id, f.result.unwrap_err().code), (0, ErrorCode::Timeout));
    assert!(t.elapsed() >= Duration::from_millis(500));
    c.expect_closed().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_timeouts_header_and_body() {
    let srv = TestServer::start_with(|c| {
        c.frame_timeout = Duration::from_millis(500);
        c.idle_timeout = Duration::from_secs(60);
    })
    .await;
    // A header that starts and never completes.
    let mut c = srv.client().await;
    c.write_raw(&[20, 0, 0, 0, b'{']).await;
    let (f, _) = c.recv().await;
    assert_eq!((f.id, f.result.unwrap_err().code), (0, ErrorCode::Timeout));
    c.expect_closed().await;
    // A header trickled byte by byte still has to finish in time.
    let mut c = srv.client().await;
    let trickle = tokio::spawn(async move {
        let json = br#"{"id":1,"op":"hello","version":1,"features":[]}"#;
        let mut frame = (json.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(json);
        for b in frame {
            if c.stream.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    });
    let mut c = trickle.await.unwrap();
    let (f, _) = c.recv().await;
    assert_eq!(f.result.unwrap_err().code, ErrorCode::Timeout);
    // A body that stalls.
    let mut c = srv.login("alice").await;
    let body = data(1, 100_000);
    c.write_raw(&put_start("/stall", &body, 1000)).await;
    let (f, _) = c.recv().await;
    assert_eq!((f.id, f.result.unwrap_err().code), (0, ErrorCode::Timeout));
    c.expect_closed().await;
    assert!(!srv.home("alice").join("stall").exists());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_transfers_finish() {
    let mut srv = TestServer::start_with(|c| c.grace = Duration::from_secs(10)).await;
    let mut idle = srv.login("bob").await;
    let mut c = srv.login("alice").await;
    let body = data(3, 2 * 1024 * 1024);
    c.write_raw(&put_start("/inflight", &body, 1024 * 1024))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    srv.signal_stop();
    // The idle connection is closed promptly; new connections are refused.
    idle.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::net::TcpStream::connect(srv.addr).await;
    assert!(refused.is_err(), "listener closed");
    // The upload in flight completes and is answered.
    c.write_raw(&body[1024 * 1024..]).await;
    let (f, _) = c.recv().await;
    assert!(matches!(f.result, Ok(Reply::Put { .. })), "{:?}", f.result);
    c.expect_closed().await;
    assert_eq!(
        std::fs::read(srv.home("alice").join("inflight")).unwrap(),
        body
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_cuts_stalled_transfers() {
    let mut srv = TestServer::start_with(|c| c.grace = Duration::from_millis(500)).await;
    let mut c = srv.login("alice").await;
    c.write_raw(&put_start("/never", &[0; 1000], 10)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    srv.signal_stop();
    c.expect_closed().await;
    srv.stop().await;
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients() {
    let srv = TestServer::start().await;
    let addr = srv.addr;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let user = if i % 2 == 0 { "alice" } else { "bob" };
            c.hello_login(user, &format!("{user}-pw")).await;
            let body = data(i, 10_000 + (i as usize * 997) % 50_000);
            let path = format!("/c{i}.bin");
            c.put(&path, &body).await.unwrap();
            let (r, got) = c.get(&path).await.unwrap();
            assert_eq!(got, body, "client {i}");
            assert!(matches!(r, Reply::Get { hash, .. } if hash == blake3(&body)));
            c.call(Request::Quit).await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("client finished in time")
            .unwrap();
    }
    eprintln!("200 clients in {:?}", started.elapsed());
    assert_eq!(std::fs::read_dir(srv.home("alice")).unwrap().count(), 100);
    assert_eq!(std::fs::read_dir(srv.home("bob")).unwrap().count(), 100);
    srv.stop().await;
}

/// The header and the first `sent` bytes of a put of `body` to `path`.
fn put_start(path: &str, body: &[u8], sent: usize) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    ferry_proto::RequestFrame {
        id: 9,
        request: Request::Put {
            path: path.into(),
            size: body.len() as u64,
            hash: Some(blake3(body)),
            offset: 0,
            overwrite: false,
            mtime: None,
        },
        body_len: body.len() as u64,
    }
    .encode(u32::MAX, &mut buf)
    .unwrap();
    buf.extend_from_slice(&body[..sent]);
    buf.to_vec()
}

/// A body must move, not trickle: one byte every 100 ms, each well inside the 400 ms frame
/// timeout, is cut off once a frame timeout passes without 64 KiB (or the rest of the body),
/// both for a small put (read whole by the connection) and a large one (spliced on a thread
/// of its own). A slow body that keeps making that much progress goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_only_trickles_is_cut_off() {
    let srv = TestServer::start_with(|c| {
        c.frame_timeout = Duration::from_millis(400);
        c.idle_timeout = Duration::from_secs(60);
    })
    .await;
    for (path, len) in [("/small", 200_000), ("/large", 1 << 20)] {
        let body = data(2, len);
        let mut c = srv.login("alice").await;
        c.write_raw(&put_start(path, &body, 1024)).await;
        let started = std::time::Instant::now();
        let drip = tokio::spawn(async move {
            for b in &body[1024..1024 + 60] {
                if c.stream.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            c
        });
        let mut c = drip.await.unwrap();
        let (f, _) = c.recv().await;
        assert_eq!(f.result.unwrap_err().code, ErrorCode::Timeout, "{path}");
        c.expect_closed().await;
        // Cut at the frame timeout, not when the drip (6 s) ends.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path}: {:?}",
            started.elapsed()
        );
        assert!(!srv.home("alice").join(&path[1..]).exists());
    }
    // 80 KiB every 300 ms: slow, but each frame timeout brings more than 64 KiB.
    let body = data(3, 1 << 20);
    let mut c = srv.login("alice").await;
    c.write_raw(&put_start("/slow", &body, 1024)).await;
    for piece in body[1024..].chunks(80 * 1024) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.stream.write_all(piece).await.unwrap();
    }
    let (f, _) = c.recv().await;
    assert!(f.result.is_ok(), "{:?}", f.result);
    assert_eq!(std::fs::read(srv.home("alice").join("slow")).unwrap(), body);
    srv.stop().await;
}
