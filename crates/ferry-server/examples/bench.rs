//! Throughput of one upload and one download over loopback against an in-process server.
//!
//! `cargo run --release -p ferry-server --example bench -- [MiB] [runs]`
//!
//! The client side does as little as possible (the body is one in-memory buffer whose hash is
//! computed before the clock starts; downloads are counted, not hashed) so the numbers show
//! the server: socket → channel → hash + write → fsync → rename, and sendfile for `get`.

use std::time::Instant;

use bytes::BytesMut;
use ferry_proto::{Digest, FrameDecoder, FrameEvent, HashAlgo, ReplyFrame, Request, RequestFrame};
use ferry_server::{DataRoot, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn reply(s: &mut TcpStream, buf: &mut BytesMut, dec: &mut FrameDecoder) -> (ReplyFrame, u64) {
    let mut header = None;
    let mut body = 0u64;
    loop {
        while let Some(ev) = dec.decode(buf).unwrap() {
            match ev {
                FrameEvent::Header(h) => {
                    let f = ReplyFrame::from_header(h).unwrap();
                    if f.body_len == 0 {
                        return (f, 0);
                    }
                    header = Some(f);
                }
                FrameEvent::Body(b) => {
                    body += b.len() as u64;
                    if dec.at_frame_boundary() {
                        return (header.unwrap(), body);
                    }
                }
            }
        }
        buf.reserve(1 << 20);
        assert!(s.read_buf(buf).await.unwrap() > 0);
    }
}

/// One client: log in, upload `size` bytes, download them again, check them.
async fn one_client(addr: std::net::SocketAddr, i: usize, size: usize) {
    let body: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    let mut dec = FrameDecoder::new(u32::MAX);
    let mut out = BytesMut::new();
    let reqs = [
        (
            Request::Hello {
                version: 1,
                features: vec![],
                client: None,
            },
            0,
        ),
        (Request::login_password("bench", "pw"), 0),
        (
            Request::Put {
                path: format!("/many/c{i}"),
                size: size as u64,
                hash: Some(Digest::of(HashAlgo::Blake3, &body)),
                offset: 0,
                overwrite: true,
                mtime: None,
            },
            size as u64,
        ),
        (
            Request::Get {
                path: format!("/many/c{i}"),
                offset: 0,
                algo: None,
            },
            0,
        ),
    ];
    // Pipelined: everything in one write.
    for (n, (req, body_len)) in reqs.into_iter().enumerate() {
        RequestFrame {
            id: n as u64 + 1,
            request: req,
            body_len,
        }
        .encode(u32::MAX, &mut out)
        .unwrap();
        if body_len > 0 {
            out.extend_from_slice(&body);
        }
    }
    s.write_all(&out).await.unwrap();
    for n in 0..4 {
        let (f, got) = reply(&mut s, &mut buf, &mut dec).await;
        assert_eq!(f.id, n + 1, "client {i}: {:?}", f.result);
        f.result
            .unwrap_or_else(|e| panic!("client {i} request {n}: {e}"));
        if n == 3 {
            assert_eq!(got, size as u64);
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let runs: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let (root, _) = DataRoot::open_or_init(dir.path().join("data")).unwrap();
    let phc =
        ferry_server::users::hash_password_with("pw", argon2::Params::new(8, 1, 1, None).unwrap())
            .unwrap();
    ferry_server::users::add_hashed(&root, "bench", phc, u64::MAX, u64::MAX).unwrap();
    let listener = ferry_server::server::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ServerConfig::new(root.path());
    if let Some(n) = std::env::var("BENCH_IO_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.io_buffer = n;
    }
    if std::env::var("BENCH_CLIENTS").is_ok() {
        config.max_connections = 100_000;
    }
    tokio::spawn(ferry_server::run(listener, config, std::future::pending()));

    let body: Vec<u8> = (0..mib * (1 << 20))
        .map(|i| (i as u64).wrapping_mul(2654435761) as u8 ^ (i >> 12) as u8)
        .collect();
    let hash = Digest::of(HashAlgo::Blake3, &body);
    if let Ok(n) = std::env::var("BENCH_IDLE") {
        // Memory of N logged-in idle connections (server and client share the process, so
        // this is an upper bound for the server).
        let n: usize = n.parse().unwrap();
        let rss = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find(|l| l.starts_with("VmRSS"))
                .unwrap()
                .to_owned()
        };
        let before = rss();
        let mut conns = Vec::new();
        for _ in 0..n {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = BytesMut::new();
            let mut dec = FrameDecoder::new(u32::MAX);
            let mut out = BytesMut::new();
            RequestFrame::new(
                1,
                Request::Hello {
                    version: 1,
                    features: vec![],
                    client: None,
                },
            )
            .encode(u32::MAX, &mut out)
            .unwrap();
            RequestFrame::new(2, Request::login_password("bench", "pw"))
                .encode(u32::MAX, &mut out)
                .unwrap();
            s.write_all(&out).await.unwrap();
            reply(&mut s, &mut buf, &mut dec).await.0.result.unwrap();
            reply(&mut s, &mut buf, &mut dec).await.0.result.unwrap();
            conns.push(s);
        }
        println!("{n} idle logged-in connections: {before} -> {}", rss());
        return;
    }
    if let Ok(n) = std::env::var("BENCH_CLIENTS") {
        let n: usize = n.parse().unwrap();
        std::fs::create_dir_all(root.home_dir("bench").join("many")).unwrap();
        let t = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| tokio::spawn(one_client(addr, i, 64 * 1024)))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        println!(
            "{n} concurrent clients, each login + put 64 KiB + get: {:.2?}",
            t.elapsed()
        );
        return;
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = BytesMut::new();
    let mut dec = FrameDecoder::new(u32::MAX);
    let mut id = 0;
    let mut send = |req: Request, body_len: u64| {
        id += 1;
        let mut out = BytesMut::new();
        RequestFrame {
            id,
            request: req,
            body_len,
        }
        .encode(u32::MAX, &mut out)
        .unwrap();
        out
    };
    for req in [
        Request::Hello {
            version: 1,
            features: vec![],
            client: None,
        },
        Request::login_password("bench", "pw"),
    ] {
        s.write_all(&send(req, 0)).await.unwrap();
        reply(&mut s, &mut buf, &mut dec).await.0.result.unwrap();
    }
    for run in 0..runs {
        let path = format!("/f{run}");
        let t = Instant::now();
        let hdr = send(
            Request::Put {
                path: path.clone(),
                size: body.len() as u64,
                hash: Some(hash.clone()),
                offset: 0,
                overwrite: false,
                mtime: None,
            },
            body.len() as u64,
        );
        s.write_all(&hdr).await.unwrap();
        for chunk in body.chunks(1 << 20) {
            s.write_all(chunk).await.unwrap();
        }
        reply(&mut s, &mut buf, &mut dec).await.0.result.unwrap();
        let up = t.elapsed();
        let t = Instant::now();
        s.write_all(&send(
            Request::Get {
                path,
                offset: 0,
                algo: None,
            },
            0,
        ))
        .await
        .unwrap();
        let (f, n) = reply(&mut s, &mut buf, &mut dec).await;
        f.result.unwrap();
        assert_eq!(n, body.len() as u64);
        let down = t.elapsed();
        let rate = |d: std::time::Duration| mib as f64 / d.as_secs_f64();
        println!(
            "run {run}: put {mib} MiB in {:.2?} ({:.0} MiB/s, hash+write+fsync+rename); get in {:.2?} ({:.0} MiB/s, sendfile)",
            up,
            rate(up),
            down,
            rate(down)
        );
    }
}
