//! Runs of pipelined gets and small puts (ops/batch.rs): one trip to the blocking pool per
//! run, but every request still answered on its own, in order, with its own outcome.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use ferry_proto::{Digest, ErrorCode, HashAlgo, Reply, Request, RequestFrame};

fn put(path: &str, body: &[u8], hash: Digest, offset: u64) -> Request {
    Request::Put {
        path: path.into(),
        size: body.len() as u64 + offset,
        hash: Some(hash),
        offset,
        overwrite: false,
        mtime: Some(1_700_000_000),
    }
}

fn get(path: &str) -> Request {
    Request::Get {
        path: path.into(),
        offset: 0,
        algo: None,
    }
}

/// Frames (with bodies) for one write, so the server finds them all buffered at once.
#[derive(Default)]
struct Burst {
    buf: BytesMut,
    next_id: u64,
}

impl Burst {
    fn add(&mut self, request: Request, body: &[u8]) -> u64 {
        self.next_id += 1;
        self.add_as(self.next_id, request, body)
    }

    fn add_as(&mut self, id: u64, request: Request, body: &[u8]) -> u64 {
        RequestFrame {
            id,
            request,
            body_len: body.len() as u64,
        }
        .encode(u32::MAX, &mut self.buf)
        .unwrap();
        self.buf.extend_from_slice(body);
        id
    }
}

