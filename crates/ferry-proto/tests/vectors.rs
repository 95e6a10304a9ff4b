//! Test vectors: the exact bytes of one frame each, in `tests/vectors/`. The encoder must
//! produce them byte for byte, the decoder must turn them back into the typed message, and
//! the hex dumps in `docs/PROTOCOL.md` must be these same bytes, so code, vectors and the
//! document cannot drift apart.
//!
//! To regenerate the files after a deliberate change of the encoding, run the tests with
//! `FERRY_BLESS_VECTORS=1`, then update the dumps in `docs/PROTOCOL.md` (the failure message
//! of `doc_hex_dumps_equal_the_vectors` prints the expected dump).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use ferry_proto::{
    Digest, ErrorCode, HashAlgo, Reply, ReplyFrame, Request, RequestFrame, WireError,
};

/// The session token of the login vectors (made up: 32 bytes as 64 hex digits).
const TOKEN: &str = "5f0c3ad2e1b47a9886c0d2f3e4a5b6c7d8e9f00112233445566778899aabbccd";

/// The file the `put` and `get` vectors carry.
const FILE: &[u8] = b"hello ferry\n";

fn put_request() -> Sent {
    let request = Request::Put {
        path: "/notes/hello.txt".into(),
        size: FILE.len() as u64,
        hash: Some(Digest::of(HashAlgo::Blake3, FILE)),
        offset: 0,
        overwrite: false,
        mtime: None,
    };
    let frame = RequestFrame {
        id: 3,
        request,
        body_len: FILE.len() as u64,
    };
    Sent::Request(frame, FILE.to_vec())
}

/// Every vector: file name and the frame it holds.
fn vectors() -> Vec<(&'static str, Sent)> {
    vec![
        (
            "hello-request.bin",
            Sent::Request(
                RequestFrame::new(
                    1,
                    Request::Hello {
                        version: 1,
                        features: vec!["pipelining".into(), "resume".into()],
                        client: Some("ferry-py/1".into()),
                    },
                ),
                vec![],
            ),
        ),
        (
            "hello-reply.bin",
            Sent::Reply(
                ReplyFrame::ok(
                    1,
                    Reply::Hello {
                        version: 1,
                        features: vec!["pipelining".into(), "resume".into()],
                        server: "ferry/0.1.0".into(),
                        peer: "127.0.0.1:50312".into(),
                        max_header: 65536,
                    },
                ),
                vec![],
            ),
        ),
        (
            "login-request.bin",
            Sent::Request(
                RequestFrame::new(2, Request::login_password("ann", "s3cret")),
                vec![],
            ),
        ),
        (
            "login-reply.bin",
            Sent::Reply(
                ReplyFrame::ok(
                    2,
                    Reply::Login {
                        user: "ann".into(),
                        cwd: "/".into(),
                        token: None,
                        token_ttl: None,
                    },
                ),
                vec![],
            ),
        ),
        (
            "login-reply-with-token.bin",
            Sent::Reply(
                ReplyFrame::ok(
                    2,
                    Reply::Login {
                        user: "ann".into(),
                        cwd: "/".into(),
                        token: Some(TOKEN.into()),
                        token_ttl: Some(3600),
                    },
                ),
                vec![],
            ),
        ),
        (
            "login-token-request.bin",
            Sent::Request(
                RequestFrame::new(2, Request::login_token("ann", TOKEN)),
                vec![],
            ),
        ),
        ("put-request-with-body.bin", put_request()),
        (
            "put-request-hash-after-body.bin",
            Sent::Request(
                RequestFrame {
                    id: 7,
                    request: Request::Put {
                        path: "/notes/hello.txt".into(),
                        size: FILE.len() as u64,
                        hash: None,
                        offset: 0,
                        overwrite: true,
                        mtime: Some(1_764_115_200),
                    },
                    body_len: FILE.len() as u64,
                },
                FILE.to_vec(),
            ),
        ),
        (
            "put-hash-request.bin",
            Sent::Request(
                RequestFrame::new(
                    7,
                    Request::PutHash {
                        hash: Digest::of(HashAlgo::Blake3, FILE),
                    },
                ),
                vec![],
            ),
        ),
        (
            "put-reply.bin",
            Sent::Reply(
                ReplyFrame::ok(
                    3,
                    Reply::Put {
                        path: "/notes/hello.txt".into(),
                        size: FILE.len() as u64,
                        hash: Digest::of(HashAlgo::Blake3, FILE),
                    },
                ),
                vec![],
            ),
        ),
        (
            "get-request.bin",
            Sent::Request(
                RequestFrame::new(
                    4,
                    Request::Get {
                        path: "/notes/hello.txt".into(),
                        offset: 6,
                        algo: Some(HashAlgo::Md5),
                    },
                ),
                vec![],
            ),
        ),
        (
            "get-reply-with-body.bin",
            Sent::Reply(
                ReplyFrame::ok(
                    4,
                    Reply::Get {
                        path: "/notes/hello.txt".into(),
                        size: FILE.len() as u64,
                        offset: 6,
                        mtime: 1_764_115_200,
                        hash: Digest::of(HashAlgo::Md5, FILE),
                    },
                ),
                FILE[6..].to_vec(),
            ),
        ),
        (
            "error-reply.bin",
            Sent::Reply(
                ReplyFrame::err(
                    5,
                    WireError::new(ErrorCode::NotFound, "no such file: /notes/missing.txt"),
                ),
                vec![],
            ),
        ),
        (
            "quit-request.bin",
            Sent::Request(RequestFrame::new(6, Request::Quit), vec![]),
        ),
    ]
}

