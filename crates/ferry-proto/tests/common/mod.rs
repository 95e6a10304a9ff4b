//! Helpers shared by the integration tests: building frames, driving the decoder over a
//! stream cut into pieces, and proptest strategies for every request and reply.

#![allow(dead_code)] // each test binary uses a different subset

use bytes::{BufMut, BytesMut};
use ferry_proto::{
    Digest, Entry, EntryKind, ErrorCode, FrameDecoder, FrameEvent, HashAlgo, Header, Limits,
    ProtoError, Reply, ReplyFrame, Request, RequestFrame, WireError,
};
use proptest::prelude::*;

/// One frame as sent: a typed request or reply, and its body.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    Request(RequestFrame, Vec<u8>),
    Reply(ReplyFrame, Vec<u8>),
}

impl Sent {
    pub fn body(&self) -> &[u8] {
        match self {
            Sent::Request(_, b) | Sent::Reply(_, b) => b,
        }
    }

    /// Appends the frame's exact bytes (header, then body) to `dst`.
    pub fn encode(&self, dst: &mut Vec<u8>) {
        let max = Limits::default().max_header;
        let mut buf = BytesMut::new();
        match self {
            Sent::Request(f, body) => {
                assert_eq!(f.body_len, body.len() as u64, "test built a bad request");
                f.encode(max, &mut buf).expect("encode request");
            }
            Sent::Reply(f, body) => {
                assert_eq!(f.body_len, body.len() as u64, "test built a bad reply");
                f.encode(max, &mut buf).expect("encode reply");
            }
        }
        buf.put_slice(self.body());
        dst.extend_from_slice(&buf);
    }
}

/// The exact bytes of a sequence of frames.
pub fn encode_all(frames: &[Sent]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out);
    }
    out
}

/// Raw frame bytes from header JSON text and a body, bypassing the encoder.
pub fn raw_frame(json: &str, body: &[u8]) -> Vec<u8> {
    raw_frame_bytes(json.as_bytes(), body)
}

pub fn raw_frame_bytes(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(body);
    v
}

/// A decoded frame: its header and the body bytes collected after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub header: Header,
    pub body: Vec<u8>,
}

/// Feeds `pieces` to a fresh decoder one at a time, draining events after each, then checks
/// the stream ended cleanly. Panics on any decode error.
pub fn decode_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Decoded> {
    let mut dec = FrameDecoder::new(Limits::default().max_header);
    let mut buf = BytesMut::new();
    let mut out: Vec<Decoded> = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        drain(&mut dec, &mut buf, &mut out);
    }
    dec.finish(&buf).expect("stream ends between frames");
    out
}

/// Decodes every event the buffer holds into `out`.
pub fn drain(dec: &mut FrameDecoder, buf: &mut BytesMut, out: &mut Vec<Decoded>) {
    while let Some(ev) = dec.decode(buf).expect("valid stream") {
        match ev {
            FrameEvent::Header(header) => out.push(Decoded {
                header,
                body: Vec::new(),
            }),
            FrameEvent::Body(chunk) => {
                assert!(!chunk.is_empty(), "empty body chunk");
                let last = out.last_mut().expect("body before any header");
                last.body.extend_from_slice(&chunk);
                assert!(
                    last.body.len() as u64 <= last.header.body_len,
                    "body overran"
                );
            }
        }
    }
}

/// Decodes a whole stream cut at the given offsets (sorted, within the stream).
pub fn decode_cut(bytes: &[u8], cuts: &[usize]) -> Vec<Decoded> {
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts {
        pieces.push(&bytes[start..c]);
        start = c;
    }
    pieces.push(&bytes[start..]);
    decode_pieces(pieces)
}

/// Turns decoded frames back into typed messages, each parsed the way `sent` says it was
/// sent (request or reply), so the result can be compared with `sent` as a whole.
pub fn to_typed(decoded: Vec<Decoded>, sent: &[Sent]) -> Vec<Sent> {
    assert_eq!(decoded.len(), sent.len(), "frame count");
    let limits = Limits::default();
    decoded
        .into_iter()
        .zip(sent)
        .map(|(d, s)| {
            assert_eq!(d.header.body_len, d.body.len() as u64, "body length");
            match s {
                Sent::Request(..) => Sent::Request(
                    RequestFrame::from_header(d.header, &limits).expect("request decodes"),
                    d.body,
                ),
                Sent::Reply(..) => Sent::Reply(
                    ReplyFrame::from_header(d.header).expect("reply decodes"),
                    d.body,
                ),
            }
        })
        .collect()
}

