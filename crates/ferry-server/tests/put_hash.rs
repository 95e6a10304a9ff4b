//! `hash-after-body`: a `put` without hash, its `put_hash` trailer, every wrong sequence around
//! it, and resume keyed by mtime. Real sockets, real files.

mod common;

use std::time::Duration;

use common::*;
use ferry_proto::{Digest, ErrorCode, HashAlgo, Reply, Request};

const MTIME: i64 = 1_764_115_200;

/// A put without hash of `data[offset..]`, as frame bytes.
fn put_deferred(id: u64, path: &str, data: &[u8], offset: u64, overwrite: bool) -> Vec<u8> {
    request_bytes(
        id,
        Request::Put {
            path: path.into(),
            size: data.len() as u64,
            hash: None,
            offset,
            overwrite,
            mtime: Some(MTIME),
        },
        &data[offset as usize..],
    )
}

async fn expect_code(c: &mut Client, id: u64, code: ErrorCode) -> String {
    match reply_to(c, id).await.result {
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            e.message
        }
        Ok(r) => panic!("expected {code}, got {r:?}"),
    }
}

async fn expect_pwd(c: &mut Client, id: u64) {
    assert!(matches!(
        reply_to(c, id).await.result,
        Ok(Reply::Pwd { .. })
    ));
}

