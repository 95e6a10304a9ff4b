//! The session state machine, every command, and the error codes they produce.

mod common;

use common::*;
use ferry_proto::{EntryKind, ErrorCode, HashAlgo, Reply, Request};

fn login(user: &str, pw: &str) -> Request {
    Request::login_password(user, pw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_negotiates_and_reports_peer() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let me = c.stream.local_addr().unwrap();
    match c
        .call(Request::Hello {
            version: 7,
            features: vec!["resume".into(), "hash:md5".into(), "teleport".into()],
            client: None,
        })
        .await
        .unwrap()
    {
        Reply::Hello {
            version,
            features,
            server,
            peer,
            max_header,
        } => {
            assert_eq!(version, 1);
            assert_eq!(features, vec!["resume".to_string(), "hash:md5".to_string()]);
            assert!(server.starts_with("ferry/"));
            assert_eq!(peer, me.to_string());
            assert_eq!(max_header, 64 * 1024);
        }
        other => panic!("{other:?}"),
    }
    c.expect_err(
        Request::Hello {
            version: 1,
            features: vec![],
            client: None,
        },
        ErrorCode::BadRequest,
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_errors() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    // Before hello: everything else is bad_request.
    c.expect_err(Request::Pwd, ErrorCode::BadRequest).await;
    c.expect_err(login("alice", "alice-pw"), ErrorCode::BadRequest)
        .await;
    c.expect_err(
        Request::Hello {
            version: 0,
            features: vec![],
            client: None,
        },
        ErrorCode::UnsupportedVersion,
    )
    .await;
    c.hello().await;
    // Before login: auth_required.
    for r in [
        Request::Pwd,
        Request::Ls {
            path: None,
            after: None,
            limit: None,
        },
        Request::Get {
            path: "/x".into(),
            offset: 0,
            algo: None,
        },
    ] {
        c.expect_err(r, ErrorCode::AuthRequired).await;
    }
    // A put before login: refused, and its body skipped so the stream stays in sync.
    let body = b"not welcome";
    let id = c
        .send(
            Request::Put {
                path: "/x".into(),
                size: body.len() as u64,
                hash: Some(blake3(body)),
                offset: 0,
                overwrite: false,
                mtime: None,
            },
            body,
        )
        .await;
    let (f, _) = c.recv().await;
    assert_eq!(f.id, id);
    assert_eq!(f.result.unwrap_err().code, ErrorCode::AuthRequired);
    // Wrong password and unknown user: the same code and message.
    let a = c
        .expect_err(login("alice", "nope"), ErrorCode::AuthFailed)
        .await;
    let b = c
        .expect_err(login("mallory", "nope"), ErrorCode::AuthFailed)
        .await;
    assert_eq!(a.message, b.message);
    c.expect_err(login("../etc", "x"), ErrorCode::AuthFailed)
        .await;
    match c.call(login("alice", "alice-pw")).await.unwrap() {
        Reply::Login { user, cwd, .. } => {
            assert_eq!(user, "alice");
            assert_eq!(cwd, "/");
        }
        other => panic!("{other:?}"),
    }
    c.expect_err(login("alice", "alice-pw"), ErrorCode::BadRequest)
        .await;
    assert_eq!(c.call(Request::Quit).await.unwrap(), Reply::Quit);
    c.expect_closed().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_op_and_malformed_are_not_fatal() {
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    let raw = |json: &str, body: &[u8]| {
        let mut v = (json.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend_from_slice(body);
        v
    };
    c.write_raw(&raw(r#"{"id":5,"op":"teleport","body_len":3}"#, b"abc"))
        .await;
    let (f, _) = c.recv().await;
    assert_eq!(f.id, 5);
    assert_eq!(f.result.unwrap_err().code, ErrorCode::BadRequest);
    c.write_raw(&raw(r#"{"id":6,"op":"cd","path":7}"#, b""))
        .await;
    let (f, _) = c.recv().await;
    assert_eq!(
        (f.id, f.result.unwrap_err().code),
        (6, ErrorCode::BadRequest)
    );
    c.write_raw(&raw(r#"{"op":"pwd"}"#, b"")).await;
    let (f, _) = c.recv().await;
    assert_eq!(
        (f.id, f.result.unwrap_err().code),
        (0, ErrorCode::BadRequest)
    );
    // A body on a bodiless op: rejected, body skipped.
    c.write_raw(&raw(r#"{"id":8,"op":"pwd","body_len":4}"#, b"zzzz"))
        .await;
    let (f, _) = c.recv().await;
    assert_eq!(
        (f.id, f.result.unwrap_err().code),
        (8, ErrorCode::BadRequest)
    );
    // A put over the size limit: too_large (header only, no body declared mismatch).
    assert!(matches!(c.call(Request::Pwd).await, Ok(Reply::Pwd { .. })));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_frames_get_one_error_and_close() {
    let srv = TestServer::start().await;
    // Oversize header before login (limit 4 KiB): too_large, id 0, closed.
    let mut c = srv.client().await;
    c.write_raw(&(5000u32).to_le_bytes()).await;
    let (f, _) = c.recv().await;
    assert_eq!((f.id, f.result.unwrap_err().code), (0, ErrorCode::TooLarge));
    c.expect_closed().await;
    // After login the limit is 64 KiB: a 10 KiB header is fine.
    let mut c = srv.login("alice").await;
    let long = "a/".repeat(2000) + "x";
    c.expect_err(Request::Cd { path: long }, ErrorCode::NotFound)
        .await;
    // Not JSON: bad_request, id 0, closed.
    let mut c = srv.client().await;
    c.write_raw(b"\x03\x00\x00\x00abc").await;
    let (f, _) = c.recv().await;
    assert_eq!(
        (f.id, f.result.unwrap_err().code),
        (0, ErrorCode::BadRequest)
    );
    c.expect_closed().await;
    // Zero length.
    let mut c = srv.client().await;
    c.write_raw(&[0, 0, 0, 0]).await;
    let (f, _) = c.recv().await;
    assert_eq!(
        (f.id, f.result.unwrap_err().code),
        (0, ErrorCode::BadRequest)
    );
    c.expect_closed().await;
    srv.stop().await;
}

/// `ls` with `after` and `limit`: pages that together are the whole listing, each the next
/// names in byte order, `more` on all but the last; `limit` 0 refused; a file lists itself
/// only if its name comes after `after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_pages_cover_the_listing_once_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    let dir = srv.home("alice").join("p");
    std::fs::create_dir(&dir).unwrap();
    let mut names: Vec<String> = (0..23).map(|i| format!("n{i:02}")).collect();
    names.extend(["Zed".into(), "ä-umlaut".into(), "sub".into()]);
    for n in &names {
        if n == "sub" {
            std::fs::create_dir(dir.join(n)).unwrap();
        } else {
            std::fs::write(dir.join(n), n.as_bytes()).unwrap();
        }
    }
    names.sort(); // byte order: "Zed" < "n00" < … < "sub" < "ä-umlaut"
    let page = |after: Option<&str>, limit| Request::Ls {
        path: Some("/p".into()),
        after: after.map(str::to_owned),
        limit: Some(limit),
    };
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let Ok(Reply::Ls { entries, more, .. }) = c.call(page(after.as_deref(), 5)).await else {
            panic!("ls page")
        };
        pages += 1;
        assert!(entries.len() <= 5);
        assert_eq!(
            more,
            seen.len() + entries.len() < names.len(),
            "page {pages}"
        );
        seen.extend(entries.into_iter().map(|e| e.name));
        after = seen.last().cloned();
        if !more {
            break;
        }
    }
    assert_eq!(pages, names.len().div_ceil(5));
    assert_eq!(seen, names);
    // Past the last name: nothing, and nothing more.
    let Ok(Reply::Ls { entries, more, .. }) = c.call(page(Some("\u{10ffff}"), 5)).await else {
        panic!("ls past the end")
    };
    assert!(entries.is_empty() && !more);
    // Without a limit, everything in one reply, as before.
    assert_eq!(c.ls("/p").await.len(), names.len());
    c.expect_err(page(None, 0), ErrorCode::BadRequest).await;
    // A file is its own one-entry listing, if its name comes after `after`.
    let file = |after: &str| Request::Ls {
        path: Some("/p/n07".into()),
        after: Some(after.into()),
        limit: Some(1),
    };
    let Ok(Reply::Ls { entries, .. }) = c.call(file("n06")).await else {
        panic!("ls of a file")
    };
    assert_eq!(entries.len(), 1);
    let Ok(Reply::Ls { entries, more, .. }) = c.call(file("n07")).await else {
        panic!("ls of a file")
    };
    assert!(entries.is_empty() && !more);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_commands() {
    let srv = TestServer::start().await;
    let mut c = srv.login("alice").await;
    assert_eq!(
        c.call(Request::Pwd).await.unwrap(),
        Reply::Pwd { cwd: "/".into() }
    );
    // mkdir: plain, parents, exists, missing parent.
    c.call(Request::Mkdir {
        path: "docs".into(),
        parents: false,
    })
    .await
    .unwrap();
    c.expect_err(
        Request::Mkdir {
            path: "docs".into(),
            parents: false,
        },
        ErrorCode::AlreadyExists,
    )
    .await;
    c.call(Request::Mkdir {
        path: "docs".into(),
        parents: true,
    })
    .await
    .unwrap();
    c.expect_err(
        Request::Mkdir {
            path: "a/b/c".into(),
            parents: false,
        },
        ErrorCode::NotFound,
    )
    .await;
    assert_eq!(
        c.call(Request::Mkdir {
            path: "a/b/c".into(),
            parents: true
        })
        .await
        .unwrap(),
        Reply::Mkdir {
            path: "/a/b/c".into()
        }
    );
    // cd and relative paths.
    assert_eq!(
        c.call(Request::Cd { path: "a/b".into() }).await.unwrap(),
        Reply::Cd { cwd: "/a/b".into() }
    );
    c.put("f.txt", b"hello").await.unwrap();
    c.expect_err(
        Request::Mkdir {
            path: "f.txt".into(),
            parents: true,
        },
        ErrorCode::AlreadyExists,
    )
    .await;
    c.expect_err(
        Request::Mkdir {
            path: "f.txt/sub".into(),
            parents: false,
        },
        ErrorCode::NotADirectory,
    )
    .await;
    c.expect_err(
        Request::Cd {
            path: "f.txt".into(),
        },
        ErrorCode::NotADirectory,
    )
    .await;
    c.expect_err(
        Request::Cd {
            path: "nope".into(),
        },
        ErrorCode::NotFound,
    )
    .await;
    c.expect_err(
        Request::Cd {
            path: "../../..".into(),
        },
        ErrorCode::InvalidPath,
    )
    .await;
    assert_eq!(
        c.call(Request::Cd { path: "..".into() }).await.unwrap(),
        Reply::Cd { cwd: "/a".into() }
    );
    assert_eq!(
        c.call(Request::Pwd).await.unwrap(),
        Reply::Pwd { cwd: "/a".into() }
    );
    c.call(Request::Cd { path: "/".into() }).await.unwrap();
    // ls: sorted, kinds, sizes, hash of record on uploaded files; ls of a file.
    c.put("/docs/b.txt", b"bbb").await.unwrap();
    c.mkdir("/docs/a-dir").await;
    let entries = c.ls("/docs").await;
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a-dir", "b.txt"]);
    assert_eq!(entries[0].kind, EntryKind::Dir);
    assert_eq!((entries[1].kind, entries[1].size), (EntryKind::File, 3));
    assert_eq!(entries[1].hash, Some(blake3(b"bbb")));
    let one = c.ls("/docs/b.txt").await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].name, "b.txt");
    match c
        .call(Request::Ls {
            path: None,
            after: None,
            limit: None,
        })
        .await
        .unwrap()
    {
        Reply::Ls { path, entries, .. } => {
            assert_eq!(path, "/");
            assert_eq!(entries.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    c.expect_err(
        Request::Ls {
            path: Some("/nope".into()),
            after: None,
            limit: None,
        },
        ErrorCode::NotFound,
    )
    .await;
    // stat with and without algo.
    match c
        .call(Request::Stat {
            path: "/docs/b.txt".into(),
            algo: None,
        })
        .await
        .unwrap()
    {
        Reply::Stat(e) => {
            assert_eq!(e.name, "/docs/b.txt");
            assert_eq!(e.hash, Some(blake3(b"bbb")));
        }
        other => panic!("{other:?}"),
    }
    for algo in HashAlgo::ALL {
        match c
            .call(Request::Stat {
                path: "docs/b.txt".into(),
                algo: Some(algo),
            })
            .await
            .unwrap()
        {
            Reply::Stat(e) => assert_eq!(e.hash, Some(ferry_proto::Digest::of(algo, b"bbb"))),
            other => panic!("{other:?}"),
        }
    }
    c.expect_err(
        Request::Stat {
            path: "/docs".into(),
            algo: Some(HashAlgo::Md5),
        },
        ErrorCode::IsADirectory,
    )
    .await;
    c.expect_err(
        Request::Stat {
            path: "/zzz".into(),
            algo: None,
        },
        ErrorCode::NotFound,
    )
    .await;
    // mv: rename, exists without overwrite, with overwrite, into itself, missing source.
    c.put("/m1", b"one").await.unwrap();
    c.put("/m2", b"two").await.unwrap();
    c.expect_err(
        Request::Mv {
            from: "/m1".into(),
            to: "/m2".into(),
            overwrite: false,
        },
        ErrorCode::AlreadyExists,
    )
    .await;
    assert_eq!(
        c.call(Request::Mv {
            from: "/m1".into(),
            to: "/m2".into(),
            overwrite: true
        })
        .await
        .unwrap(),
        Reply::Mv {
            from: "/m1".into(),
            to: "/m2".into()
        }
    );
    assert_eq!(c.get("/m2").await.unwrap().1, b"one");
    c.expect_err(
        Request::Mv {
            from: "/m1".into(),
            to: "/m3".into(),
            overwrite: false,
        },
        ErrorCode::NotFound,
    )
    .await;
    c.expect_err(
        Request::Mv {
            from: "/a".into(),
            to: "/a/b/c/d".into(),
            overwrite: false,
        },
        ErrorCode::InvalidPath,
    )
    .await;
    c.expect_err(
        Request::Mv {
            from: "/".into(),
            to: "/x".into(),
            overwrite: false,
        },
        ErrorCode::PermissionDenied,
    )
    .await;
    c.expect_err(
        Request::Mv {
            from: "/m2".into(),
            to: "/nodir/x".into(),
            overwrite: false,
        },
        ErrorCode::NotFound,
    )
    .await;
    c.call(Request::Mv {
        from: "/docs".into(),
        to: "/a/docs2".into(),
        overwrite: false,
    })
    .await
    .unwrap();
    assert_eq!(c.get("/a/docs2/b.txt").await.unwrap().1, b"bbb");
    // the hash of record follows the file through mv
    assert_eq!(c.ls("/a/docs2/b.txt").await[0].hash, Some(blake3(b"bbb")));
    // rm: file, non-empty dir, recursive, root, missing.
    c.expect_err(
        Request::Rm {
            path: "/a".into(),
            recursive: false,
        },
        ErrorCode::DirectoryNotEmpty,
    )
    .await;
    c.expect_err(
        Request::Rm {
            path: "/".into(),
            recursive: true,
        },
        ErrorCode::PermissionDenied,
    )
    .await;
    c.expect_err(
        Request::Rm {
            path: "/ghost".into(),
            recursive: false,
        },
        ErrorCode::NotFound,
    )
    .await;
    assert_eq!(
        c.call(Request::Rm {
            path: "/m2".into(),
            recursive: false
        })
        .await
        .unwrap(),
        Reply::Rm { path: "/m2".into() }
    );
    c.call(Request::Rm {
        path: "/a".into(),
        recursive: true,
    })
    .await
    .unwrap();
    assert!(c.ls("/").await.is_empty());
    assert!(
        std::fs::read_dir(srv.home("alice"))
            .unwrap()
            .next()
            .is_none()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_answer_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    // Everything from hello to quit in one write, puts with bodies included.
    let mut ids = Vec::new();
    ids.push(
        c.send(
            Request::Hello {
                version: 1,
                features: vec![],
                client: None,
            },
            &[],
        )
        .await,
    );
    ids.push(c.send(login("alice", "alice-pw"), &[]).await);
    ids.push(
        c.send(
            Request::Mkdir {
                path: "p".into(),
                parents: false,
            },
            &[],
        )
        .await,
    );
    for i in 0..20u64 {
        let body = data(i, 1000 + i as usize * 100);
        let req = Request::Put {
            path: format!("p/f{i:02}"),
            size: body.len() as u64,
            hash: Some(blake3(&body)),
            offset: 0,
            overwrite: false,
            mtime: Some(1_600_000_000 + i as i64),
        };
        ids.push(c.send(req, &body).await);
    }
    ids.push(
        c.send(
            Request::Cd {
                path: "/nonexistent".into(),
            },
            &[],
        )
        .await,
    ); // fails, rest goes on
    for i in 0..20u64 {
        ids.push(
            c.send(
                Request::Get {
                    path: format!("/p/f{i:02}"),
                    offset: 0,
                    algo: None,
                },
                &[],
            )
            .await,
        );
    }
    ids.push(c.send(Request::Quit, &[]).await);
    for (n, id) in ids.iter().enumerate() {
        let (f, body) = c.recv().await;
        assert_eq!(f.id, *id, "reply {n} out of order");
        match n {
            23 => assert_eq!(f.result.unwrap_err().code, ErrorCode::NotFound),
            24..=43 => {
                let i = (n - 24) as u64;
                let expected = data(i, 1000 + i as usize * 100);
                match f.result.unwrap() {
                    Reply::Get {
                        size, mtime, hash, ..
                    } => {
                        assert_eq!(size, expected.len() as u64);
                        assert_eq!(mtime, 1_600_000_000 + i as i64);
                        assert_eq!(hash, blake3(&expected));
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(body, expected);
            }
            _ => assert!(f.result.is_ok(), "reply {n}: {:?}", f.result),
        }
    }
    c.expect_closed().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_and_internal_codes() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_file_size = 1000;
        c.limits.max_reply_header = 64 * 1024;
    })
    .await;
    let mut c = srv.login("alice").await;
    // A put over the maximum file size: too_large for that request, body skipped, session on.
    let body = data(1, 2000);
    let (r, _) = c
        .call_body(
            Request::Put {
                path: "/big".into(),
                size: body.len() as u64,
                hash: Some(blake3(&body)),
                offset: 0,
                overwrite: false,
                mtime: None,
            },
            &body,
        )
        .await;
    assert_eq!(r.unwrap_err().code, ErrorCode::TooLarge);
    c.expect_err(
        Request::Resume {
            path: "/big".into(),
            size: 2000,
            hash: Some(blake3(&body)),
            mtime: None,
        },
        ErrorCode::TooLarge,
    )
    .await;
    // A listing whose reply header would exceed the reply limit (lowered to 64 KiB here):
    // too_large, not a broken frame.
    let dir = srv.home("alice").join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..600 {
        std::fs::write(dir.join(format!("{i:04}-{}", "n".repeat(150))), b"").unwrap();
    }
    c.expect_err(
        Request::Ls {
            path: Some("/many".into()),
            after: None,
            limit: None,
        },
        ErrorCode::TooLarge,
    )
    .await;
    // A server-side failure: internal, with nothing about the server's paths in the message.
    // (Overwriting, so that the body goes to a named partial, not an unnamed file.)
    std::fs::remove_dir_all(srv.data_root().partials_dir("alice")).unwrap();
    let e = c.put_opts("/x", b"data", true).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(
        !e.message.contains(srv.root.to_str().unwrap()),
        "{}",
        e.message
    );
    assert!(c.call(Request::Pwd).await.is_ok());
    srv.stop().await;
}
