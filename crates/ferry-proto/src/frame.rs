//! The frame layout and a sans-IO decoder for it.
//!
//! ```text
//! +----------------+----------------------------+---------------------------+
//! | header length  | header: UTF-8 JSON object  | body: exactly `body_len`  |
//! | u32 little-end | (`body_len` optional, 0)   | bytes, may be absent      |
//! +----------------+----------------------------+---------------------------+
//! ```
//!
//! The decoder is a three-state machine (length, header, body). It never reserves memory for
//! a declared length before checking it against the limit, and it hands bodies out in the
//! chunks that arrived instead of collecting them, so a peer's declaration never makes us
//! buffer a whole body.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use crate::error::ProtoError;

/// Size of the header-length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// The JSON key that declares how many body bytes follow the header.
pub const BODY_LEN_KEY: &str = "body_len";

/// A decoded frame header: the JSON object, and the body length it declared.
///
/// The JSON is checked (UTF-8, syntax, an object, `body_len`) when the header is decoded, but
/// turned into a [`Map`] only when [`Header::fields`] asks: the messages most frames carry
/// (`get`, `put` and their replies) are read straight from the text into their types
/// (`message.rs`), which a profile of 2,000 pipelined small files showed to matter — the
/// map (an `IndexMap`, for field order) was a quarter of the client's time.
#[derive(Debug, Clone)]
pub struct Header {
    /// The JSON text, valid UTF-8.
    raw: Bytes,
    pub body_len: u64,
    fields: std::cell::OnceCell<Map<String, Value>>,
}

impl PartialEq for Header {
    fn eq(&self, other: &Self) -> bool {
        self.body_len == other.body_len && self.fields() == other.fields()
    }
}

impl Header {
    /// The JSON object's fields, without `body_len`.
    pub fn fields(&self) -> &Map<String, Value> {
        self.fields.get_or_init(|| fields_of(&self.raw))
    }

    /// The fields, owned.
    pub fn into_fields(mut self) -> Map<String, Value> {
        self.fields.take().unwrap_or_else(|| fields_of(&self.raw))
    }

    /// The JSON text as it arrived (`body_len` included, if it was sent).
    pub fn json(&self) -> &str {
        // Checked to be UTF-8 when decoded.
        std::str::from_utf8(&self.raw).expect("a header is UTF-8")
    }
}

/// The fields of a header's JSON, known to be an object with a valid `body_len`.
fn fields_of(raw: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice(raw) {
        Ok(Value::Object(mut map)) => {
            map.shift_remove(BODY_LEN_KEY);
            map
        }
        // Cannot happen (the text was checked); should it, the header reads as empty and
        // the message as malformed, rather than a peer's bytes panicking the reader.
        other => {
            debug_assert!(false, "a decoded header is a JSON object: {other:?}");
            Map::new()
        }
    }
}

/// What [`FrameDecoder::decode`] found in the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameEvent {
    /// A complete header. If `body_len > 0`, [`FrameEvent::Body`] chunks totalling exactly
    /// `body_len` bytes follow before the next header.
    Header(Header),
    /// The next piece of the current frame's body, as it arrived.
    Body(Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the 4-byte header length.
    Length,
    /// Waiting for this many header bytes.
    Header(usize),
    /// Inside a body with this many bytes still to come.
    Body(u64),
}

/// Turns a byte stream, cut at any points, into frame events.
///
/// Drive it by appending received bytes to a `BytesMut` and calling [`decode`] until it
/// returns `Ok(None)` ("need more bytes"); at end of stream call [`finish`] to tell a clean
/// close from a truncated frame.
///
/// [`decode`]: FrameDecoder::decode
/// [`finish`]: FrameDecoder::finish
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    state: State,
    max_header: u32,
}

impl FrameDecoder {
    /// A decoder accepting headers of at most `max_header` bytes.
    pub fn new(max_header: u32) -> Self {
        FrameDecoder {
            state: State::Length,
            max_header,
        }
    }

    /// Changes the header limit, e.g. raising it once a session has logged in.
    pub fn set_max_header(&mut self, max_header: u32) {
        self.max_header = max_header;
    }