fn partials(srv: &TestServer) -> usize {
    std::fs::read_dir(srv.data_root().partials_dir("alice"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_run_with_failures_answers_each_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    c.mkdir("/b").await;
    c.put("/b/exists", b"old").await.unwrap();
    let large = data(9, 3 << 20); // past the inline limit: sent with sendfile mid-run
    c.put("/b/large", &large).await.unwrap();
    // The test client's ids continue after the ones it used.
    let mut burst = Burst {
        next_id: 100,
        ..Default::default()
    };
    let ok1 = data(1, 4096);
    let big = data(2, 200 * 1024);
    let ok2 = data(3, 777);
    let bad = data(4, 1000);
    let mut expect: Vec<(u64, Result<&[u8], ErrorCode>)> = Vec::new();
    let mut push = |id, r| expect.push((id, r));
    push(
        burst.add(put("/b/ok1", &ok1, blake3(&ok1), 0), &ok1),
        Ok(&[][..]),
    );
    push(
        burst.add(put("/b/bad", &bad, blake3(b"other bytes"), 0), &bad),
        Err(ErrorCode::ChecksumMismatch),
    );
    push(
        burst.add(put("/b/exists", b"new", blake3(b"new"), 0), b"new"),
        Err(ErrorCode::AlreadyExists),
    );
    push(burst.add(get("/b/missing"), &[]), Err(ErrorCode::NotFound));
    push(
        burst.add(put("/nodir/x", b"x", blake3(b"x"), 0), b"x"),
        Err(ErrorCode::NotFound),
    );
    push(burst.add(get("/b/ok1"), &[]), Ok(&ok1[..])); // written earlier in the same run
    push(
        burst.add(put("/b/big", &big, blake3(&big), 0), &big),
        Ok(&[][..]),
    );
    push(burst.add(get("/b/large"), &[]), Ok(&large[..]));
    push(burst.add(get("/b/big"), &[]), Ok(&big[..]));
    let md5 = Digest::of(HashAlgo::Md5, &ok2);
    push(burst.add(put("/b/ok2", &ok2, md5, 0), &ok2), Ok(&[][..]));
    push(
        burst.add(get("/../../etc/passwd"), &[]),
        Err(ErrorCode::InvalidPath),
    );
    push(burst.add(get("/b"), &[]), Err(ErrorCode::IsADirectory));
    let ls_id = burst.add(
        Request::Ls {
            path: Some("/b".into()),
            after: None,
            limit: None,
        },
        &[],
    ); // ends the run
    push(burst.add(get("/b/ok2"), &[]), Ok(&ok2[..]));
    // A resumed put (offset > 0) is not batched; with nothing held it is refused.
    push(
        burst.add(put("/b/r", b"tail", blake3(b"whole"), 1), b"tail"),
        Err(ErrorCode::BadRequest),
    );
    push(burst.add(get("/b/ok1"), &[]), Ok(&ok1[..]));
    c.write_raw(&burst.buf).await;

    let mut ls_seen = false;
    let mut it = expect.into_iter().peekable();
    while let Some((id, want)) = it.next() {
        if !ls_seen && id > ls_id {
            let (f, _) = c.recv().await;
            assert_eq!(f.id, ls_id);
            let Ok(Reply::Ls { entries, .. }) = f.result else {
                panic!("ls: {:?}", f.result)
            };
            let mut names: Vec<_> = entries.into_iter().map(|e| e.name).collect();
            names.sort();
            assert_eq!(names, ["big", "exists", "large", "ok1", "ok2"]);
            ls_seen = true;
        }
        let (f, body) = c.recv().await;
        assert_eq!(f.id, id, "replies come in request order");
        match (want, f.result) {
            (Ok(bytes), Ok(Reply::Get { size, .. })) => {
                assert_eq!(size, bytes.len() as u64, "id {id}");
                assert!(body == bytes, "id {id}: body differs");
            }
            (Ok(_), Ok(Reply::Put { .. })) => assert!(body.is_empty()),
            (Err(code), Err(e)) => assert_eq!(e.code, code, "id {id}: {}", e.message),
            (want, got) => panic!("id {id}: wanted {want:?}, got {got:?}"),
        }
        if it.peek().is_none() {
            assert!(ls_seen);
        }
    }
    // Nothing of the refused uploads anywhere: no target, no partial.
    let home = srv.home("alice");
    assert!(!home.join("b/bad").exists());
    assert!(!home.join("nodir").exists());
    assert_eq!(std::fs::read(home.join("b/exists")).unwrap(), b"old");
    assert_eq!(partials(&srv), 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_put_whose_body_trickles_in_still_lands() {
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    let body = data(5, 100 * 1024);
    let mut burst = Burst {
        next_id: 50,
        ..Default::default()
    };
    let put_id = burst.add(put("/slow", &body, blake3(&body), 0), &body);
    let get_id = burst.add(get("/slow"), &[]);
    let bytes = burst.buf.freeze();
    let cut = bytes.len() / 3;
    c.write_raw(&bytes[..cut]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.write_raw(&bytes[cut..2 * cut]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.write_raw(&bytes[2 * cut..]).await;
    let (f, _) = c.recv().await;
    assert_eq!(f.id, put_id);
    assert!(matches!(f.result, Ok(Reply::Put { .. })), "{:?}", f.result);
    let (f, got) = c.recv().await;
    assert_eq!(f.id, get_id);
    assert!(f.result.is_ok());
    assert!(got == body);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_small_files_up_and_down_in_two_writes() {
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    c.mkdir("/many").await;
    let files: Vec<Vec<u8>> = (0..1000)
        .map(|i| data(i, (i as usize * 37) % 5000))
        .collect();
    let mut up = Burst {
        next_id: 10,
        ..Default::default()
    };
    for (i, f) in files.iter().enumerate() {
        up.add(put(&format!("/many/f{i:04}"), f, blake3(f), 0), f);
    }
    c.write_raw(&up.buf).await;
    for i in 0..files.len() {
        let (f, _) = c.recv().await;
        assert_eq!(f.id, 11 + i as u64);
        assert!(f.result.is_ok(), "put {i}: {:?}", f.result);
    }
    let mut down = Burst {
        next_id: 5000,
        ..Default::default()
    };
    for i in 0..files.len() {
        down.add(get(&format!("/many/f{i:04}")), &[]);
    }
    c.write_raw(&down.buf).await;
    for (i, want) in files.iter().enumerate() {
        let (f, body) = c.recv().await;
        assert_eq!(f.id, 5001 + i as u64);
        let Ok(Reply::Get { hash, .. }) = f.result else {
            panic!("get {i}: {:?}", f.result)
        };
        assert_eq!(hash, blake3(want));
        assert!(&body == want, "file {i}");
    }
    assert_eq!(c.ls("/many").await.len(), 1000);
    assert_eq!(partials(&srv), 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_with_its_hash_after_the_body_ends_a_run_and_the_run_goes_on() {
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    let a = data(11, 3000);
    let deferred = data(12, 5000);
    let b = data(13, 100);
    let mut burst = Burst {
        next_id: 70,
        ..Default::default()
    };
    let ids = [
        burst.add(put("/a", &a, blake3(&a), 0), &a),
        {
            let mut req = put("/deferred", &deferred, blake3(&deferred), 0);
            if let Request::Put { hash, .. } = &mut req {
                *hash = None;
            }
            let id = burst.add(req, &deferred);
            burst.add_as(
                id,
                Request::PutHash {
                    hash: blake3(&deferred),
                },
                &[],
            );
            id
        },
        burst.add(get("/deferred"), &[]),
        burst.add(put("/b", &b, blake3(&b), 0), &b),
        burst.add(get("/a"), &[]),
    ];
    c.write_raw(&burst.buf).await;
    let bodies: [Option<&[u8]>; 5] = [None, None, Some(&deferred), None, Some(&a)];
    for (id, body) in ids.into_iter().zip(bodies) {
        let (f, got) = c.recv().await;
        assert_eq!(f.id, id);
        assert!(f.result.is_ok(), "id {id}: {:?}", f.result);
        if let Some(want) = body {
            assert!(got == want, "id {id}");
        }
    }
    assert_eq!(std::fs::read(srv.home("alice").join("b")).unwrap(), b);
    assert_eq!(partials(&srv), 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_of_puts_answers_as_if_one_by_one() {
    // Long runs of puts to distinct paths are split between two threads; a run that puts
    // one path twice is not, so the second put still finds the first one's file.
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    c.mkdir("/p").await;
    for twice in [false, true] {
        let dir = if twice { "/p/twice" } else { "/p/once" };
        c.mkdir(dir).await;
        let mut burst = Burst {
            next_id: 1000 * (1 + twice as u64),
            ..Default::default()
        };
        let bodies: Vec<Vec<u8>> = (0..64).map(|i| data(100 + i, 3000)).collect();
        let mut ids = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            let name = if twice && i == 50 { 7 } else { i };
            ids.push(burst.add(put(&format!("{dir}/f{name}"), b, blake3(b), 0), b));
        }
        c.write_raw(&burst.buf).await;
        for (i, id) in ids.into_iter().enumerate() {
            let (f, _) = c.recv().await;
            assert_eq!(f.id, id, "replies come in request order");
            match f.result {
                Err(e) if twice && i == 50 => assert_eq!(e.code, ErrorCode::AlreadyExists),
                Ok(Reply::Put { size, .. }) => assert_eq!(size, 3000),
                other => panic!("put {i} to {dir}: {other:?}"),
            }
        }
        let home = srv.home("alice").join(&dir[1..]);
        for (i, b) in bodies.iter().enumerate() {
            if twice && i == 50 {
                continue;
            }
            assert!(
                std::fs::read(home.join(format!("f{i}"))).unwrap() == *b,
                "{dir}/f{i}"
            );
        }
    }
    assert_eq!(partials(&srv), 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_while_a_run_works_are_answered_in_order() {
    // The server gathers the next run while one is on the blocking pool: requests that
    // arrive in pieces during it (a body cut in two, a request that is not batched, then a
    // frame error) are each answered in order, and the error only after all before it.
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    c.mkdir("/w").await;
    let mut burst = Burst {
        next_id: 300,
        ..Default::default()
    };
    let bodies: Vec<Vec<u8>> = (0..600).map(|i| data(900 + i, 3000 + i as usize)).collect();
    let mut ids = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        ids.push(burst.add(put(&format!("/w/f{i}"), b, blake3(b), 0), b));
        if i == 450 {
            let ls = burst.add(
                Request::Ls {
                    path: Some("/w".into()),
                    after: None,
                    limit: None,
                },
                &[],
            );
            ids.push(ls);
        }
    }
    let last_get = burst.add(get("/w/f599"), &[]);
    let mut bytes = burst.buf.to_vec();
    // A length prefix of 0 is a fatal frame error.
    bytes.extend_from_slice(&0u32.to_be_bytes());
    // In pieces of 64 KiB (cutting headers and bodies anywhere), each a moment apart.
    for piece in bytes.chunks(64 * 1024) {
        c.write_raw(piece).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut put_index = 0;
    for id in ids {
        let (f, _) = c.recv().await;
        assert_eq!(f.id, id, "replies come in request order");
        match f.result {
            Ok(Reply::Put { size, .. }) => {
                assert_eq!(size, bodies[put_index].len() as u64);
                put_index += 1;
            }
            Ok(Reply::Ls { entries, .. }) => {
                assert_eq!(put_index, 451, "ls sees the puts before it, none after");
                assert_eq!(entries.len(), 451);
            }
            other => panic!("id {id}: {other:?}"),
        }
    }
    let (f, body) = c.recv().await;
    assert_eq!(f.id, last_get);
    assert!(body == bodies[599]);
    let (f, _) = c.recv().await;
    assert_eq!(f.id, 0, "the frame error, last");
    assert_eq!(f.result.unwrap_err().code, ErrorCode::BadRequest);
    c.expect_closed().await;
    for (i, b) in bodies.iter().enumerate() {
        assert!(std::fs::read(srv.home("alice").join(format!("w/f{i}"))).unwrap() == *b);
    }
    assert_eq!(partials(&srv), 0);
    srv.stop().await;
}

/// Small puts without overwrite are written to a file with no name and linked into place
/// (put.rs `create_unnamed`); with overwrite, to a named partial renamed over the old file.
/// Both must end the same way: the file whole under its name, with its mtime, mode and hash
/// of record, and nothing else anywhere; and a link must neither replace nor follow what is
/// under the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_puts_appear_whole_under_their_names_whether_linked_or_renamed() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    c.mkdir("/d").await;
    c.mkdir("/d/sub").await;
    c.put("/d/old", b"old bytes").await.unwrap();
    let home = srv.home("alice");
    let outside = srv.root.join("outside");
    std::fs::write(&outside, b"not alice's").unwrap();
    std::os::unix::fs::symlink(&outside, home.join("d/link")).unwrap();

    let fresh = data(31, 4096);
    let newer = data(32, 1500);
    let mut burst = Burst {
        next_id: 200,
        ..Default::default()
    };
    let mut ids = Vec::new();
    ids.push(burst.add(put("/d/fresh", &fresh, blake3(&fresh), 0), &fresh));
    let replace = Request::Put {
        path: "/d/old".into(),
        size: newer.len() as u64,
        hash: Some(blake3(&newer)),
        offset: 0,
        overwrite: true,
        mtime: Some(1_600_000_000),
    };
    ids.push(burst.add(replace, &newer));
    ids.push(burst.add(put("/d/sub", b"x", blake3(b"x"), 0), b"x"));
    ids.push(burst.add(put("/d/link", b"y", blake3(b"y"), 0), b"y"));
    ids.push(burst.add(put("/d/empty", b"", blake3(b""), 0), b""));
    c.write_raw(&burst.buf).await;
    let mut outcomes = Vec::new();
    for id in ids {
        let (f, _) = c.recv().await;
        assert_eq!(f.id, id);
        outcomes.push(f.result.map(|_| ()).map_err(|e| e.code));
    }
    assert_eq!(
        outcomes,
        [
            Ok(()),
            Ok(()),
            Err(ErrorCode::IsADirectory),
            Err(ErrorCode::AlreadyExists),
            Ok(()),
        ]
    );

    let d = home.join("d");
    let mut names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["empty", "fresh", "link", "old", "sub"]);
    assert!(std::fs::read(d.join("fresh")).unwrap() == fresh);
    assert!(std::fs::read(d.join("old")).unwrap() == newer);
    assert_eq!(std::fs::read(d.join("empty")).unwrap(), b"");
    assert_eq!(std::fs::read(&outside).unwrap(), b"not alice's");
    assert!(
        std::fs::symlink_metadata(d.join("link"))
            .unwrap()
            .is_symlink()
    );
    let (linked, renamed) = (
        std::fs::metadata(d.join("fresh")).unwrap(),
        std::fs::metadata(d.join("old")).unwrap(),
    );
    assert_eq!(linked.mtime(), 1_700_000_000);
    assert_eq!(renamed.mtime(), 1_600_000_000);
    assert_eq!(linked.nlink(), 1);
    assert_eq!(
        linked.permissions().mode() & 0o777,
        renamed.permissions().mode() & 0o777,
        "the same mode either way"
    );
    let listed = c.ls("/d").await;
    let hash_of = |n: &str| listed.iter().find(|e| e.name == n).unwrap().hash.clone();
    assert_eq!(hash_of("fresh"), Some(blake3(&fresh)));
    assert_eq!(hash_of("old"), Some(blake3(&newer)));
    assert_eq!(partials(&srv), 0);
    srv.stop().await;
}
