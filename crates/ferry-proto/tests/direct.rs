//! The direct paths for the frames a transfer is made of (message.rs): `get`/`put` headers
//! read straight into their types, and every header written without a field map. They must
//! agree with the general way byte for byte and message for message, including on the
//! unusual inputs they hand over to it.

use bytes::BytesMut;
use ferry_proto::frame::encode_header;
use ferry_proto::{
    Digest, ErrorCode, FrameDecoder, FrameEvent, HashAlgo, Header, Limits, ProtoError, Reply,
    ReplyFrame, Request, RequestFrame, WireError,
};
use proptest::prelude::*;

fn header_of(json: &str) -> Result<Header, ProtoError> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
    buf.extend_from_slice(json.as_bytes());
    match FrameDecoder::new(u32::MAX).decode(&mut buf)? {
        Some(FrameEvent::Header(h)) => Ok(h),
        other => panic!("{json}: {other:?}"),
    }
}

fn request(json: &str) -> Result<RequestFrame, ProtoError> {
    RequestFrame::from_header(header_of(json)?, &Limits::default()).map_err(|r| r.error)
}

fn reply(json: &str) -> Result<ReplyFrame, ProtoError> {
    ReplyFrame::from_header(header_of(json)?).map_err(|r| r.error)
}

fn digest(seed: u8) -> Digest {
    Digest::of(HashAlgo::Blake3, &[seed])
}

fn malformed(r: Result<impl std::fmt::Debug, ProtoError>) -> bool {
    matches!(r, Err(ProtoError::Malformed { .. }))
}

