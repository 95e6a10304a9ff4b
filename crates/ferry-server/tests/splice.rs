//! Upload bodies on plain TCP go socket → pipe → partial with `splice(2)` (src/splice.rs):
//! sizes around the pipe and the hash window, bodies pipelined with what follows them in the
//! same write, resumes from unaligned offsets, short, slow and wrong bodies, quotas. Real
//! sockets, real files.

mod common;

use std::time::Duration;

use common::*;
use ferry_proto::{Digest, ErrorCode, HashAlgo, Reply, Request, RequestFrame};

const MTIME: i64 = 1_764_115_200;
const MIB: usize = 1024 * 1024;

/// A put of `data[offset..]`, with `hash` in the header or (`None`) a `put_hash` to follow.
fn put(id: u64, path: &str, data: &[u8], offset: u64, hash: Option<Digest>) -> Vec<u8> {
    request_bytes(
        id,
        Request::Put {
            path: path.into(),
            size: data.len() as u64,
            hash,
            offset,
            overwrite: false,
            mtime: Some(MTIME),
        },
        &data[offset as usize..],
    )
}

async fn expect_put(c: &mut Client, id: u64, path: &str, content: &[u8], hash: &Digest) {
    match reply_to(c, id).await.result {
        Ok(Reply::Put {
            path: p,
            size,
            hash: h,
        }) => {
            assert_eq!(p, path);
            assert_eq!(size, content.len() as u64);
            assert_eq!(&h, hash);
        }
        other => panic!("{path}: {other:?}"),
    }
}

async fn expect_code(c: &mut Client, id: u64, code: ErrorCode) {
    match reply_to(c, id).await.result {
        Err(e) => assert_eq!(e.code, code, "{e}"),
        Ok(r) => panic!("expected {code}, got {r:?}"),
    }
}

async fn expect_pwd(c: &mut Client, id: u64) {
    assert!(matches!(
        reply_to(c, id).await.result,
        Ok(Reply::Pwd { .. })
    ));
}

