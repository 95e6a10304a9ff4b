//! The sticky-packet property: frames concatenated into one byte stream and cut anywhere —
//! as TCP may merge and split sends — decode to exactly the frames that were sent.

mod common;

use bytes::BytesMut;
use common::*;
use ferry_proto::{
    Digest, ErrorCode, FrameDecoder, FrameEvent, HashAlgo, Limits, Reply, ReplyFrame, Request,
    RequestFrame, WireError,
};
use proptest::prelude::*;

fn put(id: u64, path: &str, body: &[u8]) -> Sent {
    put_with(HashAlgo::Blake3, id, path, body)
}

fn put_with(algo: HashAlgo, id: u64, path: &str, body: &[u8]) -> Sent {
    let request = Request::Put {
        path: path.into(),
        size: body.len() as u64,
        hash: Some(Digest::of(algo, body)),
        offset: 0,
        overwrite: false,
        mtime: None,
    };
    Sent::Request(
        RequestFrame {
            id,
            request,
            body_len: body.len() as u64,
        },
        body.to_vec(),
    )
}

/// A put without hash (feature `hash-after-body`) and its `put_hash` trailer: two frames.
fn put_deferred(id: u64, path: &str, body: &[u8]) -> [Sent; 2] {
    let request = Request::Put {
        path: path.into(),
        size: body.len() as u64,
        hash: None,
        offset: 0,
        overwrite: true,
        mtime: Some(1_700_000_000),
    };
    [
        Sent::Request(
            RequestFrame {
                id,
                request,
                body_len: body.len() as u64,
            },
            body.to_vec(),
        ),
        req(
            id,
            Request::PutHash {
                hash: Digest::of(HashAlgo::Blake3, body),
            },
        ),
    ]
}

fn get_reply(id: u64, path: &str, file: &[u8], offset: usize) -> Sent {
    get_reply_with(HashAlgo::Blake3, id, path, file, offset)
}

fn get_reply_with(algo: HashAlgo, id: u64, path: &str, file: &[u8], offset: usize) -> Sent {
    let reply = Reply::Get {
        path: path.into(),
        size: file.len() as u64,
        offset: offset as u64,
        mtime: 1_700_000_000,
        hash: Digest::of(algo, file),
    };
    Sent::Reply(ReplyFrame::ok(id, reply), file[offset..].to_vec())
}

fn req(id: u64, r: Request) -> Sent {
    Sent::Request(RequestFrame::new(id, r), Vec::new())
}

/// A request and a reply with bodies of 1 and 2 bytes, and a request without one: small enough to try
/// every pair of cut points.
fn small_stream() -> Vec<Sent> {
    vec![
        put_with(HashAlgo::Md5, 2, "/a", b"x"),
        get_reply_with(HashAlgo::Md5, 3, "/b", b"hey", 1),
        req(5, Request::Quit),
    ]
}

/// A session with bodies of 1 byte and several KiB, requests and replies interleaved.
fn big_stream() -> Vec<Sent> {
    let file: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    let [deferred_put, deferred_hash] = put_deferred(8, "/after.bin", &file[..3000]);
    vec![
        req(
            1,
            Request::Hello {
                version: 1,
                features: vec!["pipelining".into(), "resume".into()],
                client: Some("test".into()),
            },
        ),
        Sent::Reply(
            ReplyFrame::ok(
                1,
                Reply::Hello {
                    version: 1,
                    features: vec!["pipelining".into()],
                    server: "ferry/0.1.0".into(),
                    peer: "127.0.0.1:50000".into(),
                    max_header: 65536,
                },
            ),
            Vec::new(),
        ),
        req(9, Request::login_token("ann", "0123456789abcdef".repeat(4))),
        Sent::Reply(
            ReplyFrame::err(
                9,
                WireError::new(ErrorCode::TokenInvalid, "session token not valid"),
            ),
            Vec::new(),
        ),
        req(10, Request::login_password("ann", "s3cret")),
        Sent::Reply(
            ReplyFrame::ok(
                10,
                Reply::Login {
                    user: "ann".into(),
                    cwd: "/".into(),
                    token: Some("fedcba9876543210".repeat(4)),
                    token_ttl: Some(3600),
                },
            ),
            Vec::new(),
        ),
        put(2, "/one-byte", b"!"),
        put(3, "/big.bin", &file),
        deferred_put,
        deferred_hash,
        req(
            4,
            Request::Get {
                path: "/big.bin".into(),
                offset: 0,
                algo: None,
            },
        ),
        get_reply(4, "/big.bin", &file, 1000),
        get_reply(5, "/big.bin", &file, 4999),
        req(11, Request::Logout),
        Sent::Reply(
            ReplyFrame::ok(11, Reply::Logout { revoked: true }),
            Vec::new(),
        ),
        req(6, Request::Pwd),
        Sent::Reply(
            ReplyFrame::err(6, WireError::new(ErrorCode::AuthRequired, "log in first")),
            Vec::new(),
        ),
        req(7, Request::Quit),
        Sent::Reply(ReplyFrame::ok(7, Reply::Quit), Vec::new()),
    ]
}