fn vector_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn protocol_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_vector(name: &str) -> Vec<u8> {
    let path = vector_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn encoder_produces_the_vectors_byte_for_byte() {
    let bless = std::env::var_os("FERRY_BLESS_VECTORS").is_some();
    for (name, sent) in vectors() {
        let bytes = encode_all(std::slice::from_ref(&sent));
        if bless {
            std::fs::write(vector_dir().join(name), &bytes).unwrap();
        }
        assert_eq!(
            bytes,
            read_vector(name),
            "{name} differs from the encoder's output:\n{}",
            hexdump(&bytes)
        );
    }
}

#[test]
fn vectors_decode_to_their_messages() {
    for (name, sent) in vectors() {
        let bytes = read_vector(name);
        let expected = vec![sent];
        let whole = to_typed(decode_cut(&bytes, &[]), &expected);
        assert_eq!(whole, expected, "{name}");
        let bytewise = to_typed(decode_pieces(bytes.chunks(1)), &expected);
        assert_eq!(bytewise, expected, "{name}, one byte at a time");
    }
}

#[test]
fn vectors_in_one_stream_decode_in_order() {
    let all: Vec<Sent> = vectors().into_iter().map(|(_, s)| s).collect();
    let stream: Vec<u8> = vectors().iter().flat_map(|(n, _)| read_vector(n)).collect();
    assert_eq!(to_typed(decode_cut(&stream, &[]), &all), all);
}

#[test]
fn every_vector_file_is_known() {
    let known: BTreeSet<String> = vectors().iter().map(|(n, _)| n.to_string()).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(vector_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(on_disk, known);
}

/// The frame in `hexdump -C` layout, as `docs/PROTOCOL.md` shows it.
fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let mut hex = String::new();
        for (j, b) in line.iter().enumerate() {
            if j == 8 {
                hex.push(' ');
            }
            hex.push_str(&format!("{b:02x} "));
        }
        let ascii: String = line
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}  {hex:<49} |{ascii}|\n", i * 16));
    }
    out.push_str(&format!("{:08x}\n", bytes.len()));
    out
}

/// Reads the bytes back out of a `hexdump -C` dump, checking each line's offset.
fn parse_hexdump(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (offset, rest) = line.split_once(' ').unwrap_or((line, ""));
        let offset = usize::from_str_radix(offset, 16)
            .unwrap_or_else(|_| panic!("bad offset in dump line {line:?}"));
        assert_eq!(offset, bytes.len(), "offset of dump line {line:?}");
        let hex = rest.split('|').next().unwrap();
        for tok in hex.split_whitespace() {
            assert_eq!(tok.len(), 2, "hex byte {tok:?} in {line:?}");
            bytes.push(u8::from_str_radix(tok, 16).unwrap());
        }
    }
    bytes
}

