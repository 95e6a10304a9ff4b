//! Malformed input: every rejection has an exact [`ProtoError`] variant, a fatality and a wire
//! code; declared lengths are checked before anything is buffered; and after a non-fatal
//! rejection the rejected frame's body is skipped exactly, so the next frame decodes.

mod common;

use bytes::BytesMut;
use common::*;
use ferry_proto::digest::DigestParseError;
use ferry_proto::message::Rejected;
use ferry_proto::{
    Digest, ErrorCode, FrameDecoder, FrameEvent, HashAlgo, Header, Limits, ProtoError, Reply,
    ReplyFrame, Request, RequestFrame,
};

const MAX: u32 = 64 * 1024;

/// Decodes exactly one header from `bytes` (which may hold more).
fn header_of(bytes: &[u8]) -> Result<Header, ProtoError> {
    let mut dec = FrameDecoder::new(MAX);
    let mut buf = BytesMut::from(bytes);
    match dec.decode(&mut buf)? {
        Some(FrameEvent::Header(h)) => Ok(h),
        other => panic!("expected a header, got {other:?}"),
    }
}

/// The frame-level error a header's JSON text gives.
fn frame_err(json: &str) -> ProtoError {
    header_of(&raw_frame(json, b"")).expect_err(json)
}

fn request(json: &str) -> Result<RequestFrame, Rejected> {
    let header = header_of(&raw_frame(json, b"")).expect("frame decodes");
    RequestFrame::from_header(header, &Limits::default())
}

fn reply(json: &str) -> Result<ReplyFrame, Rejected> {
    let header = header_of(&raw_frame(json, b"")).expect("frame decodes");
    ReplyFrame::from_header(header)
}

/// The rejection of a request header, checked to be non-fatal `bad_request` with this id.
#[track_caller]
fn rejected(json: &str, id: u64) -> ProtoError {
    let r = request(json).expect_err(json);
    assert_eq!(r.id, id, "id of the rejection of {json}");
    r.error
}

#[track_caller]
fn malformed(err: &ProtoError, op: &str) {
    match err {
        ProtoError::Malformed { op: got, .. } => assert_eq!(got, op, "{err}"),
        other => panic!("expected Malformed({op}), got {other:?}"),
    }
    assert_err(err, false, ErrorCode::BadRequest);
}

// ---------------------------------------------------------------------------------------------
// Frame level: fatal errors

#[test]
fn bad_json_is_fatal() {
    for json in [
        r#"{"id":1,"op":"pwd""#,
        "{",
        "}",
        r#"{"id":1,}"#,
        r#"{} {}"#,
        "{'id':1}",
        "x",
        " ",
    ] {
        let e = frame_err(json);
        assert!(matches!(e, ProtoError::InvalidJson(_)), "{json}: {e:?}");
        assert_err(&e, true, ErrorCode::BadRequest);
    }
}

