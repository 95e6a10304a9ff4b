//! Uploads and downloads: verification, atomicity, quota, resume, hash of record.

mod common;

use std::time::Duration;

use common::*;
use ferry_proto::{Digest, ErrorCode, HashAlgo, Reply, Request};
use ferry_server::DataRoot;
use ferry_server::hashes::RecordsIn;

fn put_req(path: &str, data: &[u8], offset: u64) -> Request {
    Request::Put {
        path: path.into(),
        size: data.len() as u64,
        hash: Some(blake3(data)),
        offset,
        overwrite: false,
        mtime: None,
    }
}

fn partials(srv: &TestServer, user: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(srv.data_root().partials_dir(user))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_roundtrip_and_errors() {
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    let big = data(1, 5 * 1024 * 1024 + 17); // over SPLIT_HASH_AT: hashed on its own thread
    match c.put("/big.bin", &big).await.unwrap() {
        Reply::Put { path, size, hash } => {
            assert_eq!(path, "/big.bin");
            assert_eq!(size, big.len() as u64);
            assert_eq!(hash, blake3(&big));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read(srv.home("alice").join("big.bin")).unwrap(),
        big
    );
    let (reply, body) = c.get("/big.bin").await.unwrap();
    assert_eq!(body, big);
    assert!(matches!(reply, Reply::Get { hash, offset: 0, .. } if hash == blake3(&big)));
    // get with offset: the tail, hash still of the whole file.
    let (r, body) = c
        .call_body(
            Request::Get {
                path: "big.bin".into(),
                offset: 1000,
                algo: None,
            },
            &[],
        )
        .await;
    assert!(matches!(r.unwrap(), Reply::Get { offset: 1000, .. }));
    assert_eq!(body, &big[1000..]);
    let (r, body) = c
        .call_body(
            Request::Get {
                path: "big.bin".into(),
                offset: big.len() as u64,
                algo: None,
            },
            &[],
        )
        .await;
    assert!(r.is_ok() && body.is_empty());
    // get in other algorithms.
    for algo in [HashAlgo::Md5, HashAlgo::Sha256] {
        let (r, body) = c
            .call_body(
                Request::Get {
                    path: "big.bin".into(),
                    offset: 0,
                    algo: Some(algo),
                },
                &[],
            )
            .await;
        assert!(matches!(r.unwrap(), Reply::Get { hash, .. } if hash == Digest::of(algo, &big)));
        assert_eq!(body.len(), big.len());
    }
    // Errors.
    c.expect_err(
        Request::Get {
            path: "big.bin".into(),
            offset: big.len() as u64 + 1,
            algo: None,
        },
        ErrorCode::BadRequest,
    )
    .await;
    c.expect_err(
        Request::Get {
            path: "nope".into(),
            offset: 0,
            algo: None,
        },
        ErrorCode::NotFound,
    )
    .await;
    c.mkdir("/d").await;
    c.expect_err(
        Request::Get {
            path: "/d".into(),
            offset: 0,
            algo: None,
        },
        ErrorCode::IsADirectory,
    )
    .await;
    c.expect_err(
        Request::Get {
            path: "/".into(),
            offset: 0,
            algo: None,
        },
        ErrorCode::IsADirectory,
    )
    .await;
    assert_eq!(
        c.put("/big.bin", b"x").await.unwrap_err().code,
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        c.put("/d", b"x").await.unwrap_err().code,
        ErrorCode::IsADirectory
    );
    assert_eq!(
        c.put("/", b"x").await.unwrap_err().code,
        ErrorCode::IsADirectory
    );
    assert_eq!(
        c.put("/nodir/x", b"x").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        c.put("/big.bin/x", b"x").await.unwrap_err().code,
        ErrorCode::NotADirectory
    );
    assert_eq!(
        c.put("/../x", b"x").await.unwrap_err().code,
        ErrorCode::InvalidPath
    );
    // resume offset past what is held.
    let (r, _) = c.call_body(put_req("/r", b"abcdef", 3), b"def").await;
    assert_eq!(r.unwrap_err().code, ErrorCode::BadRequest);
    // overwrite replaces atomically; empty files work.
    c.put_opts("/big.bin", b"small now", true).await.unwrap();
    assert_eq!(c.get("/big.bin").await.unwrap().1, b"small now");
    c.put("/empty", b"").await.unwrap();
    let (r, body) = c.get("/empty").await.unwrap();
    assert!(body.is_empty() && matches!(r, Reply::Get { size: 0, .. }));
    // The session goes on after all of that.
    assert!(c.call(Request::Pwd).await.is_ok());
    assert!(partials(&srv, "alice").is_empty(), "no partial left behind");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch_leaves_nothing() {
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    let body = data(2, 5_000_000);
    let mut wrong = put_req("/bad.bin", &body, 0);
    if let Request::Put { hash, .. } = &mut wrong {
        *hash = Some(blake3(b"something else"));
    }
    let (r, _) = c.call_body(wrong, &body).await;
    assert_eq!(r.unwrap_err().code, ErrorCode::ChecksumMismatch);
    // md5-declared uploads are verified in md5.
    let mut md5_wrong = put_req("/bad2.bin", &body, 0);
    if let Request::Put { hash, .. } = &mut md5_wrong {
        *hash = Some(Digest::of(HashAlgo::Md5, b"other"));
    }
    assert_eq!(
        c.call_body(md5_wrong, &body).await.0.unwrap_err().code,
        ErrorCode::ChecksumMismatch
    );
    assert!(!srv.home("alice").join("bad.bin").exists());
    assert!(!srv.home("alice").join("bad2.bin").exists());
    assert!(partials(&srv, "alice").is_empty());
    // A correct md5-declared upload: stored, and its blake3 hash of record known too.
    let mut md5_ok = put_req("/ok.bin", &body, 0);
    if let Request::Put { hash, .. } = &mut md5_ok {
        *hash = Some(Digest::of(HashAlgo::Md5, &body));
    }
    c.call_body(md5_ok, &body).await.0.unwrap();
    assert_eq!(c.ls("/ok.bin").await[0].hash, Some(blake3(&body)));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_bytes_and_files() {
    let srv = TestServer::start().await;
    let root = srv.data_root();
    add_user(&root, "carol", "carol-pw", 10_000, 3);
    let mut c = srv.login("carol").await;
    c.put("/a", &data(1, 6000)).await.unwrap();
    let e = c.put("/b", &data(2, 5000)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(!srv.home("carol").join("b").exists());
    c.put("/b", &data(2, 4000)).await.unwrap();
    c.put("/c", b"1").await.unwrap_err(); // 10001 bytes > 10000
    c.put("/c", b"").await.unwrap();
    assert_eq!(
        c.put("/d", b"").await.unwrap_err().code,
        ErrorCode::QuotaExceeded
    ); // 4th file
    // Freeing space makes room again; overwrite of a file needs no new file slot.
    c.call(Request::Rm {
        path: "/a".into(),
        recursive: false,
    })
    .await
    .unwrap();
    c.put("/d", &data(3, 5000)).await.unwrap();
    c.put_opts("/d", &data(4, 100), true).await.unwrap();
    c.put("/e", &data(5, 5000)).await.unwrap_err(); // 3 files already
    assert!(partials(&srv, "carol").is_empty());
    // Quota changes in the users file apply without restart.
    let mut f = ferry_server::users::load(&root).unwrap();
    f.users
        .iter_mut()
        .find(|u| u.name == "carol")
        .unwrap()
        .max_files = 10;
    root.write_atomic(&root.users_file(), &serde_json::to_vec(&f).unwrap())
        .unwrap();
    c.put("/e", &data(5, 4000)).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_cannot_overshoot_quota() {
    let srv = TestServer::start().await;
    add_user(&srv.data_root(), "dave", "dave-pw", 100_000, 1000);
    let mut tasks = Vec::new();
    for i in 0..10u64 {
        let mut c = srv.login("dave").await;
        tasks.push(tokio::spawn(async move {
            c.put(&format!("/f{i}"), &data(i, 30_000)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(
                matches!(e.code, ErrorCode::QuotaExceeded | ErrorCode::Busy),
                "{e}"
            ),
        }
    }
    assert_eq!(ok, 3, "exactly three 30 kB files fit in 100 kB");
    let total: u64 = std::fs::read_dir(srv.home("dave"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(total, 90_000);
    assert!(partials(&srv, "dave").is_empty());
    // File-count quota under concurrency.
    add_user(&srv.data_root(), "erin", "erin-pw", u64::MAX, 2);
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let mut c = srv.login("erin").await;
        tasks.push(tokio::spawn(async move {
            c.put(&format!("/g{i}"), &data(i, 100)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(std::fs::read_dir(srv.home("erin")).unwrap().count(), 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_resumes_byte_identical() {
    let srv = TestServer::start().await;
    let body = data(9, 2 * 1024 * 1024 + 333);
    let cut = 1024 * 1024 + 5;
    {
        let mut c = srv.login("alice").await;
        // Send the header and only part of the body, then drop the connection.
        let mut buf = bytes::BytesMut::new();
        ferry_proto::RequestFrame {
            id: 1,
            request: put_req("/r.bin", &body, 0),
            body_len: body.len() as u64,
        }
        .encode(u32::MAX, &mut buf)
        .unwrap();
        buf.extend_from_slice(&body[..cut]);
        c.write_raw(&buf).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut c = srv.login("alice").await;
    // Wait until the server has noticed and kept what arrived.
    let mut held = 0;
    for _ in 0..50 {
        match c
            .call(Request::Resume {
                path: "/r.bin".into(),
                size: body.len() as u64,
                hash: Some(blake3(&body)),
                mtime: None,
            })
            .await
            .unwrap()
        {
            Reply::Resume { offset, path } => {
                assert_eq!(path, "/r.bin");
                held = offset;
            }
            other => panic!("{other:?}"),
        }
        if held == cut as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held, cut as u64);
    assert!(
        !srv.home("alice").join("r.bin").exists(),
        "no half file under the real name"
    );
    // Another identity (different hash) holds nothing.
    match c
        .call(Request::Resume {
            path: "/r.bin".into(),
            size: body.len() as u64,
            hash: Some(blake3(b"x")),
            mtime: None,
        })
        .await
        .unwrap()
    {
        Reply::Resume { offset, .. } => assert_eq!(offset, 0),
        other => panic!("{other:?}"),
    }
    // Continue from an offset below what is held.
    let from = held - 1000;
    unless_busy(async |_| {
        let req = put_req("/r.bin", &body, from);
        c.call_body(req, &body[from as usize..]).await.0
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(srv.home("alice").join("r.bin")).unwrap(),
        body
    );
    assert!(partials(&srv, "alice").is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_upload_with_a_bad_prefix_is_refused() {
    let srv = TestServer::start().await;
    let body = data(10, 100_000);
    let pname = {
        let v = ferry_server::home::VPath::root().resolve("/x.bin").unwrap();
        ferry_server::session::partial_name(
            "alice",
            &v,
            body.len() as u64,
            ferry_server::session::UploadKey::Hash(&blake3(&body)),
        )
    };
    let mut c = srv.login("alice").await;
    // A corrupted partial on disk: the whole-file check catches it.
    let mut bad = body[..50_000].to_vec();
    bad[10] ^= 0xff;
    std::fs::write(srv.data_root().partials_dir("alice").join(&pname), &bad).unwrap();
    let (r, _) = c
        .call_body(put_req("/x.bin", &body, 50_000), &body[50_000..])
        .await;
    assert_eq!(r.unwrap_err().code, ErrorCode::ChecksumMismatch);
    assert!(!srv.home("alice").join("x.bin").exists());
    assert!(partials(&srv, "alice").is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_path_concurrently_is_busy_never_interleaved() {
    let srv = TestServer::start().await;
    let a = data(11, 4 * 1024 * 1024);
    let b = data(12, 4 * 1024 * 1024);
    let mut c1 = srv.login("alice").await;
    let mut c2 = srv.login("alice").await;
    // c1 starts its upload and stalls half-way.
    let mut buf = bytes::BytesMut::new();
    ferry_proto::RequestFrame {
        id: 1,
        request: put_req("/same", &a, 0),
        body_len: a.len() as u64,
    }
    .encode(u32::MAX, &mut buf)
    .unwrap();
    buf.extend_from_slice(&a[..1024 * 1024]);
    c1.write_raw(&buf).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = c2.put("/same", &b).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Busy);
    c1.write_raw(&a[1024 * 1024..]).await;
    let (f, _) = c1.recv().await;
    f.result.unwrap();
    assert_eq!(std::fs::read(srv.home("alice").join("same")).unwrap(), a);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_placed_by_other_means_are_hashed_and_cached() {
    let srv = TestServer::start().await;
    std::fs::write(srv.home("alice").join("outside.txt"), b"placed by hand").unwrap();
    let mut c = srv.login("alice").await;
    assert_eq!(c.ls("/outside.txt").await[0].hash, None, "ls never hashes");
    let (r, body) = c.get("/outside.txt").await.unwrap();
    assert_eq!(body, b"placed by hand");
    assert!(matches!(r, Reply::Get { hash, .. } if hash == blake3(b"placed by hand")));
    assert_eq!(
        c.ls("/outside.txt").await[0].hash,
        Some(blake3(b"placed by hand"))
    );
    // Changed by other means (size changes): re-hashed.
    std::fs::write(srv.home("alice").join("outside.txt"), b"changed by hand!").unwrap();
    let (r, _) = c.get("/outside.txt").await.unwrap();
    assert!(matches!(r, Reply::Get { hash, .. } if hash == blake3(b"changed by hand!")));
    // A FIFO cannot hang the server.
    let fifo = srv.home("alice").join("fifo");
    let cpath = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
    c.expect_err(
        Request::Get {
            path: "/fifo".into(),
            offset: 0,
            algo: None,
        },
        ErrorCode::PermissionDenied,
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_partials_are_swept_and_release_quota() {
    let srv = TestServer::start_with(|c| {
        c.partial_max_age = Duration::from_millis(500);
        c.sweep_interval = Duration::from_millis(200);
    })
    .await;
    add_user(&srv.data_root(), "fred", "fred-pw", 1_000_000, 100);
    let body = data(13, 800_000);
    {
        let mut c = srv.login("fred").await;
        let mut buf = bytes::BytesMut::new();
        ferry_proto::RequestFrame {
            id: 1,
            request: put_req("/p", &body, 0),
            body_len: body.len() as u64,
        }
        .encode(u32::MAX, &mut buf)
        .unwrap();
        buf.extend_from_slice(&body[..700_000]);
        c.write_raw(&buf).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // While the partial is held it counts: 700 kB + 800 kB > 1 MB.
    let mut c = srv.login("fred").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = data(14, 800_000);
    assert_eq!(
        c.put("/q", &other).await.unwrap_err().code,
        ErrorCode::QuotaExceeded
    );
    // After it is swept, the quota is free again.
    let mut done = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if partials(&srv, "fred").is_empty() {
            done = true;
            break;
        }
    }
    assert!(done, "partial swept");
    c.put("/q", &other).await.unwrap();
    let _ = DataRoot::new(&srv.root);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_measured_again_after_the_user_was_away() {
    let srv = TestServer::start_with(|c| c.remeasure_after = Duration::ZERO).await;
    add_user(&srv.data_root(), "gina", "gina-pw", 10_000, 100);
    {
        let mut c = srv.login("gina").await;
        c.put("/a", &data(1, 6000)).await.unwrap();
        c.call(Request::Quit).await.unwrap();
        c.expect_closed().await;
    }
    // Placed by hand while no session was open: counted at the next login.
    std::fs::write(srv.home("gina").join("by-hand"), data(2, 3000)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = srv.login("gina").await;
    assert_eq!(
        c.put("/b", &data(3, 2000)).await.unwrap_err().code,
        ErrorCode::QuotaExceeded
    );
    c.put("/b", &data(3, 1000)).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_measurement_is_reused_by_the_next_login() {
    // Within `remeasure_after` of measuring, a new login reuses the measurement instead of
    // walking the home again: a file placed by hand in between is not counted yet.
    let srv = TestServer::start_with(|c| c.remeasure_after = Duration::from_secs(3600)).await;
    add_user(&srv.data_root(), "hugo", "hugo-pw", 10_000, 100);
    {
        let mut c = srv.login("hugo").await;
        c.put("/a", &data(1, 6000)).await.unwrap();
        c.call(Request::Quit).await.unwrap();
        c.expect_closed().await;
    }
    std::fs::write(srv.home("hugo").join("by-hand"), data(2, 3000)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = srv.login("hugo").await;
    c.put("/b", &data(3, 3500)).await.unwrap();
    assert_eq!(
        c.put("/c", &data(4, 600)).await.unwrap_err().code,
        ErrorCode::QuotaExceeded
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_records_go_with_their_files() {
    // Record files (tests/hash_records.rs has the attribute form, which goes with its file
    // by itself).
    let srv = TestServer::start_with(|c| c.hash_records = RecordsIn::Files).await;
    let records = || {
        std::fs::read_dir(srv.data_root().hashes_dir("alice"))
            .unwrap()
            .count()
    };
    let mut c = srv.login("alice").await;
    c.mkdir("/d").await;
    c.put("/d/a", b"a").await.unwrap();
    c.put("/d/b", b"b").await.unwrap();
    c.put("/c", b"c").await.unwrap();
    assert_eq!(records(), 3);
    c.put_opts("/c", b"c2", true).await.unwrap(); // the replaced file's record goes
    assert_eq!(records(), 3);
    c.call(Request::Rm {
        path: "/c".into(),
        recursive: false,
    })
    .await
    .unwrap();
    assert_eq!(records(), 2);
    c.call(Request::Rm {
        path: "/d".into(),
        recursive: true,
    })
    .await
    .unwrap();
    assert_eq!(records(), 0);
    srv.stop().await;
}
