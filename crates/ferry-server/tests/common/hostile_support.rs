//! Helpers for the hostile-input suite (`tests/hostile.rs`): raw frames, a directory-tree
//! hash for "nothing outside changed" checks, a bystander user who must keep being served,
//! and a scan for partial files that must never become visible in a home.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::{Digest, ErrorCode, HashAlgo, Request};
use ferry_server::ServerConfig;

use crate::common::{Client, TestServer, add_user, data};

/// One frame: the 4-byte little-endian length of `header`, then `header`, then `body`.
pub fn frame(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(body);
    v
}

/// A frame whose length prefix says `len` whatever follows.
pub fn prefix(len: u32) -> Vec<u8> {
    len.to_le_bytes().to_vec()
}

pub const HELLO: &[u8] = br#"{"id":1,"op":"hello","version":1,"features":["pipelining"]}"#;

/// Hashes every entry below `dir` (not following symlinks), skipping the `skip` paths (and
/// what is below them): relative path → `dir`, `link:<target>` or `file:<mode>:<blake3>`.
/// Iterative, so a very deep tree cannot overflow the test's stack; directories whose paths
/// are too long to open by path (deeper than PATH_MAX) are listed but not entered.
pub fn tree_hash(dir: &Path, skip: &[PathBuf]) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                out.insert(rel, "unreadable".to_owned());
                continue;
            };
            let ft = meta.file_type();
            let v = if ft.is_dir() {
                stack.push(p.clone());
                format!("dir:{:o}", meta.permissions().mode())
            } else if ft.is_symlink() {
                format!("link:{}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                let data = std::fs::read(&p).unwrap();
                format!(
                    "file:{:o}:{}",
                    meta.permissions().mode(),
                    Digest::of(HashAlgo::Blake3, &data)
                )
            } else {
                "other".to_owned()
            };
            out.insert(rel, v);
        }
    }
    out
}

/// Files and directories in a home whose names look like partial or temporary uploads.
pub fn partial_like(home: &Path) -> Vec<String> {
    tree_hash(home, &[])
        .into_keys()
        .filter(|k| {
            let name = k.rsplit('/').next().unwrap();
            name.ends_with(".part")
                || name.contains(".ferry")
                || name.ends_with(".tmp")
                || name.starts_with(".~")
        })
        .collect()
}

/// A server with alice (the attacker), bob (a sibling whose home must stay untouched), carol
/// (a bystander who must keep being served) and a directory beside the data root that no
/// request may reach.
pub struct Arena {
    pub srv: TestServer,
    pub outside: PathBuf,
    pub carol: Client,
    guarded: BTreeMap<String, String>,
    n: AtomicU64,
}

