//! Feeds arbitrary bytes, cut into arbitrary pieces, to `FrameDecoder`, and every header it
//! yields to `RequestFrame::from_header` and `ReplyFrame::from_header`.
//!
//! Input layout: byte 0 picks the header limit (64 B, 4 KiB or 64 KiB) and how many of the
//! following bytes (0..=15) are piece sizes; the rest is the byte stream. A piece size byte
//! `s` feeds `s % 128 + 1` bytes; when its top bit is set and the decoder is inside a body,
//! the driver takes those bytes itself and calls `consume_body`, as a server copying a body
//! straight to a file would.
//!
//! Checks, besides "no panic": the buffer never grows far beyond what was fed plus the header
//! limit (no allocation for a declared length); body chunks never exceed the declared body;
//! fatal errors are the frame-level ones; and every header that parses as a request or a
//! reply encodes back to a frame that decodes to the same message.

#![no_main]

use bytes::BytesMut;
use ferry_proto::{FrameDecoder, FrameEvent, Header, Limits, ReplyFrame, RequestFrame};
use libfuzzer_sys::fuzz_target;

const LIMITS: [u32; 3] = [64, 4 * 1024, 64 * 1024];

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let max_header = LIMITS[(control >> 4) as usize % LIMITS.len()];
    let n_sizes = ((control & 0x0f) as usize).min(rest.len());
    let (sizes, stream) = rest.split_at(n_sizes);
    let sizes: &[u8] = if sizes.is_empty() { &[0xff] } else { sizes };

    let limits = Limits {
        max_header,
        ..Limits::default()
    };
    let mut dec = FrameDecoder::new(max_header);
    let mut buf = BytesMut::new();
    let mut body_left = 0u64; // what the current header declared and is not yet seen
    let mut fed = 0usize;
    let mut start = 0usize;
    let mut turn = 0usize;
    while start < stream.len() {
        let s = sizes[turn % sizes.len()];
        turn += 1;
        let end = (start + (s % 128) as usize + 1).min(stream.len());
        buf.extend_from_slice(&stream[start..end]);
        fed += end - start;
        start = end;

        loop {
            assert!(
                buf.capacity() <= 2 * (fed + max_header as usize) + 64,
                "buffer capacity {} after {fed} bytes with a {max_header}-byte limit",
                buf.capacity()
            );
            if s & 0x80 != 0 && dec.body_remaining() > 0 && !buf.is_empty() {
                let n = dec.body_remaining().min(buf.len() as u64);
                let _ = buf.split_to(n as usize);
                dec.consume_body(n);
                body_left -= n;
                continue;
            }
            match dec.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(FrameEvent::Header(h))) => {
                    assert_eq!(body_left, 0, "header inside a body");
                    assert!(
                        !h.fields().contains_key("body_len"),
                        "body_len left in the fields"
                    );
                    assert_eq!(dec.body_remaining(), h.body_len);
                    body_left = h.body_len;
                    check_header(h, &limits);
                }
                Ok(Some(FrameEvent::Body(chunk))) => {
                    assert!(!chunk.is_empty() && chunk.len() as u64 <= body_left);
                    body_left -= chunk.len() as u64;
                    assert_eq!(dec.body_remaining(), body_left);
                }
                Err(e) => {
                    // Only frame-level errors come out of the decoder, and they all end the
                    // connection.
                    assert!(e.is_fatal(), "non-fatal error from the decoder: {e:?}");
                    return;
                }
            }
        }
    }
    match dec.finish(&buf) {
        Ok(()) => assert!(buf.is_empty() && body_left == 0 && dec.at_frame_boundary()),
        Err(e) => assert!(e.is_fatal()),
    }
});

fn check_header(h: Header, limits: &Limits) {
    match RequestFrame::from_header(h.clone(), limits) {
        Ok(frame) => {
            assert_eq!(frame.body_len, h.body_len);
            let mut out = BytesMut::new();
            frame.encode(u32::MAX, &mut out).expect("re-encode request");
            let again =
                RequestFrame::from_header(reparse(&out), limits).expect("re-decode request");
            assert_eq!(again, frame);
        }
        Err(rejected) => assert!(!rejected.error.is_fatal(), "{rejected:?}"),
    }
    match ReplyFrame::from_header(h.clone()) {
        Ok(frame) => {
            assert_eq!(frame.body_len, h.body_len);
            let mut out = BytesMut::new();
            frame.encode(u32::MAX, &mut out).expect("re-encode reply");
            let again = ReplyFrame::from_header(reparse(&out)).expect("re-decode reply");
            assert_eq!(again, frame);
        }
        Err(rejected) => assert!(!rejected.error.is_fatal(), "{rejected:?}"),
    }
}

/// Decodes the single header just encoded.
fn reparse(encoded: &[u8]) -> Header {
    let mut dec = FrameDecoder::new(u32::MAX);
    let mut buf = BytesMut::from(encoded);
    match dec.decode(&mut buf) {
        Ok(Some(FrameEvent::Header(h))) => {
            assert!(buf.is_empty());
            h
        }
        other => panic!("re-encoded header does not decode: {other:?}"),
    }
}