/// Asserts the exact variant (by `matches`), fatality and wire code of an error.
#[track_caller]
pub fn assert_err(err: &ProtoError, fatal: bool, code: ErrorCode) {
    assert_eq!(err.is_fatal(), fatal, "is_fatal of {err:?}");
    assert_eq!(err.code(), code, "code of {err:?}");
    let wire = err.to_wire();
    assert_eq!(wire.code, code);
    assert_eq!(wire.message, err.to_string());
}

// ---------------------------------------------------------------------------------------------
// proptest strategies

pub fn text() -> impl Strategy<Value = String> {
    // Any chars, control characters and non-BMP included: JSON escaping must carry them.
    prop::collection::vec(any::<char>(), 0..12).prop_map(|v| v.into_iter().collect())
}

/// A session token: usually well-formed (64 lowercase hex digits), sometimes any text, since
/// the frame layer carries whatever a client sends and only the server judges it.
pub fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[0-9a-f]{64}",
        1 => text(),
    ]
}

pub fn digest() -> impl Strategy<Value = Digest> {
    prop::sample::select(HashAlgo::ALL.to_vec()).prop_flat_map(|algo| {
        prop::collection::vec(any::<u8>(), algo.digest_len())
            .prop_map(move |b| Digest::new(algo, b).expect("right length"))
    })
}

pub fn algo() -> impl Strategy<Value = Option<HashAlgo>> {
    prop::option::of(prop::sample::select(HashAlgo::ALL.to_vec()))
}

/// Body sizes that matter: none, one byte, a few bytes, and several KiB.
pub fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        2 => Just(vec![0x5a]),
        3 => prop::collection::vec(any::<u8>(), 2..40),
        1 => prop::collection::vec(any::<u8>(), 1024..6000),
    ]
}

/// A request that carries no body.
pub fn bodiless_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            any::<u32>(),
            prop::collection::vec(text(), 0..4),
            prop::option::of(text())
        )
            .prop_map(|(version, features, client)| Request::Hello {
                version,
                features,
                client
            }),
        (text(), text()).prop_map(|(user, password)| Request::login_password(user, password)),
        (text(), token()).prop_map(|(user, token)| Request::login_token(user, token)),
        Just(Request::Pwd),
        Just(Request::Logout),
        text().prop_map(|path| Request::Cd { path }),
        (
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(any::<u64>())
        )
            .prop_map(|(path, after, limit)| Request::Ls { path, after, limit }),
        (text(), algo()).prop_map(|(path, algo)| Request::Stat { path, algo }),
        (text(), any::<bool>()).prop_map(|(path, parents)| Request::Mkdir { path, parents }),
        (text(), any::<bool>()).prop_map(|(path, recursive)| Request::Rm { path, recursive }),
        (text(), text(), any::<bool>()).prop_map(|(from, to, overwrite)| Request::Mv {
            from,
            to,
            overwrite
        }),
        (
            text(),
            0..=Limits::default().max_file_size,
            prop::option::of(digest()),
            prop::option::of(any::<i64>())
        )
            .prop_map(|(path, size, hash, mtime)| Request::Resume {
                path,
                size,
                hash,
                mtime
            }),
        digest().prop_map(|hash| Request::PutHash { hash }),
        (text(), any::<u64>(), algo()).prop_map(|(path, offset, algo)| Request::Get {
            path,
            offset,
            algo
        }),
        Just(Request::Quit),
    ]
}