fn check(sent: &[Sent], bytes: &[u8], cuts: &[usize]) {
    let got = to_typed(decode_cut(bytes, cuts), sent);
    assert_eq!(got, sent, "cuts {cuts:?}");
}

#[test]
fn whole_stream_in_one_piece() {
    for sent in [small_stream(), big_stream()] {
        let bytes = encode_all(&sent);
        check(&sent, &bytes, &[]);
    }
}

/// Every cut is compared with the uncut decode, itself checked against what was sent: the
/// comparison of raw decoded frames is cheaper than parsing each into typed messages again.
fn reference(sent: &[Sent], bytes: &[u8]) -> Vec<Decoded> {
    let whole = decode_cut(bytes, &[]);
    assert_eq!(to_typed(whole.clone(), sent), sent);
    whole
}

#[test]
fn every_single_cut_point() {
    for sent in [small_stream(), big_stream()] {
        let bytes = encode_all(&sent);
        let whole = reference(&sent, &bytes);
        for c in 0..=bytes.len() {
            assert_eq!(decode_cut(&bytes, &[c]), whole, "cut at {c}");
        }
    }
}

#[test]
fn every_pair_of_cut_points() {
    let sent = small_stream();
    let bytes = encode_all(&sent);
    assert!(bytes.len() < 280, "keep this stream small: {}", bytes.len());
    let whole = reference(&sent, &bytes);
    for i in 0..=bytes.len() {
        for j in i..=bytes.len() {
            assert_eq!(decode_cut(&bytes, &[i, j]), whole, "cuts at {i} and {j}");
        }
    }
}

#[test]
fn one_byte_at_a_time() {
    for sent in [small_stream(), big_stream()] {
        let bytes = encode_all(&sent);
        let got = to_typed(decode_pieces(bytes.chunks(1)), &sent);
        assert_eq!(got, sent);
    }
}

/// Decoding a stream and encoding the typed messages again gives the same bytes: the
/// encoding is canonical, so the test vectors can be compared byte for byte.
#[test]
fn decode_then_encode_is_identity() {
    let sent = big_stream();
    let bytes = encode_all(&sent);
    let again = encode_all(&to_typed(decode_cut(&bytes, &[]), &sent));
    assert_eq!(again, bytes);
}

/// Body chunks come out as they arrived: the decoder never waits to collect a whole body.
#[test]
fn body_chunks_are_handed_out_as_they_arrive() {
    let file = vec![7u8; 3000];
    let sent = [put(1, "/f", &file)];
    let bytes = encode_all(&sent);
    let header_len = bytes.len() - file.len();
    let mut dec = FrameDecoder::new(Limits::default().max_header);
    let mut buf = BytesMut::from(&bytes[..header_len + 10]);
    assert!(matches!(
        dec.decode(&mut buf),
        Ok(Some(FrameEvent::Header(_)))
    ));
    match dec.decode(&mut buf) {
        Ok(Some(FrameEvent::Body(chunk))) => assert_eq!(chunk.len(), 10),
        other => panic!("{other:?}"),
    }
    assert_eq!(dec.body_remaining(), 2990);
    assert_eq!(dec.decode(&mut buf), Ok(None));
}

/// Cuts the stream into pieces whose sizes cycle through `sizes`.
fn pieces<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while start < bytes.len() {
        let end = (start + sizes[i % sizes.len()]).min(bytes.len());
        out.push(&bytes[start..end]);
        start = end;
        i += 1;
    }
    out
}

