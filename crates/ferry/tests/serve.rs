//! `ferry serve` and `ferry user` as a user runs them: the real binary, a temporary data
//! root, port 0, the raw protocol over TCP, SIGTERM at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_proto::{
    Digest, ErrorCode, FrameDecoder, FrameEvent, HashAlgo, Reply, ReplyFrame, Request,
    RequestFrame, WireError,
};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn user(root: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("user")
        .args(args)
        .arg("--root")
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before reading its input (a duplicate `add`, say) may exit before
    // this write: the broken pipe is its answer, and its output says why.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing stdin: {e}"),
        _ => {}
    }
    child.wait_with_output().unwrap()
}

/// A running `ferry serve`, killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    fn start(root: &Path) -> Serve {
        let mut child = Command::new(BIN)
            .args(["serve", "--plain", "--listen", "127.0.0.1:0", "--root"])
            .arg(root)
            .env("FERRY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (atx, arx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = atx.send(line);
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
        });
        let line = arx
            .recv_timeout(Duration::from_secs(15))
            .expect("server printed its address");
        let addr = line
            .trim()
            .strip_prefix("ferry listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Serve {
            child,
            addr,
            stderr,
        }
    }

    fn stderr_so_far(&self) -> String {
        let mut s = String::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    /// SIGTERM, then the exit status (bounded).
    fn terminate(mut self) -> std::process::ExitStatus {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "server did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking protocol client.
struct Client {
    s: TcpStream,
    buf: BytesMut,
    dec: FrameDecoder,
    id: u64,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            s,
            buf: BytesMut::new(),
            dec: FrameDecoder::new(1 << 20),
            id: 0,
        }
    }

    fn call_body(&mut self, request: Request, body: &[u8]) -> (Result<Reply, WireError>, Vec<u8>) {
        self.id += 1;
        let mut out = BytesMut::new();
        RequestFrame {
            id: self.id,
            request,
            body_len: body.len() as u64,
        }
        .encode(u32::MAX, &mut out)
        .unwrap();
        out.extend_from_slice(body);
        self.s.write_all(&out).unwrap();
        let mut header: Option<ReplyFrame> = None;
        let mut got = Vec::new();
        loop {
            while let Some(ev) = self.dec.decode(&mut self.buf).unwrap() {
                match ev {
                    FrameEvent::Header(h) => {
                        let f = ReplyFrame::from_header(h).unwrap();
                        assert_eq!(f.id, self.id);
                        if f.body_len == 0 {
                            return (f.result, got);
                        }
                        header = Some(f);
                    }
                    FrameEvent::Body(b) => {
                        got.extend_from_slice(&b);
                        if self.dec.at_frame_boundary() {
                            return (header.unwrap().result, got);
                        }
                    }
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "server closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call(&mut self, request: Request) -> Result<Reply, WireError> {
        self.call_body(request, &[]).0
    }

    fn login(addr: SocketAddr, name: &str, pw: &str) -> Result<Client, WireError> {
        let mut c = Client::connect(addr);
        c.call(Request::Hello {
            version: 1,
            features: vec![],
            client: None,
        })
        .unwrap();
        c.call(Request::login_password(name, pw))?;
        Ok(c)
    }
}

#[test]
fn first_start_creates_the_layout_and_says_how_to_begin() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("fresh");
    let srv = Serve::start(&root);
    let err = srv.stderr_so_far();
    assert!(
        err.contains("no users yet") && err.contains("ferry user add"),
        "{err}"
    );
    for p in ["settings.json", "homes", "state/partials", "state/hashes"] {
        assert!(root.join(p).exists(), "{p}");
    }
    assert!(srv.terminate().success());
}

#[test]
fn serve_users_protocol_and_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("data");
    let out = user(
        &root,
        &["add", "alice", "--password-stdin", "--quota", "1MiB"],
        "pw-alice\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = user(&root, &["add", "Not/Valid", "--password-stdin"], "x\n");
    assert!(!bad.status.success());
    let dup = user(&root, &["add", "alice", "--password-stdin"], "x\n");
    assert!(!dup.status.success());

    let srv = Serve::start(&root);
    let mut c = Client::connect(srv.addr);
    match c
        .call(Request::Hello {
            version: 1,
            features: vec!["resume".into()],
            client: None,
        })
        .unwrap()
    {
        Reply::Hello { peer, .. } => assert_eq!(peer, c.s.local_addr().unwrap().to_string()),
        other => panic!("{other:?}"),
    }
    let e = c
        .call(Request::login_password("alice", "wrong"))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AuthFailed);
    c.call(Request::login_password("alice", "pw-alice"))
        .unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (r, _) = c.call_body(
        Request::Put {
            path: "/hello.bin".into(),
            size: body.len() as u64,
            hash: Some(Digest::of(HashAlgo::Md5, &body)),
            offset: 0,
            overwrite: false,
            mtime: None,
        },
        &body,
    );
    r.unwrap();
    let (r, got) = c.call_body(
        Request::Get {
            path: "/hello.bin".into(),
            offset: 0,
            algo: Some(HashAlgo::Md5),
        },
        &[],
    );
    assert!(
        matches!(r.unwrap(), Reply::Get { hash, .. } if hash == Digest::of(HashAlgo::Md5, &body))
    );
    assert_eq!(got, body);
    // Over the 1 MiB quota.
    let big = vec![7u8; 900_000];
    let (r, _) = c.call_body(
        Request::Put {
            path: "/big".into(),
            size: big.len() as u64,
            hash: Some(Digest::of(HashAlgo::Blake3, &big)),
            offset: 0,
            overwrite: false,
            mtime: None,
        },
        &big,
    );
    assert_eq!(r.unwrap_err().code, ErrorCode::QuotaExceeded);

    // `user list` sees the usage; a user added while the server runs can log in at once;
    // a changed password applies at once.
    let list = user(&root, &["list", "--json"], "");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("\"name\":\"alice\"") && text.contains("\"used_bytes\":300000"),
        "{text}"
    );
    let out = user(&root, &["add", "bob", "--password-stdin"], "pw-bob\n");
    assert!(out.status.success());
    Client::login(srv.addr, "bob", "pw-bob").expect("new user logs in without restart");
    let out = user(&root, &["passwd", "bob", "--password-stdin"], "new-pw\n");
    assert!(out.status.success());
    assert_eq!(
        Client::login(srv.addr, "bob", "pw-bob")
            .err()
            .map(|e| e.code),
        Some(ErrorCode::AuthFailed)
    );
    Client::login(srv.addr, "bob", "new-pw").expect("new password works");
    let out = user(&root, &["del", "bob", "--purge"], "");
    assert!(out.status.success());
    assert!(!root.join("homes/bob").exists());
    assert_eq!(
        Client::login(srv.addr, "bob", "new-pw")
            .err()
            .map(|e| e.code),
        Some(ErrorCode::AuthFailed)
    );

    assert_eq!(c.call(Request::Quit).unwrap(), Reply::Quit);
    let status = srv.terminate();
    assert!(status.success(), "exit status {status:?}");
}
