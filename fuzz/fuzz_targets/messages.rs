//! Message parsing past the JSON parser: headers → `RequestFrame::from_header` and
//! `ReplyFrame::from_header`.
//!
//! Byte 0 picks the mode (low bit) and the header limit (`>> 1`, mod 3: 64 B, 4 KiB, 64 KiB):
//!
//! - **raw** (even): the rest of the input is one header's bytes, framed with a correct
//!   length prefix and fed to `FrameDecoder` (invalid UTF-8, bad JSON, duplicate keys, odd
//!   numbers — everything the JSON parser sees);
//! - **structured** (odd): the rest drives `arbitrary::Unstructured` to build a JSON object
//!   with a known op (or a reply's `ok`/`code`), keys from the protocol's vocabulary and
//!   values biased towards boundaries (0, 2^32, 2^40, 2^64-1, negatives, floats, valid and
//!   nearly valid digests, paths, error codes), so most inputs reach the typed checks.
//!
//! Checks, besides "no panic": a decode error is fatal and a `from_header` rejection is not;
//! an accepted request obeys its body rule (`put`: `offset <= size <= max_file_size` and
//! `body_len == size - offset`; every other op: `body_len == 0`); an accepted reply declares
//! exactly `expected_body()` (and a `get` reply has `offset <= size`; an error reply no body);
//! and every accepted message re-encodes to a frame that decodes to the identical message.

#![no_main]

use bytes::{BufMut, BytesMut};
use ferry_proto::{
    BENCH_MAX, ErrorCode, FrameDecoder, FrameEvent, HashAlgo, Header, Limits, ReplyFrame, Request,
    RequestFrame,
};
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Number, Value};

const LIMITS: [u32; 3] = [64, 4 * 1024, 64 * 1024];

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let max_header = LIMITS[(control >> 1) as usize % LIMITS.len()];
    let limits = Limits {
        max_header,
        ..Limits::default()
    };
    let header_bytes = if control & 1 == 0 {
        rest.to_vec()
    } else {
        let mut u = Unstructured::new(rest);
        let Ok(v) = object(&mut u) else { return };
        serde_json::to_vec(&v).expect("a Value serializes")
    };
    let Some(h) = decode_one(&header_bytes, max_header) else {
        return;
    };
    check_header(h, &limits);
});

/// Frames `json` with its length prefix and decodes it; `None` if the decoder rejects it
/// (which must then be a fatal error) or the header is over the limit.
fn decode_one(json: &[u8], max_header: u32) -> Option<Header> {
    let mut buf = BytesMut::with_capacity(json.len() + 4);
    buf.put_u32_le(json.len() as u32);
    buf.extend_from_slice(json);
    let mut dec = FrameDecoder::new(max_header);
    match dec.decode(&mut buf) {
        Ok(Some(FrameEvent::Header(h))) => {
            assert!(buf.is_empty());
            assert!(!h.fields().contains_key("body_len"));
            assert_eq!(dec.body_remaining(), h.body_len);
            Some(h)
        }
        Ok(Some(FrameEvent::Body(_))) => panic!("a body before any header"),
        Ok(None) => {
            panic!(
                "a complete frame of {} header bytes was not decoded",
                json.len()
            )
        }
        Err(e) => {
            assert!(e.is_fatal(), "non-fatal error from the decoder: {e:?}");
            None
        }
    }
}