fn partials(srv: &TestServer, user: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(srv.data_root().partials_dir(user))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

async fn resume_offset(c: &mut Client, path: &str, size: u64) -> u64 {
    match c
        .call(Request::Resume {
            path: path.into(),
            size,
            hash: None,
            mtime: Some(MTIME),
        })
        .await
        .unwrap()
    {
        Reply::Resume { offset, .. } => offset,
        other => panic!("{other:?}"),
    }
}

/// Sizes around the page, the header's read buffer (8 KiB: what arrives with the header is
/// written from memory), the batch limit, the pipe (1 MiB) and the hash window (1 MiB).
const SIZES: &[usize] = &[
    0,
    1,
    4095,
    4097,
    8 * 1024 + 1,
    256 * 1024 + 1,
    MIB - 1,
    MIB,
    MIB + 1,
    2 * MIB + 4093,
    4 * MIB + 5,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_round_trips_with_what_follows_it_in_the_same_write() {
    let srv = TestServer::start().await;
    let mut c = login_hash_after_body(&srv, "alice").await;
    for (i, &len) in SIZES.iter().enumerate() {
        let body = data(i as u64 + 1, len);
        let id = 10 * i as u64 + 10;
        // Hash after the body: put, body, put_hash and the next request in one write, so the
        // body's end, the trailer and the request may share a segment.
        let deferred = format!("/d{len}");
        let mut bytes = put(id, &deferred, &body, 0, None);
        bytes.extend(put_hash_frame(id, blake3(&body)));
        bytes.extend(pwd_frame(id + 1));
        // Hash in the header (sha256: the hash of record, blake3, is computed beside it),
        // then the next request right behind the body.
        let declared = format!("/h{len}");
        let sha = Digest::of(HashAlgo::Sha256, &body);
        bytes.extend(put(id + 2, &declared, &body, 0, Some(sha.clone())));
        bytes.extend(pwd_frame(id + 3));
        c.write_raw(&bytes).await;
        expect_put(&mut c, id, &deferred, &body, &blake3(&body)).await;
        expect_pwd(&mut c, id + 1).await;
        expect_put(&mut c, id + 2, &declared, &body, &sha).await;
        expect_pwd(&mut c, id + 3).await;
        for name in [&deferred, &declared] {
            let got = std::fs::read(srv.home("alice").join(&name[1..])).unwrap();
            assert!(
                got == body,
                "{name}: {} bytes, not the {len} sent",
                got.len()
            );
        }
        let entries = c.ls(&declared).await;
        assert_eq!(entries[0].hash, Some(blake3(&body)), "{declared}");
    }
    assert!(partials(&srv, "alice").is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_body_keeps_exactly_what_arrived_and_resumes_from_an_unaligned_offset() {
    let srv = TestServer::start().await;
    let body = data(7, 5 * MIB + 333);
    let cut = 3 * MIB + 17;
    {
        let mut c = login_hash_after_body(&srv, "alice").await;
        let bytes = put(1, "/r.bin", &body, 0, None);
        let header_len = bytes.len() - body.len();
        c.write_raw(&bytes[..header_len + cut]).await;
        // Closing with the body unfinished.
    }
    let mut c = login_hash_after_body(&srv, "alice").await;
    let mut held = 0;
    for _ in 0..100 {
        held = resume_offset(&mut c, "/r.bin", body.len() as u64).await;
        if held == cut as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held, cut as u64, "the partial holds what arrived, no more");
    assert!(!srv.home("alice").join("r.bin").exists());
    // Resume below what is held, from an offset that is not a page boundary, with a request
    // behind the trailer.
    let from = held - 1001;
    // The first connection's session may still be letting go of the upload when the partial
    // already holds every byte that arrived (it syncs them first): the put is then `busy`, its
    // trailer is dropped unanswered, and it is tried again, as a client does.
    let mut id = 2;
    loop {
        let mut bytes = put(id, "/r.bin", &body, from, None);
        bytes.extend(put_hash_frame(id, blake3(&body)));
        bytes.extend(pwd_frame(id + 1));
        c.write_raw(&bytes).await;
        match reply_to(&mut c, id).await.result {
            Err(e) if e.code == ErrorCode::Busy && id < 200 => {
                expect_pwd(&mut c, id + 1).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                id += 2;
            }
            Ok(Reply::Put { path, size, hash }) => {
                assert_eq!((path.as_str(), size), ("/r.bin", body.len() as u64));
                assert_eq!(hash, blake3(&body));
                expect_pwd(&mut c, id + 1).await;
                break;
            }
            other => panic!("/r.bin: {other:?}"),
        }
    }
    assert!(std::fs::read(srv.home("alice").join("r.bin")).unwrap() == body);
    assert!(partials(&srv, "alice").is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hash_leaves_nothing_and_the_connection_goes_on() {
    let srv = TestServer::start().await;
    let mut c = login_hash_after_body(&srv, "alice").await;
    let body = data(3, 3 * MIB + 9);
    let mut bytes = put(1, "/bad-header", &body, 0, Some(blake3(b"other")));
    bytes.extend(pwd_frame(2));
    bytes.extend(put(3, "/bad-trailer", &body, 0, None));
    bytes.extend(put_hash_frame(3, blake3(b"other")));
    bytes.extend(pwd_frame(4));
    c.write_raw(&bytes).await;
    expect_code(&mut c, 1, ErrorCode::ChecksumMismatch).await;
    expect_pwd(&mut c, 2).await;
    expect_code(&mut c, 3, ErrorCode::ChecksumMismatch).await;
    expect_pwd(&mut c, 4).await;
    assert!(!srv.home("alice").join("bad-header").exists());
    assert!(!srv.home("alice").join("bad-trailer").exists());
    assert!(partials(&srv, "alice").is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_quota_is_refused_and_skipped() {
    let srv = TestServer::start().await;
    add_user(&srv.data_root(), "carol", "carol-pw", 3 * MIB as u64, 10);
    let mut c = login_hash_after_body(&srv, "carol").await;
    let big = data(4, 3 * MIB + 1);
    let fits = data(5, 3 * MIB);
    let mut bytes = put(1, "/big", &big, 0, None);
    bytes.extend(put_hash_frame(1, blake3(&big)));
    bytes.extend(pwd_frame(2));
    bytes.extend(put(3, "/fits", &fits, 0, None));
    bytes.extend(put_hash_frame(3, blake3(&fits)));
    c.write_raw(&bytes).await;
    expect_code(&mut c, 1, ErrorCode::QuotaExceeded).await;
    expect_pwd(&mut c, 2).await;
    expect_put(&mut c, 3, "/fits", &fits, &blake3(&fits)).await;
    assert!(!srv.home("carol").join("big").exists());
    assert!(std::fs::read(srv.home("carol").join("fits")).unwrap() == fits);
    assert!(partials(&srv, "carol").is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_that_keeps_moving_is_not_cut_off() {
    let srv = TestServer::start_with(|c| c.frame_timeout = Duration::from_millis(600)).await;
    let mut c = login_hash_after_body(&srv, "alice").await;
    let body = data(6, 2 * MIB + 7);
    let bytes = put(1, "/slow", &body, 0, None);
    // Six pauses of 400 ms: the body takes far longer than the frame timeout, but no single
    // wait does.
    for piece in bytes.chunks(bytes.len() / 6 + 1) {
        c.write_raw(piece).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    c.write_raw(&put_hash_frame(1, blake3(&body))).await;
    expect_put(&mut c, 1, "/slow", &body, &blake3(&body)).await;
    assert!(std::fs::read(srv.home("alice").join("slow")).unwrap() == body);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_times_out_and_keeps_its_partial() {
    let srv = TestServer::start_with(|c| c.frame_timeout = Duration::from_millis(500)).await;
    let body = data(8, 2 * MIB);
    let sent = MIB + 100;
    let mut c = login_hash_after_body(&srv, "alice").await;
    let bytes = put(1, "/stall", &body, 0, None);
    c.write_raw(&bytes[..bytes.len() - body.len() + sent]).await;
    let (f, _) = c.recv().await;
    assert_eq!((f.id, f.result.unwrap_err().code), (0, ErrorCode::Timeout));
    c.expect_closed().await;
    assert!(!srv.home("alice").join("stall").exists());
    let mut c = login_hash_after_body(&srv, "alice").await;
    assert_eq!(
        resume_offset(&mut c, "/stall", body.len() as u64).await,
        sent as u64
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_shutdown_stops_a_body_that_keeps_coming() {
    use tokio::io::AsyncWriteExt;
    let mut srv = TestServer::start_with(|c| c.grace = Duration::from_millis(300)).await;
    let c = login_hash_after_body(&srv, "alice").await;
    // A body declared far larger than can be sent before the test gives up, sent as fast as
    // the client can: the thread moving it must notice the cut (between rounds, or while
    // waiting for the socket) and close the connection.
    let declared = 64u64 << 30;
    let mut head = bytes::BytesMut::new();
    RequestFrame {
        id: 1,
        request: Request::Put {
            path: "/endless".into(),
            size: declared,
            hash: None,
            offset: 0,
            overwrite: false,
            mtime: Some(MTIME),
        },
        body_len: declared,
    }
    .encode(u32::MAX, &mut head)
    .unwrap();
    let mut stream = c.stream;
    stream.write_all(&head).await.unwrap();
    let sender = tokio::spawn(async move {
        let chunk = vec![7u8; 1 << 20];
        let mut sent = 0u64;
        while stream.write_all(&chunk).await.is_ok() {
            sent += chunk.len() as u64;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.signal_stop();
    let sent = tokio::time::timeout(WAIT, sender)
        .await
        .expect("the server stops reading and closes the connection")
        .unwrap();
    assert!(sent > 0 && sent < declared, "{sent}");
    assert!(!srv.home("alice").join("endless").exists());
    srv.stop().await;
}