impl Arena {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let srv = TestServer::start_with(tune).await;
        add_user(&srv.data_root(), "carol", "carol-pw", u64::MAX, u64::MAX);
        let outside = srv.dir.path().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("secret"), b"top secret, outside every home").unwrap();
        std::fs::write(outside.join("sub/deep"), b"deeper").unwrap();
        let mut bob = srv.login("bob").await;
        bob.put("/secret", b"bob's secret").await.unwrap();
        bob.mkdir("/dir").await;
        bob.put("/dir/file", b"bob's file").await.unwrap();
        bob.call(Request::Quit).await.unwrap();
        let mut alice = srv.login("alice").await;
        alice.call(Request::Quit).await.unwrap();
        let carol = srv.login("carol").await;
        let mut arena = Arena {
            srv,
            outside,
            carol,
            guarded: BTreeMap::new(),
            n: AtomicU64::new(0),
        };
        arena.guarded = arena.guarded_now();
        arena
    }

    /// Everything no request of alice may change: the whole test directory (data root and
    /// `outside`) except alice's own home and server state, and the bystander's.
    fn guarded_now(&self) -> BTreeMap<String, String> {
        let root = &self.srv.root;
        let skip = [
            root.join("homes/alice"),
            root.join("homes/carol"),
            root.join("state/partials/alice"),
            root.join("state/partials/carol"),
            root.join("state/hashes/alice"),
            root.join("state/hashes/carol"),
            root.join("state/tmp"),
        ];
        tree_hash(self.srv.dir.path(), &skip)
    }

    pub fn alice_home(&self) -> PathBuf {
        self.srv.home("alice")
    }

    pub fn alice_tree(&self) -> BTreeMap<String, String> {
        tree_hash(&self.alice_home(), &[])
    }

    pub async fn alice(&self) -> Client {
        self.srv.login("alice").await
    }

    /// A fresh connection that has said hello (not logged in).
    pub async fn greeted(&self) -> Client {
        let mut c = self.srv.client().await;
        c.hello().await;
        c
    }

    /// The bystander uploads and downloads a file of her own and gets it back intact.
    pub async fn bystander_served(&mut self) {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let body = data(1000 + n, 64 * 1024 + n as usize);
        let path = format!("/bystander-{n}");
        self.carol
            .put(&path, &body)
            .await
            .expect("bystander put is served");
        let (_, got) = self
            .carol
            .get(&path)
            .await
            .expect("bystander get is served");
        assert!(got == body, "bystander got her file back intact");
    }

    /// The checks every case ends with: the bystander is served, nothing guarded changed,
    /// and no partial upload is visible in alice's home.
    pub async fn check(&mut self, what: &str) {
        self.bystander_served().await;
        let now = self.guarded_now();
        if now != self.guarded {
            let mut diff = Vec::new();
            for (k, v) in &now {
                if self.guarded.get(k) != Some(v) {
                    diff.push(format!("changed/added {k}"));
                }
            }
            for k in self.guarded.keys() {
                if !now.contains_key(k) {
                    diff.push(format!("removed {k}"));
                }
            }
            panic!("{what}: something outside alice's home changed: {diff:?}");
        }
        let partials = partial_like(&self.alice_home());
        assert!(
            partials.is_empty(),
            "{what}: partial files visible in the home: {partials:?}"
        );
    }

    pub async fn stop(self) {
        self.srv.stop().await;
    }
}

/// Reads the next reply and asserts it is a fatal error (id 0, `code`), then that the server
/// closes the connection.
pub async fn expect_fatal(c: &mut Client, code: ErrorCode, what: &str) {
    match c.try_recv().await {
        Some((f, _)) => {
            let e = f
                .result
                .as_ref()
                .expect_err(&format!("{what}: expected {code}, got a success"));
            assert_eq!((f.id, e.code), (0, code), "{what}: {e}");
        }
        None => panic!("{what}: closed without the {code} error"),
    }
    assert!(
        c.try_recv().await.is_none(),
        "{what}: a frame after the fatal error"
    );
}

/// Asserts the server closes the connection without sending anything more than, at most,
/// one `bad_request` with id 0 (a stream that ends inside a frame: the peer may have only
/// shut down its sending side and still read).
pub async fn expect_silent_close(c: &mut Client, what: &str) {
    if let Some((f, _)) = c.try_recv().await {
        match &f.result {
            Err(e) if f.id == 0 && e.code == ErrorCode::BadRequest => {}
            _ => panic!("{what}: expected a close, got {f:?}"),
        }
        assert!(c.try_recv().await.is_none(), "{what}: more after the error");
    }
}

/// Sends raw header bytes as one frame and returns the reply's code (or `None` for success),
/// asserting the reply has `id` (non-fatal errors keep the connection).
pub async fn raw_call(c: &mut Client, header: &[u8], body: &[u8], id: u64) -> Option<ErrorCode> {
    c.write_raw(&frame(header, body)).await;
    let (f, _) = c.recv().await;
    assert_eq!(
        f.id,
        id,
        "reply id for {}: {f:?}",
        String::from_utf8_lossy(header)
    );
    f.result.err().map(|e| e.code)
}

/// Removes `dir` and everything below it without recursion and without long paths: each
/// subdirectory is first renamed to a shallow name beside `dir`, so a tree deeper than
/// PATH_MAX (which `std::fs::remove_dir_all`, and so `TempDir`'s drop, would recurse into and
/// overflow the stack on) goes away level by level.
pub fn remove_deep(dir: &Path) {
    let park = dir.with_file_name(format!(
        "{}.parked",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&park).unwrap();
    let mut n = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                let to = park.join(n.to_string());
                n += 1;
                std::fs::rename(e.path(), &to).unwrap();
                stack.push(to);
            } else {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        std::fs::remove_dir(&d).unwrap();
    }
    std::fs::remove_dir_all(&park).unwrap();
}