fn check_header(h: Header, limits: &Limits) {
    match RequestFrame::from_header(h.clone(), limits) {
        Ok(frame) => {
            assert_eq!(frame.body_len, h.body_len);
            match &frame.request {
                Request::Put { size, offset, .. } => {
                    assert!(*size <= limits.max_file_size, "put size over the limit");
                    assert!(offset <= size, "put offset past size");
                    assert_eq!(frame.body_len, size - offset, "put body_len");
                }
                Request::Resume { size, .. } => {
                    assert!(*size <= limits.max_file_size);
                    assert_eq!(frame.body_len, 0);
                }
                Request::Bench { size, download } => {
                    assert!(*size <= BENCH_MAX, "bench size over the limit");
                    let want = if *download { 0 } else { *size };
                    assert_eq!(frame.body_len, want, "bench body_len");
                }
                _ => assert_eq!(frame.body_len, 0, "{} carries no body", frame.request.op()),
            }
            let mut out = BytesMut::new();
            frame.encode(u32::MAX, &mut out).expect("re-encode request");
            let again =
                RequestFrame::from_header(reparse(&out), limits).expect("re-decode request");
            assert_eq!(again, frame);
        }
        Err(rejected) => {
            assert!(!rejected.error.is_fatal(), "{rejected:?}");
            // The id echoed is the header's, or 0 when it could not be read.
            if let Some(id) = h.fields().get("id").and_then(Value::as_u64) {
                assert_eq!(rejected.id, id);
            } else {
                assert_eq!(rejected.id, 0);
            }
        }
    }
    match ReplyFrame::from_header(h.clone()) {
        Ok(frame) => {
            assert_eq!(frame.body_len, h.body_len);
            match &frame.result {
                Ok(reply) => {
                    assert_eq!(frame.body_len, reply.expected_body());
                    if let ferry_proto::Reply::Get { size, offset, .. } = reply {
                        assert!(offset <= size);
                    }
                }
                Err(_) => assert_eq!(frame.body_len, 0, "an error reply with a body"),
            }
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

// ---- structured generation ----

const KEYS: &[&str] = &[
    "path",
    "size",
    "hash",
    "offset",
    "overwrite",
    "mtime",
    "version",
    "features",
    "client",
    "user",
    "password",
    "token",
    "token_ttl",
    "parents",
    "recursive",
    "from",
    "to",
    "algo",
    "body_len",
    "cwd",
    "entries",
    "peer",
    "server",
    "max_header",
    "name",
    "kind",
    "message",
    "code",
    "ok",
    "op",
    "id",
];

const STRINGS: &[&str] = &[
    "",
    "/",
    "..",
    "../..",
    "/etc/passwd",
    "a/../../b",
    "x\u{0}y",
    "\u{2024}\u{2024}",
    "blake3",
    "sha256",
    "md5",
    "MD5",
    "crc32",
    "file",
    "dir",
    "symlink",
    "other",
    "pipelining",
    "resume",
    "hash:blake3",
    "session-token",
    "5f0c3ad2e1b47a9886c0d2f3e4a5b6c7d8e9f00112233445566778899aabbccd",
    "md5:",
    "md5:xyz",
    "blake3:4e99d205e3b7f06e476cf0cab613752b72efb2fb85851167578ac533edb539dc",
    "blake3:4E99D205E3B7F06E476CF0CAB613752B72EFB2FB85851167578AC533EDB539DC",
    "sha256:3dc89282411ed2798311c3bdeaf7c9830ff8c70b18915e7f8e12e136bc0cf039",
    "md5:2df68abb0995f64e4d51768a1631f326",
    "md5:2df68abb0995f64e4d51768a1631f32",
    "md5 :2df68abb0995f64e4d51768a1631f326",
];

fn object(u: &mut Unstructured) -> AResult<Value> {
    let mut m = Map::new();
    // id: usually a good one, sometimes not.
    if u.ratio(7, 8)? {
        m.insert(
            "id".into(),
            if u.ratio(3, 4)? {
                Value::from(u.arbitrary::<u64>()?)
            } else {
                value(u, 1)?
            },
        );
    }
    match u.int_in_range(0..=3)? {
        // A request with a known op.
        0 | 1 => {
            let op = Request::OPS[u.choose_index(Request::OPS.len())?];
            m.insert("op".into(), Value::from(op));
        }
        // A reply (success with an op, or an error with a code).
        2 => {
            let ok = u.arbitrary::<bool>()?;
            m.insert("ok".into(), Value::from(ok));
            if ok {
                let op = Request::OPS[u.choose_index(Request::OPS.len())?];
                m.insert("op".into(), Value::from(op));
            } else {
                let code = if u.ratio(7, 8)? {
                    ErrorCode::ALL[u.choose_index(ErrorCode::ALL.len())?]
                        .as_str()
                        .to_owned()
                } else {
                    u.arbitrary::<String>()?
                };
                m.insert("code".into(), Value::from(code));
                m.insert("message".into(), Value::from(u.arbitrary::<String>()?));
            }
        }
        // Anything.
        _ => {
            m.insert("op".into(), value(u, 1)?);
        }
    }
    let n = u.int_in_range(0..=8)?;
    for _ in 0..n {
        let key = if u.ratio(15, 16)? {
            KEYS[u.choose_index(KEYS.len())?].to_owned()
        } else {
            u.arbitrary::<String>()?
        };
        let v = typed_value(u, &key)?;
        m.insert(key, v);
    }
    Ok(Value::Object(m))
}

/// A value that is usually of the right type for `key`, near its boundaries.
fn typed_value(u: &mut Unstructured, key: &str) -> AResult<Value> {
    if u.ratio(1, 6)? {
        return value(u, 2);
    }
    Ok(match key {
        "size" | "offset" | "body_len" | "id" | "max_header" | "version" | "token_ttl" => {
            number(u)?
        }
        "mtime" => Value::from(u.arbitrary::<i64>()?),
        "overwrite" | "parents" | "recursive" | "ok" | "download" => {
            Value::from(u.arbitrary::<bool>()?)
        }
        "hash" => Value::from(digest(u)?),
        "algo" => Value::from(
            [HashAlgo::Blake3, HashAlgo::Sha256, HashAlgo::Md5][u.choose_index(3)?].name(),
        ),
        "features" => {
            let n = u.int_in_range(0..=4)?;
            Value::Array(
                (0..n)
                    .map(|_| string(u).map(Value::from))
                    .collect::<AResult<_>>()?,
            )
        }
        "entries" => {
            let n = u.int_in_range(0..=3)?;
            Value::Array((0..n).map(|_| entry(u)).collect::<AResult<_>>()?)
        }
        "code" => Value::from(ErrorCode::ALL[u.choose_index(ErrorCode::ALL.len())?].as_str()),
        _ => Value::from(string(u)?),
    })
}

fn entry(u: &mut Unstructured) -> AResult<Value> {
    let mut m = Map::new();
    for key in ["name", "kind", "size", "mtime", "hash"] {
        if u.ratio(7, 8)? {
            let v = match key {
                "kind" => {
                    Value::from(["file", "dir", "symlink", "other", "fifo"][u.choose_index(5)?])
                }
                "name" => Value::from(string(u)?),
                _ => typed_value(u, key)?,
            };
            m.insert(key.into(), v);
        }
    }
    Ok(Value::Object(m))
}

fn number(u: &mut Unstructured) -> AResult<Value> {
    const EDGES: &[u64] = &[
        0,
        1,
        12,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        1 << 40,
        (1 << 40) + 1,
        i64::MAX as u64,
        i64::MAX as u64 + 1,
        1 << 30,
        (1 << 30) + 1,
        u64::MAX - 1,
        u64::MAX,
    ];
    Ok(match u.int_in_range(0..=5)? {
        0 | 1 => Value::from(EDGES[u.choose_index(EDGES.len())?]),
        2 => Value::from(u.arbitrary::<u64>()?),
        3 => Value::from(u.arbitrary::<i64>()?),
        4 => Value::from(u.int_in_range(0u64..=64)?),
        _ => Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
    })
}

fn digest(u: &mut Unstructured) -> AResult<String> {
    if u.ratio(1, 4)? {
        return string(u);
    }
    let algo = ["blake3", "sha256", "md5", "BLAKE3", "crc32"][u.choose_index(5)?];
    let len = match u.int_in_range(0..=3)? {
        0 => 64,
        1 => 32,
        _ => u.int_in_range(0..=70)?,
    };
    let mut hex = String::with_capacity(len);
    for _ in 0..len {
        let alphabet = if u.ratio(15, 16)? { 16 } else { 23 };
        hex.push(b"0123456789abcdefABCDEFg"[u.choose_index(alphabet)?] as char);
    }
    Ok(format!("{algo}:{hex}"))
}

fn string(u: &mut Unstructured) -> AResult<String> {
    if u.ratio(1, 2)? {
        Ok(STRINGS[u.choose_index(STRINGS.len())?].to_owned())
    } else {
        u.arbitrary::<String>()
    }
}

fn value(u: &mut Unstructured, depth: u32) -> AResult<Value> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Value::Null,
        1 => Value::from(u.arbitrary::<bool>()?),
        2 | 3 => number(u)?,
        4 | 5 => Value::from(string(u)?),
        6 if depth > 0 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array(
                (0..n)
                    .map(|_| value(u, depth - 1))
                    .collect::<AResult<_>>()?,
            )
        }
        7 if depth > 0 => {
            let n = u.int_in_range(0..=3)?;
            let mut m = Map::new();
            for _ in 0..n {
                let k = KEYS[u.choose_index(KEYS.len())?].to_owned();
                m.insert(k, value(u, depth - 1)?);
            }
            Value::Object(m)
        }
        _ => Value::from(string(u)?),
    })
}
