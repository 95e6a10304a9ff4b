//! Hashes of record kept on the files themselves (the `user.ferry.hash` extended attribute):
//! written with the upload, found again by a server with nothing in memory, and never
//! trusted once the file changed or the attribute is not a record.

mod common;

use std::ffi::CString;
use std::path::Path;

use common::*;
use ferry_proto::{Reply, Request};
use ferry_server::hashes::RecordsIn;

const XATTR: &str = "user.ferry.hash";

/// The file's record attribute, if it has one.
fn attr(path: &Path) -> Option<Vec<u8>> {
    let p = CString::new(path.to_str().unwrap()).unwrap();
    let name = CString::new(XATTR).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let n = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 4096) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn set_attr(path: &Path, value: &[u8]) {
    let p = CString::new(path.to_str().unwrap()).unwrap();
    let name = CString::new(XATTR).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn record_files(srv: &TestServer) -> usize {
    std::fs::read_dir(srv.data_root().hashes_dir("alice"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// Whether the test's file system takes user attributes at all (tmpfs before Linux 6.6
/// does not): where it does not, the record-file tests cover the server.
fn xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    let p = CString::new(probe.to_str().unwrap()).unwrap();
    let name = CString::new("user.probe").unwrap();
    // SAFETY: NUL-terminated strings and a one-byte buffer.
    let ok = unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) } == 0;
    std::fs::remove_file(probe).unwrap();
    ok
}

fn hash_of(reply: &Reply) -> ferry_proto::Digest {
    match reply {
        Reply::Get { hash, .. } | Reply::Put { hash, .. } => hash.clone(),
        other => panic!("no hash in {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_carry_their_record_and_a_new_server_finds_it() {
    let srv = TestServer::start().await;
    if !xattrs_supported(&srv.home("alice")) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    let small = data(1, 4096);
    let large = data(2, 3 << 20); // streamed, not batched
    let mut c = srv.login("alice").await;
    c.put("/small", &small).await.unwrap();
    c.put("/large", &large).await.unwrap();
    for (name, body) in [("small", &small), ("large", &large)] {
        let rec = attr(&srv.home("alice").join(name)).expect("the file carries its record");
        let rec: serde_json::Value = serde_json::from_slice(&rec).unwrap();
        assert_eq!(rec["size"], body.len() as u64);
        assert_eq!(rec["digests"]["blake3"], blake3(body).to_string());
    }
    assert_eq!(record_files(&srv), 0, "no record file beside the attribute");
    drop(c);

    // Nothing in memory: ls (no file open) and stat read the attribute.
    let srv = srv.restart_with(|_| {}).await;
    let mut c = srv.login("alice").await;
    let entries = c.ls("/").await;
    for (name, body) in [("small", &small), ("large", &large)] {
        let e = entries.iter().find(|e| e.name == name).unwrap();
        assert_eq!(e.hash, Some(blake3(body)), "ls of /{name}");
        assert_eq!(c.ls(&format!("/{name}")).await[0].hash, Some(blake3(body)));
    }
    let Ok(Reply::Stat(e)) = c
        .call(Request::Stat {
            path: "/large".into(),
            algo: None,
        })
        .await
    else {
        panic!("stat")
    };
    assert_eq!(e.hash, Some(blake3(&large)));
    // A move keeps the record with the file.
    c.call(Request::Mv {
        from: "/small".into(),
        to: "/moved".into(),
        overwrite: false,
    })
    .await
    .unwrap();
    let srv = srv.restart_with(|_| {}).await;
    let mut c = srv.login("alice").await;
    assert_eq!(c.ls("/moved").await[0].hash, Some(blake3(&small)));
    let (r, body) = c.get("/moved").await.unwrap();
    assert_eq!(body, small);
    assert_eq!(hash_of(&r), blake3(&small));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_or_a_bad_attribute_is_hashed_again() {
    let srv = TestServer::start().await;
    let home = srv.home("alice");
    if !xattrs_supported(&home) {
        eprintln!("skipped: no user extended attributes on this file system");
        return;
    }
    let mut c = srv.login("alice").await;
    c.put("/f", &data(3, 5000)).await.unwrap();
    c.put("/g", &data(4, 5000)).await.unwrap();
    drop(c);
    let srv = srv.restart_with(|_| {}).await;

    // Rewritten by other means, same size: its mtime moved, so the record is stale.
    let changed = data(5, 5000);
    std::fs::write(home.join("f"), &changed).unwrap();
    // Not a record at all: garbage, then a record of another size.
    set_attr(&home.join("g"), b"\xff not json");
    let mut c = srv.login("alice").await;
    assert_eq!(
        c.ls("/f").await[0].hash,
        None,
        "a stale record is not shown"
    );
    assert_eq!(c.ls("/g").await[0].hash, None, "garbage is not a record");
    let (r, body) = c.get("/f").await.unwrap();
    assert_eq!((hash_of(&r), body), (blake3(&changed), changed.clone()));
    let (r, _) = c.get("/g").await.unwrap();
    assert_eq!(hash_of(&r), blake3(&data(4, 5000)));
    // Both were hashed afresh and the attributes now say so.
    for (name, body) in [("f", changed), ("g", data(4, 5000))] {
        let rec: serde_json::Value =
            serde_json::from_slice(&attr(&home.join(name)).unwrap()).unwrap();
        assert_eq!(rec["digests"]["blake3"], blake3(&body).to_string());
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_files_leave_the_files_alone() {
    let srv = TestServer::start_with(|c| c.hash_records = RecordsIn::Files).await;
    let home = srv.home("alice");
    let body = data(6, 4096);
    let mut c = srv.login("alice").await;
    c.put("/f", &body).await.unwrap();
    assert_eq!(attr(&home.join("f")), None, "no attribute on the file");
    assert_eq!(record_files(&srv), 1);
    drop(c);
    // An attribute put there by someone else is not read in this mode.
    if xattrs_supported(&home) {
        set_attr(
            &home.join("f"),
            format!(
                r#"{{"size":4096,"mtime":0,"mtime_nsec":0,"digests":{{"blake3":"{}"}}}}"#,
                blake3(b"other")
            )
            .as_bytes(),
        );
    }
    let srv = srv
        .restart_with(|c| c.hash_records = RecordsIn::Files)
        .await;
    let mut c = srv.login("alice").await;
    assert_eq!(c.ls("/f").await[0].hash, Some(blake3(&body)));
    let (r, _) = c.get("/f").await.unwrap();
    assert_eq!(hash_of(&r), blake3(&body));
    srv.stop().await;
}