fn partials(srv: &TestServer) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(srv.data_root().partials_dir("alice"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

fn home_file(srv: &TestServer, name: &str) -> std::path::PathBuf {
    srv.home("alice").join(name)
}

async fn resume_offset(c: &mut Client, path: &str, size: u64, mtime: i64) -> u64 {
    match c
        .call(Request::Resume {
            path: path.into(),
            size,
            hash: None,
            mtime: Some(mtime),
        })
        .await
        .unwrap()
    {
        Reply::Resume { offset, .. } => offset,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_put_round_trips_pipelined() {
    let srv = TestServer::start().await;
    let mut c = login_hash_after_body(&srv, "alice").await;
    // A large body (hashed on the server's split path), a small one, and a request after
    // them, all sent before reading a reply.
    let big = data(1, 5 * 1024 * 1024 + 17);
    let small = data(2, 1000);
    let mut bytes = put_deferred(10, "/big.bin", &big, 0, false);
    bytes.extend(put_hash_frame(10, blake3(&big)));
    bytes.extend(put_deferred(11, "/small.bin", &small, 0, false));
    bytes.extend(put_hash_frame(11, blake3(&small)));
    bytes.extend(pwd_frame(12));
    c.write_raw(&bytes).await;
    for (id, name, content) in [(10, "big.bin", &big), (11, "small.bin", &small)] {
        match reply_to(&mut c, id).await.result {
            Ok(Reply::Put { path, size, hash }) => {
                assert_eq!(path, format!("/{name}"));
                assert_eq!(size, content.len() as u64);
                assert_eq!(hash, blake3(content));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(&std::fs::read(home_file(&srv, name)).unwrap(), content);
    }
    expect_pwd(&mut c, 12).await;
    // The hash of record is the one the trailer declared, and the mtime the header's.
    let entries = c.ls("/big.bin").await;
    assert_eq!(entries[0].hash, Some(blake3(&big)));
    assert_eq!(entries[0].mtime, MTIME);
    assert!(partials(&srv).is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_put_with_a_wrong_hash_leaves_nothing() {
    let srv = TestServer::start().await;
    let mut c = login_hash_after_body(&srv, "alice").await;
    let body = data(3, 300_000);
    let mut bytes = put_deferred(5, "/f.bin", &body, 0, false);
    bytes.extend(put_hash_frame(5, blake3(b"something else")));
    bytes.extend(pwd_frame(6));
    c.write_raw(&bytes).await;
    expect_code(&mut c, 5, ErrorCode::ChecksumMismatch).await;
    expect_pwd(&mut c, 6).await;
    assert!(!home_file(&srv, "f.bin").exists());
    assert!(partials(&srv).is_empty());

    // A digest in another algorithm cannot be checked against the blake3 the server computed.
    let mut bytes = put_deferred(7, "/f.bin", &body, 0, false);
    bytes.extend(put_hash_frame(7, Digest::of(HashAlgo::Sha256, &body)));
    bytes.extend(pwd_frame(8));
    c.write_raw(&bytes).await;
    let msg = expect_code(&mut c, 7, ErrorCode::BadRequest).await;
    assert!(msg.contains("blake3"), "{msg}");
    expect_pwd(&mut c, 8).await;
    assert!(!home_file(&srv, "f.bin").exists());
    assert!(partials(&srv).is_empty());
    srv.stop().await;
}

/// Whatever comes where the put_hash is due fails the put, leaves nothing, and is then
/// handled as itself; the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_frames_after_the_body_fail_the_put_and_are_handled_as_themselves() {
    let srv = TestServer::start().await;
    let mut c = login_hash_after_body(&srv, "alice").await;
    let body = data(4, 70_000);

    // Another request instead of the put_hash.
    let mut bytes = put_deferred(1, "/a.bin", &body, 0, false);
    bytes.extend(pwd_frame(2));
    c.write_raw(&bytes).await;
    let msg = expect_code(&mut c, 1, ErrorCode::BadRequest).await;
    assert!(msg.contains("pwd"), "{msg}");
    expect_pwd(&mut c, 2).await;

    // A put_hash for another id: the put fails, the stray put_hash gets its own error.
    let mut bytes = put_deferred(3, "/a.bin", &body, 0, false);
    bytes.extend(put_hash_frame(99, blake3(&body)));
    bytes.extend(pwd_frame(4));
    c.write_raw(&bytes).await;
    expect_code(&mut c, 3, ErrorCode::BadRequest).await;
    expect_code(&mut c, 99, ErrorCode::BadRequest).await;
    expect_pwd(&mut c, 4).await;

    // A put_hash with a body: not a valid trailer; its body is skipped, not taken for a frame.
    let mut bytes = put_deferred(5, "/a.bin", &body, 0, false);
    bytes.extend(request_bytes(
        6,
        Request::PutHash {
            hash: blake3(&body),
        },
        &pwd_frame(1000),
    ));
    bytes.extend(pwd_frame(7));
    c.write_raw(&bytes).await;
    expect_code(&mut c, 5, ErrorCode::BadRequest).await;
    expect_code(&mut c, 6, ErrorCode::BadRequest).await;
    expect_pwd(&mut c, 7).await;

    // Another put (with its body) where the trailer was due: the first fails, the second is
    // handled whole.
    let mut bytes = put_deferred(8, "/a.bin", &body, 0, false);
    bytes.extend(request_bytes(
        9,
        Request::Put {
            path: "/b.bin".into(),
            size: body.len() as u64,
            hash: Some(blake3(&body)),
            offset: 0,
            overwrite: false,
            mtime: None,
        },
        &body,
    ));
    c.write_raw(&bytes).await;
    expect_code(&mut c, 8, ErrorCode::BadRequest).await;
    assert!(reply_to(&mut c, 9).await.result.is_ok());
    assert_eq!(std::fs::read(home_file(&srv, "b.bin")).unwrap(), body);

    // Two put_hash frames: the first completes the put, the second is a stray.
    let mut bytes = put_deferred(10, "/c.bin", &body, 0, false);
    bytes.extend(put_hash_frame(10, blake3(&body)));
    bytes.extend(put_hash_frame(10, blake3(&body)));
    bytes.extend(pwd_frame(11));
    c.write_raw(&bytes).await;
    assert!(reply_to(&mut c, 10).await.result.is_ok());
    expect_code(&mut c, 10, ErrorCode::BadRequest).await;
    expect_pwd(&mut c, 11).await;

    // A put_hash out of nowhere.
    c.write_raw(&put_hash_frame(12, blake3(&body))).await;
    let msg = expect_code(&mut c, 12, ErrorCode::BadRequest).await;
    assert!(msg.contains("put_hash"), "{msg}");

    assert!(!home_file(&srv, "a.bin").exists());
    assert_eq!(std::fs::read(home_file(&srv, "c.bin")).unwrap(), body);
    assert!(partials(&srv).is_empty());
    srv.stop().await;
}

/// A put without hash refused before its body is read (here: the target exists, the header
/// is rejected, the session is not logged in) is answered at once; its put_hash is read and
/// dropped, so every later reply still matches its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_hash_of_a_refused_put_is_dropped_unanswered() {
    let srv = TestServer::start().await;
    let mut c = login_hash_after_body(&srv, "alice").await;
    let body = data(5, 2 * 1024 * 1024);
    c.put("/exists.bin", b"old").await.unwrap();

    let mut bytes = put_deferred(1, "/exists.bin", &body, 0, false);
    bytes.extend(put_hash_frame(1, blake3(&body)));
    bytes.extend(pwd_frame(2));
    // A header whose body_len disagrees with size: rejected, its body skipped.
    bytes.extend(request_bytes(
        3,
        Request::Put {
            path: "/x.bin".into(),
            size: 10,
            hash: None,
            offset: 0,
            overwrite: false,
            mtime: None,
        },
        b"12345",
    ));
    bytes.extend(put_hash_frame(3, blake3(b"whatever")));
    bytes.extend(pwd_frame(4));
    c.write_raw(&bytes).await;
    expect_code(&mut c, 1, ErrorCode::AlreadyExists).await;
    expect_pwd(&mut c, 2).await;
    expect_code(&mut c, 3, ErrorCode::BadRequest).await;
    expect_pwd(&mut c, 4).await;
    assert_eq!(
        std::fs::read(home_file(&srv, "exists.bin")).unwrap(),
        b"old"
    );
    assert!(partials(&srv).is_empty());

    // Before login: auth_required once, not twice.
    let mut anon = srv.client().await;
    anon.hello().await;
    let mut bytes = put_deferred(1, "/y.bin", b"abc", 0, false);
    bytes.extend(put_hash_frame(1, blake3(b"abc")));
    bytes.extend(request_bytes(2, Request::Quit, &[]));
    anon.write_raw(&bytes).await;
    expect_code(&mut anon, 1, ErrorCode::AuthRequired).await;
    assert!(matches!(
        reply_to(&mut anon, 2).await.result,
        Ok(Reply::Quit)
    ));
    srv.stop().await;
}

/// The connection ends after the body, before the put_hash: the bytes are kept, and a resume
/// from offset = size only has to send the trailer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_without_its_put_hash_is_kept_for_resume() {
    let srv = TestServer::start().await;
    let body = data(6, 1024 * 1024 + 9);
    let size = body.len() as u64;
    {
        let mut c = login_hash_after_body(&srv, "alice").await;
        c.write_raw(&put_deferred(1, "/k.bin", &body, 0, false))
            .await;
        // No reply can come before the trailer.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = login_hash_after_body(&srv, "alice").await;
    let mut held = 0;
    for _ in 0..50 {
        held = resume_offset(&mut c, "/k.bin", size, MTIME).await;
        if held == size {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held, size);
    assert!(!home_file(&srv, "k.bin").exists());
    // Another mtime is another upload.
    assert_eq!(resume_offset(&mut c, "/k.bin", size, MTIME + 1).await, 0);
    let put = unless_busy(async |n| {
        let id = 20 + 1000 * n;
        let mut bytes = put_deferred(id, "/k.bin", &body, size, false);
        bytes.extend(put_hash_frame(id, blake3(&body)));
        c.write_raw(&bytes).await;
        reply_to(&mut c, id).await.result
    })
    .await;
    assert!(put.is_ok(), "{put:?}");
    assert_eq!(std::fs::read(home_file(&srv, "k.bin")).unwrap(), body);
    assert!(partials(&srv).is_empty());
    srv.stop().await;
}

/// Resume without a hash trusts size and mtime only; a prefix of another version of the file
/// is caught by the whole-file check, which discards the partial, and a fresh upload works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_without_hash_then_a_mismatch_discards_the_partial() {
    let srv = TestServer::start().await;
    let old = data(7, 3 * 1024 * 1024);
    let mut new = old.clone();
    new[1000] ^= 0x55; // same size, same mtime, other content
    let size = old.len() as u64;
    let cut = 1024 * 1024 + 3;
    {
        let mut c = login_hash_after_body(&srv, "alice").await;
        let whole = put_deferred(1, "/v.bin", &old, 0, false);
        let header_len = whole.len() - old.len();
        c.write_raw(&whole[..header_len + cut]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = login_hash_after_body(&srv, "alice").await;
    let mut held = 0;
    for _ in 0..50 {
        held = resume_offset(&mut c, "/v.bin", size, MTIME).await;
        if held == cut as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held, cut as u64);
    let put = unless_busy(async |n| {
        let id = 2 + 1000 * n;
        let mut bytes = put_deferred(id, "/v.bin", &new, held, false);
        bytes.extend(put_hash_frame(id, blake3(&new)));
        c.write_raw(&bytes).await;
        reply_to(&mut c, id).await.result
    })
    .await;
    assert_eq!(put.unwrap_err().code, ErrorCode::ChecksumMismatch);
    assert!(!home_file(&srv, "v.bin").exists());
    assert!(partials(&srv).is_empty());
    assert_eq!(resume_offset(&mut c, "/v.bin", size, MTIME).await, 0);
    // From the start, it goes through.
    let mut bytes = put_deferred(3, "/v.bin", &new, 0, false);
    bytes.extend(put_hash_frame(3, blake3(&new)));
    c.write_raw(&bytes).await;
    assert!(reply_to(&mut c, 3).await.result.is_ok());
    assert_eq!(std::fs::read(home_file(&srv, "v.bin")).unwrap(), new);
    srv.stop().await;
}
