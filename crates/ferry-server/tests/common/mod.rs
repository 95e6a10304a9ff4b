//! An in-process server on 127.0.0.1:0 and a small raw-protocol client over real TCP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::{
    Digest, ErrorCode, FrameDecoder, FrameEvent, HashAlgo, Reply, ReplyFrame, Request,
    RequestFrame, WireError,
};
use ferry_server::{DataRoot, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    pub handle: Option<Running>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let (r, _) = DataRoot::open_or_init(&root).unwrap();
        add_user(&r, "alice", "alice-pw", u64::MAX, u64::MAX);
        add_user(&r, "bob", "bob-pw", u64::MAX, u64::MAX);
        let mut config = ServerConfig::new(&root);
        tune(&mut config);
        let (addr, stop, handle) = launch(config).await;
        TestServer {
            addr,
            dir,
            root,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Stops the server and starts a new one (nothing cached in memory) on the same data
    /// root, at a new address.
    pub async fn restart_with(mut self, tune: impl FnOnce(&mut ServerConfig)) -> Self {
        self.stop_run().await;
        let mut config = ServerConfig::new(&self.root);
        tune(&mut config);
        let (addr, stop, handle) = launch(config).await;
        self.addr = addr;
        self.stop = Some(stop);
        self.handle = Some(handle);
        self
    }

    pub fn data_root(&self) -> DataRoot {
        DataRoot::new(&self.root)
    }

    pub fn home(&self, user: &str) -> PathBuf {
        self.root.join("homes").join(user)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    pub async fn login(&self, user: &str) -> Client {
        let mut c = self.client().await;
        c.hello_login(user, &format!("{user}-pw")).await;
        c
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        self.stop_run().await;
    }

    async fn stop_run(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let h = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("server stops in time")
            .unwrap()
            .unwrap();
    }

    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

type Running = JoinHandle<Result<(), ferry_server::ServerError>>;

/// `ferry_server::run` on a fresh loopback port: its address, its stop signal, its task.
async fn launch(config: ServerConfig) -> (SocketAddr, oneshot::Sender<()>, Running) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(ferry_server::run(listener, config, async move {
        let _ = rx.await;
    }));
    (addr, tx, handle)
}

/// Adds a user with cheap argon2id parameters (the hash format is the real one).
pub fn add_user(root: &DataRoot, name: &str, pw: &str, quota: u64, files: u64) {
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    let phc = ferry_server::users::hash_password_with(pw, params).unwrap();
    ferry_server::users::add_hashed(root, name, phc, quota, files).unwrap();
}

pub fn blake3(data: &[u8]) -> Digest {
    Digest::of(HashAlgo::Blake3, data)
}

/// Deterministic test bytes.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub struct Client {
    pub stream: TcpStream,
    rbuf: BytesMut,
    dec: FrameDecoder,
    next_id: u64,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Client {
            stream,
            rbuf: BytesMut::new(),
            dec: FrameDecoder::new(u32::MAX),
            next_id: 1,
        }
    }

    /// Connects from a chosen loopback address (e.g. 127.0.0.2), to look like another host.
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Client {
            stream,
            rbuf: BytesMut::new(),
            dec: FrameDecoder::new(u32::MAX),
            next_id: 1,
        }
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends a request (and its body, if any) without waiting; returns its id.
    pub async fn send(&mut self, request: Request, body: &[u8]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = BytesMut::new();
        let frame = RequestFrame {
            id,
            request,
            body_len: body.len() as u64,
        };
        frame.encode(u32::MAX, &mut buf).unwrap();
        buf.extend_from_slice(body);
        self.write_raw(&buf).await;
        id
    }

    /// The next reply and its body; `None` if the server closed.
    pub async fn try_recv(&mut self) -> Option<(ReplyFrame, Vec<u8>)> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("reply in time")
    }

    async fn recv_inner(&mut self) -> Option<(ReplyFrame, Vec<u8>)> {
        let mut header = None;
        let mut body = Vec::new();
        loop {
            while let Some(ev) = self
                .dec
                .decode(&mut self.rbuf)
                .expect("server frames decode")
            {
                match ev {
                    FrameEvent::Header(h) => {
                        let done = h.body_len == 0;
                        header = Some(ReplyFrame::from_header(h).expect("reply parses"));
                        if done {
                            return header.map(|h| (h, body));
                        }
                    }
                    FrameEvent::Body(b) => {
                        body.extend_from_slice(&b);
                        if self.dec.at_frame_boundary() {
                            return header.map(|h| (h, body));
                        }
                    }
                }
            }
            self.rbuf.reserve(256 * 1024);
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> (ReplyFrame, Vec<u8>) {
        self.try_recv().await.expect("server closed unexpectedly")
    }

    /// Sends and waits for the reply, checking the id.
    pub async fn call_body(
        &mut self,
        request: Request,
        body: &[u8],
    ) -> (Result<Reply, WireError>, Vec<u8>) {
        let id = self.send(request, body).await;
        let (frame, body) = self.recv().await;
        assert_eq!(frame.id, id, "reply id");
        (frame.result, body)
    }

    pub async fn call(&mut self, request: Request) -> Result<Reply, WireError> {
        self.call_body(request, &[]).await.0
    }

    pub async fn expect_err(&mut self, request: Request, code: ErrorCode) -> WireError {
        let what = format!("{request:?}");
        match self.call(request).await {
            Err(e) => {
                assert_eq!(e.code, code, "{what}: {e}");
                e
            }
            Ok(r) => panic!("{what}: expected {code}, got {r:?}"),
        }
    }

    pub async fn hello(&mut self) -> Reply {
        self.call(Request::Hello {
            version: 1,
            features: vec!["pipelining".into(), "resume".into(), "nonsense".into()],
            client: Some("test".into()),
        })
        .await
        .expect("hello")
    }

    pub async fn hello_login(&mut self, user: &str, pw: &str) {
        self.hello().await;
        self.call(Request::login_password(user, pw))
            .await
            .expect("login");
    }

    pub async fn put(&mut self, path: &str, data: &[u8]) -> Result<Reply, WireError> {
        self.put_opts(path, data, false).await
    }

    pub async fn put_opts(
        &mut self,
        path: &str,
        data: &[u8],
        overwrite: bool,
    ) -> Result<Reply, WireError> {
        let req = Request::Put {
            path: path.into(),
            size: data.len() as u64,
            hash: Some(blake3(data)),
            offset: 0,
            overwrite,
            mtime: None,
        };
        self.call_body(req, data).await.0
    }

    pub async fn get(&mut self, path: &str) -> Result<(Reply, Vec<u8>), WireError> {
        let (r, body) = self
            .call_body(
                Request::Get {
                    path: path.into(),
                    offset: 0,
                    algo: None,
                },
                &[],
            )
            .await;
        r.map(|r| (r, body))
    }

    pub async fn mkdir(&mut self, path: &str) {
        self.call(Request::Mkdir {
            path: path.into(),
            parents: true,
        })
        .await
        .expect("mkdir");
    }

    pub async fn ls(&mut self, path: &str) -> Vec<ferry_proto::Entry> {
        match self
            .call(Request::Ls {
                path: Some(path.into()),
                after: None,
                limit: None,
            })
            .await
        {
            Ok(Reply::Ls { entries, .. }) => entries,
            other => panic!("ls {path}: {other:?}"),
        }
    }

    /// Waits until the server closes the connection (bounded).
    pub async fn expect_closed(&mut self) {
        let mut sink = [0u8; 4096];
        let r = tokio::time::timeout(WAIT, async {
            loop {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "server did not close the connection");
    }
}

/// Every file below `dir` with its contents (for "nothing changed" checks).
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.push((p.clone(), b"<dir>".to_vec()));
                walk(&p, out);
            } else if ft.is_symlink() {
                out.push((
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(dir, &mut out);
    out.sort();
    out
}

/// One frame's bytes, header with `id` then `body`: for tests that write several frames (and
/// what follows a body) in one go.
pub fn request_bytes(id: u64, request: Request, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestFrame {
        id,
        request,
        body_len: body.len() as u64,
    }
    .encode(u32::MAX, &mut buf)
    .unwrap();
    buf.extend_from_slice(body);
    buf.to_vec()
}

pub fn put_hash_frame(id: u64, hash: Digest) -> Vec<u8> {
    request_bytes(id, Request::PutHash { hash }, &[])
}

pub fn pwd_frame(id: u64) -> Vec<u8> {
    request_bytes(id, Request::Pwd, &[])
}

/// Logs `user` in (password `<user>-pw`) on a connection that said it sends hashes after
/// bodies, checking that the server offered that.
pub async fn login_hash_after_body(srv: &TestServer, user: &str) -> Client {
    let mut c = srv.client().await;
    match c
        .call(Request::Hello {
            version: 1,
            features: vec![
                "pipelining".into(),
                "resume".into(),
                "hash-after-body".into(),
            ],
            client: Some("test".into()),
        })
        .await
        .unwrap()
    {
        Reply::Hello { features, .. } => {
            assert!(
                features.contains(&"hash-after-body".to_owned()),
                "{features:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    c.call(Request::login_password(user, format!("{user}-pw")))
        .await
        .unwrap();
    c
}

/// The next reply, which must answer `id` and carry no body.
pub async fn reply_to(c: &mut Client, id: u64) -> ReplyFrame {
    let (f, body) = c.recv().await;
    assert_eq!(f.id, id, "reply id: {f:?}");
    assert!(body.is_empty());
    f
}

/// Runs `attempt` (given the attempt's number, 0 first) until its reply is not `busy`, for
/// about five seconds at most. Right after a connection is cut in the middle of an upload,
/// its session may still hold the path while it syncs what arrived (the partial already
/// shows every byte), and a put of that path is then `busy`; a client tries again, and so do
/// the tests that resume at once.
pub async fn unless_busy<T>(
    mut attempt: impl AsyncFnMut(u64) -> Result<T, WireError>,
) -> Result<T, WireError> {
    for n in 0.. {
        match attempt(n).await {
            Err(e) if e.code == ErrorCode::Busy && n < 100 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done => return done,
        }
    }
    unreachable!("the loop returns")
}
