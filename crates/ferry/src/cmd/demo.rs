//! `ferry demo sticky`: the sticky-packet problem (粘包) on loopback, then the framed fix.
//!
//! TCP carries a byte stream, not messages: the receiver's `recv` returns whatever bytes have
//! arrived, up to its buffer size. Several sends can come back as one recv (merged) and one
//! send can be cut across two (split). The demo makes both visible, then sends the same
//! messages through ferry's framing and shows each arrives exactly.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;

use anyhow::{Context, bail};
use bytes::BytesMut;
use ferry_proto::frame::encode_header;
use ferry_proto::{FrameDecoder, FrameEvent};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show TCP merging and splitting messages, then ferry's framing delivering them exactly.
    Sticky(StickyArgs),
}

#[derive(Debug, clap::Args)]
pub struct StickyArgs {
    /// How many messages to send.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    messages: u32,
    /// The receiver's recv() buffer size, in bytes (the course uses 1024; small shows more).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    recv_size: u32,
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Sticky(args) => sticky(args),
    }
}

/// The messages the demo sends: short and long, so both merging and splitting show.
pub fn demo_messages(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("hello {i}"),
            1 => format!("ls /home/course/{i}"),
            2 => format!("get report-{i}.txt"),
            _ => format!("put {i}: {}", "data ".repeat(12)),
        })
        .collect()
}

fn sticky(args: StickyArgs) -> anyhow::Result<ExitCode> {
    let messages = demo_messages(args.messages);
    let recv_size = args.recv_size as usize;
    let total: usize = messages.iter().map(String::len).sum();

    outln!(
        "== 1. plain send/recv: {} messages, one send() each, {total} bytes; recv({recv_size}) ==",
        messages.len()
    );
    let pieces = exchange(&messages, recv_size, |m| m.as_bytes().to_vec())?;
    let boundaries = message_boundaries(&messages);
    let (mut merged, mut split) = (0, 0);
    let mut offset = 0;
    for (i, piece) in pieces.iter().enumerate() {
        let end = offset + piece.len();
        let starts = boundaries
            .iter()
            .filter(|&&b| b > offset && b < end)
            .count();
        // A piece is split if it ends inside a message or begins inside one.
        let cut = !boundaries.contains(&end) || (offset != 0 && !boundaries.contains(&offset));
        let note = match (starts > 0, cut) {
            (true, true) => "merged and split",
            (true, false) => "merged",
            (false, true) => "split",
            (false, false) => "exactly one message",
        };
        merged += usize::from(starts > 0);
        split += usize::from(cut);
        outln!(
            "plain recv #{:<3} {:>4} bytes  {:<20} {}",
            i + 1,
            piece.len(),
            note,
            show(piece)
        );
        offset = end;
    }
    outln!(
        "plain: {} sends arrived as {} recvs; {merged} recvs merged messages, {split} split one",
        messages.len(),
        pieces.len()
    );

    outln!();
    outln!("== 2. framed: 4-byte length + JSON header + body, same recv({recv_size}) ==");
    let pieces = exchange(&messages, recv_size, |m| {
        let mut frame = BytesMut::new();
        let mut fields = serde_json::Map::new();
        fields.insert("op".into(), "demo".into());
        encode_header(&fields, m.len() as u64, u32::MAX, &mut frame).expect("a tiny header fits");
        frame.extend_from_slice(m.as_bytes());
        frame.to_vec()
    })?;
    let mut decoder = FrameDecoder::new(64 * 1024);
    let mut buf = BytesMut::new();
    let mut received: Vec<String> = Vec::new();
    let mut body: Option<(u64, Vec<u8>)> = None;
    for (i, piece) in pieces.iter().enumerate() {
        buf.extend_from_slice(piece);
        let mut completed = Vec::new();
        while let Some(event) = decoder.decode(&mut buf)? {
            match event {
                FrameEvent::Header(h) if h.body_len == 0 => completed.push(String::new()),
                FrameEvent::Header(h) => body = Some((h.body_len, Vec::new())),
                FrameEvent::Body(chunk) => {
                    let (want, got) = body.as_mut().context("body without a header")?;
                    got.extend_from_slice(&chunk);
                    if got.len() as u64 == *want {
                        let (_, bytes) = body.take().expect("just matched");
                        completed.push(String::from_utf8(bytes)?);
                    }
                }
            }
        }
        outln!(
            "framed recv #{:<3} {:>4} bytes  completes {} message(s)",
            i + 1,
            piece.len(),
            completed.len()
        );
        for text in completed {
            outln!("framed message #{}: {text}", received.len());
            received.push(text);
        }
    }
    decoder.finish(&buf)?;
    let exact = received
        .iter()
        .zip(&messages)
        .filter(|(a, b)| a == b)
        .count();
    outln!(
        "framed: {exact}/{} messages exact, in order",
        messages.len()
    );
    outln!();
    outln!(
        "Why: TCP delivers a stream of bytes, not messages, so one recv() may return several\n\
         sends glued together or part of one. Sending each message's length first lets the\n\
         receiver read exactly that many bytes, however the stream was cut."
    );
    if exact != messages.len() || received.len() != messages.len() {
        bail!(
            "framing lost messages: {} received, {exact} exact",
            received.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends each message with its own write on a loopback connection, lets them all queue, then
/// returns what each `recv(recv_size)` on the other end gave back.
fn exchange(
    messages: &[String],
    recv_size: usize,
    encode: impl Fn(&str) -> Vec<u8>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let addr = listener.local_addr()?;
    let (sent_tx, sent_rx) = mpsc::channel();
    let payloads: Vec<Vec<u8>> = messages.iter().map(|m| encode(m)).collect();
    let sender = thread::spawn(move || -> std::io::Result<()> {
        let mut stream = TcpStream::connect(addr)?;
        for p in &payloads {
            stream.write_all(p)?;
        }
        stream.shutdown(Shutdown::Write)?;
        let _ = sent_tx.send(());
        Ok(())
    });
    let (mut conn, _) = listener.accept()?;
    // Waiting until everything is sent makes the merging deterministic: all the sends are in
    // the receive buffer before the first recv, as on a busy server.
    let _ = sent_rx.recv();
    let mut pieces = Vec::new();
    let mut buf = vec![0u8; recv_size];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        pieces.push(buf[..n].to_vec());
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    Ok(pieces)
}

fn message_boundaries(messages: &[String]) -> Vec<usize> {
    messages
        .iter()
        .scan(0, |end, m| {
            *end += m.len();
            Some(*end)
        })
        .collect()
}

/// Printable form of raw bytes: text as is, control and non-UTF-8 bytes escaped.
fn show(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}
