//! Typed requests and replies, and the per-operation rules for bodies.
//!
//! A request header is a JSON object with an `id` (chosen by the client, echoed by the reply),
//! an `op` naming the operation, the operation's fields, and `body_len` when a body follows.
//! A reply carries the same `id` and either `"ok":true` with the op's result fields, or
//! `"ok":false` with an error `code` and `message`.

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::{Digest, HashAlgo};
use crate::error::{ProtoError, WireError};
use crate::frame::{Header, json_kind};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Optional behaviours negotiated in `hello`: a server answers with the ones it shares.
pub const FEATURES: &[&str] = &[
    "pipelining",
    "resume",
    "hash:blake3",
    "hash:sha256",
    "hash:md5",
    "hash-after-body",
    "session-token",
];

/// The feature that lets a `put` leave out its `hash` and send it in a `put_hash` frame right
/// after the body, so a client can start sending before it has read the file to hash it.
pub const HASH_AFTER_BODY: &str = "hash-after-body";

/// The feature that asks for a session token on a password login (see [`Request::Login`]). A
/// client that does not ask gets the login reply it always got.
pub const SESSION_TOKEN: &str = "session-token";

/// A session token as the server issues it: 32 random bytes as 64 lowercase hex digits.
pub const TOKEN_HEX_LEN: usize = 64;

/// Sizes the decoder and the message checks enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest header accepted once logged in.
    pub max_header: u32,
    /// Largest header accepted before login, so an anonymous peer can make us buffer little.
    pub max_header_prelogin: u32,
    /// Largest file size a `put` may declare.
    pub max_file_size: u64,
    /// Largest reply header a client accepts. Replies may be far larger than requests (an `ls`
    /// of a directory with thousands of entries), and come from the server the client chose.
    pub max_reply_header: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header: 64 * 1024,
            max_header_prelogin: 4 * 1024,
            max_file_size: 1 << 40,
            max_reply_header: 16 * 1024 * 1024,
        }
    }
}

