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
use tokio::net::{TcpListener, TcpStream};

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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ferry_server::run(
        listener,
        ServerConfig::new(root.path()),
        std::future::pending(),
    ));

    let body: Vec<u8> = (0..mib * (1 << 20))
        .map(|i| (i as u64).wrapping_mul(2654435761) as u8 ^ (i >> 12) as u8)
        .collect();
    let hash = Digest::of(HashAlgo::Blake3, &body);
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
        Request::Login {
            user: "bench".into(),
            password: "pw".into(),
        },
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
                hash: hash.clone(),
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
