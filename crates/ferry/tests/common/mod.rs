//! Shared harness for the end-to-end tests: a real `ferry serve` on a temporary data root and
//! port 0, users made with the real `ferry user add`, and the real client binary run against it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// A running server, killed on drop.
pub struct Server {
    pub root: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The clients' config directory (their known_hosts), fresh for each server.
    pub config: tempfile::TempDir,
    /// Whether the server speaks plain TCP (`--plain`) rather than TLS.
    pub plain: bool,
    /// Everything the server wrote on stderr (its log), at debug level.
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
    child: Child,
}

impl Server {
    /// Starts a server on a fresh root with the given users (password = "pw-" + name).
    pub fn start(users: &[&str]) -> Server {
        Self::start_with(users, &[])
    }

    pub fn start_with(users: &[&str], extra: &[&str]) -> Server {
        let root = tempfile::tempdir().expect("temp root");
        for u in users {
            add_user(root.path(), u, &[]);
        }
        Self::start_on(root, extra)
    }

    /// A server on plain TCP, for clients without TLS.
    pub fn start_plain(users: &[&str]) -> Server {
        Self::start_with(users, &["--plain"])
    }

    pub fn start_on(root: tempfile::TempDir, extra: &[&str]) -> Server {
        let plain = extra.contains(&"--plain");
        let log_dir = tempfile::tempdir().expect("temp log dir");
        let log = log_dir.path().join("server.log");
        let mut child = Command::new(BIN)
            .args(["serve", "--root"])
            .arg(root.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("FERRY_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawning ferry serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(addr) = line.strip_prefix("ferry listening on ") {
                        let _ = tx.send(addr.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server printed its address")
            .parse()
            .expect("address parses");
        Server {
            root,
            addr,
            config: tempfile::tempdir().expect("temp config dir"),
            plain,
            log,
            _log_dir: log_dir,
            child,
        }
    }

    /// The server's certificate fingerprint, as clients pin it.
    pub fn fingerprint(&self) -> String {
        let pem = std::fs::read(self.root.path().join("tls/cert.pem")).expect("cert.pem");
        let der = rustls_pki_der(&pem);
        ferry_client::tls::fingerprint(&der).to_string()
    }

    pub fn home(&self, user: &str) -> PathBuf {
        self.root.path().join("homes").join(user)
    }

    /// A client command as `user`, with the password in the environment as scripts do.
    pub fn ferry(&self, user: &str) -> Command {
        self.ferry_at(&self.addr.to_string(), user)
    }

    pub fn ferry_at(&self, addr: &str, user: &str) -> Command {
        let mut c = Command::new(BIN);
        c.env("FERRY_SERVER", addr)
            .env("FERRY_CONFIG_DIR", self.config.path())
            .env("FERRY_USER", user)
            .env("FERRY_PASSWORD", format!("pw-{user}"))
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null());
        if self.plain {
            c.env("FERRY_PLAIN", "1");
        } else {
            c.env_remove("FERRY_PLAIN");
        }
        c
    }
}

/// The DER bytes of the first certificate in a PEM file.
pub fn rustls_pki_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem)
        .expect("a certificate in the PEM file")
        .to_vec()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn add_user(root: &Path, name: &str, extra: &[&str]) {
    let mut child = Command::new(BIN)
        .args(["user", "add", name, "--password-stdin", "--root"])
        .arg(root)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ferry user add");
    writeln!(child.stdin.take().unwrap(), "pw-{name}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a command with its output captured, for a test that acts while it runs (and then
/// takes the output with `wait_with_output`).
pub fn spawn_piped(cmd: &mut Command) -> std::process::Child {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs a command with a deadline, returning its output. The pipes are drained while it
/// runs, so a command that prints a lot cannot block on a full pipe.
pub fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("waiting for the command"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "command timed out: {cmd:?}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Runs and asserts success, returning stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn json(cmd: &mut Command) -> serde_json::Value {
    let out = run(cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{cmd:?}: stdout is not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Deterministic pseudo-random bytes, so every file's content differs.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A loopback TCP relay that forwards at most `rate` bytes per 10 ms in each direction, so a
/// transfer through it is slow enough to interrupt. Stops when dropped.
pub struct SlowProxy {
    pub addr: SocketAddr,
    /// Bytes forwarded from clients to the server so far.
    pub upstream: Arc<AtomicU64>,
    /// Bytes forwarded from the server to clients so far.
    pub downstream: Arc<AtomicU64>,
    /// The first MiB of what clients sent, to check what crosses the wire.
    pub recorded: Arc<std::sync::Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

/// Where a [`SlowProxy`] cuts one connection, as a network failure would: its `nth` (0 is
/// the first it accepts), once `after` bytes have gone `down` (server to client) or up. The
/// relay forwards exactly that many, then shuts both sockets.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    pub nth: usize,
    pub down: bool,
    pub after: u64,
    /// From the cut on, every new connection is closed as soon as it is accepted (the
    /// server has gone away, as far as the client can tell).
    pub then_refuse: bool,
}

impl SlowProxy {
    pub fn start(target: SocketAddr, rate: usize) -> SlowProxy {
        SlowProxy::start_cutting(target, rate, None)
    }

    pub fn start_cutting(target: SocketAddr, rate: usize, cut: Option<Cut>) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let upstream = Arc::new(AtomicU64::new(0));
        let up2 = upstream.clone();
        let downstream = Arc::new(AtomicU64::new(0));
        let down2 = downstream.clone();
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rec2 = recorded.clone();
        let cut_done = Arc::new(AtomicBool::new(false));
        thread::spawn(move || {
            let mut accepted = 0;
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_)
                        if cut_done.load(Ordering::Relaxed)
                            && cut.is_some_and(|c| c.then_refuse) => {}
                    Ok((client, _)) => {
                        let nth = accepted;
                        accepted += 1;
                        client.set_nonblocking(false).unwrap();
                        let server = TcpStream::connect(target).unwrap();
                        for (mut from, mut to, count, record, down) in [
                            (
                                client.try_clone().unwrap(),
                                server.try_clone().unwrap(),
                                up2.clone(),
                                Some(rec2.clone()),
                                false,
                            ),
                            (server, client, down2.clone(), None, true),
                        ] {
                            let stop3 = stop2.clone();
                            let cut_done = cut_done.clone();
                            let mut left = cut
                                .filter(|c| c.nth == nth && c.down == down)
                                .map(|c| c.after);
                            thread::spawn(move || {
                                let mut buf = vec![0u8; rate];
                                while !stop3.load(Ordering::Relaxed) && left != Some(0) {
                                    let want = left.map_or(rate, |l| rate.min(l as usize));
                                    match from.read(&mut buf[..want]) {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => {
                                            if to.write_all(&buf[..n]).is_err() {
                                                break;
                                            }
                                            if let Some(l) = left.as_mut() {
                                                *l -= n as u64;
                                            }
                                            count.fetch_add(n as u64, Ordering::Relaxed);
                                            if let Some(rec) = &record {
                                                let mut rec = rec.lock().unwrap();
                                                if rec.len() < 1 << 20 {
                                                    rec.extend_from_slice(&buf[..n]);
                                                }
                                            }
                                        }
                                    }
                                    thread::sleep(Duration::from_millis(10));
                                }
                                if left == Some(0) {
                                    cut_done.store(true, Ordering::Relaxed);
                                }
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                let _ = from.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SlowProxy {
            addr,
            upstream,
            downstream,
            recorded,
            stop,
        }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until `cond` holds, or panics after `secs`.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}