#[test]
fn get_and_put_requests_read_directly_as_the_general_way_reads_them() {
    let h = digest(1);
    let get = |path: &str, offset, algo| Request::Get {
        path: path.into(),
        offset,
        algo,
    };
    // Fields of the other op, well typed, are ignored; a repeated key: the last one counts.
    for (json, want) in [
        (
            r#"{"id":7,"op":"get","path":"a"}"#.to_owned(),
            get("a", 0, None),
        ),
        (
            r#"{"op":"get","offset":3,"algo":"md5","path":"a","id":7,"size":9,"overwrite":true}"#
                .to_owned(),
            get("a", 3, Some(HashAlgo::Md5)),
        ),
        (
            r#"{"id":7,"op":"get","path":"a","path":"b"}"#.to_owned(),
            get("b", 0, None),
        ),
        (
            r#"{"id":7,"op":"get","path":"a","size":"not a number","hash":7}"#.to_owned(),
            get("a", 0, None),
        ),
        (
            format!(
                r#"{{"id":7,"op":"put","path":"p","size":5,"hash":"{h}","mtime":-3,"algo":"md5","body_len":5}}"#
            ),
            Request::Put {
                path: "p".into(),
                size: 5,
                hash: Some(h.clone()),
                offset: 0,
                overwrite: false,
                mtime: Some(-3),
            },
        ),
        (
            r#"{"id":7,"op":"put","path":"p","size":5,"hash":null,"overwrite":true,"body_len":5}"#
                .to_owned(),
            Request::Put {
                path: "p".into(),
                size: 5,
                hash: None,
                offset: 0,
                overwrite: true,
                mtime: None,
            },
        ),
    ] {
        let f = request(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!((f.id, f.request), (7, want), "{json}");
    }
    // What the messages do not allow is refused, with the general way's errors.
    for json in [
        r#"{"id":7,"op":"get","path":"a","offset":null}"#,
        r#"{"id":7,"op":"get","path":null}"#,
        r#"{"id":7,"op":"get"}"#,
        r#"{"id":7,"op":"put","path":"p","size":null}"#,
        r#"{"id":7,"op":"put","path":"p","size":5,"overwrite":null}"#,
        r#"{"id":7,"op":"put","path":"p","size":5,"hash":"md5:zz"}"#,
        r#"{"id":7,"op":"put","path":"p","size":-5}"#,
    ] {
        assert!(malformed(request(json)), "{json}: {:?}", request(json));
    }
    assert!(matches!(
        request(r#"{"id":-1,"op":"get","path":"a"}"#),
        Err(ProtoError::BadId(_))
    ));
    assert!(matches!(
        request(r#"{"id":7,"op":"gett","path":"a"}"#),
        Err(ProtoError::UnknownOp(_))
    ));
    // The body rules still apply: a get carries none, a put exactly its bytes.
    assert!(request(r#"{"id":7,"op":"get","path":"a","body_len":1}"#).is_err());
    assert!(request(r#"{"id":7,"op":"put","path":"p","size":5,"body_len":4}"#).is_err());
}

#[test]
fn get_and_put_replies_read_directly_as_the_general_way_reads_them() {
    let h = digest(2);
    let f = reply(&format!(
        r#"{{"id":3,"ok":true,"op":"get","path":"/a","size":10,"offset":4,"mtime":-1,"hash":"{h}","body_len":6}}"#
    ))
    .unwrap();
    assert_eq!(
        f.result,
        Ok(Reply::Get {
            path: "/a".into(),
            size: 10,
            offset: 4,
            mtime: -1,
            hash: h.clone()
        })
    );
    let f = reply(&format!(
        r#"{{"id":3,"ok":true,"op":"put","path":"/a","size":10,"hash":"{h}","extra":[1,{{}}]}}"#
    ))
    .unwrap();
    assert!(matches!(f.result, Ok(Reply::Put { size: 10, .. })));
    for json in [
        // A get reply needs every field; its body must be size - offset.
        format!(
            r#"{{"id":3,"ok":true,"op":"get","path":"/a","size":10,"mtime":1,"hash":"{h}","body_len":10}}"#
        ),
        format!(
            r#"{{"id":3,"ok":true,"op":"get","path":"/a","size":10,"offset":null,"mtime":1,"hash":"{h}","body_len":10}}"#
        ),
        format!(
            r#"{{"id":3,"ok":true,"op":"get","path":"/a","size":10,"offset":0,"mtime":1,"hash":"{h}","body_len":9}}"#
        ),
        format!(
            r#"{{"id":3,"ok":true,"op":"get","path":"/a","size":10,"offset":11,"mtime":1,"hash":"{h}"}}"#
        ),
        format!(
            r#"{{"id":3,"ok":true,"op":"put","path":"/a","size":10,"hash":"{h}","body_len":1}}"#
        ),
        r#"{"id":3,"ok":"yes","op":"put","path":"/a","size":10,"hash":"blake3:00"}"#.to_owned(),
    ] {
        assert!(reply(&json).is_err(), "{json}");
    }
    // An error reply goes the general way.
    let f = reply(r#"{"id":3,"ok":false,"op":"put","path":"/a","size":1,"hash":"x","code":"not_found","message":"m"}"#)
        .unwrap();
    assert_eq!(f.result.unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn a_header_that_is_only_unusual_still_decodes() {
    // Repeated body_len: the last one counts, as in the field map.
    let h = header_of(r#"{"id":1,"op":"pwd","body_len":5,"body_len":0}"#).unwrap();
    assert_eq!(h.body_len, 0);
    assert!(!h.fields().contains_key("body_len"));
    assert!(matches!(
        header_of("[1,2]"),
        Err(ProtoError::NotAnObject(_))
    ));
    assert!(matches!(
        header_of(r#"{"body_len":null}"#),
        Err(ProtoError::BadBodyLen(_))
    ));
    assert!(matches!(
        header_of(r#"{"body_len":1.0}"#),
        Err(ProtoError::BadBodyLen(_))
    ));
    assert!(matches!(
        header_of(r#"{"a":1} x"#),
        Err(ProtoError::InvalidJson(_))
    ));
}

fn arb_request() -> impl Strategy<Value = Request> {
    let path = "[a-z/é\"\\\\ ]{0,12}";
    prop_oneof![
        (
            path,
            any::<u64>(),
            prop::option::of(prop_oneof![Just(HashAlgo::Md5), Just(HashAlgo::Sha256)])
        )
            .prop_map(|(path, offset, algo)| Request::Get { path, offset, algo }),
        (
            path,
            any::<u64>(),
            prop::option::of(any::<u8>()),
            any::<u64>(),
            any::<bool>(),
            prop::option::of(any::<i64>())
        )
            .prop_map(|(path, size, h, offset, overwrite, mtime)| Request::Put {
                path,
                size,
                hash: h.map(digest),
                offset,
                overwrite,
                mtime,
            }),
        (path, prop::option::of(any::<u64>())).prop_map(|(path, limit)| Request::Ls {
            path: Some(path.clone()),
            after: limit.map(|_| path),
            limit,
        }),
        Just(Request::Pwd),
        (path, path).prop_map(|(from, to)| Request::Mv {
            from,
            to,
            overwrite: true
        }),
    ]
}

fn arb_reply() -> impl Strategy<Value = Result<Reply, WireError>> {
    let path = "[a-z/é\"\\\\ ]{0,12}";
    prop_oneof![
        (path, any::<u64>(), any::<u64>(), any::<i64>(), any::<u8>()).prop_map(
            |(path, size, offset, mtime, h)| Ok(Reply::Get {
                path,
                size,
                offset,
                mtime,
                hash: digest(h)
            })
        ),
        (path, any::<u64>(), any::<u8>()).prop_map(|(path, size, h)| Ok(Reply::Put {
            path,
            size,
            hash: digest(h)
        })),
        Just(Ok(Reply::Quit)),
        path.prop_map(|cwd| Ok(Reply::Pwd { cwd })),
        path.prop_map(|m| Err(WireError::new(ErrorCode::NotFound, m))),
    ]
}

proptest! {
    #[test]
    fn direct_encoding_is_the_field_map_encoding(
        request in arb_request(),
        reply in arb_reply(),
        id in any::<u64>(),
        body_len in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let f = RequestFrame { id, request, body_len };
        let (mut direct, mut mapped) = (BytesMut::new(), BytesMut::new());
        f.encode(u32::MAX, &mut direct).unwrap();
        encode_header(&f.to_fields(), body_len, u32::MAX, &mut mapped).unwrap();
        prop_assert_eq!(&direct, &mapped);
        let r = ReplyFrame { id, result: reply, body_len };
        let (mut direct, mut mapped) = (BytesMut::new(), BytesMut::new());
        r.encode(u32::MAX, &mut direct).unwrap();
        encode_header(&r.to_fields(), body_len, u32::MAX, &mut mapped).unwrap();
        prop_assert_eq!(&direct, &mapped);
        // A limit one byte short refuses it, leaving the buffer as it was.
        let json_len = direct.len() as u32 - 4;
        let mut short = BytesMut::from(&b"x"[..]);
        prop_assert!(r.encode(json_len - 1, &mut short).is_err());
        prop_assert_eq!(&short[..], b"x");
    }
}

#[test]
fn an_escape_the_quick_check_would_skip_is_still_refused() {
    // A lone surrogate, in a field no direct path reads, and in one it reads.
    for json in [
        r#"{"id":1,"op":"get","path":"a","x":"\ud800"}"#,
        r#"{"id":1,"op":"get","path":"\ud800"}"#,
        r#"{"id":1,"op":"pwd","x":"\udc00\ud800"}"#,
    ] {
        assert!(
            matches!(header_of(json), Err(ProtoError::InvalidJson(_))),
            "{json}"
        );
    }
    // A good escape is fine.
    let f = request(r#"{"id":1,"op":"get","path":"\u00e9\"","x":"\n"}"#).unwrap();
    assert_eq!(
        f.request,
        Request::Get {
            path: "é\"".into(),
            offset: 0,
            algo: None
        }
    );
}

#[test]
fn ls_replies_read_directly_as_the_general_way_reads_them() {
    let h = digest(3);
    let f = reply(&format!(
        r#"{{"id":4,"ok":true,"op":"ls","path":"/d","entries":[{{"name":"a","kind":"file","size":1,"mtime":2,"hash":"{h}"}},{{"name":"b","kind":"dir","size":0,"mtime":-2,"extra":{{}}}}],"size":"ignored"}}"#
    ))
    .unwrap();
    let Ok(Reply::Ls { path, entries, .. }) = f.result else {
        panic!("{:?}", f.result)
    };
    assert_eq!(path, "/d");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].hash, Some(h));
    assert_eq!(entries[1].kind, ferry_proto::EntryKind::Dir);
    // A repeated key inside an entry: the last one counts, as in the field map.
    let f = reply(
        r#"{"id":4,"ok":true,"op":"ls","path":"/d","entries":[{"name":"a","name":"b","kind":"file","size":1,"mtime":2}]}"#,
    )
    .unwrap();
    assert!(matches!(&f.result, Ok(Reply::Ls { entries, .. }) if entries[0].name == "b"));
    for json in [
        r#"{"id":4,"ok":true,"op":"ls","path":"/d","entries":null}"#,
        r#"{"id":4,"ok":true,"op":"ls","path":"/d"}"#,
        r#"{"id":4,"ok":true,"op":"ls","path":"/d","entries":[{"name":"a","kind":"socket","size":1,"mtime":2}]}"#,
        r#"{"id":4,"ok":true,"op":"ls","path":"/d","entries":[],"body_len":3}"#,
    ] {
        assert!(reply(json).is_err(), "{json}");
    }
}