    pub fn max_header(&self) -> u32 {
        self.max_header
    }

    /// Body bytes of the current frame not yet handed out (0 between frames).
    pub fn body_remaining(&self) -> u64 {
        match self.state {
            State::Body(n) => n,
            _ => 0,
        }
    }

    /// Whether the decoder is between frames.
    pub fn at_frame_boundary(&self) -> bool {
        self.state == State::Length
    }

    /// Records that `n` body bytes were consumed without passing through [`decode`], for
    /// drivers that read a large body straight from the socket into its destination.
    ///
    /// # Panics
    /// If `n` exceeds [`body_remaining`]: that is a bug in the driver, not bad input.
    ///
    /// [`decode`]: FrameDecoder::decode
    /// [`body_remaining`]: FrameDecoder::body_remaining
    pub fn consume_body(&mut self, n: u64) {
        let remaining = self.body_remaining();
        assert!(
            n <= remaining,
            "consumed {n} body bytes, only {remaining} declared"
        );
        self.state = if remaining == n {
            State::Length
        } else {
            State::Body(remaining - n)
        };
    }

    /// Decodes the next event from the front of `buf`, consuming what it uses.
    ///
    /// `Ok(None)` means more bytes are needed. After a fatal error (see
    /// [`ProtoError::is_fatal`]) the stream has no trustworthy boundary left.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<FrameEvent>, ProtoError> {
        loop {
            match self.state {
                State::Length => {
                    if buf.len() < LENGTH_PREFIX {
                        return Ok(None);
                    }
                    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    if len == 0 {
                        return Err(ProtoError::EmptyHeader);
                    }
                    if len > self.max_header {
                        return Err(ProtoError::HeaderTooLarge {
                            len,
                            max: self.max_header,
                        });
                    }
                    buf.advance(LENGTH_PREFIX);
                    self.state = State::Header(len as usize);
                }
                State::Header(len) => {
                    if buf.len() < len {
                        // Safe to reserve: `len` was checked against the limit.
                        buf.reserve(len - buf.len());
                        return Ok(None);
                    }
                    let raw = buf.split_to(len).freeze();
                    let header = parse_header(raw)?;
                    self.state = if header.body_len > 0 {
                        State::Body(header.body_len)
                    } else {
                        State::Length
                    };
                    return Ok(Some(FrameEvent::Header(header)));
                }
                State::Body(remaining) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(buf.len() as u64) as usize;
                    let chunk = buf.split_to(n).freeze();
                    self.consume_body(n as u64);
                    return Ok(Some(FrameEvent::Body(chunk)));
                }
            }
        }
    }

    /// Checks the state at end of stream: `Ok` for a clean close between frames, otherwise
    /// [`ProtoError::Truncated`]. `buffered` is what is left undecoded in the buffer.
    pub fn finish(&self, buffered: &[u8]) -> Result<(), ProtoError> {
        match self.state {
            State::Length if buffered.is_empty() => Ok(()),
            State::Length => Err(ProtoError::Truncated("inside the header length")),
            State::Header(_) => Err(ProtoError::Truncated("inside a header")),
            State::Body(_) => Err(ProtoError::Truncated("inside a body")),
        }
    }
}

fn parse_header(raw: Bytes) -> Result<Header, ProtoError> {
    let text = std::str::from_utf8(&raw).map_err(|e| ProtoError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    // Quick check: an object whose `body_len`, if any, is a u64 (fields not kept). Whatever
    // it does not accept — including what is only unusual, like a repeated key — goes the
    // full way, which gives the answer (and the error) of record.
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        body_len: u64,
    }
    // A text with an escape goes the full way too: skipping a string (as the check does for
    // fields it does not keep) does not look into its `\u` escapes, where a lone surrogate
    // must be refused.
    let plain = !text.contains('\\')
        && text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{');
    if let Some(probe) = plain
        .then(|| serde_json::from_str::<Probe>(text).ok())
        .flatten()
    {
        return Ok(Header {
            raw,
            body_len: probe.body_len,
            fields: std::cell::OnceCell::new(),
        });
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProtoError::InvalidJson(e.to_string()))?;
    let mut fields = match value {
        Value::Object(map) => map,
        other => return Err(ProtoError::NotAnObject(json_kind(&other))),
    };
    let body_len = match fields.shift_remove(BODY_LEN_KEY) {
        None => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| ProtoError::BadBodyLen(n.to_string()))?,
        Some(other) => return Err(ProtoError::BadBodyLen(other.to_string())),
    };
    Ok(Header {
        raw,
        body_len,
        fields: fields.into(),
    })
}