/// Any request frame with its body: a `put` carries bytes `offset..size`, the rest nothing.
pub fn request_frame() -> impl Strategy<Value = Sent> {
    let put = (
        any::<u64>(),
        text(),
        body(),
        any::<u64>(),
        prop::option::of(digest()),
        any::<bool>(),
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(id, path, body, offset, hash, overwrite, mtime)| {
            let max = Limits::default().max_file_size;
            let offset = offset % (max - body.len() as u64 + 1);
            let request = Request::Put {
                path,
                size: offset + body.len() as u64,
                hash,
                offset,
                overwrite,
                mtime,
            };
            let frame = RequestFrame {
                id,
                request,
                body_len: body.len() as u64,
            };
            Sent::Request(frame, body)
        });
    let other = (any::<u64>(), bodiless_request())
        .prop_map(|(id, r)| Sent::Request(RequestFrame::new(id, r), Vec::new()));
    prop_oneof![2 => put, 3 => other]
}

pub fn entry() -> impl Strategy<Value = Entry> {
    (
        text(),
        prop::sample::select(vec![
            EntryKind::File,
            EntryKind::Dir,
            EntryKind::Symlink,
            EntryKind::Other,
        ]),
        any::<u64>(),
        any::<i64>(),
        prop::option::of(digest()),
    )
        .prop_map(|(name, kind, size, mtime, hash)| Entry {
            name,
            kind,
            size,
            mtime,
            hash,
        })
}

/// A successful reply that carries no body.
pub fn bodiless_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (
            any::<u32>(),
            prop::collection::vec(text(), 0..4),
            text(),
            text(),
            any::<u32>()
        )
            .prop_map(
                |(version, features, server, peer, max_header)| Reply::Hello {
                    version,
                    features,
                    server,
                    peer,
                    max_header
                }
            ),
        (text(), text(), prop::option::of((token(), any::<u64>()))).prop_map(
            |(user, cwd, issued)| Reply::Login {
                user,
                cwd,
                token: issued.as_ref().map(|(t, _)| t.clone()),
                token_ttl: issued.map(|(_, ttl)| ttl),
            }
        ),
        text().prop_map(|cwd| Reply::Pwd { cwd }),
        any::<bool>().prop_map(|revoked| Reply::Logout { revoked }),
        text().prop_map(|cwd| Reply::Cd { cwd }),
        (text(), prop::collection::vec(entry(), 0..4), any::<bool>()).prop_map(
            |(path, entries, more)| Reply::Ls {
                path,
                entries,
                more
            }
        ),
        entry().prop_map(Reply::Stat),
        text().prop_map(|path| Reply::Mkdir { path }),
        text().prop_map(|path| Reply::Rm { path }),
        (text(), text()).prop_map(|(from, to)| Reply::Mv { from, to }),
        (text(), any::<u64>(), digest()).prop_map(|(path, size, hash)| Reply::Put {
            path,
            size,
            hash
        }),
        (text(), any::<u64>()).prop_map(|(path, offset)| Reply::Resume { path, offset }),
        Just(Reply::Quit),
    ]
}

pub fn wire_error() -> impl Strategy<Value = WireError> {
    (prop::sample::select(ErrorCode::ALL.to_vec()), text())
        .prop_map(|(code, message)| WireError::new(code, message))
}

/// Any reply frame with its body: a `get` carries bytes `offset..size`, the rest nothing.
pub fn reply_frame() -> impl Strategy<Value = Sent> {
    let get = (
        any::<u64>(),
        text(),
        body(),
        any::<u64>(),
        any::<i64>(),
        digest(),
    )
        .prop_map(|(id, path, body, offset, mtime, hash)| {
            let offset = offset.min(u64::MAX - body.len() as u64);
            let reply = Reply::Get {
                path,
                size: offset + body.len() as u64,
                offset,
                mtime,
                hash,
            };
            let frame = ReplyFrame::ok(id, reply);
            Sent::Reply(frame, body)
        });
    let ok = (any::<u64>(), bodiless_reply())
        .prop_map(|(id, r)| Sent::Reply(ReplyFrame::ok(id, r), Vec::new()));
    let err = (any::<u64>(), wire_error())
        .prop_map(|(id, e)| Sent::Reply(ReplyFrame::err(id, e), Vec::new()));
    prop_oneof![2 => get, 3 => ok, 2 => err]
}

pub fn any_frame() -> impl Strategy<Value = Sent> {
    prop_oneof![request_frame(), reply_frame()]
}