/// A request, tagged by `op` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First message of every session: the client's highest protocol version and the
    /// features it would like.
    Hello {
        version: u32,
        #[serde(default)]
        features: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Exactly one of `password` and `token` (a session token from an earlier password
    /// login's reply); both or neither is a bad request.
    Login {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    Pwd,
    Cd {
        path: String,
    },
    /// A directory's entries, sorted by name; with `after` and `limit`, one page of them:
    /// at most `limit` entries whose names sort after `after`.
    Ls {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// Metadata of one path; with `algo`, the file's hash in that algorithm (computed if not
    /// yet known).
    Stat {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algo: Option<HashAlgo>,
    },
    Mkdir {
        path: String,
        #[serde(default, skip_serializing_if = "is_false")]
        parents: bool,
    },
    Rm {
        path: String,
        #[serde(default, skip_serializing_if = "is_false")]
        recursive: bool,
    },
    Mv {
        from: String,
        to: String,
        #[serde(default, skip_serializing_if = "is_false")]
        overwrite: bool,
    },
    /// Upload: the body carries bytes `offset..size` of a file whose whole content hashes to
    /// `hash`. `offset` is non-zero only when resuming (see [`Request::Resume`]). Without
    /// `hash` (feature `hash-after-body`), a [`Request::PutHash`] with the same id must follow
    /// the body directly.
    Put {
        path: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<Digest>,
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
        #[serde(default, skip_serializing_if = "is_false")]
        overwrite: bool,
        /// Modification time to give the file, in Unix seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime: Option<i64>,
    },
    /// The trailer of a `put` sent without `hash`: the whole file's blake3 digest, in a frame
    /// of its own (same id as the put, no body) right after the put's body. The put's reply
    /// answers both frames.
    PutHash {
        hash: Digest,
    },
    /// Asks how many bytes of an interrupted upload of exactly this file the server holds:
    /// the upload is known by `hash` when the put declares one, else by `mtime` (a put that
    /// sends its hash after the body).
    Resume {
        path: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<Digest>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime: Option<i64>,
    },
    /// Download bytes `offset..` of a file; the reply carries the whole file's hash in `algo`
    /// (the hash of record when absent).
    Get {
        path: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algo: Option<HashAlgo>,
    },
    /// Memory-to-memory throughput: with `download`, the server answers with `size` bytes of
    /// filler; without, the request carries `size` bytes the server reads and drops. No disk,
    /// no hashing, so it measures the network and the two endpoints' IO paths alone.
    Bench {
        size: u64,
        #[serde(default, skip_serializing_if = "is_false")]
        download: bool,
    },
    /// Ends the session token this session logged in with, on the server: later logins with
    /// it get `token_invalid`. The session itself stays logged in.
    Logout,
    Quit,
}

/// Largest `size` one `bench` request may move; longer runs send several.
pub const BENCH_MAX: u64 = 1 << 30;

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Request {
    /// A password login, as every client before session tokens sent it.
    pub fn login_password(user: impl Into<String>, password: impl Into<String>) -> Self {
        Request::Login {
            user: user.into(),
            password: Some(password.into()),
            token: None,
        }
    }

    /// A login with a session token instead of the password.
    pub fn login_token(user: impl Into<String>, token: impl Into<String>) -> Self {
        Request::Login {
            user: user.into(),
            password: None,
            token: Some(token.into()),
        }
    }

    /// Every op this version knows, as written on the wire.
    pub const OPS: [&'static str; 16] = [
        "hello", "login", "pwd", "cd", "ls", "stat", "mkdir", "rm", "mv", "put", "put_hash",
        "resume", "get", "bench", "logout", "quit",
    ];

    /// Ops that are never answered on their own: a `put_hash` is answered by its put's reply.
    pub const TRAILER_OPS: [&'static str; 1] = ["put_hash"];

    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Login { .. } => "login",
            Request::Pwd => "pwd",
            Request::Cd { .. } => "cd",
            Request::Ls { .. } => "ls",
            Request::Stat { .. } => "stat",
            Request::Mkdir { .. } => "mkdir",
            Request::Rm { .. } => "rm",
            Request::Mv { .. } => "mv",
            Request::Put { .. } => "put",
            Request::PutHash { .. } => "put_hash",
            Request::Resume { .. } => "resume",
            Request::Get { .. } => "get",
            Request::Bench { .. } => "bench",
            Request::Logout => "logout",
            Request::Quit => "quit",
        }
    }

    /// Checks what serde cannot say: a login carries exactly one of password and token.
    pub fn check_fields(&self) -> Result<(), ProtoError> {
        match self {
            Request::Login {
                password: Some(_),
                token: Some(_),
                ..
            } => Err(ProtoError::Malformed {
                op: "login".into(),
                detail: "send either `password` or `token`, not both".into(),
            }),
            Request::Login {
                password: None,
                token: None,
                ..
            } => Err(ProtoError::Malformed {
                op: "login".into(),
                detail: "missing field `password` (or `token`)".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks a declared body length against what this request allows.
    pub fn check_body(&self, body_len: u64, limits: &Limits) -> Result<(), ProtoError> {
        match self {
            Request::Put { size, offset, .. } => {
                if *size > limits.max_file_size {
                    return Err(ProtoError::TooLarge {
                        size: *size,
                        max: limits.max_file_size,
                    });
                }
                if offset > size {
                    return Err(ProtoError::BodyMismatch(format!(
                        "put offset {offset} is past the declared size {size}"
                    )));
                }
                if body_len != size - offset {
                    return Err(ProtoError::BodyMismatch(format!(
                        "put of size {size} from offset {offset} must carry {} body bytes, \
                         declared {body_len}",
                        size - offset
                    )));
                }
                Ok(())
            }
            Request::Bench { size, .. } if *size > BENCH_MAX => Err(ProtoError::TooLarge {
                size: *size,
                max: BENCH_MAX,
            }),
            Request::Bench {
                size,
                download: false,
            } => {
                if body_len != *size {
                    return Err(ProtoError::BodyMismatch(format!(
                        "an upload bench of {size} bytes must carry {size} body bytes, \
                         declared {body_len}"
                    )));
                }
                Ok(())
            }
            Request::Resume { size, .. } if *size > limits.max_file_size => {
                Err(ProtoError::TooLarge {
                    size: *size,
                    max: limits.max_file_size,
                })
            }
            _ if body_len != 0 => Err(ProtoError::BodyMismatch(format!(
                "{} carries no body, but body_len is {body_len}",
                self.op()
            ))),
            _ => Ok(()),
        }
    }
}

/// A request with its id and declared body length, as one frame header.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFrame {
    pub id: u64,
    pub request: Request,
    pub body_len: u64,
}

/// A frame header that could not become a request. Its body, if any, is still skipped by the
/// frame decoder, so the server answers `error` for `id` and reads on.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The request's id, or 0 when it had none that could be read.
    pub id: u64,
    pub error: ProtoError,
}

impl RequestFrame {
    /// A request that carries no body.
    pub fn new(id: u64, request: Request) -> Self {
        RequestFrame {
            id,
            request,
            body_len: 0,
        }
    }

    /// Turns a decoded header into a request, checking field types and the body length.
    pub fn from_header(header: Header, limits: &Limits) -> Result<Self, Rejected> {
        let body_len = header.body_len;
        if let Some((id, request)) = hot_request(header.json()) {
            let reject = |error| Rejected { id, error };
            request.check_fields().map_err(reject)?;
            request.check_body(body_len, limits).map_err(reject)?;
            return Ok(RequestFrame {
                id,
                request,
                body_len,
            });
        }
        let mut fields = header.into_fields();
        let id = take_id(&mut fields).map_err(|error| Rejected { id: 0, error })?;
        let reject = |error| Rejected { id, error };
        let op = match fields.get("op") {
            Some(Value::String(op)) => op.clone(),
            Some(other) => {
                return Err(reject(ProtoError::Malformed {
                    op: "request".into(),
                    detail: format!("op must be a string, got {}", json_kind(other)),
                }));
            }
            None => {
                return Err(reject(ProtoError::Malformed {
                    op: "request".into(),
                    detail: "missing field `op`".into(),
                }));
            }
        };
        if !Request::OPS.contains(&op.as_str()) {
            return Err(reject(ProtoError::UnknownOp(op)));
        }
        let request: Request = serde_json::from_value(Value::Object(fields)).map_err(|e| {
            reject(ProtoError::Malformed {
                op: op.clone(),
                detail: e.to_string(),
            })
        })?;
        request.check_fields().map_err(reject)?;
        request.check_body(body_len, limits).map_err(reject)?;
        Ok(RequestFrame {
            id,
            request,
            body_len,
        })
    }

    /// The header's JSON fields: `id`, `op`, the op's fields (without `body_len`).
    pub fn to_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("id".into(), Value::from(self.id));
        match serde_json::to_value(&self.request) {
            Ok(Value::Object(m)) => fields.extend(m),
            // A tagged enum of plain fields always serializes to an object.
            other => unreachable!("request serialized to {other:?}"),
        }
        fields
    }

    /// Appends the frame header (not the body) to `dst`: the bytes [`crate::frame::encode_header`] makes
    /// of [`Self::to_fields`].
    pub fn encode(&self, max_header: u32, dst: &mut BytesMut) -> Result<(), ProtoError> {
        encode_direct(self.id, "", &self.request, self.body_len, max_header, dst)
    }
}

// The frames most of a transfer consists of — `get` and `put` requests and their replies —
// are read straight from the header's text into these plain structs (no map in between).
// Anything they do not take (another op, a missing or mistyped field, a repeated key, `null`
// where the message has no default) goes the general way, through the field map, whose
// answer is the one of record: so these only ever accept what the general way accepts,
// and build the same message from it. Fields of the other op are allowed (and ignored, as
// the general way ignores unknown fields) only if well typed, else the general way decides.

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum HotOp {
    Get,
    Put,
}

#[derive(Deserialize)]
struct HotRequest {
    id: u64,
    op: HotOp,
    path: String,
    size: Option<u64>,
    hash: Option<Digest>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    overwrite: bool,
    mtime: Option<i64>,
    algo: Option<HashAlgo>,
}

fn hot_request(json: &str) -> Option<(u64, Request)> {
    let r: HotRequest = serde_json::from_str(json).ok()?;
    let request = match r.op {
        HotOp::Get => Request::Get {
            path: r.path,
            offset: r.offset,
            algo: r.algo,
        },
        HotOp::Put => Request::Put {
            path: r.path,
            size: r.size?,
            hash: r.hash,
            offset: r.offset,
            overwrite: r.overwrite,
            mtime: r.mtime,
        },
    };
    Some((r.id, request))
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum HotReplyOp {
    Get,
    Put,
    Ls,
}

#[derive(Deserialize)]
struct HotReply {
    id: u64,
    ok: bool,
    op: HotReplyOp,
    path: String,
    size: Option<u64>,
    offset: Option<u64>,
    mtime: Option<i64>,
    hash: Option<Digest>,
    /// An `ls` reply's (a `get -r` starts with one of thousands of entries).
    entries: Option<Vec<Entry>>,
    #[serde(default)]
    more: bool,
}

fn hot_reply(json: &str) -> Option<(u64, Reply)> {
    let r: HotReply = serde_json::from_str(json).ok()?;
    if !r.ok {
        return None;
    }
    let reply = match r.op {
        HotReplyOp::Get => Reply::Get {
            path: r.path,
            size: r.size?,
            offset: r.offset?,
            mtime: r.mtime?,
            hash: r.hash?,
        },
        HotReplyOp::Put => Reply::Put {
            path: r.path,
            size: r.size?,
            hash: r.hash?,
        },
        HotReplyOp::Ls => Reply::Ls {
            path: r.path,
            entries: r.entries?,
            more: r.more,
        },
    };
    Some((r.id, reply))
}

/// Appends a frame header to `dst` as [`crate::frame::encode_header`] would for the fields `id`, then
/// `lead` (JSON members, or nothing), then `rest`'s (an object's) members, then `body_len`
/// — but serializing `rest` directly rather than through a [`Map`].
fn encode_direct(
    id: u64,
    lead: &str,
    rest: &impl Serialize,
    body_len: u64,
    max_header: u32,
    dst: &mut BytesMut,
) -> Result<(), ProtoError> {
    use bytes::BufMut;
    let start = dst.len();
    dst.put_u32_le(0); // patched below once the length is known
    dst.put_slice(b"{\"id\":");
    dst.put_slice(id.to_string().as_bytes());
    if !lead.is_empty() {
        dst.put_u8(b',');
        dst.put_slice(lead.as_bytes());
    }
    let members = dst.len();
    serde_json::to_writer(dst.writer(), rest).expect("serializing a message to memory");
    debug_assert!(dst[members] == b'{' && dst[dst.len() - 1] == b'}');
    if dst.len() - members == 2 {
        dst.truncate(members); // `{}`: no members
    } else {
        dst[members] = b',';
        dst.truncate(dst.len() - 1);
    }
    if body_len > 0 {
        dst.put_slice(b",\"body_len\":");
        dst.put_slice(body_len.to_string().as_bytes());
    }
    dst.put_u8(b'}');
    crate::frame::finish_header(dst, start, max_header)
}

fn take_id(fields: &mut Map<String, Value>) -> Result<u64, ProtoError> {
    match fields.shift_remove("id") {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| ProtoError::BadId(n.to_string())),
        Some(other) => Err(ProtoError::BadId(json_kind(&other).to_owned())),
        None => Err(ProtoError::BadId("nothing".into())),
    }
}

/// What a directory listing or `stat` says about one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Modification time in Unix seconds.
    pub mtime: i64,
    /// The hash of record, when the server knows it (always blake3 unless asked otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Digest>,
}

/// The successful result of a request, tagged by the request's `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        version: u32,
        features: Vec<String>,
        server: String,
        /// The client's own address as the server sees it, `ip:port`.
        peer: String,
        /// Header limit once logged in.
        max_header: u32,
    },
    Login {
        user: String,
        cwd: String,
        /// A session token for later logins as `user`: only in the reply to a password login
        /// of a session that negotiated `session-token`, when the server issues tokens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Seconds the token stays valid: the full lifetime with a new token, what is left
        /// of it after a token login. Tokens expire sooner when unused (see docs/SECURITY.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_ttl: Option<u64>,
    },
    Pwd {
        cwd: String,
    },
    Cd {
        cwd: String,
    },
    Ls {
        path: String,
        entries: Vec<Entry>,
        /// `limit` left entries out: ask again with `after` the last name listed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    Stat(Entry),
    Mkdir {
        path: String,
    },
    Rm {
        path: String,
    },
    Mv {
        from: String,
        to: String,
    },
    /// The upload is verified, synced and visible under `path`.
    Put {
        path: String,
        size: u64,
        hash: Digest,
    },
    /// Bytes of the upload the server holds: the next `put` may start at `offset`.
    Resume {
        path: String,
        offset: u64,
    },
    /// The body carries bytes `offset..size`; `hash` covers the whole file.
    Get {
        path: String,
        size: u64,
        offset: u64,
        mtime: i64,
        hash: Digest,
    },
    /// A `bench` done: with `download`, the body carries `size` bytes of filler.
    Bench {
        size: u64,
        #[serde(default, skip_serializing_if = "is_false")]
        download: bool,
    },
    /// Whether a token was ended: false when the session logged in with a password (or its
    /// token had already ended).
    Logout {
        revoked: bool,
    },
    Quit,
}

impl Reply {
    pub fn op(&self) -> &'static str {
        match self {
            Reply::Hello { .. } => "hello",
            Reply::Login { .. } => "login",
            Reply::Pwd { .. } => "pwd",
            Reply::Cd { .. } => "cd",
            Reply::Ls { .. } => "ls",
            Reply::Stat(_) => "stat",
            Reply::Mkdir { .. } => "mkdir",
            Reply::Rm { .. } => "rm",
            Reply::Mv { .. } => "mv",
            Reply::Put { .. } => "put",
            Reply::Resume { .. } => "resume",
            Reply::Get { .. } => "get",
            Reply::Bench { .. } => "bench",
            Reply::Logout { .. } => "logout",
            Reply::Quit => "quit",
        }
    }

    /// The body length this reply must declare.
    pub fn expected_body(&self) -> u64 {
        match self {
            Reply::Get { size, offset, .. } => size.saturating_sub(*offset),
            Reply::Bench {
                size,
                download: true,
            } => *size,
            _ => 0,
        }
    }
}