#[test]
fn json_that_is_not_an_object_is_fatal() {
    for (json, kind) in [
        ("[1,2]", "an array"),
        ("[]", "an array"),
        (r#""pwd""#, "a string"),
        ("42", "a number"),
        ("-1.5", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        let e = frame_err(json);
        assert_eq!(e, ProtoError::NotAnObject(kind), "{json}");
        assert_err(&e, true, ErrorCode::BadRequest);
    }
}

#[test]
fn invalid_utf8_is_fatal() {
    let e = header_of(&raw_frame_bytes(b"{\"op\":\"\xff\"}", b"")).unwrap_err();
    assert_eq!(e, ProtoError::InvalidUtf8 { valid_up_to: 7 });
    assert_err(&e, true, ErrorCode::BadRequest);
    // An overlong encoding and a lone surrogate (CESU) are not UTF-8 either.
    for bad in [&b"{\"a\":\"\xc0\xaf\"}"[..], b"{\"a\":\"\xed\xa0\x80\"}"] {
        let e = header_of(&raw_frame_bytes(bad, b"")).unwrap_err();
        assert_eq!(e, ProtoError::InvalidUtf8 { valid_up_to: 6 });
    }
}

#[test]
fn zero_length_is_fatal() {
    let e = header_of(&[0, 0, 0, 0, b'{', b'}']).unwrap_err();
    assert_eq!(e, ProtoError::EmptyHeader);
    assert_err(&e, true, ErrorCode::BadRequest);
}

#[test]
fn oversize_length_is_fatal_and_nothing_is_reserved() {
    for len in [MAX + 1, 1 << 20, u32::MAX] {
        let mut dec = FrameDecoder::new(MAX);
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(b"{\"id\":1");
        let cap = buf.capacity();
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(e, ProtoError::HeaderTooLarge { len, max: MAX });
        assert_err(&e, true, ErrorCode::TooLarge);
        assert_eq!(buf.capacity(), cap, "the buffer grew for a rejected length");
        assert_eq!(buf.len(), 11, "nothing consumed");
    }
}

#[test]
fn header_at_the_limit_is_accepted_and_one_more_byte_is_not() {
    let limits = Limits::default();
    let max = limits.max_header_prelogin as usize;
    // {"id":1,"op":"pwd","pad":"…"} padded to exactly `max` bytes.
    let base = r#"{"id":1,"op":"pwd","pad":""}"#.len();
    let at_limit = format!(
        r#"{{"id":1,"op":"pwd","pad":"{}"}}"#,
        "x".repeat(max - base)
    );
    assert_eq!(at_limit.len(), max);
    let mut dec = FrameDecoder::new(limits.max_header_prelogin);
    let mut buf = BytesMut::from(&raw_frame(&at_limit, b"")[..]);
    let Some(FrameEvent::Header(h)) = dec.decode(&mut buf).unwrap() else {
        panic!("no header")
    };
    assert_eq!(
        RequestFrame::from_header(h, &limits).unwrap().request,
        Request::Pwd
    );

    let over = format!(
        r#"{{"id":1,"op":"pwd","pad":"{}"}}"#,
        "x".repeat(max + 1 - base)
    );
    let mut buf = BytesMut::from(&raw_frame(&over, b"")[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(ProtoError::HeaderTooLarge {
            len: max as u32 + 1,
            max: max as u32
        })
    );
    // After login the session raises the limit and the same frame is fine.
    dec.set_max_header(limits.max_header);
    assert!(matches!(
        dec.decode(&mut buf),
        Ok(Some(FrameEvent::Header(_)))
    ));
}

/// A declared body is never reserved: bytes are handed out only as they arrive.
#[test]
fn huge_declared_body_is_not_buffered() {
    let mut dec = FrameDecoder::new(MAX);
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&raw_frame(
        r#"{"id":1,"op":"pwd","body_len":18446744073709551615}"#,
        b"ab",
    ));
    let cap = buf.capacity();
    let Some(FrameEvent::Header(h)) = dec.decode(&mut buf).unwrap() else {
        panic!("no header")
    };
    assert_eq!(h.body_len, u64::MAX);
    assert_eq!(
        dec.decode(&mut buf).unwrap(),
        Some(FrameEvent::Body("ab".into()))
    );
    assert_eq!(dec.body_remaining(), u64::MAX - 2);
    assert!(buf.capacity() <= cap);
    // And the typed layer rejects it without touching the body: pwd takes none.
    let e = RequestFrame::from_header(h, &Limits::default()).unwrap_err();
    assert_eq!(e.id, 1);
    assert!(matches!(e.error, ProtoError::BodyMismatch(_)));
    assert_err(&e.error, false, ErrorCode::BadRequest);
}

#[test]
fn bad_body_len_is_fatal() {
    for (value, shown) in [
        ("-1", "-1"),
        ("1.5", "1.5"),
        ("3.0", "3.0"),
        ("1e3", "1000.0"),
        ("18446744073709551616", "1.8446744073709552e+19"),
        ("1e400", ""),
        (r#""5""#, r#""5""#),
        ("null", "null"),
        ("true", "true"),
        ("[1]", "[1]"),
        (r#"{"n":1}"#, r#"{"n":1}"#),
    ] {
        let json = format!(r#"{{"id":1,"op":"pwd","body_len":{value}}}"#);
        let e = header_of(&raw_frame(&json, b"")).unwrap_err();
        if value == "1e400" {
            // serde_json refuses a number out of f64 range as bad JSON: fatal all the same.
            assert!(matches!(e, ProtoError::InvalidJson(_)), "{e:?}");
        } else {
            assert_eq!(e, ProtoError::BadBodyLen(shown.into()), "{json}");
        }
        assert_err(&e, true, ErrorCode::BadRequest);
    }
}

#[test]
fn truncated_at_eof_is_reported_by_finish() {
    let whole = raw_frame(r#"{"id":1,"op":"put","body_len":3}"#, b"abc");
    let header_end = whole.len() - 3;
    for cut in 1..whole.len() {
        let mut dec = FrameDecoder::new(MAX);
        let mut buf = BytesMut::from(&whole[..cut]);
        while let Some(_ev) = dec.decode(&mut buf).unwrap() {}
        let e = dec.finish(&buf).expect_err("truncated");
        let place = if cut < 4 {
            "inside the header length"
        } else if cut < header_end {
            "inside a header"
        } else {
            "inside a body"
        };
        assert_eq!(e, ProtoError::Truncated(place), "cut at {cut}");
        assert_err(&e, true, ErrorCode::BadRequest);
    }
}

#[test]
fn clean_close_between_frames_is_ok() {
    let dec = FrameDecoder::new(MAX);
    assert_eq!(dec.finish(&[]), Ok(()));
    let mut dec = FrameDecoder::new(MAX);
    let mut buf = BytesMut::from(&raw_frame(r#"{"id":1,"op":"quit"}"#, b"")[..]);
    assert!(dec.decode(&mut buf).unwrap().is_some());
    assert_eq!(dec.finish(&buf), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Message level: non-fatal rejections

#[test]
fn unknown_ops() {
    for op in ["delete", "PWD", "", "hello ", "get\u{0}"] {
        let json = serde_json::json!({"id": 9, "op": op}).to_string();
        let e = rejected(&json, 9);
        assert_eq!(e, ProtoError::UnknownOp(op.into()));
        assert_err(&e, false, ErrorCode::BadRequest);
    }
}

#[test]
fn missing_or_mistyped_op() {
    malformed(&rejected(r#"{"id":3}"#, 3), "request");
    malformed(&rejected(r#"{"id":3,"op":7}"#, 3), "request");
    malformed(&rejected(r#"{"id":3,"op":null}"#, 3), "request");
    malformed(&rejected(r#"{"id":3,"op":["pwd"]}"#, 3), "request");
}

#[test]
fn bad_ids() {
    for (json, shown) in [
        (r#"{"id":-1,"op":"pwd"}"#, "-1"),
        (r#"{"id":1.5,"op":"pwd"}"#, "1.5"),
        (r#"{"id":1e2,"op":"pwd"}"#, "100.0"),
        (
            r#"{"id":18446744073709551616,"op":"pwd"}"#,
            "1.8446744073709552e+19",
        ),
        (r#"{"id":"1","op":"pwd"}"#, "a string"),
        (r#"{"id":null,"op":"pwd"}"#, "null"),
        (r#"{"id":true,"op":"pwd"}"#, "a boolean"),
        (r#"{"op":"pwd"}"#, "nothing"),
        (r#"{}"#, "nothing"),
    ] {
        let e = rejected(json, 0);
        assert_eq!(e, ProtoError::BadId(shown.into()), "{json}");
        assert_err(&e, false, ErrorCode::BadRequest);
        // Replies check their id the same way.
        let r = reply(json).unwrap_err();
        assert_eq!((r.id, r.error), (0, ProtoError::BadId(shown.into())));
    }
    // The largest id is fine.
    assert_eq!(
        request(r#"{"id":18446744073709551615,"op":"pwd"}"#)
            .unwrap()
            .id,
        u64::MAX
    );
}

#[test]
fn wrong_field_types() {
    for (json, op) in [
        (r#"{"id":2,"op":"cd","path":5}"#, "cd"),
        (r#"{"id":2,"op":"cd","path":null}"#, "cd"),
        (r#"{"id":2,"op":"ls","path":["a"]}"#, "ls"),
        (r#"{"id":2,"op":"rm","path":"a","recursive":"yes"}"#, "rm"),
        (r#"{"id":2,"op":"rm","path":"a","recursive":1}"#, "rm"),
        (r#"{"id":2,"op":"hello","version":"1"}"#, "hello"),
        (r#"{"id":2,"op":"hello","version":-1}"#, "hello"),
        (r#"{"id":2,"op":"hello","version":4294967296}"#, "hello"),
        (
            r#"{"id":2,"op":"hello","version":1,"features":"resume"}"#,
            "hello",
        ),
        (
            r#"{"id":2,"op":"hello","version":1,"features":[1]}"#,
            "hello",
        ),
        (r#"{"id":2,"op":"stat","path":"a","algo":"crc32"}"#, "stat"),
        (r#"{"id":2,"op":"stat","path":"a","algo":"BLAKE3"}"#, "stat"),
        (r#"{"id":2,"op":"get","path":"a","offset":-1}"#, "get"),
        (r#"{"id":2,"op":"get","path":"a","offset":"0"}"#, "get"),
        (
            r#"{"id":2,"op":"put","path":"a","size":1.5,"hash":"md5:900150983cd24fb0d6963f7d28e17f72","body_len":1}"#,
            "put",
        ),
        (
            r#"{"id":2,"op":"put","path":"a","size":0,"hash":"md5:d41d8cd98f00b204e9800998ecf8427e","mtime":"now"}"#,
            "put",
        ),
    ] {
        malformed(&rejected(json, 2), op);
    }
}

#[test]
fn missing_fields() {
    for (json, op) in [
        (r#"{"id":4,"op":"login","user":"ann"}"#, "login"),
        (r#"{"id":4,"op":"login","password":"x"}"#, "login"),
        (r#"{"id":4,"op":"hello"}"#, "hello"),
        (r#"{"id":4,"op":"cd"}"#, "cd"),
        (r#"{"id":4,"op":"mv","from":"a"}"#, "mv"),
        (
            r#"{"id":4,"op":"put","path":"a","hash":"md5:d41d8cd98f00b204e9800998ecf8427e"}"#,
            "put",
        ),
        (r#"{"id":4,"op":"resume","path":"a"}"#, "resume"),
        (r#"{"id":4,"op":"get"}"#, "get"),
        (r#"{"id":4,"op":"put_hash"}"#, "put_hash"),
        (r#"{"id":4,"op":"put_hash","hash":null}"#, "put_hash"),
    ] {
        malformed(&rejected(json, 4), op);
    }
}

#[test]
fn login_takes_exactly_one_of_password_and_token() {
    let token = "ab".repeat(32);
    // Either alone is fine; a password-only login is byte for byte what older clients send.
    let f = request(r#"{"id":4,"op":"login","user":"ann","password":"x"}"#).unwrap();
    assert_eq!(f.request, Request::login_password("ann", "x"));
    let f = request(&format!(
        r#"{{"id":4,"op":"login","user":"ann","token":"{token}"}}"#
    ))
    .unwrap();
    assert_eq!(f.request, Request::login_token("ann", token.clone()));
    // An explicit null is the same as leaving the field out.
    let f = request(r#"{"id":4,"op":"login","user":"ann","password":"x","token":null}"#).unwrap();
    assert_eq!(f.request, Request::login_password("ann", "x"));
    // The frame layer does not judge a token's shape: the server answers token_invalid.
    for odd in ["", "not hex", "ABCDEF"] {
        let f = request(&format!(
            r#"{{"id":4,"op":"login","user":"ann","token":"{odd}"}}"#
        ))
        .unwrap();
        assert_eq!(f.request, Request::login_token("ann", odd));
    }
    for json in [
        format!(r#"{{"id":4,"op":"login","user":"ann","password":"x","token":"{token}"}}"#),
        r#"{"id":4,"op":"login","user":"ann","password":"","token":""}"#.to_owned(),
        r#"{"id":4,"op":"login","user":"ann"}"#.to_owned(),
        r#"{"id":4,"op":"login","user":"ann","password":null,"token":null}"#.to_owned(),
    ] {
        let err = rejected(&json, 4);
        malformed(&err, "login");
    }
    for json in [
        r#"{"id":4,"op":"login","user":"ann","token":7}"#,
        r#"{"id":4,"op":"login","user":"ann","token":["ab"]}"#,
        r#"{"id":4,"op":"login","user":"ann","token":{"t":"ab"}}"#,
        r#"{"id":4,"op":"login","token":"ab"}"#,
    ] {
        malformed(&rejected(json, 4), "login");
    }
    // logout takes nothing; stray fields are ignored like anywhere else.
    assert_eq!(
        request(r#"{"id":5,"op":"logout"}"#).unwrap().request,
        Request::Logout
    );
    assert_eq!(
        request(r#"{"id":5,"op":"logout","token":"ab"}"#)
            .unwrap()
            .request,
        Request::Logout
    );
    malformed(
        &reply(r#"{"id":5,"ok":true,"op":"logout"}"#)
            .unwrap_err()
            .error,
        "reply",
    );
    malformed(
        &reply(r#"{"id":5,"ok":true,"op":"logout","revoked":"yes"}"#)
            .unwrap_err()
            .error,
        "reply",
    );
    // The rule is the decoder's, so a frame built by hand is checked the same way.
    let both = Request::Login {
        user: "ann".into(),
        password: Some("x".into()),
        token: Some(token),
    };
    malformed(&both.check_fields().unwrap_err(), "login");
}

#[test]
fn login_replies_with_and_without_a_token() {
    let f = reply(r#"{"id":2,"ok":true,"op":"login","user":"ann","cwd":"/"}"#).unwrap();
    assert_eq!(
        f.result,
        Ok(Reply::Login {
            user: "ann".into(),
            cwd: "/".into(),
            token: None,
            token_ttl: None
        })
    );
    let f = reply(
        r#"{"id":2,"ok":true,"op":"login","user":"ann","cwd":"/","token":"t","token_ttl":60}"#,
    )
    .unwrap();
    assert_eq!(
        f.result,
        Ok(Reply::Login {
            user: "ann".into(),
            cwd: "/".into(),
            token: Some("t".into()),
            token_ttl: Some(60)
        })
    );
    for json in [
        r#"{"id":2,"ok":true,"op":"login","user":"ann","cwd":"/","token":1}"#,
        r#"{"id":2,"ok":true,"op":"login","user":"ann","cwd":"/","token_ttl":-1}"#,
        r#"{"id":2,"ok":true,"op":"login","user":"ann","cwd":"/","token_ttl":"1h"}"#,
    ] {
        let err = reply(json).expect_err(json).error;
        assert_err(&err, false, ErrorCode::BadRequest);
    }
    let f = reply(r#"{"id":2,"ok":false,"code":"token_invalid","message":"expired"}"#).unwrap();
    assert_eq!(f.result.unwrap_err().code, ErrorCode::TokenInvalid);
}

#[test]
fn optional_fields_take_their_defaults_and_unknown_fields_are_ignored() {
    let f = request(r#"{"id":1,"op":"hello","version":1,"later":{"x":[1,2]}}"#).unwrap();
    assert_eq!(
        f.request,
        Request::Hello {
            version: 1,
            features: vec![],
            client: None
        }
    );
    let f = request(r#"{"id":1,"op":"pwd","extra":true}"#).unwrap();
    assert_eq!(f.request, Request::Pwd);
    let f = request(r#"{"id":1,"op":"get","path":"a","algo":null}"#).unwrap();
    assert_eq!(
        f.request,
        Request::Get {
            path: "a".into(),
            offset: 0,
            algo: None
        }
    );
    let f = request(r#"{"id":1,"op":"rm","path":"a"}"#).unwrap();
    assert_eq!(
        f.request,
        Request::Rm {
            path: "a".into(),
            recursive: false
        }
    );
}

const MD5_ABC: &str = "md5:900150983cd24fb0d6963f7d28e17f72";

fn put_json(size: &str, offset: &str, body_len: u64) -> String {
    format!(
        r#"{{"id":5,"op":"put","path":"/f","size":{size},"hash":"{MD5_ABC}","offset":{offset},"body_len":{body_len}}}"#
    )
}

#[test]
fn put_sizes_and_offsets() {
    let limits = Limits::default();
    // Fine: the body is exactly size - offset.
    let f = request(&put_json("3", "0", 3)).unwrap();
    assert_eq!(f.body_len, 3);
    let f = request(&put_json("3", "3", 0)).unwrap();
    assert_eq!(f.body_len, 0);
    // Negative or non-integer size/offset: wrong field type.
    malformed(&rejected(&put_json("-3", "0", 3), 5), "put");
    malformed(&rejected(&put_json("3", "-1", 4), 5), "put");
    malformed(&rejected(&put_json("3", "0.5", 3), 5), "put");
    // Offset past the size.
    for (size, offset) in [("3", "4"), ("0", "18446744073709551615")] {
        let e = rejected(&put_json(size, offset, 0), 5);
        assert!(matches!(e, ProtoError::BodyMismatch(_)), "{e:?}");
        assert_err(&e, false, ErrorCode::BadRequest);
    }
    // A body that disagrees with size - offset.
    for body_len in [0, 2, 4, u64::MAX] {
        let e = rejected(&put_json("3", "0", body_len), 5);
        assert!(
            matches!(e, ProtoError::BodyMismatch(_)),
            "{body_len}: {e:?}"
        );
        assert_err(&e, false, ErrorCode::BadRequest);
    }
    // Sizes over the limit, even absurd ones.
    for size in [limits.max_file_size + 1, u64::MAX] {
        let e = rejected(&put_json(&size.to_string(), "0", size), 5);
        assert_eq!(
            e,
            ProtoError::TooLarge {
                size,
                max: limits.max_file_size
            }
        );
        assert_err(&e, false, ErrorCode::TooLarge);
    }
    // At the limit is fine (and nothing is allocated for it).
    let at = limits.max_file_size;
    assert_eq!(
        request(&put_json(&at.to_string(), "0", at))
            .unwrap()
            .body_len,
        at
    );
    // A size over 2^64 is not a u64 at all.
    malformed(
        &rejected(&put_json("18446744073709551616", "0", 0), 5),
        "put",
    );
}

#[test]
fn resume_size_over_the_limit() {
    let max = Limits::default().max_file_size;
    let json = format!(
        r#"{{"id":6,"op":"resume","path":"/f","size":{},"hash":"{MD5_ABC}"}}"#,
        max + 1
    );
    let e = rejected(&json, 6);
    assert_eq!(e, ProtoError::TooLarge { size: max + 1, max });
    assert_err(&e, false, ErrorCode::TooLarge);
}

#[test]
fn body_on_an_op_that_takes_none() {
    for op in [
        r#""op":"pwd""#,
        r#""op":"quit""#,
        r#""op":"logout""#,
        r#""op":"login","user":"ann","token":"ab""#,
        r#""op":"cd","path":"a""#,
        r#""op":"get","path":"a""#,
        r#""op":"hello","version":1"#,
        r#""op":"resume","path":"a","size":3,"hash":"md5:900150983cd24fb0d6963f7d28e17f72""#,
    ] {
        let json = format!(r#"{{"id":8,{op},"body_len":1}}"#);
        let e = rejected(&json, 8);
        assert!(matches!(e, ProtoError::BodyMismatch(_)), "{json}: {e:?}");
        assert_err(&e, false, ErrorCode::BadRequest);
    }
}

#[test]
fn bad_digests() {
    for hash in [
        "md5:xyz",
        "md5:0011",
        "md5:900150983cd24fb0d6963f7d28e17f7",
        "md5:900150983cd24fb0d6963f7d28e17f7200",
        "md5:900150983CD24FB0D6963F7D28E17F72",
        "MD5:900150983cd24fb0d6963f7d28e17f72",
        "crc32:00000000",
        "900150983cd24fb0d6963f7d28e17f72",
        "md5:",
        ":",
        "",
        "sha256:900150983cd24fb0d6963f7d28e17f72",
        "blake3:900150983cd24fb0d6963f7d28e17f72",
        "md5: 900150983cd24fb0d6963f7d28e17f72",
    ] {
        let json =
            format!(r#"{{"id":7,"op":"put","path":"a","size":3,"hash":"{hash}","body_len":3}}"#);
        malformed(&rejected(&json, 7), "put");
    }
    for hash in ["5", r#""md5:xyz""#, r#"["md5","00"]"#] {
        let json = format!(r#"{{"id":7,"op":"resume","path":"a","size":3,"hash":{hash}}}"#);
        malformed(&rejected(&json, 7), "resume");
        let json = format!(r#"{{"id":7,"op":"put_hash","hash":{hash}}}"#);
        malformed(&rejected(&json, 7), "put_hash");
    }
}

/// With `hash-after-body`, `put` and `resume` may leave `hash` out (or send null); a
/// `put_hash` frame carries it after the body, and takes no body of its own.
#[test]
fn hash_after_body_frames() {
    for json in [
        r#"{"id":4,"op":"put","path":"a","size":3,"body_len":3}"#,
        r#"{"id":4,"op":"put","path":"a","size":3,"hash":null,"body_len":3}"#,
    ] {
        let f = request(json).unwrap();
        assert!(
            matches!(
                &f.request,
                Request::Put {
                    hash: None,
                    size: 3,
                    ..
                }
            ),
            "{f:?}"
        );
        assert_eq!(f.body_len, 3);
    }
    let f = request(r#"{"id":4,"op":"resume","path":"a","size":3,"mtime":-5}"#).unwrap();
    assert_eq!(
        f.request,
        Request::Resume {
            path: "a".into(),
            size: 3,
            hash: None,
            mtime: Some(-5)
        }
    );
    let f = request(r#"{"id":4,"op":"resume","path":"a","size":3,"hash":null}"#).unwrap();
    assert!(matches!(
        f.request,
        Request::Resume {
            hash: None,
            mtime: None,
            ..
        }
    ));
    let f = request(&format!(r#"{{"id":4,"op":"put_hash","hash":"{MD5_ABC}"}}"#)).unwrap();
    assert_eq!(
        f,
        RequestFrame::new(
            4,
            Request::PutHash {
                hash: MD5_ABC.parse().unwrap()
            }
        )
    );
    // A put_hash with a body is refused (the body is skipped, the connection stays).
    for body_len in [1, 3, u64::MAX] {
        let e = rejected(
            &format!(r#"{{"id":4,"op":"put_hash","hash":"{MD5_ABC}","body_len":{body_len}}}"#),
            4,
        );
        assert!(matches!(e, ProtoError::BodyMismatch(_)), "{e:?}");
        assert_err(&e, false, ErrorCode::BadRequest);
    }
    // The body rules of a put are the same with or without hash.
    let e = rejected(r#"{"id":4,"op":"put","path":"a","size":3,"body_len":2}"#, 4);
    assert!(matches!(e, ProtoError::BodyMismatch(_)), "{e:?}");
}

#[test]
fn digest_parse_errors() {
    use DigestParseError::*;
    assert_eq!("md5:xyz".parse::<Digest>(), Err(BadHex));
    assert_eq!("md5:abc".parse::<Digest>(), Err(BadHex)); // odd length
    assert_eq!(
        "md5:900150983CD24FB0D6963F7D28E17F72".parse::<Digest>(),
        Err(BadHex)
    );
    assert_eq!("md5".parse::<Digest>(), Err(MissingColon));
    assert_eq!(
        "crc32:00".parse::<Digest>(),
        Err(UnknownAlgo("crc32".into()))
    );
    assert_eq!("MD5:00".parse::<Digest>(), Err(UnknownAlgo("MD5".into())));
    assert_eq!(
        "sha256:0011".parse::<Digest>(),
        Err(BadLength {
            algo: HashAlgo::Sha256,
            expected: 32,
            got: 2
        })
    );
    assert_eq!(
        format!("blake3:{}", "00".repeat(33)).parse::<Digest>(),
        Err(BadLength {
            algo: HashAlgo::Blake3,
            expected: 32,
            got: 33
        })
    );
    assert_eq!(
        MD5_ABC.parse::<Digest>(),
        Ok(Digest::of(HashAlgo::Md5, b"abc"))
    );
}

// ---------------------------------------------------------------------------------------------
// Replies

#[test]
fn malformed_replies() {
    for json in [
        r#"{"id":1,"op":"pwd","cwd":"/"}"#,
        r#"{"id":1,"ok":"true","op":"pwd","cwd":"/"}"#,
        r#"{"id":1,"ok":1,"op":"pwd","cwd":"/"}"#,
        r#"{"id":1,"ok":true,"op":"pwd"}"#,
        r#"{"id":1,"ok":true,"op":"pwd","cwd":7}"#,
        r#"{"id":1,"ok":true,"op":"nope"}"#,
        r#"{"id":1,"ok":true}"#,
        r#"{"id":1,"ok":false,"message":"x"}"#,
        r#"{"id":1,"ok":false,"code":"not_found"}"#,
        r#"{"id":1,"ok":false,"code":"NotFound","message":"x"}"#,
        r#"{"id":1,"ok":false,"code":7,"message":"x"}"#,
    ] {
        let r = reply(json).expect_err(json);
        assert_eq!(r.id, 1, "{json}");
        malformed(&r.error, "reply");
    }
}

#[test]
fn reply_bodies_must_match_the_op() {
    let get = r#"{"id":1,"ok":true,"op":"get","path":"/f","size":10,"offset":4,"mtime":0,"hash":"md5:900150983cd24fb0d6963f7d28e17f72""#;
    let ok = |body_len: u64| {
        let header =
            header_of(&raw_frame(&format!("{get},\"body_len\":{body_len}}}"), b"")).unwrap();
        ReplyFrame::from_header(header)
    };
    assert_eq!(ok(6).unwrap().body_len, 6);
    for body_len in [0, 5, 7, 10] {
        let e = ok(body_len).unwrap_err();
        assert!(matches!(e.error, ProtoError::BodyMismatch(_)), "{e:?}");
        assert_err(&e.error, false, ErrorCode::BadRequest);
    }
    // A get reply whose offset is past its size is contradictory, body or not.
    let past = r#"{"id":1,"ok":true,"op":"get","path":"/f","size":3,"offset":4,"mtime":0,"hash":"md5:900150983cd24fb0d6963f7d28e17f72"}"#;
    let e = reply(past).unwrap_err();
    assert_eq!(e.id, 1);
    assert!(matches!(e.error, ProtoError::BodyMismatch(_)), "{e:?}");
    assert_err(&e.error, false, ErrorCode::BadRequest);
    for json in [
        r#"{"id":2,"ok":true,"op":"pwd","cwd":"/","body_len":1}"#,
        r#"{"id":2,"ok":false,"code":"not_found","message":"x","body_len":1}"#,
    ] {
        let e = reply(json).unwrap_err();
        assert_eq!(e.id, 2);
        assert!(matches!(e.error, ProtoError::BodyMismatch(_)), "{e:?}");
    }
}

#[test]
fn error_reply_fields() {
    let f = reply(r#"{"id":3,"ok":false,"code":"busy","message":"later","extra":1}"#).unwrap();
    assert_eq!(f.result.unwrap_err().code, ErrorCode::Busy);
    // Known limitation: a code this version does not know is rejected as a malformed reply
    // rather than surfacing as a generic failure of the one request (see docs/PROTOCOL.md).
    let r = reply(r#"{"id":3,"ok":false,"code":"slow_down","message":"x"}"#).unwrap_err();
    malformed(&r.error, "reply");
    let f = reply(r#"{"id":3,"ok":true,"op":"quit"}"#).unwrap();
    assert_eq!(f.result, Ok(Reply::Quit));
}

// ---------------------------------------------------------------------------------------------
// Recovery: a non-fatal rejection skips the frame's body, and the next frame decodes.

/// Decodes `bad` (one frame whose header must be rejected non-fatally) followed by a good
/// `pwd` request, cut into pieces of `piece` bytes, and checks the good one comes through.
fn recover_after(bad: &[u8], piece: usize) -> ProtoError {
    let good = raw_frame(r#"{"id":99,"op":"pwd"}"#, b"");
    let stream = [bad, &good[..]].concat();
    let limits = Limits::default();
    let mut dec = FrameDecoder::new(MAX);
    let mut buf = BytesMut::new();
    let mut rejection = None;
    let mut skipped = 0u64;
    let mut declared = None;
    let mut next = None;
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        while let Some(ev) = dec.decode(&mut buf).expect("no fatal error") {
            match ev {
                FrameEvent::Header(h) if rejection.is_none() => {
                    declared = Some(h.body_len);
                    let r = RequestFrame::from_header(h, &limits).expect_err("bad frame");
                    assert!(!r.error.is_fatal());
                    rejection = Some(r.error);
                }
                FrameEvent::Body(b) => {
                    assert!(next.is_none(), "body after the good frame");
                    skipped += b.len() as u64;
                }
                FrameEvent::Header(h) => {
                    next = Some(RequestFrame::from_header(h, &limits).expect("good frame"));
                }
            }
        }
    }
    dec.finish(&buf).unwrap();
    assert_eq!(
        Some(skipped),
        declared,
        "the rejected body was skipped exactly"
    );
    assert_eq!(next, Some(RequestFrame::new(99, Request::Pwd)));
    rejection.unwrap()
}

#[test]
fn next_frame_decodes_after_a_non_fatal_rejection() {
    let cases: Vec<Vec<u8>> = vec![
        raw_frame(r#"{"id":1,"op":"pwd","body_len":5}"#, b"{}{}{"),
        raw_frame(r#"{"id":1,"op":"frobnicate","body_len":4}"#, &[0, 0, 0, 0]),
        raw_frame(r#"{"id":-1,"op":"pwd","body_len":3}"#, b"abc"),
        raw_frame(r#"{"op":"put","body_len":1}"#, b"x"),
        raw_frame(r#"{"id":1,"op":"cd","path":1,"body_len":2}"#, b"\x04\x00"),
        raw_frame(&put_json("3", "0", 2), b"ab"),
        raw_frame(&put_json("3", "4", 1), b"a"),
        raw_frame(
            r#"{"id":5,"op":"put","path":"a","size":3,"hash":"md5:xyz","body_len":3}"#,
            b"abc",
        ),
        raw_frame(
            &put_json(
                &(Limits::default().max_file_size + 1).to_string(),
                "1099511627770",
                7,
            ),
            b"1234567",
        ),
        raw_frame(r#"{"id":1,"op":"unknown"}"#, b""),
    ];
    for bad in &cases {
        for piece in [1, 3, 1000] {
            let e = recover_after(bad, piece);
            assert!(!e.is_fatal());
        }
    }
}

#[test]
fn bench_sizes_and_bodies_are_checked() {
    use ferry_proto::{BENCH_MAX, Limits, ProtoError, Request};
    let limits = Limits::default();
    let upload = |size| Request::Bench {
        size,
        download: false,
    };
    let download = |size| Request::Bench {
        size,
        download: true,
    };
    assert_eq!(upload(10).check_body(10, &limits), Ok(()));
    assert!(matches!(
        upload(10).check_body(9, &limits),
        Err(ProtoError::BodyMismatch(_))
    ));
    assert_eq!(download(10).check_body(0, &limits), Ok(()));
    assert!(matches!(
        download(10).check_body(10, &limits),
        Err(ProtoError::BodyMismatch(_))
    ));
    assert!(matches!(
        download(BENCH_MAX + 1).check_body(0, &limits),
        Err(ProtoError::TooLarge { .. })
    ));
    assert_eq!(download(BENCH_MAX).check_body(0, &limits), Ok(()));
}