/// Every fenced block preceded by `<!-- vector: NAME -->` in the document.
fn doc_vectors(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- vector:")
            .and_then(|s| s.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.next().expect("fence after the marker");
        assert!(
            fence.trim_start().starts_with("```"),
            "no fence after {line}"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        out.push((name.trim().to_owned(), body.join("\n")));
    }
    out
}

#[test]
fn hexdump_format_round_trips() {
    for (name, _) in vectors() {
        let bytes = read_vector(name);
        assert_eq!(parse_hexdump(&hexdump(&bytes)), bytes);
    }
}

#[test]
fn doc_hex_dumps_equal_the_vectors() {
    let doc = protocol_md();
    let dumps = doc_vectors(&doc);
    let mut shown = BTreeSet::new();
    for (name, dump) in &dumps {
        let want = read_vector(name);
        assert_eq!(
            parse_hexdump(dump),
            want,
            "docs/PROTOCOL.md's dump of {name} is stale; it should read:\n{}",
            hexdump(&want)
        );
        shown.insert(name.clone());
    }
    // Every vector is in the document, so none can be changed without it.
    let all: BTreeSet<String> = vectors().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(shown, all, "vectors shown in docs/PROTOCOL.md");
}

/// The codes of the table that follows `<!-- table: error-codes -->`.
fn doc_error_codes(doc: &str) -> Vec<String> {
    let start = doc
        .find("<!-- table: error-codes -->")
        .expect("error-code table marker");
    doc[start..]
        .lines()
        .skip(1)
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2) // the heading row and the |---| row
        .map(|row| {
            let cell = row.trim().trim_matches('|').split('|').next().unwrap();
            cell.trim().trim_matches('`').to_owned()
        })
        .collect()
}

#[test]
fn doc_error_table_matches_error_code_all() {
    let listed = doc_error_codes(&protocol_md());
    let unique: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a code is listed twice: {listed:?}"
    );
    let all: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        unique, all,
        "docs/PROTOCOL.md's error table vs ErrorCode::ALL"
    );
}

/// `ErrorCode::ALL` holds every variant, and each serializes as its `as_str`.
#[test]
fn error_code_all_is_complete_and_matches_serde() {
    // Adding a variant breaks this match, which sends whoever adds it here and to ALL.
    fn index(c: ErrorCode) -> usize {
        match c {
            ErrorCode::BadRequest => 0,
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::AuthRequired => 2,
            ErrorCode::AuthFailed => 3,
            ErrorCode::TokenInvalid => 4,
            ErrorCode::NotFound => 5,
            ErrorCode::AlreadyExists => 6,
            ErrorCode::NotADirectory => 7,
            ErrorCode::IsADirectory => 8,
            ErrorCode::DirectoryNotEmpty => 9,
            ErrorCode::PermissionDenied => 10,
            ErrorCode::InvalidPath => 11,
            ErrorCode::QuotaExceeded => 12,
            ErrorCode::TooLarge => 13,
            ErrorCode::ChecksumMismatch => 14,
            ErrorCode::Busy => 15,
            ErrorCode::Timeout => 16,
            ErrorCode::Internal => 17,
        }
    }
    let mut seen = [false; ErrorCode::ALL.len()];
    for c in ErrorCode::ALL {
        seen[index(c)] = true;
        assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        assert_eq!(
            serde_json::from_value::<ErrorCode>(c.as_str().into()).unwrap(),
            c
        );
    }
    assert!(seen.iter().all(|&s| s), "ErrorCode::ALL misses a variant");
}

/// Each op has its own section in the document, as `` ### `op` ``.
#[test]
fn doc_describes_every_op_and_feature() {
    let doc = protocol_md();
    for op in Request::OPS {
        assert!(
            doc.contains(&format!("### `{op}`")),
            "docs/PROTOCOL.md has no section ### `{op}`"
        );
    }
    for feature in ferry_proto::message::FEATURES {
        assert!(
            doc.contains(&format!("`{feature}`")),
            "docs/PROTOCOL.md does not name feature {feature}"
        );
    }
    for algo in HashAlgo::ALL {
        assert!(doc.contains(&format!("`{algo}`")), "{algo}");
    }
}

/// Prints every vector as `docs/PROTOCOL.md` shows it:
/// `cargo test -p ferry-proto --test vectors print_dumps -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_dumps() {
    for (name, _) in vectors() {
        println!("== {name}\n{}", hexdump(&read_vector(name)));
    }
}