/// A reply with its id and declared body length, as one frame header.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyFrame {
    pub id: u64,
    pub result: Result<Reply, WireError>,
    pub body_len: u64,
}

impl ReplyFrame {
    /// A successful reply, with the body length its op implies.
    pub fn ok(id: u64, reply: Reply) -> Self {
        let body_len = reply.expected_body();
        ReplyFrame {
            id,
            result: Ok(reply),
            body_len,
        }
    }

    pub fn err(id: u64, error: WireError) -> Self {
        ReplyFrame {
            id,
            result: Err(error),
            body_len: 0,
        }
    }

    /// Turns a decoded header into a reply, checking field types and the body length.
    pub fn from_header(header: Header) -> Result<Self, Rejected> {
        let body_len = header.body_len;
        if let Some((id, reply)) = hot_reply(header.json()) {
            return Self::checked(id, Ok(reply), body_len);
        }
        let mut fields = header.into_fields();
        let id = take_id(&mut fields).map_err(|error| Rejected { id: 0, error })?;
        let malformed = |detail: String| Rejected {
            id,
            error: ProtoError::Malformed {
                op: "reply".into(),
                detail,
            },
        };
        let ok = match fields.shift_remove("ok") {
            Some(Value::Bool(b)) => b,
            Some(other) => {
                return Err(malformed(format!(
                    "ok must be a boolean, got {}",
                    json_kind(&other)
                )));
            }
            None => return Err(malformed("missing field `ok`".into())),
        };
        let result = if ok {
            Ok(serde_json::from_value(Value::Object(fields))
                .map_err(|e| malformed(e.to_string()))?)
        } else {
            if body_len != 0 {
                return Err(Rejected {
                    id,
                    error: ProtoError::BodyMismatch("an error reply carries no body".into()),
                });
            }
            Err(serde_json::from_value(Value::Object(fields))
                .map_err(|e| malformed(e.to_string()))?)
        };
        Self::checked(id, result, body_len)
    }

