//! Nothing outside a user's home is read, created or changed: traversal names, symlink
//! escapes (also swapped in while requests run), and user isolation.

mod common;

use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use common::*;
use ferry_proto::{ErrorCode, Request};

fn traversal_names() -> Vec<String> {
    let mut v: Vec<String> = [
        "..",
        "/..",
        "../x",
        "../../etc/passwd",
        "/../x",
        "a/../../x",
        "./../x",
        "a/b/../../../x",
        "/a/b/c/../../../../x",
        "//..//x",
        "a/./../../x",
        "../bob/secret",
        "../../homes/bob/secret",
        "../../users.json",
        "x\0y",
        "x\ny",
        "x\ty",
        "\u{7f}",
        "x\u{85}y",
        "\u{1b}[31m",
        "a\\..\\x",
        "..\\..\\x",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("x".repeat(256));
    v.push(format!("a/{}/b", "y".repeat(300)));
    v.push("a/".repeat(2049));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_names_are_invalid_and_change_nothing() {
    let srv = TestServer::start().await;
    let mut bob = srv.login("bob").await;
    bob.put("/secret", b"bob's").await.unwrap();
    let mut c = srv.login("alice").await;
    c.mkdir("/a/b/c").await;
    let before = snapshot(&srv.root);
    let names = traversal_names();
    assert!(names.len() >= 20);
    for name in &names {
        let reqs = vec![
            Request::Get {
                path: name.clone(),
                offset: 0,
                algo: None,
            },
            Request::Stat {
                path: name.clone(),
                algo: None,
            },
            Request::Ls {
                path: Some(name.clone()),
                after: None,
                limit: None,
            },
            Request::Cd { path: name.clone() },
            Request::Mkdir {
                path: name.clone(),
                parents: true,
            },
            Request::Rm {
                path: name.clone(),
                recursive: true,
            },
            Request::Mv {
                from: name.clone(),
                to: "/moved".into(),
                overwrite: true,
            },
            Request::Mv {
                from: "/a".into(),
                to: name.clone(),
                overwrite: true,
            },
            Request::Resume {
                path: name.clone(),
                size: 1,
                hash: Some(blake3(b"x")),
                mtime: None,
            },
        ];
        for r in reqs {
            c.expect_err(r, ErrorCode::InvalidPath).await;
        }
        let e = c.put_opts(name, b"evil", true).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPath, "put {name:?}");
    }
    assert_eq!(
        snapshot(&srv.root),
        before,
        "nothing changed anywhere in the data root"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_escapes_are_denied() {
    let srv = TestServer::start().await;
    let outside = srv.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"top secret").unwrap();
    let home = srv.home("alice");
    std::fs::create_dir(home.join("sub")).unwrap();
    std::fs::write(home.join("sub/ok.txt"), b"fine").unwrap();
    symlink(&outside, home.join("esc_dir")).unwrap();
    symlink("../../../outside", home.join("esc_rel")).unwrap();
    symlink(outside.join("secret"), home.join("esc_file")).unwrap();
    symlink("../bob", home.join("bob_link")).unwrap();
    symlink("/etc/passwd", home.join("passwd")).unwrap();
    symlink("sub", home.join("inner")).unwrap();
    let mut c = srv.login("alice").await;
    let before_outside = snapshot(&outside);
    let before_bob = snapshot(&srv.home("bob"));
    let get = |p: &str| Request::Get {
        path: p.into(),
        offset: 0,
        algo: None,
    };
    for link in ["esc_dir", "esc_rel", "bob_link"] {
        let inside = format!("/{link}/secret");
        c.expect_err(get(&inside), ErrorCode::PermissionDenied)
            .await;
        c.expect_err(
            Request::Ls {
                path: Some(link.into()),
                after: None,
                limit: None,
            },
            ErrorCode::PermissionDenied,
        )
        .await;
        c.expect_err(
            Request::Cd { path: link.into() },
            ErrorCode::PermissionDenied,
        )
        .await;
        c.expect_err(
            Request::Stat {
                path: inside.clone(),
                algo: None,
            },
            ErrorCode::PermissionDenied,
        )
        .await;
        c.expect_err(
            Request::Mkdir {
                path: format!("{link}/new"),
                parents: false,
            },
            ErrorCode::PermissionDenied,
        )
        .await;
        c.expect_err(
            Request::Mkdir {
                path: format!("{link}/x/y"),
                parents: true,
            },
            ErrorCode::PermissionDenied,
        )
        .await;
        c.expect_err(
            Request::Rm {
                path: inside.clone(),
                recursive: true,
            },
            ErrorCode::PermissionDenied,
        )
        .await;
        c.expect_err(
            Request::Mv {
                from: inside.clone(),
                to: "/stolen".into(),
                overwrite: false,
            },
            ErrorCode::PermissionDenied,
        )
        .await;
        c.expect_err(
            Request::Mv {
                from: "/sub/ok.txt".into(),
                to: format!("{link}/planted"),
                overwrite: true,
            },
            ErrorCode::PermissionDenied,
        )
        .await;
        let e = c
            .put_opts(&format!("{link}/planted"), b"evil", true)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied, "put through {link}");
    }
    for f in ["esc_file", "passwd"] {
        c.expect_err(get(f), ErrorCode::PermissionDenied).await;
        c.expect_err(
            Request::Stat {
                path: f.into(),
                algo: Some(ferry_proto::HashAlgo::Md5),
            },
            ErrorCode::PermissionDenied,
        )
        .await;
    }
    // ls of the home shows the links as links, without following them.
    let entries = c.ls("/").await;
    let kind = |n: &str| entries.iter().find(|e| e.name == n).unwrap().kind;
    assert_eq!(kind("esc_dir"), ferry_proto::EntryKind::Symlink);
    // A symlink that stays inside works.
    assert_eq!(c.get("/inner/ok.txt").await.unwrap().1, b"fine");
    // A recursive rm of a directory holding escaping links removes the links, not their targets.
    std::fs::create_dir(home.join("trap")).unwrap();
    symlink(&outside, home.join("trap/out")).unwrap();
    symlink(outside.join("secret"), home.join("trap/secret")).unwrap();
    c.call(Request::Rm {
        path: "/trap".into(),
        recursive: true,
    })
    .await
    .unwrap();
    assert!(!home.join("trap").exists());
    // Overwriting or removing a link replaces or removes the link itself, never its target.
    c.put_opts("/esc_file", b"replaced the link", true)
        .await
        .unwrap();
    c.call(Request::Rm {
        path: "/esc_dir".into(),
        recursive: true,
    })
    .await
    .unwrap();
    assert_eq!(snapshot(&outside), before_outside, "outside untouched");
    assert_eq!(snapshot(&srv.home("bob")), before_bob, "bob untouched");
    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        b"top secret"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_swapped_in_mid_request_cannot_escape() {
    let srv = TestServer::start().await;
    let outside = srv.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"top secret").unwrap();
    let home = srv.home("alice");
    std::fs::create_dir(home.join("sw")).unwrap();
    std::fs::write(home.join("sw/secret"), b"inside").unwrap();
    let before = snapshot(&outside);
    // A thread flips `sw` between a real directory and a symlink to `outside`.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (home, outside, stop) = (home.clone(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(home.join("sw"), home.join("sw.real"));
                let _ = symlink(&outside, home.join("sw"));
                std::thread::yield_now();
                let _ = std::fs::remove_file(home.join("sw"));
                let _ = std::fs::rename(home.join("sw.real"), home.join("sw"));
                n += 1;
            }
            n
        })
    };
    let mut c = srv.login("alice").await;
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let _ = c.put_opts(&format!("/sw/planted{i}"), b"evil", true).await;
        let _ = c
            .call(Request::Mkdir {
                path: format!("/sw/dir{i}"),
                parents: true,
            })
            .await;
        let _ = c
            .call(Request::Rm {
                path: "/sw/secret".into(),
                recursive: false,
            })
            .await;
        let _ = c
            .call(Request::Mv {
                from: "/sw/secret".into(),
                to: "/stolen".into(),
                overwrite: true,
            })
            .await;
        if let Ok((_, body)) = c.get("/sw/secret").await {
            assert_ne!(body, b"top secret", "read through a swapped-in symlink");
        }
        i += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(
        flips > 10 && i > 10,
        "the race ran ({flips} flips, {i} rounds)"
    );
    assert_eq!(snapshot(&outside), before, "outside untouched");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_see_or_touch_each_other() {
    let srv = TestServer::start().await;
    let mut a = srv.login("alice").await;
    let mut b = srv.login("bob").await;
    a.put("/mine.txt", b"alice's").await.unwrap();
    a.mkdir("/private").await;
    b.put("/theirs.txt", b"bob's").await.unwrap();
    assert_eq!(
        b.ls("/")
            .await
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>(),
        ["theirs.txt"]
    );
    b.expect_err(
        Request::Get {
            path: "/mine.txt".into(),
            offset: 0,
            algo: None,
        },
        ErrorCode::NotFound,
    )
    .await;
    b.expect_err(
        Request::Rm {
            path: "/private".into(),
            recursive: true,
        },
        ErrorCode::NotFound,
    )
    .await;
    b.expect_err(
        Request::Get {
            path: "../alice/mine.txt".into(),
            offset: 0,
            algo: None,
        },
        ErrorCode::InvalidPath,
    )
    .await;
    // Same path names are independent.
    b.put("/mine.txt", b"bob's own").await.unwrap();
    assert_eq!(a.get("/mine.txt").await.unwrap().1, b"alice's");
    assert_eq!(b.get("/mine.txt").await.unwrap().1, b"bob's own");
    srv.stop().await;
}