/// The name of a JSON value's type, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Appends one frame header to `dst`: the length prefix, then `fields` as JSON with
/// `body_len` added last when it is not zero. The body, if any, is the caller's to send next.
///
/// Fails with [`ProtoError::HeaderTooLarge`] if the JSON would exceed `max_header`.
pub fn encode_header(
    fields: &Map<String, Value>,
    body_len: u64,
    max_header: u32,
    dst: &mut BytesMut,
) -> Result<(), ProtoError> {
    let start = dst.len();
    dst.put_u32_le(0); // patched below once the length is known
    {
        let mut w = dst.writer();
        let res = if body_len > 0 {
            let mut with_body = fields.clone();
            with_body.insert(BODY_LEN_KEY.to_owned(), Value::from(body_len));
            serde_json::to_writer(&mut w, &with_body)
        } else {
            serde_json::to_writer(&mut w, fields)
        };
        // Writing a Map to memory cannot fail: keys are strings and values are JSON already.
        res.expect("serializing a JSON map to memory");
    }
    finish_header(dst, start, max_header)
}

/// Completes a header written at `start` (a 4-byte placeholder, then the JSON): patches in
/// its length, or, past `max_header`, takes it back out and says so.
pub(crate) fn finish_header(
    dst: &mut BytesMut,
    start: usize,
    max_header: u32,
) -> Result<(), ProtoError> {
    let json_len = dst.len() - start - LENGTH_PREFIX;
    if json_len > max_header as usize || json_len > u32::MAX as usize {
        dst.truncate(start);
        return Err(ProtoError::HeaderTooLarge {
            len: json_len.min(u32::MAX as usize) as u32,
            max: max_header,
        });
    }
    dst[start..start + LENGTH_PREFIX].copy_from_slice(&(json_len as u32).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str, body: &[u8]) -> Vec<u8> {
        let mut v = (json.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn one_frame_with_body() {
        let mut d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&frame(r#"{"op":"x","body_len":3}"#, b"abc")[..]);
        match d.decode(&mut buf).unwrap() {
            Some(FrameEvent::Header(h)) => {
                assert_eq!(h.body_len, 3);
                assert_eq!(h.fields()["op"], "x");
                assert!(!h.fields().contains_key("body_len"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(FrameEvent::Body(Bytes::from_static(b"abc")))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        d.finish(&buf).unwrap();
    }

    #[test]
    fn oversize_length_rejected_before_buffering() {
        let mut d = FrameDecoder::new(100);
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let cap_before = buf.capacity();
        assert_eq!(
            d.decode(&mut buf),
            Err(ProtoError::HeaderTooLarge {
                len: u32::MAX,
                max: 100
            })
        );
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn consume_body_directly() {
        let mut d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&frame(r#"{"body_len":10}"#, b"")[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Ok(Some(FrameEvent::Header(_)))
        ));
        assert_eq!(d.body_remaining(), 10);
        d.consume_body(4);
        assert_eq!(d.body_remaining(), 6);
        d.consume_body(6);
        assert!(d.at_frame_boundary());
    }

    #[test]
    fn encode_rejects_oversize() {
        let mut m = Map::new();
        m.insert("k".into(), Value::from("x".repeat(200)));
        let mut dst = BytesMut::new();
        assert!(matches!(
            encode_header(&m, 0, 100, &mut dst),
            Err(ProtoError::HeaderTooLarge { .. })
        ));
        assert!(dst.is_empty());
    }
}
