//! The server's virtual paths: `ferry_server::home::VPath::resolve`, then opening the result
//! through the home capability (cap-std), as every request handler does.
//!
//! Input: arbitrary bytes split at the first `0xff` byte (never in UTF-8) into a cwd and a
//! path, each taken as UTF-8 lossily (so the strings still carry NULs, control characters,
//! backslashes and look-alikes). The cwd is resolved from `/`, the path from that cwd.
//!
//! Invariants, besides "no panic":
//! - an accepted path displays as `/` or `/c1/c2/…` where every component is non-empty,
//!   not `.` or `..`, at most 255 bytes, free of NUL, control characters, `/` and `\`, and
//!   the whole is at most 4096 bytes; `rel()` is `.` for the root, else the components
//!   joined by `/` (relative, so cap-std keeps it inside the home);
//! - it is what a simple reference model computes (split on `/`, drop empty and `.`, pop on
//!   `..`, fail above the root), and resolving its display again gives the same path
//!   (idempotent); every parent is a prefix of it and resolves to itself (prefix-closed);
//! - a rejection is always `invalid_path`, and happens exactly when the model rejects;
//! - opening the result in a real home (with symlinks to `/`, `..`, a sibling and a loop
//!   inside it) either fails or yields a descriptor whose `/proc/self/fd` path lies inside
//!   the home.

#![no_main]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferry_proto::ErrorCode;
use ferry_server::home::{Home, MAX_COMPONENT, MAX_PATH, VPath};
use libfuzzer_sys::fuzz_target;

struct World {
    _dir: tempfile::TempDir,
    home_path: PathBuf,
    home: Home,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let home_path = dir.path().join("homes/alice").canonicalize_or_create();
        std::fs::create_dir_all(dir.path().join("homes/bob")).unwrap();
        std::fs::write(dir.path().join("homes/bob/secret"), b"bob").unwrap();
        std::fs::write(dir.path().join("outside"), b"outside").unwrap();
        for d in ["a/b/c", "docs", "\u{2024}\u{2024}", "．．"] {
            std::fs::create_dir_all(home_path.join(d)).unwrap();
        }
        std::fs::write(home_path.join("a/f"), b"f").unwrap();
        std::fs::write(home_path.join("docs/x.txt"), b"x").unwrap();
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, home_path.join(name)).unwrap()
        };
        link("/", "root");
        link("..", "up");
        link("../bob", "bob");
        link("../../outside", "out");
        link("a/b", "ab");
        link("loop", "loop");
        link("/etc/passwd", "passwd");
        link("../../../../../../../../..", "a/deep");
        let home = Home::open(&home_path).unwrap();
        World {
            _dir: dir,
            home_path,
            home,
        }
    })
}

trait CreateCanon {
    fn canonicalize_or_create(self) -> PathBuf;
}

impl CreateCanon for PathBuf {
    fn canonicalize_or_create(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self.canonicalize().unwrap()
    }
}

/// The reference: the rules of docs/PROTOCOL.md "Paths", written as plainly as possible.
fn model(cwd: &[String], input: &str) -> Option<Vec<String>> {
    if input.is_empty()
        || input.len() > MAX_PATH
        || input.chars().any(|c| c.is_control())
        || input.contains('\\')
    {
        return None;
    }
    let mut out: Vec<String> = if input.starts_with('/') {
        Vec::new()
    } else {
        cwd.to_vec()
    };
    for c in input.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c if c.len() > MAX_COMPONENT => return None,
            c => out.push(c.to_owned()),
        }
    }
    let len: usize = if out.is_empty() {
        1
    } else {
        out.iter().map(|c| c.len() + 1).sum()
    };
    (len <= MAX_PATH).then_some(out)
}

fn components(p: &VPath) -> Vec<String> {
    let d = p.display();
    assert!(d.starts_with('/'), "{d:?} is not absolute");
    if d == "/" {
        assert!(p.is_root());
        return Vec::new();
    }
    assert!(!p.is_root());
    d[1..].split('/').map(str::to_owned).collect()
}