fn piece_size() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(1usize), 3 => 2usize..16, 2 => 16usize..6000]
}

/// Drives the decoder like a server that copies part of each body straight from the socket
/// buffer to its destination (`consume_body`) and lets `decode` hand out the rest.
fn decode_with_direct_reads(pieces: &[&[u8]], direct: &[usize]) -> Vec<Decoded> {
    let mut dec = FrameDecoder::new(Limits::default().max_header);
    let mut buf = BytesMut::new();
    let mut out: Vec<Decoded> = Vec::new();
    let mut turn = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let remaining = dec.body_remaining();
            if remaining > 0 && !buf.is_empty() {
                let want = direct[turn % direct.len()];
                turn += 1;
                if want > 0 {
                    let n = (want as u64).min(remaining).min(buf.len() as u64) as usize;
                    let taken = buf.split_to(n);
                    dec.consume_body(n as u64);
                    out.last_mut().unwrap().body.extend_from_slice(&taken);
                    continue;
                }
            }
            match dec.decode(&mut buf).expect("valid stream") {
                None => break,
                Some(FrameEvent::Header(header)) => out.push(Decoded {
                    header,
                    body: Vec::new(),
                }),
                Some(FrameEvent::Body(chunk)) => {
                    out.last_mut().unwrap().body.extend_from_slice(&chunk)
                }
            }
        }
    }
    dec.finish(&buf).expect("clean end");
    assert!(dec.at_frame_boundary());
    out
}

#[test]
fn consume_body_on_fixed_stream() {
    let sent = big_stream();
    let bytes = encode_all(&sent);
    for direct in [&[1usize][..], &[0, 3], &[100_000], &[7, 0, 4096]] {
        for size in [1usize, 5, 1000, bytes.len()] {
            let got = to_typed(
                decode_with_direct_reads(&pieces(&bytes, &[size]), direct),
                &sent,
            );
            assert_eq!(got, sent, "direct {direct:?} piece size {size}");
        }
    }
}

#[test]
#[should_panic(expected = "only 3 declared")]
fn consume_body_past_the_body_is_a_driver_bug() {
    let mut dec = FrameDecoder::new(1024);
    let mut buf = BytesMut::from(&raw_frame(r#"{"body_len":3}"#, b"")[..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Ok(Some(FrameEvent::Header(_)))
    ));
    dec.consume_body(4);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any typed request or reply survives encode → decode unchanged.
    #[test]
    fn any_single_frame_round_trips(frame in any_frame()) {
        let sent = vec![frame];
        let bytes = encode_all(&sent);
        prop_assert_eq!(to_typed(decode_cut(&bytes, &[]), &sent), sent);
    }

    /// Any sequence of frames, cut into pieces of random sizes (1-byte pieces included),
    /// decodes to exactly the frames sent.
    #[test]
    fn any_frames_any_pieces(
        sent in prop::collection::vec(any_frame(), 1..8),
        sizes in prop::collection::vec(piece_size(), 1..24),
    ) {
        let bytes = encode_all(&sent);
        let got = to_typed(decode_pieces(pieces(&bytes, &sizes)), &sent);
        prop_assert_eq!(got, sent);
    }

    /// Same, with cut points drawn anywhere in the stream.
    #[test]
    fn any_frames_any_cut_points(
        sent in prop::collection::vec(any_frame(), 1..8),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let bytes = encode_all(&sent);
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let got = to_typed(decode_cut(&bytes, &cuts), &sent);
        prop_assert_eq!(got, sent);
    }

    /// A driver that reads parts of bodies directly (`consume_body`) sees the same frames.
    #[test]
    fn any_frames_with_direct_body_reads(
        sent in prop::collection::vec(any_frame(), 1..8),
        sizes in prop::collection::vec(piece_size(), 1..24),
        direct in prop::collection::vec(prop_oneof![Just(0usize), 1usize..8, 8usize..5000], 1..8),
    ) {
        let bytes = encode_all(&sent);
        let got = to_typed(decode_with_direct_reads(&pieces(&bytes, &sizes), &direct), &sent);
        prop_assert_eq!(got, sent);
    }
}
