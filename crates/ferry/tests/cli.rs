//! End-to-end tests of the client commands: the real binary against a real server on
//! loopback, files in temp dirs.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use common::{BIN, Cut, Server, SlowProxy, bytes, json, ok, run, spawn_piped, wait_until};
use ferry_proto::{Digest, HashAlgo};

fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
}

#[test]
fn put_and_get_round_trip_small_large_and_empty_files() {
    let srv = Server::start(&["alice"]);
    let local = tempfile::tempdir().unwrap();
    let files = [
        ("small.txt", bytes(1, 10)),
        ("large.bin", bytes(2, 3 * 1024 * 1024 + 17)),
        ("empty", Vec::new()),
    ];
    for (name, data) in &files {
        write(&local.path().join(name), data);
    }
    let out = json(
        srv.ferry("alice")
            .args(["put", "--json"])
            .args(files.iter().map(|(n, _)| local.path().join(n)))
            .arg("/"),
    );
    assert_eq!(out["uploaded"], 3, "{out}");
    for (name, data) in &files {
        assert_eq!(
            &fs::read(srv.home("alice").join(name)).unwrap(),
            data,
            "{name}"
        );
        let entry = out["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["remote"] == format!("/{name}") || f["remote"] == *name)
            .unwrap_or_else(|| panic!("{name} in {out}"));
        assert_eq!(
            entry["hash"],
            Digest::of(HashAlgo::Blake3, data).to_string(),
            "{name}"
        );
    }

    let back = tempfile::tempdir().unwrap();
    let out = json(
        srv.ferry("alice")
            .args(["get", "--json", "small.txt", "large.bin", "empty"])
            .arg(back.path()),
    );
    assert_eq!(out["downloaded"], 3, "{out}");
    for (name, data) in &files {
        assert_eq!(&fs::read(back.path().join(name)).unwrap(), data, "{name}");
    }
    // No partials are left behind after a verified download.
    let leftovers: Vec<_> = fs::read_dir(back.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("ferry-part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The listing shows the hash of record the upload was verified against.
    let listing = ok(srv.ferry("alice").args(["ls", "-l"]));
    let small = Digest::of(HashAlgo::Blake3, &files[0].1).to_string();
    assert!(listing.contains(&small), "{listing}");
}

#[test]
fn recursive_put_and_get_copy_a_tree() {
    let srv = Server::start(&["bob"]);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("project");
    let mut expected = Vec::new();
    for i in 0..40u64 {
        let rel = format!("d{}/sub{}/f{i}.dat", i % 3, i % 2);
        let data = bytes(100 + i, (i as usize * 37) % 5000);
        write(&tree.join(&rel), &data);
        expected.push((rel, data));
    }
    fs::create_dir_all(tree.join("empty-dir")).unwrap();
    let out = json(srv.ferry("bob").args(["put", "-r", "--json"]).arg(&tree));
    assert_eq!(out["uploaded"], 40, "{out}");
    assert!(srv.home("bob").join("project/empty-dir").is_dir());

    let dst = tempfile::tempdir().unwrap();
    let out = json(
        srv.ferry("bob")
            .args(["get", "-r", "--json", "project"])
            .arg(dst.path()),
    );
    assert_eq!(out["downloaded"], 40, "{out}");
    for (rel, data) in &expected {
        assert_eq!(
            &fs::read(dst.path().join("project").join(rel)).unwrap(),
            data,
            "{rel}"
        );
    }
    assert!(dst.path().join("project/empty-dir").is_dir());
}

#[test]
fn existing_files_are_not_replaced_without_force() {
    let srv = Server::start(&["carol"]);
    let local = tempfile::tempdir().unwrap();
    let f = local.path().join("doc.txt");
    write(&f, b"first");
    ok(srv.ferry("carol").args(["put", "-q"]).arg(&f));
    write(&f, b"second version");

    let out = run(srv.ferry("carol").args(["put", "--json"]).arg(&f));
    assert_eq!(out.status.code(), Some(5), "remote error exit code");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["files"][0]["code"], "already_exists", "{j}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        fs::read(srv.home("carol").join("doc.txt")).unwrap(),
        b"first"
    );

    ok(srv.ferry("carol").args(["put", "-q", "--force"]).arg(&f));
    assert_eq!(
        fs::read(srv.home("carol").join("doc.txt")).unwrap(),
        b"second version"
    );

    // Downloads do not clobber local files either.
    let out = run(srv
        .ferry("carol")
        .args(["get", "-q", "doc.txt"])
        .arg(local.path()));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(&f).unwrap(), b"second version");
}

#[test]
fn directory_commands_work_and_report_errors() {
    let srv = Server::start(&["dave"]);
    let home = srv.home("dave");
    assert_eq!(ok(srv.ferry("dave").arg("pwd")).trim(), "/");
    ok(srv.ferry("dave").args(["mkdir", "-p", "a/b/c"]));
    assert!(home.join("a/b/c").is_dir());
    write(&home.join("a/note.txt"), b"hello ferry");

    let ls = json(srv.ferry("dave").args(["ls", "--json", "a"]));
    let names: Vec<&str> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "note.txt"]);

    // A file placed by other means is hashed on request, in the algorithm asked for.
    let st = json(
        srv.ferry("dave")
            .args(["stat", "--json", "--algo", "md5", "a/note.txt"]),
    );
    assert_eq!(
        st[0]["hash"],
        Digest::of(HashAlgo::Md5, b"hello ferry").to_string(),
        "{st}"
    );
    assert_eq!(st[0]["size"], 11);

    ok(srv
        .ferry("dave")
        .args(["mv", "a/note.txt", "a/b/renamed.txt"]));
    assert!(home.join("a/b/renamed.txt").is_file());
    assert!(!home.join("a/note.txt").exists());

    let out = run(srv.ferry("dave").args(["rm", "--json", "a"]));
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stdout).contains("directory_not_empty"));
    ok(srv.ferry("dave").args(["rm", "-r", "a"]));
    assert!(!home.join("a").exists());

    let out = run(srv.ferry("dave").args(["get", "--json", "missing.txt"]));
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not_found"));

    let out = run(srv.ferry("dave").args(["ls", "../../etc"]));
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_path"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_codes_tell_auth_and_network_failures_apart() {
    let srv = Server::start(&["erin"]);
    let out = run(srv.ferry("erin").env("FERRY_PASSWORD", "wrong").arg("pwd"));
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth_failed"));

    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(srv
        .ferry_at(&format!("127.0.0.1:{port}"), "erin")
        .arg("pwd"));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn interrupted_download_resumes_to_an_identical_file() {
    let srv = Server::start(&["frank"]);
    let data = bytes(7, 8 * 1024 * 1024);
    // Placed by other means: the server hashes it on first request.
    write(&srv.home("frank").join("big.bin"), &data);
    let proxy = SlowProxy::start(srv.addr, 64 * 1024);
    let dst = tempfile::tempdir().unwrap();
    let partial = dst.path().join("big.bin.ferry-part");
    let mut child = srv
        .ferry_at(&proxy.addr.to_string(), "frank")
        .args(["get", "-q", "big.bin"])
        .arg(dst.path())
        .spawn()
        .unwrap();
    wait_until(30, "a partial download", || {
        fs::metadata(&partial).is_ok_and(|m| m.len() > 1024 * 1024)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let held = fs::metadata(&partial).unwrap().len();
    assert!(
        held < data.len() as u64,
        "the kill came too late to test resume"
    );
    assert!(
        !dst.path().join("big.bin").exists(),
        "no final file before verification"
    );

    let out = json(
        srv.ferry("frank")
            .args(["get", "--json", "big.bin"])
            .arg(dst.path()),
    );
    assert!(
        out["files"][0]["resumed_from"].as_u64().unwrap() > 0,
        "{out}"
    );
    assert_eq!(fs::read(dst.path().join("big.bin")).unwrap(), data);
    assert!(!partial.exists());
}

/// Starts `ferry get ARGS…` as `user` through a throttling relay and kills the client
/// (SIGKILL) once `partial` holds more than 1 MiB. Returns what the partial then holds.
fn kill_download_midway(
    srv: &Server,
    user: &str,
    args: &[&std::ffi::OsStr],
    partial: &Path,
) -> u64 {
    let proxy = SlowProxy::start(srv.addr, 64 * 1024);
    let mut child = srv
        .ferry_at(&proxy.addr.to_string(), user)
        .arg("get")
        .args(args)
        .spawn()
        .unwrap();
    wait_until(30, "a partial download", || {
        fs::metadata(partial).is_ok_and(|m| m.len() > 1024 * 1024)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    fs::metadata(partial).unwrap().len()
}

/// Starts `ferry put FILE` through a throttling relay and kills the client (SIGKILL) once
/// more than 2 MiB has passed, leaving the server a partial upload.
fn kill_upload_midway(srv: &Server, user: &str, file: &Path) {
    let proxy = SlowProxy::start(srv.addr, 64 * 1024);
    let mut child = srv
        .ferry_at(&proxy.addr.to_string(), user)
        .args(["put", "-q"])
        .arg(file)
        .spawn()
        .unwrap();
    wait_until(30, "part of the upload to pass", || {
        proxy.upstream.load(Ordering::Relaxed) > 2 * 1024 * 1024
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn interrupted_upload_resumes_to_an_identical_file() {
    let srv = Server::start(&["grace"]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("upload.bin");
    let data = bytes(8, 8 * 1024 * 1024);
    write(&file, &data);
    kill_upload_midway(&srv, "grace", &file);
    assert!(
        !srv.home("grace").join("upload.bin").exists(),
        "a half-written upload must not be visible"
    );
    // Let the server notice the dropped connection and keep what arrived.
    std::thread::sleep(std::time::Duration::from_millis(300));

    let out = json(srv.ferry("grace").args(["put", "--json"]).arg(&file));
    assert_eq!(out["uploaded"], 1, "{out}");
    assert!(
        out["files"][0]["resumed_from"].as_u64().unwrap() > 0,
        "{out}"
    );
    assert_eq!(
        fs::read(srv.home("grace").join("upload.bin")).unwrap(),
        data
    );
}

/// Uploads resume by size and mtime (the hash follows the body): a file rewritten in place
/// with the same size and mtime after an interrupted upload makes the held prefix wrong. The
/// server's whole-file check refuses it, and the client starts that file over, once, by itself.
#[test]
fn resumed_upload_of_a_rewritten_file_starts_over_and_is_identical() {
    let srv = Server::start(&["ivan"]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("upload.bin");
    let data = bytes(11, 8 * 1024 * 1024);
    write(&file, &data);
    kill_upload_midway(&srv, "ivan", &file);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let partials = srv.root.path().join("state/partials/ivan");
    let held: Vec<u64> = fs::read_dir(&partials)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(
        held.len() == 1 && held[0] > 0,
        "a prefix is held for resume: {held:?}"
    );

    // Same size, same mtime, other bytes at the start: the resume ask (size, mtime) offers
    // the held prefix, and the upload from there fails the whole-file check.
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    let mut changed = data.clone();
    changed[..4096].fill(0xab);
    write(&file, &changed);
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let out = json(srv.ferry("ivan").args(["put", "--json"]).arg(&file));
    assert_eq!(out["uploaded"], 1, "{out}");
    assert_eq!(out["files"][0]["resumed_from"], 0, "{out}");
    assert_eq!(
        fs::read(srv.home("ivan").join("upload.bin")).unwrap(),
        changed
    );
    assert_eq!(
        fs::read_dir(&partials).unwrap().count(),
        0,
        "no partial left"
    );
}

/// Runs `ferry shell -q` in `dir` with `script` (lines) on its stdin.
fn run_shell(ferry: &mut Command, dir: &Path, script: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = spawn_piped(
        ferry
            .args(["shell", "-q"])
            .current_dir(dir)
            .stdin(std::process::Stdio::piped()),
    );
    writeln!(child.stdin.take().unwrap(), "{script}").unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn shell_runs_a_scripted_session() {
    let srv = Server::start(&["heidi"]);
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("local.txt"), b"from the shell");
    let out = run_shell(
        &mut srv.ferry("heidi"),
        work.path(),
        "mkdir docs\ncd docs\npwd\nput local.txt\nls -l\nmv local.txt 'renamed file.txt'\n\
         lcd ..\nbogus\nstat 'renamed file.txt' md5\nquit",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("/docs"), "{stdout}\n{stderr}");
    assert!(stdout.contains("local.txt"), "{stdout}");
    assert!(
        stdout.contains(&Digest::of(HashAlgo::Md5, b"from the shell").to_string()),
        "{stdout}"
    );
    assert!(stderr.contains("unknown command"), "{stderr}");
    assert_eq!(
        fs::read(srv.home("heidi").join("docs/renamed file.txt")).unwrap(),
        b"from the shell"
    );
}

#[test]
fn many_clients_at_once_each_verify_their_own_files() {
    let srv = Server::start(&["ivan", "judy"]);
    let src = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for i in 0..20u64 {
        let user = if i % 2 == 0 { "ivan" } else { "judy" };
        let f = src.path().join(format!("c{i}.bin"));
        write(&f, &bytes(500 + i, 200_000 + i as usize));
        children.push((
            i,
            user,
            srv.ferry(user).args(["put", "-q"]).arg(&f).spawn().unwrap(),
        ));
    }
    for (i, user, mut c) in children {
        assert!(c.wait().unwrap().success(), "client {i}");
        assert_eq!(
            fs::read(srv.home(user).join(format!("c{i}.bin"))).unwrap(),
            bytes(500 + i, 200_000 + i as usize)
        );
    }
    // Each user sees only their own files.
    let ivan = ok(srv.ferry("ivan").arg("ls"));
    assert!(
        ivan.contains("c0.bin") && !ivan.contains("c1.bin"),
        "{ivan}"
    );
}

#[test]
fn a_large_directory_lists_in_one_reply() {
    let srv = Server::start(&["kate"]);
    let dir = srv.home("kate").join("many");
    fs::create_dir_all(&dir).unwrap();
    for i in 0..3000 {
        fs::write(
            dir.join(format!("file-with-a-longish-name-{i:05}.dat")),
            b"x",
        )
        .unwrap();
    }
    let out = json(srv.ferry("kate").args(["ls", "--json", "many"]));
    assert_eq!(
        out["entries"].as_array().unwrap().len(),
        3000,
        "{}",
        out["path"]
    );
}

/// A tree listed over several pages (`FERRY_LS_PAGE=500` here, 50,000 by default): `get -r`
/// fetches each page's files while it asks for the next page, and must end up with every
/// file once, whole, and the directories found on later pages too.
#[test]
fn a_tree_listed_over_several_pages_downloads_whole() {
    let srv = Server::start(&["mona"]);
    let home = srv.home("mona");
    let mut expected = Vec::new();
    for i in 0..2_600 {
        expected.push((format!("big/f{i:05}"), bytes(i, (i as usize * 13) % 700)));
    }
    // Directories whose names sort in the first, second and last page.
    for d in ["big/a-dir", "big/f01000-dir", "big/zz-dir"] {
        for j in 0..3 {
            expected.push((format!("{d}/g{j}"), bytes(9_000 + j, 100 + j as usize)));
        }
    }
    for (rel, data) in &expected {
        write(&home.join(rel), data);
    }
    let dst = tempfile::tempdir().unwrap();
    let out = json(
        srv.ferry("mona")
            .env("FERRY_LS_PAGE", "500")
            .args(["get", "-r", "--json", "big"])
            .arg(dst.path()),
    );
    assert_eq!(out["downloaded"], expected.len(), "{}", out["failed"]);
    for (rel, data) in &expected {
        assert_eq!(&fs::read(dst.path().join(rel)).unwrap(), data, "{rel}");
    }
    assert_eq!(names_in(&dst.path().join("big")).len(), 2_603);
    // Everything is there now: a second run refuses every file, and lists each just once.
    let out = run(srv
        .ferry("mona")
        .env("FERRY_LS_PAGE", "500")
        .args(["get", "-r", "--json", "big"])
        .arg(dst.path()));
    let report = report_of(&out);
    assert_eq!(report["downloaded"], 0, "{report}");
    assert_eq!(failures(&report).len(), expected.len());
}

/// `ferry ls | head -1`: the reader goes away after one line. The listing must end quietly
/// and successfully, not with a panic about a broken pipe.
#[test]
fn output_into_a_pipe_closed_early_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let srv = Server::start(&["lena"]);
    let dir = srv.home("lena").join("many");
    fs::create_dir_all(&dir).unwrap();
    // Far more than a pipe buffer holds, so the writer meets the closed pipe.
    for i in 0..4000 {
        fs::write(
            dir.join(format!("a-name-long-enough-to-fill-pipes-{i:05}")),
            b"x",
        )
        .unwrap();
    }
    let mut child = srv
        .ferry("lena")
        .args(["ls", "-l", "many"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("a-name-long-enough"), "{first}");
    // The reader is dropped here: the pipe is closed with most of the listing unwritten.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn passwords_never_reach_the_server_log() {
    let srv = Server::start(&["leo"]);
    let out = run(srv
        .ferry("leo")
        .env("FERRY_PASSWORD", "a-wrong-secret")
        .arg("pwd"));
    assert_eq!(out.status.code(), Some(4));
    ok(srv.ferry("leo").arg("pwd"));
    let log = fs::read_to_string(&srv.log).unwrap();
    assert!(
        log.contains("login failed") && log.contains("logged in"),
        "{log}"
    );
    assert!(!log.contains("a-wrong-secret"), "{log}");
    assert!(!log.contains("pw-leo"), "{log}");
}

/// A fake server that answers a `get -r` with a listing that tries to climb out of the
/// download directory.
fn malicious_server() -> std::net::SocketAddr {
    use bytes::BytesMut;
    use ferry_proto::{Entry, EntryKind, FrameDecoder, FrameEvent, Reply, ReplyFrame, Request};
    use ferry_proto::{RequestFrame, WireError};
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut dec = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let file = |name: &str, size| Entry {
            name: name.into(),
            kind: EntryKind::File,
            size,
            mtime: 0,
            hash: None,
        };
        loop {
            let header = loop {
                if let Some(FrameEvent::Header(h)) = dec.decode(&mut buf).unwrap() {
                    break h;
                }
                let mut chunk = [0u8; 4096];
                let n = sock.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let req = RequestFrame::from_header(header, &Default::default()).unwrap();
            let (reply, body): (Result<Reply, WireError>, &[u8]) = match req.request {
                Request::Hello { .. } => (
                    Ok(Reply::Hello {
                        version: 1,
                        features: vec![],
                        server: "evil".into(),
                        peer: String::new(),
                        max_header: 65536,
                    }),
                    b"",
                ),
                Request::Login { user, .. } => (
                    Ok(Reply::Login {
                        user,
                        cwd: "/".into(),
                        token: None,
                        token_ttl: None,
                    }),
                    b"",
                ),
                Request::Stat { .. } => (
                    Ok(Reply::Stat(Entry {
                        name: "/d".into(),
                        kind: EntryKind::Dir,
                        size: 0,
                        mtime: 0,
                        hash: None,
                    })),
                    b"",
                ),
                Request::Ls { .. } => (
                    Ok(Reply::Ls {
                        path: "/d".into(),
                        entries: vec![
                            file("../escaped.txt", 4),
                            file("/etc/evil", 4),
                            file("..", 4),
                            file("ok.txt", 2),
                        ],
                        more: false,
                    }),
                    b"",
                ),
                // Any file is served (so a client that followed `../escaped.txt` would write
                // it), except the absolute one, which would land in the real /etc.
                Request::Get { path, .. } if !path.contains("etc") => (
                    Ok(Reply::Get {
                        path,
                        size: 2,
                        offset: 0,
                        mtime: 0,
                        hash: Digest::of(HashAlgo::Blake3, b"ok"),
                    }),
                    b"ok",
                ),
                Request::Quit => (Ok(Reply::Quit), b""),
                other => (
                    Err(WireError::new(
                        ferry_proto::ErrorCode::NotFound,
                        format!("{other:?}"),
                    )),
                    b"",
                ),
            };
            let frame = match reply {
                Ok(r) => ReplyFrame::ok(req.id, r),
                Err(e) => ReplyFrame::err(req.id, e),
            };
            let mut out = BytesMut::new();
            frame.encode(1 << 24, &mut out).unwrap();
            out.extend_from_slice(body);
            if sock.write_all(&out).is_err() {
                return;
            }
        }
    });
    addr
}

#[test]
fn a_malicious_listing_cannot_make_get_write_outside_the_target() {
    let addr = malicious_server();
    let outer = tempfile::tempdir().unwrap();
    let target = outer.path().join("target");
    fs::create_dir(&target).unwrap();
    let out = run(std::process::Command::new(common::BIN)
        .args(["get", "-r", "--json", "d"])
        .arg(&target)
        .env("FERRY_SERVER", addr.to_string())
        .env("FERRY_USER", "x")
        .env("FERRY_PASSWORD", "x")
        .env("FERRY_PLAIN", "1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("unsafe name"), "{stdout}");
    assert_eq!(fs::read(target.join("d/ok.txt")).unwrap(), b"ok");
    assert!(!outer.path().join("escaped.txt").exists());
    assert!(!target.join("escaped.txt").exists());
    let names: Vec<_> = fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["target"]);
}

#[test]
fn bench_measures_both_directions_memory_to_memory() {
    for plain in [false, true] {
        let srv = if plain {
            Server::start_plain(&["mia"])
        } else {
            Server::start(&["mia"])
        };
        for reverse in [false, true] {
            let mut cmd = srv.ferry("mia");
            cmd.args(["bench", "--seconds", "0.3", "--json"]);
            if reverse {
                cmd.arg("--reverse");
            }
            let out = json(&mut cmd);
            assert_eq!(
                out["direction"],
                if reverse { "download" } else { "upload" }
            );
            assert_eq!(out["transport"], if plain { "plain TCP" } else { "TLS" });
            assert!(out["bytes"].as_u64().unwrap() >= 64 << 20, "{out}");
            assert!(out["bits_per_second"].as_f64().unwrap() > 0.0, "{out}");
        }
        // Nothing touched the disk.
        assert_eq!(fs::read_dir(srv.home("mia")).unwrap().count(), 0);
    }
    let srv = Server::start(&["mia"]);
    let out = run(srv.ferry("mia").args(["bench", "--seconds", "0"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seconds"));
}

#[test]
fn progress_bars_show_on_a_terminal_and_hide_otherwise() {
    let srv = Server::start(&["nina"]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("progress.bin");
    write(&file, &bytes(9, 4 * 1024 * 1024));
    // Slow enough (about 0.6 s) for the bars to be drawn a few times.
    let proxy = SlowProxy::start(srv.addr, 64 * 1024);
    let mut on_tty = srv.ferry_at(&proxy.addr.to_string(), "nina");
    // script(1) gives the client a terminal; its output is what the terminal showed.
    on_tty.args([
        "-qec",
        &format!("{} put {}", common::BIN, file.display()),
        "/dev/null",
    ]);
    let mut script = std::process::Command::new("script");
    for (k, v) in on_tty.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    script.args(on_tty.get_args());
    let out = run(&mut script);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("progress.bin") && shown.contains("MiB"),
        "{shown}"
    );

    // Not a terminal: only the one-line summary.
    let out = run(srv
        .ferry_at(&proxy.addr.to_string(), "nina")
        .args(["put", "-f"])
        .arg(&file));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("ETA") && err.contains("put: 1 file(s)"),
        "{err}"
    );
}

#[test]
fn two_paths_name_the_copy_when_the_destination_is_not_a_directory() {
    let srv = Server::start(&["dora"]);
    let local = tempfile::tempdir().unwrap();
    let f = local.path().join("report.txt");
    write(&f, b"quarterly numbers");
    ok(srv.ferry("dora").args(["mkdir", "-q", "inbox"]));

    // put FILE NEW-NAME, put FILE DIR/NEW-NAME, put FILE DIR (into it), put FILE DIR/ (into it).
    ok(srv
        .ferry("dora")
        .args(["put", "-q"])
        .arg(&f)
        .arg("/renamed.txt"));
    ok(srv
        .ferry("dora")
        .args(["put", "-q"])
        .arg(&f)
        .arg("inbox/r2.txt"));
    ok(srv.ferry("dora").args(["put", "-q"]).arg(&f).arg("inbox"));
    let home = srv.home("dora");
    for p in ["renamed.txt", "inbox/r2.txt", "inbox/report.txt"] {
        assert_eq!(fs::read(home.join(p)).unwrap(), b"quarterly numbers", "{p}");
    }
    // A trailing slash always means a directory: this one does not exist.
    let out = run(srv.ferry("dora").args(["put", "-q"]).arg(&f).arg("nodir/"));
    assert_eq!(out.status.code(), Some(5));
    assert!(!home.join("nodir").exists());
    // An existing remote file is not replaced without --force, then is with it.
    write(&f, b"revised numbers");
    let out = run(srv
        .ferry("dora")
        .args(["put", "-q"])
        .arg(&f)
        .arg("/renamed.txt"));
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        fs::read(home.join("renamed.txt")).unwrap(),
        b"quarterly numbers"
    );
    ok(srv
        .ferry("dora")
        .args(["put", "-q", "-f"])
        .arg(&f)
        .arg("/renamed.txt"));
    assert_eq!(
        fs::read(home.join("renamed.txt")).unwrap(),
        b"revised numbers"
    );

    // get FILE NEW-NAME, get FILE DIR/NEW-NAME, get FILE DIR (into it).
    let copy = local.path().join("copy.txt");
    ok(srv
        .ferry("dora")
        .args(["get", "-q", "inbox/r2.txt"])
        .arg(&copy));
    assert_eq!(fs::read(&copy).unwrap(), b"quarterly numbers");
    let sub = local.path().join("sub");
    fs::create_dir(&sub).unwrap();
    ok(srv
        .ferry("dora")
        .args(["get", "-q", "renamed.txt"])
        .arg(sub.join("c2.txt")));
    assert_eq!(fs::read(sub.join("c2.txt")).unwrap(), b"revised numbers");
    ok(srv
        .ferry("dora")
        .args(["get", "-q", "inbox/r2.txt"])
        .arg(&sub));
    assert_eq!(fs::read(sub.join("r2.txt")).unwrap(), b"quarterly numbers");
    // No clobbering under a new name either, and a missing local parent is an error.
    let out = run(srv
        .ferry("dora")
        .args(["get", "-q", "renamed.txt"])
        .arg(&copy));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(&copy).unwrap(), b"quarterly numbers");
    let out = run(srv
        .ferry("dora")
        .args(["get", "-q", "renamed.txt"])
        .arg(local.path().join("missing/x.txt")));
    assert_ne!(out.status.code(), Some(0));
    assert!(!local.path().join("missing").exists());
}

/// What a [`scripted_get_server`] connection serves for every `get`: a file that claims
/// `hash`, of which only the first `send` bytes are sent before the connection closes.
struct Serve {
    content: Vec<u8>,
    hash: Digest,
    send: usize,
}

impl Serve {
    fn whole(content: Vec<u8>) -> Serve {
        let hash = Digest::of(HashAlgo::Blake3, &content);
        let send = content.len();
        Serve {
            content,
            hash,
            send,
        }
    }

    fn cut_at(content: Vec<u8>, send: usize) -> Serve {
        Serve {
            send,
            ..Serve::whole(content)
        }
    }
}

/// A fake server that serves one file, named whatever is asked for, as `script` says: the
/// first connection gets `script[0]`, the next `script[1]`, and so on. It can do what a real
/// server cannot be made to: die mid-body at an exact byte, or send bytes that do not match
/// the hash it declared.
fn scripted_get_server(script: Vec<Serve>) -> std::net::SocketAddr {
    use bytes::BytesMut;
    use ferry_proto::{Entry, EntryKind, FrameDecoder, FrameEvent, Reply, ReplyFrame, Request};
    use ferry_proto::{RequestFrame, WireError};
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for serve in script {
            let Ok((mut sock, _)) = listener.accept() else {
                return;
            };
            let mut dec = FrameDecoder::new(1 << 20);
            let mut buf = BytesMut::new();
            'frames: loop {
                let header = loop {
                    if let Some(FrameEvent::Header(h)) = dec.decode(&mut buf).unwrap() {
                        break h;
                    }
                    let mut chunk = [0u8; 4096];
                    let n = sock.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break 'frames;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                };
                let req = RequestFrame::from_header(header, &Default::default()).unwrap();
                let size = serve.content.len() as u64;
                let is_get = matches!(req.request, Request::Get { .. });
                let (reply, body): (Result<Reply, WireError>, &[u8]) = match req.request {
                    Request::Hello { .. } => (
                        Ok(Reply::Hello {
                            version: 1,
                            features: vec![],
                            server: "scripted".into(),
                            peer: String::new(),
                            max_header: 65536,
                        }),
                        b"",
                    ),
                    Request::Login { user, .. } => (
                        Ok(Reply::Login {
                            user,
                            cwd: "/".into(),
                            token: None,
                            token_ttl: None,
                        }),
                        b"",
                    ),
                    Request::Stat { path, .. } => (
                        Ok(Reply::Stat(Entry {
                            name: path,
                            kind: EntryKind::File,
                            size,
                            mtime: 0,
                            hash: None,
                        })),
                        b"",
                    ),
                    // Always from the start: a client asking to resume must cope with that.
                    Request::Get { path, .. } => (
                        Ok(Reply::Get {
                            path,
                            size,
                            offset: 0,
                            mtime: 0,
                            hash: serve.hash.clone(),
                        }),
                        &serve.content[..serve.send],
                    ),
                    Request::Quit => (Ok(Reply::Quit), b""),
                    other => (
                        Err(WireError::new(
                            ferry_proto::ErrorCode::NotFound,
                            format!("{other:?}"),
                        )),
                        b"",
                    ),
                };
                let frame = match reply {
                    Ok(r) => ReplyFrame::ok(req.id, r),
                    Err(e) => ReplyFrame::err(req.id, e),
                };
                let mut out = BytesMut::new();
                frame.encode(1 << 24, &mut out).unwrap();
                out.extend_from_slice(body);
                let cut = is_get && serve.send < serve.content.len();
                if sock.write_all(&out).is_err() || cut {
                    break;
                }
            }
        }
    });
    addr
}

fn get_from(addr: std::net::SocketAddr, dir: &Path, extra: &[&str]) -> std::process::Output {
    run(std::process::Command::new(common::BIN)
        .args(["get", "--json"])
        .args(extra)
        .arg("x.bin")
        .arg(dir)
        .env("FERRY_SERVER", addr.to_string())
        .env("FERRY_USER", "x")
        .env("FERRY_PASSWORD", "x")
        .env("FERRY_PLAIN", "1"))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_interrupted_small_download_leaves_nothing_and_is_redone_whole() {
    let large = bytes(21, 2 * 1024 * 1024 + 5);
    let small_a = bytes(22, 3000);
    let small_b = bytes(23, 3000);
    let addr = scripted_get_server(vec![
        // A large download dies: its partial and record stay, to be resumed.
        Serve::cut_at(large, 1024 * 1024 + 3),
        // The file is now small and a fresh download (no resume) of it dies too. A small
        // download has no name until it verifies, so it leaves nothing; the large one's
        // partial and record, which describe another file, are gone too.
        Serve::cut_at(small_a, 1000),
        // It changed again; the download starts over instead of splicing onto the partial.
        Serve::whole(small_b.clone()),
    ]);
    let dst = tempfile::tempdir().unwrap();
    let target = dst.path().join("x.bin");

    let out = get_from(addr, dst.path(), &[]);
    assert!(!out.status.success());
    assert_eq!(
        names_in(dst.path()),
        ["x.bin.ferry-part", "x.bin.ferry-part.json"]
    );

    let out = get_from(addr, dst.path(), &["--no-resume"]);
    assert!(!out.status.success());
    assert!(!target.exists(), "no final file before verification");
    assert_eq!(names_in(dst.path()), Vec::<String>::new(), "nothing left");

    let out = get_from(addr, dst.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["files"][0]["resumed_from"], 0, "{report}");
    assert_eq!(fs::read(&target).unwrap(), small_b);
    assert_eq!(names_in(dst.path()), ["x.bin"]);
}

#[test]
fn a_corrupted_large_download_leaves_nothing_under_the_final_name() {
    let content = bytes(24, 5 * 1024 * 1024 + 17);
    let mut claimed = content.clone();
    // Only the last byte differs, so the mismatch shows only after the final buffer hashed.
    *claimed.last_mut().unwrap() ^= 1;
    let addr = scripted_get_server(vec![Serve {
        send: content.len(),
        hash: Digest::of(HashAlgo::Blake3, &claimed),
        content,
    }]);
    let dst = tempfile::tempdir().unwrap();
    let out = get_from(addr, dst.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("\"checksum_mismatch\""), "{stdout}");
    assert_eq!(names_in(dst.path()), Vec::<String>::new());
}

/// The JSON report a finished `--json` transfer printed.
fn report_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The remote paths of the failed entries of a transfer report, with their messages.
fn failures(report: &serde_json::Value) -> Vec<(String, String)> {
    let mut failed: Vec<(String, String)> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] != true)
        .map(|f| {
            (
                f["remote"].as_str().unwrap_or_default().to_owned(),
                f["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    failed.sort();
    failed
}

/// `get -r` reads each local directory once instead of looking for every file: files that
/// are there already are still refused without `--force` (and nothing of theirs is touched),
/// the rest arrive, and `--force` replaces them.
#[test]
fn recursive_get_into_a_partly_present_tree_refuses_existing_files_until_forced() {
    let srv = Server::start(&["kate"]);
    let home = srv.home("kate");
    let remote = [
        ("tree/a.txt", bytes(31, 100)),
        ("tree/b.txt", bytes(32, 4096)),
        ("tree/sub/c.txt", bytes(33, 10)),
        ("tree/sub/d.txt", bytes(34, 0)),
        ("tree/new/e.txt", bytes(35, 5000)),
    ];
    for (rel, data) in &remote {
        write(&home.join(rel), data);
    }
    let dst = tempfile::tempdir().unwrap();
    // `tree` and `tree/sub` exist locally with some of the names taken (one by a
    // directory); `tree/new` does not exist.
    write(&dst.path().join("tree/a.txt"), b"local a");
    write(&dst.path().join("tree/sub/unrelated"), b"mine");
    fs::create_dir_all(dst.path().join("tree/sub/c.txt")).unwrap();

    let out = run(srv
        .ferry("kate")
        .args(["get", "-r", "--json", "tree"])
        .arg(dst.path()));
    assert_eq!(out.status.code(), Some(1), "a local failure");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["downloaded"], 3, "{report}");
    let failed = failures(&report);
    assert_eq!(
        failed.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["tree/a.txt", "tree/sub/c.txt"],
        "{report}"
    );
    assert!(
        failed.iter().all(|(_, m)| m.contains("exists")),
        "{failed:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(fs::read(dst.path().join("tree/a.txt")).unwrap(), b"local a");
    assert!(dst.path().join("tree/sub/c.txt").is_dir());
    for rel in ["tree/b.txt", "tree/sub/d.txt", "tree/new/e.txt"] {
        let data = &remote.iter().find(|(r, _)| *r == rel).unwrap().1;
        assert_eq!(&fs::read(dst.path().join(rel)).unwrap(), data, "{rel}");
    }
    assert_eq!(
        names_in(&dst.path().join("tree")),
        ["a.txt", "b.txt", "new", "sub"]
    );
    assert_eq!(
        names_in(&dst.path().join("tree/sub")),
        ["c.txt", "d.txt", "unrelated"]
    );

    fs::remove_dir(dst.path().join("tree/sub/c.txt")).unwrap();
    let out = json(
        srv.ferry("kate")
            .args(["get", "-r", "--json", "--force", "tree"])
            .arg(dst.path()),
    );
    assert_eq!(out["downloaded"], 5, "{out}");
    for (rel, data) in &remote {
        assert_eq!(&fs::read(dst.path().join(rel)).unwrap(), data, "{rel}");
    }
    assert_eq!(
        fs::read(dst.path().join("tree/sub/unrelated")).unwrap(),
        b"mine"
    );
    assert_eq!(
        names_in(&dst.path().join("tree/sub")),
        ["c.txt", "d.txt", "unrelated"],
        "no partials left"
    );
}

/// A local file that takes a name while `get` runs, after the check that the name was free,
/// is not replaced either: the download takes its final name only if it is still free.
#[test]
fn a_file_that_appears_during_a_download_is_not_replaced() {
    let srv = Server::start(&["liam"]);
    let home = srv.home("liam");
    let big = bytes(36, 8 * 1024 * 1024);
    let small = bytes(37, 3000);
    // Served in name order: the slow big file first, then the small one.
    write(&home.join("tree/a-big.bin"), &big);
    write(&home.join("tree/z.txt"), &small);
    let proxy = SlowProxy::start(srv.addr, 64 * 1024);
    let dst = tempfile::tempdir().unwrap();
    let child = spawn_piped(
        srv.ferry_at(&proxy.addr.to_string(), "liam")
            .args(["get", "-r", "--json", "tree"])
            .arg(dst.path()),
    );
    let partial = dst.path().join("tree/a-big.bin.ferry-part");
    wait_until(30, "the big download to start", || partial.exists());
    write(&dst.path().join("tree/z.txt"), b"written meanwhile");
    let out = child.wait_with_output().unwrap();
    let report = report_of(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(report["downloaded"], 1, "{report}");
    let failed = failures(&report);
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0].0, "tree/z.txt", "{report}");
    assert!(failed[0].1.contains("exists"), "{failed:?}");
    assert_eq!(
        fs::read(dst.path().join("tree/z.txt")).unwrap(),
        b"written meanwhile"
    );
    assert_eq!(fs::read(dst.path().join("tree/a-big.bin")).unwrap(), big);
    assert_eq!(
        names_in(&dst.path().join("tree")),
        ["a-big.bin", "z.txt"],
        "nothing of the refused download is left"
    );
}

/// A partial download left in a directory that `get -r` finds already there is resumed:
/// reading the directory once must still see the partial's record.
#[test]
fn recursive_get_resumes_a_partial_left_in_the_tree() {
    let srv = Server::start(&["mona"]);
    let home = srv.home("mona");
    let big = bytes(38, 8 * 1024 * 1024);
    let small = bytes(39, 2000);
    write(&home.join("tree/big.bin"), &big);
    write(&home.join("tree/small.txt"), &small);
    let dst = tempfile::tempdir().unwrap();
    let partial = dst.path().join("tree/big.bin.ferry-part");
    let held = kill_download_midway(
        &srv,
        "mona",
        &[
            "-q".as_ref(),
            "-r".as_ref(),
            "tree".as_ref(),
            dst.path().as_os_str(),
        ],
        &partial,
    );
    assert!(
        held < big.len() as u64,
        "the kill came too late to test resume"
    );
    assert!(dst.path().join("tree/big.bin.ferry-part.json").exists());

    let out = json(
        srv.ferry("mona")
            .args(["get", "-r", "--json", "tree"])
            .arg(dst.path()),
    );
    assert_eq!(out["downloaded"], 2, "{out}");
    let entry = out["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["remote"] == "tree/big.bin")
        .unwrap_or_else(|| panic!("big.bin in {out}"));
    assert!(entry["resumed_from"].as_u64().unwrap() >= held, "{out}");
    assert_eq!(fs::read(dst.path().join("tree/big.bin")).unwrap(), big);
    assert_eq!(fs::read(dst.path().join("tree/small.txt")).unwrap(), small);
    assert_eq!(names_in(&dst.path().join("tree")), ["big.bin", "small.txt"]);
}

/// `put -r` lists the tree first and reads each file later; what is sent is what the file
/// holds when it is read (and hashed), however it changed since the listing: grown, shrunk,
/// grown past the large-file size, or gone (that file alone fails).
#[test]
fn recursive_put_sends_what_files_hold_when_read_not_when_listed() {
    let srv = Server::start(&["nils"]);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    // Sent first, slowly, so the others are read well after the listing.
    let big = bytes(40, 32 * 1024 * 1024);
    write(&tree.join("a-big.bin"), &big);
    write(&tree.join("grows.txt"), &bytes(41, 100));
    write(&tree.join("shrinks.txt"), &bytes(42, 5000));
    write(&tree.join("same-size.txt"), &bytes(43, 4096));
    write(&tree.join("turns-large.bin"), &bytes(44, 10));
    write(&tree.join("vanishes.txt"), &bytes(45, 10));
    let proxy = SlowProxy::start(srv.addr, 64 * 1024);
    let child = spawn_piped(
        srv.ferry_at(&proxy.addr.to_string(), "nils")
            .args(["put", "-r", "--json"])
            .arg(&tree),
    );
    wait_until(30, "the big upload to start", || {
        proxy.upstream.load(Ordering::Relaxed) > 256 * 1024
    });
    let changed = [
        ("grows.txt", bytes(46, 4097)),
        ("shrinks.txt", bytes(47, 7)),
        ("same-size.txt", bytes(48, 4096)),
        ("turns-large.bin", bytes(49, 2 * 1024 * 1024 + 3)),
    ];
    for (name, data) in &changed {
        write(&tree.join(name), data);
    }
    fs::remove_file(tree.join("vanishes.txt")).unwrap();
    let sent_when_changed = proxy.upstream.load(Ordering::Relaxed);
    let out = child.wait_with_output().unwrap();
    let report = report_of(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        sent_when_changed < big.len() as u64 / 2,
        "the files changed too late to test this"
    );
    assert_eq!(report["uploaded"], 5, "{report}");
    let failed = failures(&report);
    assert_eq!(failed.len(), 1, "{report}");
    assert!(failed[0].0.ends_with("tree/vanishes.txt"), "{report}");
    let home = srv.home("nils");
    assert_eq!(fs::read(home.join("tree/a-big.bin")).unwrap(), big);
    for (name, data) in &changed {
        let got = fs::read(home.join("tree").join(name)).unwrap();
        assert!(
            got == *data,
            "{name}: {} bytes uploaded, {} now",
            got.len(),
            data.len()
        );
        let entry = report["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["remote"].as_str().is_some_and(|r| r.ends_with(name)))
            .unwrap_or_else(|| panic!("{name} in {report}"));
        assert_eq!(
            entry["hash"],
            Digest::of(HashAlgo::Blake3, data).to_string(),
            "{name}"
        );
        assert_eq!(entry["size"], data.len(), "{name}");
    }
    assert!(!home.join("tree/vanishes.txt").exists());
}

/// `get` of many named files reads the target directory once (as `get -r` does for each
/// directory): names already there are refused until `--force`, and an interrupted download
/// among them is resumed.
#[test]
fn get_of_many_named_files_refuses_present_ones_and_resumes_a_partial() {
    let srv = Server::start(&["olga"]);
    let home = srv.home("olga");
    let big = bytes(50, 8 * 1024 * 1024);
    write(&home.join("big.bin"), &big);
    let mut names = vec!["big.bin".to_owned()];
    for i in 0..11u64 {
        let name = format!("f{i:02}.txt");
        write(&home.join(&name), &bytes(60 + i, 100 * i as usize));
        names.push(name);
    }
    let dst = tempfile::tempdir().unwrap();
    write(&dst.path().join("f03.txt"), b"local 3");
    write(&dst.path().join("f07.txt"), b"local 7");

    // Interrupted while the big file, asked for first, is still arriving.
    let partial = dst.path().join("big.bin.ferry-part");
    let mut args: Vec<&std::ffi::OsStr> = vec!["-q".as_ref()];
    args.extend(names.iter().map(std::ffi::OsStr::new));
    args.push(dst.path().as_os_str());
    let held = kill_download_midway(&srv, "olga", &args, &partial);
    assert!(
        held < big.len() as u64,
        "the kill came too late to test resume"
    );

    let out = run(srv
        .ferry("olga")
        .args(["get", "--json"])
        .args(&names)
        .arg(dst.path()));
    assert_eq!(out.status.code(), Some(1), "a local failure");
    let report = report_of(&out);
    assert_eq!(report["downloaded"], 10, "{report}");
    let failed = failures(&report);
    assert_eq!(
        failed.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["f03.txt", "f07.txt"],
        "{report}"
    );
    assert!(
        failed.iter().all(|(_, m)| m.contains("exists")),
        "{failed:?}"
    );
    let entry = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["remote"] == "big.bin")
        .unwrap_or_else(|| panic!("big.bin in {report}"));
    assert!(entry["resumed_from"].as_u64().unwrap() >= held, "{report}");
    assert_eq!(fs::read(dst.path().join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(dst.path().join("f03.txt")).unwrap(), b"local 3");
    assert_eq!(fs::read(dst.path().join("f07.txt")).unwrap(), b"local 7");

    let out = json(
        srv.ferry("olga")
            .args(["get", "--json", "--force"])
            .args(&names)
            .arg(dst.path()),
    );
    assert_eq!(out["downloaded"], 12, "{out}");
    for name in &names {
        assert_eq!(
            fs::read(dst.path().join(name)).unwrap(),
            fs::read(home.join(name)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(names_in(dst.path()), names, "no partials left");
}

/// The file's `user.ferry.hash` attribute, if it has one (None also where the file system
/// has no user attributes).
fn hash_attr(path: &Path) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c"user.ferry.hash".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn serve_keeps_hash_records_where_hash_records_says() {
    let local = tempfile::tempdir().unwrap();
    write(&local.path().join("f.txt"), &bytes(40, 5000));
    let records = |srv: &Server| {
        fs::read_dir(srv.root.path().join("state/hashes/ann"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // The default: on the file, where the file system allows it (else as a record file).
    let srv = Server::start(&["ann"]);
    ok(srv
        .ferry("ann")
        .args(["put", "-q"])
        .arg(local.path().join("f.txt"))
        .arg("/"));
    match hash_attr(&srv.home("ann").join("f.txt")) {
        Some(rec) => {
            assert!(String::from_utf8_lossy(&rec).contains("blake3:"));
            assert_eq!(records(&srv), 0);
        }
        None => assert_eq!(records(&srv), 1, "no attributes here: a record file"),
    }
    // `files`: never on the file.
    let srv = Server::start_with(&["ann"], &["--hash-records", "files"]);
    ok(srv
        .ferry("ann")
        .args(["put", "-q"])
        .arg(local.path().join("f.txt"))
        .arg("/"));
    assert_eq!(hash_attr(&srv.home("ann").join("f.txt")), None);
    assert_eq!(records(&srv), 1);
    let listed = ok(srv.ferry("ann").args(["ls", "-l", "/f.txt"]));
    assert!(listed.contains("blake3:"), "{listed}");
    // Anything else is refused by name.
    let bad = run(Command::new(BIN).args(["serve", "--hash-records", "inode"]));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--hash-records") && err.contains("files"),
        "{err}"
    );
}

/// An unchanged large file uploaded again is not hashed again: the hash the server agreed on
/// at its first upload is kept in `$FERRY_CONFIG_DIR/hashes` (only once the file has been
/// still for two seconds). A kept hash that is wrong, here forged, is refused by the server;
/// the client drops it, says so, and uploads the file once more, hashing it.
#[test]
fn a_kept_hash_is_reused_and_a_wrong_one_is_dropped_and_redone() {
    let srv = Server::start(&["kim"]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let data = bytes(21, 3 * 1024 * 1024);
    write(&file, &data);
    let cache = srv.config.path().join("hashes");

    // Just written: too fresh to keep its hash.
    let out = json(srv.ferry("kim").args(["put", "--json"]).arg(&file));
    let hash = out["files"][0]["hash"].as_str().unwrap().to_owned();
    assert!(
        !fs::read_to_string(&cache)
            .unwrap_or_default()
            .contains(&hash)
    );

    std::thread::sleep(std::time::Duration::from_millis(2200));
    ok(srv.ferry("kim").args(["put", "-q", "-f"]).arg(&file));
    let kept = fs::read_to_string(&cache).unwrap();
    assert!(kept.contains(&hash), "{kept}");

    let wrong = format!("blake3:{}", "0".repeat(64));
    fs::write(&cache, kept.replace(&hash, &wrong)).unwrap();
    let out = run(srv.ferry("kim").args(["put", "--json", "-f"]).arg(&file));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the hash kept from an earlier upload did not match"),
        "{stderr}"
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["uploaded"], 1, "{reply}");
    assert_eq!(reply["files"][0]["hash"], hash.as_str(), "{reply}");
    assert_eq!(fs::read(srv.home("kim").join("big.bin")).unwrap(), data);
    let kept = fs::read_to_string(&cache).unwrap();
    assert!(kept.contains(&hash) && !kept.contains(&wrong), "{kept}");

    // --rehash does not look: the forged hash stays where it is, unused.
    fs::write(&cache, kept.replace(&hash, &wrong)).unwrap();
    let out = run(srv
        .ferry("kim")
        .args(["put", "-q", "-f", "--rehash"])
        .arg(&file));
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read_to_string(&cache).unwrap().contains(&wrong));
}

/// Logins in the server's log so far: (with the password, with a session token).
fn logins(srv: &Server) -> (usize, usize) {
    let log = fs::read_to_string(&srv.log).unwrap();
    let token = log.matches("logged in with a session token").count();
    (log.matches("logged in").count() - token, token)
}

#[test]
fn several_connections_move_a_tree_both_ways_and_report_in_order() {
    let srv = Server::start(&["juno"]);
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    let mut expected = Vec::new();
    // Many small files, a few large enough for the large-file path, and an empty one.
    for i in 0..60u64 {
        let len = match i {
            0 => 0,
            1..=3 => 2 * 1024 * 1024 + i as usize,
            _ => (i as usize * 97) % 9000,
        };
        let rel = format!("d{}/f{i:02}", i % 4);
        let data = bytes(300 + i, len);
        write(&tree.join(&rel), &data);
        expected.push((rel, data));
    }
    // Two files a level deeper: `get -r` reaches them in a round of their own, with fewer
    // files than connections.
    for (i, name) in ["d0/deeper/z1", "d0/deeper/z2"].into_iter().enumerate() {
        let data = bytes(900 + i as u64, 3000);
        write(&tree.join(name), &data);
        expected.push((name.to_owned(), data));
    }
    let out = json(
        srv.ferry("juno")
            .args(["put", "-r", "-j", "4", "--json"])
            .arg(&tree),
    );
    assert_eq!(out["uploaded"], 62, "{out}");
    // One password login, then the other three connections with its session token.
    assert_eq!(logins(&srv), (1, 3));
    for (rel, data) in &expected {
        let there = fs::read(srv.home("juno").join("tree").join(rel)).unwrap();
        assert!(&there == data, "{rel}");
    }
    // The report lists the files in the order they were planned, whichever connection
    // carried them: the walk's sorted order.
    let remotes: Vec<String> = out["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["remote"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = remotes.clone();
    sorted.sort();
    assert_eq!(remotes, sorted);

    let dst = tempfile::tempdir().unwrap();
    let out = json(
        srv.ferry("juno")
            .args(["get", "-r", "--connections", "3", "--json", "tree"])
            .arg(dst.path()),
    );
    assert_eq!(out["downloaded"], 62, "{out}");
    assert_eq!(logins(&srv), (1, 3 + 3));
    for (rel, data) in &expected {
        let back = fs::read(dst.path().join("tree").join(rel)).unwrap();
        assert!(&back == data, "{rel}");
        let hash = Digest::of(HashAlgo::Blake3, data).to_string();
        let entry = out["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["remote"] == format!("tree/{rel}"))
            .unwrap_or_else(|| panic!("{rel} in {out}"));
        assert_eq!(entry["hash"], hash, "{rel}");
    }
    let leftovers: Vec<_> = walkdir_names(dst.path())
        .into_iter()
        .filter(|n| n.contains("ferry-part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // One file needs one connection: no others are opened.
    let one = tempfile::tempdir().unwrap();
    ok(srv
        .ferry("juno")
        .args(["get", "-q", "-j", "8", "tree/d1/f01"])
        .arg(one.path()));
    assert_eq!(logins(&srv), (1, 3 + 3 + 1));
}

/// Every file name under `dir`, recursively.
fn walkdir_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(walkdir_names(&e.path()));
        }
    }
    out
}

#[test]
fn several_connections_report_each_file_that_fails_and_finish_the_rest() {
    let srv = Server::start(&["kai"]);
    let local = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        write(&local.path().join(n), &bytes(i as u64, 1000 + i));
    }
    // Three are on the server already, with other bytes: without --force they stay.
    for n in ["f2", "f7", "f11"] {
        write(&srv.home("kai").join(n), b"theirs");
    }
    let out = srv
        .ferry("kai")
        .args(["put", "--json", "-j", "3"])
        .args(names.iter().map(|n| local.path().join(n)))
        .arg("/")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report = report_of(&out);
    assert_eq!(report["uploaded"], 9, "{report}");
    let mut failed: Vec<(String, String)> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] != true)
        .map(|f| (f["remote"].to_string(), f["code"].to_string()))
        .map(|(r, c)| {
            (
                r.trim_matches('"').to_owned(),
                c.trim_matches('"').to_owned(),
            )
        })
        .collect();
    failed.sort();
    let expected: Vec<(String, String)> = ["f11", "f2", "f7"]
        .iter()
        .map(|n| (format!("/{n}"), "already_exists".to_owned()))
        .collect();
    assert_eq!(failed, expected, "{report}");
    for (i, n) in names.iter().enumerate() {
        let there = fs::read(srv.home("kai").join(n)).unwrap();
        if ["f2", "f7", "f11"].contains(&n.as_str()) {
            assert_eq!(there, b"theirs");
        } else {
            assert_eq!(there, bytes(i as u64, 1000 + i), "{n}");
        }
    }
}

#[test]
fn connections_the_server_refuses_leave_the_transfer_to_those_it_took() {
    // Two sessions per user at most: of `-j 4`, one extra connection gets in.
    let srv = Server::start_with(&["lux"], &["--max-sessions-per-user", "2"]);
    let local = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..8).map(|i| format!("g{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        write(&local.path().join(n), &bytes(40 + i as u64, 5000));
    }
    let out = srv
        .ferry("lux")
        .args(["put", "-j", "4"])
        .args(names.iter().map(|n| local.path().join(n)))
        .arg("/")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("opened 2 of 4 connections") && stderr.contains("going on with those"),
        "{stderr}"
    );
    for (i, n) in names.iter().enumerate() {
        let there = fs::read(srv.home("lux").join(n)).unwrap();
        assert_eq!(there, bytes(40 + i as u64, 5000), "{n}");
    }
}

#[test]
fn a_connection_count_out_of_range_is_refused_before_connecting() {
    // No server at all: the argument is checked first.
    for bad in ["0", "65", "-2", "1.5", "many"] {
        for cmd in ["put", "get"] {
            let out = Command::new(BIN)
                .args([cmd, &format!("--connections={bad}"), "x"])
                .env("FERRY_SERVER", "127.0.0.1:1")
                .env("FERRY_PASSWORD", "pw")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} -j {bad}: {stderr}");
            assert!(stderr.contains("--connections"), "{cmd} -j {bad}: {stderr}");
        }
    }
}

/// A file of 6 MiB being uploaded by a first `ferry put` that crawls through a relay (~400
/// KB/s), so its path stays taken; returns the file's bytes, the client and the relay.
fn start_slow_upload(
    srv: &Server,
    user: &str,
    file: &Path,
) -> (Vec<u8>, std::process::Child, SlowProxy) {
    let data = bytes(77, 6 * 1024 * 1024);
    write(file, &data);
    let proxy = SlowProxy::start(srv.addr, 4096);
    let first = srv
        .ferry_at(&proxy.addr.to_string(), user)
        .args(["put", "-q"])
        .arg(file)
        .spawn()
        .unwrap();
    wait_until(30, "the first upload to start", || {
        proxy.upstream.load(Ordering::Relaxed) > 256 * 1024
    });
    (data, first, proxy)
}

#[test]
fn an_upload_busy_with_an_interrupted_one_waits_for_it_to_go() {
    let srv = Server::start(&["max"]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let (data, mut first, proxy) = start_slow_upload(&srv, "max", &file);
    // A second one meanwhile: `busy`, tried again until the first is gone (killed here a
    // second later, as by Ctrl-C), then it finishes, continuing what the first left.
    let second = spawn_piped(srv.ferry("max").args(["put", "--json"]).arg(&file));
    std::thread::sleep(std::time::Duration::from_secs(1));
    first.kill().unwrap();
    first.wait().unwrap();
    // Its connection closes (the relay would otherwise go on forwarding what it buffered).
    drop(proxy);
    let second = second.wait_with_output().unwrap();
    let out = report_of(&second);
    assert!(second.status.success(), "{out}");
    assert_eq!(out["uploaded"], 1, "{out}");
    assert_eq!(fs::read(srv.home("max").join("big.bin")).unwrap(), data);
}

#[test]
fn an_upload_busy_for_long_is_reported_busy() {
    let srv = Server::start(&["nia"]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let (_, mut first, _proxy) = start_slow_upload(&srv, "nia", &file);
    let started = std::time::Instant::now();
    let out = srv
        .ferry("nia")
        .args(["put", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    let waited = started.elapsed();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!out.status.success());
    let report = report_of(&out);
    assert_eq!(report["files"][0]["code"], "busy", "{report}");
    // It was tried again for a while (5 s), not given up at once, nor forever.
    assert!(
        waited >= std::time::Duration::from_secs(4) && waited < std::time::Duration::from_secs(30),
        "{waited:?}"
    );
}

/// A relay to `srv` that cuts its `nth` connection (0: the first) once 1 MiB has come from
/// the server, as a network failure would.
fn cut_a_mib_down(srv: &Server, nth: usize, then_refuse: bool) -> SlowProxy {
    let cut = Cut {
        nth,
        down: true,
        after: 1 << 20,
        then_refuse,
    };
    SlowProxy::start_cutting(srv.addr, 256 * 1024, Some(cut))
}

/// The entry of `remote` in a transfer report.
fn entry_of<'a>(report: &'a serde_json::Value, remote: &str) -> &'a serde_json::Value {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["remote"] == remote)
        .unwrap_or_else(|| panic!("{remote} in {report}"))
}

/// The connection fails in the middle of a download of several files: the report still says
/// which arrived (verified, under their names) and which were interrupted (their partial
/// kept), with exit code 3; running the command again resumes the interrupted one.
#[test]
fn a_lost_connection_reports_the_downloads_it_finished_and_those_it_interrupted() {
    let srv = Server::start(&["pia"]);
    let home = srv.home("pia");
    let small = bytes(60, 64 * 1024);
    let large = bytes(61, 4 * 1024 * 1024);
    write(&home.join("a.bin"), &small);
    write(&home.join("b.bin"), &large);
    // After 1 MiB from the server: all of a.bin, some of b.bin.
    let proxy = cut_a_mib_down(&srv, 0, false);
    let dst = tempfile::tempdir().unwrap();
    let out = run(srv
        .ferry_at(&proxy.addr.to_string(), "pia")
        .args(["get", "--json", "a.bin", "b.bin"])
        .arg(dst.path()));
    let report = report_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{report}\n{stderr}");
    assert_eq!(report["downloaded"], 1, "{report}");
    assert_eq!(entry_of(&report, "a.bin")["ok"], true, "{report}");
    let b = entry_of(&report, "b.bin");
    assert_eq!(b["ok"], false, "{report}");
    assert_eq!(b["code"], "interrupted", "{report}");
    assert!(stderr.contains("get b.bin: interrupted"), "{stderr}");
    assert_eq!(fs::read(dst.path().join("a.bin")).unwrap(), small);
    assert!(
        !dst.path().join("b.bin").exists(),
        "no name before verification"
    );
    let held = fs::metadata(dst.path().join("b.bin.ferry-part"))
        .unwrap()
        .len();
    assert!(
        held > 0 && held < large.len() as u64,
        "partial of {held} bytes"
    );

    let again = json(
        srv.ferry("pia")
            .args(["get", "--json", "b.bin"])
            .arg(dst.path()),
    );
    assert_eq!(again["downloaded"], 1, "{again}");
    assert!(
        entry_of(&again, "b.bin")["resumed_from"].as_u64().unwrap() > 0,
        "{again}"
    );
    assert_eq!(fs::read(dst.path().join("b.bin")).unwrap(), large);
}

/// The same for uploads: the files the server stored before the connection failed are
/// reported done, the one it cut short is reported interrupted and resumes next time.
#[test]
fn a_lost_connection_reports_the_uploads_it_finished_and_those_it_interrupted() {
    let srv = Server::start(&["quin"]);
    let local = tempfile::tempdir().unwrap();
    let small = bytes(62, 10 * 1024);
    let large = bytes(63, 6 * 1024 * 1024);
    write(&local.path().join("a.bin"), &small);
    write(&local.path().join("b.bin"), &large);
    // About 3 MB/s up, cut after 2 MiB: a.bin's reply is back long before.
    let cut = Cut {
        nth: 0,
        down: false,
        after: 2 << 20,
        then_refuse: false,
    };
    let proxy = SlowProxy::start_cutting(srv.addr, 32 * 1024, Some(cut));
    let out = run(srv
        .ferry_at(&proxy.addr.to_string(), "quin")
        .args(["put", "--json"])
        .arg(local.path().join("a.bin"))
        .arg(local.path().join("b.bin"))
        .arg("/"));
    let report = report_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{report}\n{stderr}");
    assert_eq!(report["uploaded"], 1, "{report}");
    assert_eq!(entry_of(&report, "/a.bin")["ok"], true, "{report}");
    let b = entry_of(&report, "/b.bin");
    assert_eq!(b["code"], "interrupted", "{report}");
    assert!(stderr.contains("b.bin: interrupted"), "{stderr}");
    assert_eq!(fs::read(srv.home("quin").join("a.bin")).unwrap(), small);
    assert!(!srv.home("quin").join("b.bin").exists());

    let again = json(
        srv.ferry("quin")
            .args(["put", "--json"])
            .arg(local.path().join("b.bin"))
            .arg("/"),
    );
    assert_eq!(again["uploaded"], 1, "{again}");
    assert!(
        entry_of(&again, "/b.bin")["resumed_from"].as_u64().unwrap() > 0,
        "{again}"
    );
    assert_eq!(fs::read(srv.home("quin").join("b.bin")).unwrap(), large);
}

/// With several connections, one failing takes only its own unfinished files with it: the
/// other connection's files, and those it finished before, are done. Its unfinished ones go
/// once more over a connection opened in its place, resuming what arrived; if none can be
/// opened, they are reported interrupted (exit 3), their partials kept.
#[test]
fn a_lost_connection_of_several_hands_its_files_to_another() {
    for server_gone in [false, true] {
        let srv = Server::start(&["rosa"]);
        let home = srv.home("rosa");
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("a.bin", bytes(64, 64 * 1024)),
            ("b.bin", bytes(65, 64 * 1024)),
            ("c.bin", bytes(66, 4 * 1024 * 1024)),
            ("d.bin", bytes(67, 4 * 1024 * 1024)),
        ];
        for (name, data) in &files {
            write(&home.join(name), data);
        }
        // Shared out by bytes: a and c on the first connection, b and d on the second,
        // which is cut 1 MiB in (all of b, part of d).
        let proxy = cut_a_mib_down(&srv, 1, server_gone);
        let dst = tempfile::tempdir().unwrap();
        let out = run(srv
            .ferry_at(&proxy.addr.to_string(), "rosa")
            .args(["get", "--json", "-j", "2"])
            .args(files.iter().map(|(n, _)| n))
            .arg(dst.path()));
        let report = report_of(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("a transfer connection failed")
                && stderr.contains("trying its 1 unfinished file(s) again"),
            "{stderr}"
        );
        let remotes: Vec<&str> = report["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["remote"].as_str().unwrap())
            .collect();
        assert_eq!(remotes, ["a.bin", "b.bin", "c.bin", "d.bin"], "in order");
        for (name, data) in &files[..3] {
            assert_eq!(&fs::read(dst.path().join(name)).unwrap(), data, "{name}");
        }
        let d = entry_of(&report, "d.bin");
        if server_gone {
            assert_eq!(out.status.code(), Some(3), "{report}");
            assert_eq!(report["downloaded"], 3, "{report}");
            assert_eq!(d["code"], "interrupted", "{report}");
            assert!(dst.path().join("d.bin.ferry-part").exists());
        } else {
            assert!(out.status.success(), "{report}\n{stderr}");
            assert_eq!(report["downloaded"], 4, "{report}");
            assert!(d["resumed_from"].as_u64().unwrap() > 0, "{report}");
            assert_eq!(fs::read(dst.path().join("d.bin")).unwrap(), files[3].1);
        }
    }
}

/// A tree download whose connection fails between listing pages: the files done are
/// reported, the one cut short and the directory whose listing could not go on are reported
/// interrupted, and the command ends instead of listing on a dead connection.
#[test]
fn a_lost_connection_ends_a_tree_download_with_the_unlisted_rest_reported() {
    let srv = Server::start(&["sami"]);
    let home = srv.home("sami");
    let first = bytes(68, 3000);
    write(&home.join("tree/a.bin"), &first);
    write(&home.join("tree/b.bin"), &bytes(69, 4 * 1024 * 1024));
    write(&home.join("tree/c.bin"), &bytes(70, 3000));
    let proxy = cut_a_mib_down(&srv, 0, false);
    let dst = tempfile::tempdir().unwrap();
    // One name per listing page: b.bin's download goes with the request for the page
    // that would list c.bin.
    let out = run(srv
        .ferry_at(&proxy.addr.to_string(), "sami")
        .env("FERRY_LS_PAGE", "1")
        .args(["get", "-r", "--json", "tree"])
        .arg(dst.path()));
    let report = report_of(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert_eq!(report["downloaded"], 1, "{report}");
    assert_eq!(entry_of(&report, "tree/a.bin")["ok"], true, "{report}");
    assert_eq!(entry_of(&report, "tree/b.bin")["code"], "interrupted");
    assert_eq!(entry_of(&report, "tree")["code"], "interrupted", "{report}");
    assert_eq!(report["files"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(fs::read(dst.path().join("tree/a.bin")).unwrap(), first);
    assert!(!dst.path().join("tree/c.bin").exists());
}

/// In the shell, a transfer whose connection fails reports what it interrupted, and the
/// shell then ends (exit 3) instead of failing at every later command.
#[test]
fn the_shell_leaves_once_its_connection_fails() {
    let srv = Server::start(&["tove"]);
    let large = bytes(71, 4 * 1024 * 1024);
    write(&srv.home("tove").join("b.bin"), &large);
    let proxy = cut_a_mib_down(&srv, 0, false);
    let work = tempfile::tempdir().unwrap();
    let out = run_shell(
        &mut srv.ferry_at(&proxy.addr.to_string(), "tove"),
        work.path(),
        "get b.bin\nmkdir after\nls\nquit",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("get b.bin: interrupted"), "{stderr}");
    assert!(
        stderr.trim_end().ends_with("leaving the shell"),
        "nothing after: {stderr}"
    );
    assert!(!srv.home("tove").join("after").exists());
    assert!(work.path().join("b.bin.ferry-part").exists());
}

/// Uploads `big.bin` (8 MiB) and then `z.txt` from `dir` through a relay at ~6 MB/s, and calls
/// `meanwhile` on big.bin once 2 MiB of it has passed. Returns the command's output.
fn put_changing(
    srv: &Server,
    user: &str,
    dir: &Path,
    meanwhile: impl FnOnce(&Path),
) -> std::process::Output {
    let proxy = SlowProxy::start(srv.addr, 64 * 1024);
    let child = spawn_piped(
        srv.ferry_at(&proxy.addr.to_string(), user)
            .args(["put", "--json"])
            .arg(dir.join("big.bin"))
            .arg(dir.join("z.txt"))
            .arg("/"),
    );
    wait_until(30, "part of the upload to pass", || {
        proxy.upstream.load(Ordering::Relaxed) > 2 * 1024 * 1024
    });
    meanwhile(&dir.join("big.bin"));
    child.wait_with_output().unwrap()
}

/// Checks the report of a two-file transfer (`count_key`: "uploaded" or "downloaded") in which
/// `failed` failed with `code` and exit code `exit` while the other file, z.txt, went through;
/// returns the failure's message.
fn failed_alone(
    out: &std::process::Output,
    count_key: &str,
    failed: &str,
    code: &str,
    exit: i32,
) -> String {
    let report = report_of(out);
    assert_eq!(out.status.code(), Some(exit), "{report}");
    assert_eq!(report[count_key], 1, "{report}");
    let z = if failed.starts_with('/') {
        "/z.txt"
    } else {
        "z.txt"
    };
    assert_eq!(entry_of(&report, z)["ok"], true, "{report}");
    let entry = entry_of(&report, failed);
    assert_eq!(entry["code"], code, "{report}");
    entry["message"].as_str().unwrap().to_owned()
}

/// A file that shrinks while it is uploaded (a log rotated, say) fails alone, with a clear
/// message, and nothing of it appears; the file after it still goes over the same connection
/// (the body was completed and declared with a hash it cannot have, so the server refused
/// it). On plain TCP (sendfile) and TLS alike. Run again, it uploads as it is now.
#[test]
fn a_file_that_shrinks_while_uploaded_fails_alone() {
    for (srv, user) in [
        (Server::start_plain(&["ulla"]), "ulla"),
        (Server::start(&["ulla"]), "ulla"),
    ] {
        let src = tempfile::tempdir().unwrap();
        write(&src.path().join("big.bin"), &bytes(72, 8 * 1024 * 1024));
        write(&src.path().join("z.txt"), b"after it");
        let out = put_changing(&srv, user, src.path(), |big| {
            let f = fs::OpenOptions::new().write(true).open(big).unwrap();
            f.set_len(1024 * 1024 + 5).unwrap();
        });
        let message = failed_alone(&out, "uploaded", "/big.bin", "local", 1);
        assert!(message.contains("shrank"), "{message}");
        assert_eq!(fs::read(srv.home(user).join("z.txt")).unwrap(), b"after it");
        assert!(!srv.home(user).join("big.bin").exists());

        let again = json(
            srv.ferry(user)
                .args(["put", "--json", "-f"])
                .arg(src.path().join("big.bin"))
                .arg("/"),
        );
        assert_eq!(again["uploaded"], 1, "{again}");
        assert_eq!(
            fs::read(srv.home(user).join("big.bin")).unwrap(),
            bytes(72, 8 * 1024 * 1024)[..1024 * 1024 + 5]
        );
    }
}

/// A file that shrinks on the server while it is downloaded (changed on the host, outside
/// ferry) fails alone: the server completes the announced body with zeros, the client's hash
/// check refuses it and keeps nothing of it, and the file after it arrives over the same
/// connection. Plain TCP (sendfile) and TLS alike. Fetched again, it arrives as it is now.
#[test]
fn a_file_that_shrinks_on_the_server_while_downloaded_fails_alone() {
    const BIG: usize = 32 * 1024 * 1024;
    for (srv, user) in [
        (Server::start_plain(&["wilma"]), "wilma"),
        (Server::start(&["wilma"]), "wilma"),
    ] {
        let home = srv.home(user);
        write(&home.join("big.bin"), &bytes(74, BIG));
        write(&home.join("z.txt"), b"after it");
        let dest = tempfile::tempdir().unwrap();
        // ~12 MB/s: the server runs at most the socket buffers (a few MiB) ahead of the client.
        let proxy = SlowProxy::start(srv.addr, 128 * 1024);
        let child = spawn_piped(
            srv.ferry_at(&proxy.addr.to_string(), user)
                .args(["get", "--json", "big.bin", "z.txt"])
                .arg(dest.path()),
        );
        wait_until(30, "part of the download to pass", || {
            proxy.downstream.load(Ordering::Relaxed) > 1024 * 1024
        });
        let f = fs::OpenOptions::new()
            .write(true)
            .open(home.join("big.bin"))
            .unwrap();
        f.set_len(1024 * 1024 + 5).unwrap();
        let out = child.wait_with_output().unwrap();
        failed_alone(&out, "downloaded", "big.bin", "checksum_mismatch", 6);
        assert_eq!(fs::read(dest.path().join("z.txt")).unwrap(), b"after it");
        let left: Vec<_> = fs::read_dir(dest.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["z.txt"], "nothing of big.bin is kept");

        let again = json(
            srv.ferry(user)
                .args(["get", "--json", "big.bin"])
                .arg(dest.path()),
        );
        assert_eq!(again["downloaded"], 1, "{again}");
        assert_eq!(
            fs::read(dest.path().join("big.bin")).unwrap(),
            bytes(74, BIG)[..1024 * 1024 + 5]
        );
    }
}

/// A large download that cannot be written locally (here the file-size limit, as a full disk
/// would do) fails alone with that error, keeping what was written as a partial; the file
/// after it arrives over the same connection, and the command run again resumes it.
#[test]
fn a_download_that_cannot_be_written_fails_alone_and_resumes() {
    use std::os::unix::process::CommandExt;
    const LIMIT: u64 = 3 << 20;
    let srv = Server::start(&["xena"]);
    let home = srv.home("xena");
    let big = bytes(75, 8 * 1024 * 1024);
    write(&home.join("big.bin"), &big);
    write(&home.join("z.txt"), b"after it");
    let dest = tempfile::tempdir().unwrap();
    let mut cmd = srv.ferry("xena");
    cmd.args(["get", "--json", "big.bin", "z.txt"])
        .arg(dest.path());
    // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A write past the limit then fails with EFBIG instead of killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = run(&mut cmd);
    let message = failed_alone(&out, "downloaded", "big.bin", "local", 1);
    assert!(message.contains("too large"), "{message}");
    assert_eq!(fs::read(dest.path().join("z.txt")).unwrap(), b"after it");
    assert!(!dest.path().join("big.bin").exists());
    let partial = dest.path().join("big.bin.ferry-part");
    assert_eq!(fs::metadata(&partial).unwrap().len(), LIMIT);

    let again = json(
        srv.ferry("xena")
            .args(["get", "--json", "big.bin"])
            .arg(dest.path()),
    );
    assert_eq!(again["downloaded"], 1, "{again}");
    assert_eq!(again["files"][0]["resumed_from"], LIMIT, "{again}");
    assert_eq!(fs::read(dest.path().join("big.bin")).unwrap(), big);
    assert!(!partial.exists());
}

/// A file that grows while it is uploaded (a log appended to) is uploaded as the size it had
/// when its upload began, verified: not refused for a hash over more than was sent.
#[test]
fn a_file_that_grows_while_uploaded_is_sent_as_it_was() {
    for (srv, user) in [
        (Server::start_plain(&["vera"]), "vera"),
        (Server::start(&["vera"]), "vera"),
    ] {
        let src = tempfile::tempdir().unwrap();
        let data = bytes(73, 8 * 1024 * 1024);
        write(&src.path().join("big.bin"), &data);
        write(&src.path().join("z.txt"), b"after it");
        let out = put_changing(&srv, user, src.path(), |big| {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(big).unwrap();
            f.write_all(&[7u8; 100_000]).unwrap();
        });
        let report = report_of(&out);
        assert!(out.status.success(), "{report}");
        assert_eq!(report["uploaded"], 2, "{report}");
        assert_eq!(fs::read(srv.home(user).join("big.bin")).unwrap(), data);
    }
}