fn check_clean(p: &VPath) {
    let d = p.display();
    assert!(d.len() <= MAX_PATH, "path of {} bytes", d.len());
    let comps = components(p);
    for c in &comps {
        assert!(!c.is_empty(), "empty component in {d:?}");
        assert!(c != "." && c != "..", "{c:?} component in {d:?}");
        assert!(c.len() <= MAX_COMPONENT, "component of {} bytes", c.len());
        assert!(
            !c.contains(['/', '\\', '\0']) && !c.chars().any(char::is_control),
            "bad character in component {c:?}"
        );
    }
    let rel = p.rel();
    assert!(rel.is_relative(), "rel() {rel:?} is not relative");
    if comps.is_empty() {
        assert_eq!(rel, Path::new("."));
    } else {
        assert_eq!(rel, PathBuf::from(comps.join("/")));
    }
    assert_eq!(p.name(), comps.last().map(String::as_str));
    // Idempotent, and prefix-closed: every ancestor is a clean path it starts with. Paths of
    // up to 32 components have every ancestor checked; deeper ones the nearest 2 (each check
    // allocates the whole path again, and under ASan a quadratic number of allocations for
    // 2000-component paths made the target run at ~60 inputs/s), the first component and the
    // root.
    assert_eq!(
        VPath::root().resolve(&d).expect("display resolves again"),
        *p
    );
    let mut anc = p.parent();
    let mut depth = comps.len();
    while let Some(a) = anc {
        depth -= 1;
        if comps.len() > 32 && comps.len() - depth > 2 {
            break;
        }
        assert_eq!(components(&a), comps[..depth]);
        assert!(p.starts_with(&a));
        assert_eq!(VPath::root().resolve(&a.display()).unwrap(), a);
        anc = a.parent();
    }
    assert!(p.starts_with(&VPath::root()));
    if let Some(first) = comps.first() {
        let top = VPath::root().resolve(first).unwrap();
        assert!(p.starts_with(&top));
        assert_eq!(top.parent(), Some(VPath::root()));
    }
}

fn check_inside(p: &VPath) {
    let w = world();
    let dir = w.home.dir();
    let fd_path = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    if let Ok(f) = dir.open(p.rel()) {
        let real = fd_path(f.as_raw_fd());
        assert!(
            real.starts_with(&w.home_path),
            "{} opened {real:?}",
            p.display()
        );
    }
    if let Ok(d) = dir.open_dir(p.rel()) {
        let real = fd_path(d.as_raw_fd());
        assert!(
            real.starts_with(&w.home_path),
            "{} opened dir {real:?}",
            p.display()
        );
    }
    if let Ok(m) = dir.metadata(p.rel()) {
        // Whatever metadata is reported must belong to something inside the home: the
        // outside file and bob's secret have sizes 7 and 3 and no inside file has those.
        assert!(
            !(m.is_file() && (m.len() == 7 || m.len() == 3)),
            "{} stat'ed outside",
            p.display()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (cwd_bytes, path_bytes) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let cwd_s = String::from_utf8_lossy(cwd_bytes);
    let input = String::from_utf8_lossy(path_bytes);
    let root = VPath::root();
    let cwd = match root.resolve(&cwd_s) {
        Ok(c) => {
            check_clean(&c);
            c
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::InvalidPath);
            assert!(model(&[], &cwd_s).is_none(), "cwd {cwd_s:?} rejected: {e}");
            root
        }
    };
    let cwd_comps = components(&cwd);
    match cwd.resolve(&input) {
        Ok(p) => {
            check_clean(&p);
            assert_eq!(Some(components(&p)), model(&cwd_comps, &input), "{input:?}");
            check_inside(&p);
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::InvalidPath);
            assert_eq!(model(&cwd_comps, &input), None, "{input:?} rejected: {e}");
        }
    }
});