    /// The frame, if its declared body length is the one its result implies.
    fn checked(id: u64, result: Result<Reply, WireError>, body_len: u64) -> Result<Self, Rejected> {
        let reject = |error| Rejected { id, error };
        match &result {
            Ok(reply) => {
                // A get reply whose offset is past its size is contradictory; expected_body()
                // would call it bodiless, so catch it here rather than hand it to a client.
                if let Reply::Get { size, offset, .. } = reply {
                    if offset > size {
                        return Err(reject(ProtoError::BodyMismatch(format!(
                            "get reply offset {offset} is past the file size {size}"
                        ))));
                    }
                }
                if body_len != reply.expected_body() {
                    return Err(reject(ProtoError::BodyMismatch(format!(
                        "{} reply must carry {} body bytes, declared {body_len}",
                        reply.op(),
                        reply.expected_body()
                    ))));
                }
            }
            Err(_) if body_len != 0 => {
                return Err(reject(ProtoError::BodyMismatch(
                    "an error reply carries no body".into(),
                )));
            }
            Err(_) => {}
        }
        Ok(ReplyFrame {
            id,
            result,
            body_len,
        })
    }

    pub fn to_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("id".into(), Value::from(self.id));
        fields.insert("ok".into(), Value::from(self.result.is_ok()));
        let rest = match &self.result {
            Ok(reply) => serde_json::to_value(reply),
            Err(err) => serde_json::to_value(err),
        };
        match rest {
            Ok(Value::Object(m)) => fields.extend(m),
            other => unreachable!("reply serialized to {other:?}"),
        }
        fields
    }

    /// Appends the frame header (not the body) to `dst`: the bytes [`crate::frame::encode_header`] makes
    /// of [`Self::to_fields`].
    pub fn encode(&self, max_header: u32, dst: &mut BytesMut) -> Result<(), ProtoError> {
        match &self.result {
            Ok(reply) => encode_direct(
                self.id,
                "\"ok\":true",
                reply,
                self.body_len,
                max_header,
                dst,
            ),
            Err(err) => encode_direct(self.id, "\"ok\":false", err, self.body_len, max_header, dst),
        }
    }
}