/// Every one-line JSON block preceded by `<!-- example: request -->` or
/// `<!-- example: reply -->`: (kind, JSON text).
fn doc_examples(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = line
            .trim()
            .strip_prefix("<!-- example:")
            .and_then(|s| s.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.next().expect("fence after the marker");
        assert!(
            fence.trim_start().starts_with("```"),
            "no fence after {line}"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        assert_eq!(body.len(), 1, "examples are one line of JSON: {body:?}");
        out.push((kind.trim().to_owned(), body[0].to_owned()));
    }
    out
}

/// The JSON examples in the document decode to typed messages and are exactly what the
/// encoder writes for them (canonical key order, compact, `body_len` last).
#[test]
fn doc_json_examples_are_canonical_frames() {
    let doc = protocol_md();
    let examples = doc_examples(&doc);
    let limits = ferry_proto::Limits::default();
    let mut ops = (BTreeSet::new(), BTreeSet::new());
    for (kind, json) in &examples {
        let decoded = decode_header_only(json);
        let mut again = bytes::BytesMut::new();
        match kind.as_str() {
            "request" => {
                let f = RequestFrame::from_header(decoded, &limits)
                    .unwrap_or_else(|e| panic!("{json}: {e:?}"));
                ops.0.insert(f.request.op());
                f.encode(u32::MAX, &mut again).unwrap();
            }
            "reply" => {
                let f =
                    ReplyFrame::from_header(decoded).unwrap_or_else(|e| panic!("{json}: {e:?}"));
                if let Ok(r) = &f.result {
                    ops.1.insert(r.op());
                }
                f.encode(u32::MAX, &mut again).unwrap();
            }
            other => panic!("unknown example kind {other}"),
        }
        assert_eq!(
            std::str::from_utf8(&again[4..]).unwrap(),
            json,
            "not canonical"
        );
    }
    // One example request for every op, and one successful reply for every op that has
    // replies of its own (a `put_hash` is answered by its put's reply).
    let all: BTreeSet<&str> = Request::OPS.into_iter().collect();
    assert_eq!(ops.0, all, "ops with an example request");
    let replied: BTreeSet<&str> = all
        .iter()
        .copied()
        .filter(|op| !Request::TRAILER_OPS.contains(op))
        .collect();
    assert_eq!(ops.1, replied, "ops with an example reply");
}

/// The header of a frame made of `json` and a body of the length it declares.
fn decode_header_only(json: &str) -> ferry_proto::Header {
    let mut dec = ferry_proto::FrameDecoder::new(u32::MAX);
    let mut buf = bytes::BytesMut::from(&raw_frame(json, b"")[..]);
    match dec.decode(&mut buf) {
        Ok(Some(ferry_proto::FrameEvent::Header(h))) => h,
        other => panic!("{json}: {other:?}"),
    }
}

/// The Python client in the document frames messages exactly as the vectors do, and reads a
/// vector back whatever size its pieces arrive in. Skipped when `python3` is not installed.
#[test]
fn doc_python_snippet_speaks_the_vectors() {
    let doc = protocol_md();
    let start = doc.find("```python\n").expect("python snippet") + "```python\n".len();
    let snippet = &doc[start..start + doc[start..].find("```").unwrap()];
    // Only the helper functions: the session below them needs a server.
    let helpers = &snippet[..snippet
        .find("with socket.create_connection")
        .expect("session part")];
    let harness = r#"
import sys, threading
vectors = sys.argv[1]
def vec(name):
    with open(vectors + "/" + name, "rb") as f:
        return f.read()
a, b = socket.socketpair()
send_frame(a, {"id": 1, "op": "hello", "version": 1, "features": ["pipelining", "resume"], "client": "ferry-py/1"})
assert b.recv(4096) == vec("hello-request.bin")
data = b"hello ferry\n"
send_frame(a, {"id": 3, "op": "put", "path": "/notes/hello.txt", "size": 12,
               "hash": "blake3:4e99d205e3b7f06e476cf0cab613752b72efb2fb85851167578ac533edb539dc"}, data)
assert b.recv(4096) == vec("put-request-with-body.bin")
stream = vec("get-reply-with-body.bin") + vec("error-reply.bin")
def trickle():
    for i in range(len(stream)):
        a.send(stream[i:i + 1])
threading.Thread(target=trickle).start()
h, body = read_frame(b)
assert (h["op"], h["offset"], body) == ("get", 6, b"ferry\n"), (h, body)
assert h["hash"] == "md5:" + hashlib.md5(data).hexdigest()
h, body = read_frame(b)
assert (h["ok"], h["code"], body) == (False, "not_found", b""), h
print("ok")
"#;
    let program = format!("{helpers}\n{harness}");
    let out = match std::process::Command::new("python3")
        .arg("-c")
        .arg(&program)
        .arg(vector_dir())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: cannot run python3: {e}");
            return;
        }
    };
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "python snippet failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
