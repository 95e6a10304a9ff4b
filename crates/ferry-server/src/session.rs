//! One client's session: the state machine of the design notes (connected → greeted →
//! authenticated), the dispatch to one module per command, and the connection loop that
//! reads requests in order and answers them in order.

use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use ferry_proto::{
    Digest, ErrorCode, Limits, ProtoError, Rejected, ReplyFrame, Request, RequestFrame, WireError,
};
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::conn::{Conn, ConnError, Stream};
use crate::hashes::HashStore;
use crate::home::{Home, VPath};
use crate::ops::get::Body;
use crate::ops::{self, OpError, batch};
use crate::quota::{QuotaBook, UserUsage};
use crate::root::DataRoot;
use crate::throttle::{LoginThrottle, SessionCount, SessionSlot};
use crate::tokens::TokenBook;
use crate::users::UserStore;

/// A request frame read but not yet handled (the one that ended a batch), and whether it is
/// a put without hash, whose `put_hash` trailer follows even if the put is rejected.
#[derive(Debug)]
pub struct Pending {
    parsed: Result<RequestFrame, Rejected>,
    deferred_put: bool,
}

impl Pending {
    fn of(header: ferry_proto::Header, limits: &Limits) -> Self {
        let deferred_put = is_put_without_hash(&header);
        Pending {
            parsed: RequestFrame::from_header(header, limits),
            deferred_put,
        }
    }
}

/// Requests gathered for one batch run (ops/batch.rs), and what stopped the gathering.
#[derive(Default)]
struct Run {
    /// How many requests it may take.
    limit: usize,
    items: Vec<batch::Item>,
    /// Body bytes the items hold.
    held: u64,
    /// The request that stopped the run, to handle after it.
    next: Option<Pending>,
    /// A frame error behind the run: it ends the connection, but only after the requests
    /// before it were done and answered, as if they had run one by one.
    fatal: Option<ConnError>,
}

/// Requests in the first run of a burst; each run after it may take twice as many as the
/// one before, up to [`batch::MAX_ITEMS`]. A run's replies go out when the whole run is done,
/// so the first reply of a burst waits for its first run: 256 small gets took ~3 ms, during
/// which the client, which then works through replies slower than the server makes them,
/// had nothing to do. Doubling keeps each run ready about when the client has worked
/// through the one before.
const FIRST_RUN: usize = 16;

impl Run {
    fn up_to(limit: usize) -> Self {
        Run {
            limit: limit.min(batch::MAX_ITEMS),
            ..Run::default()
        }
    }

    fn push(&mut self, item: batch::Item) {
        self.held += item.held();
        self.items.push(item);
    }

    /// Whether more requests may join.
    fn is_open(&self) -> bool {
        self.next.is_none()
            && self.fatal.is_none()
            && self.items.len() < self.limit
            && self.held < batch::MAX_BYTES
    }

    /// Stops gathering; a request whose body is not whole yet is handled after the run.
    fn stop_at(&mut self, waiting: Option<RequestFrame>) {
        if let Some(frame) = waiting {
            self.next = Some(Pending {
                parsed: Ok(frame),
                deferred_put: false,
            });
        }
    }
}

/// Replies queued past this are written out after a batch, so a long pipelined run of
/// downloads does not pile up in memory.
const FLUSH_AT: usize = 256 * 1024;

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub config: ServerConfig,
    pub root: DataRoot,
    pub users: UserStore,
    pub quota: QuotaBook,
    pub hashes: HashStore,
    /// Uploads in progress: who writes which path, and which partials are in use (the
    /// sweeper leaves those alone).
    pub uploads: Mutex<Uploads>,
    /// Password checks running at once (each argon2id check needs ~19 MiB and a core).
    pub login_permits: tokio::sync::Semaphore,
    /// Failed logins per address and per user.
    pub throttle: LoginThrottle,
    /// Sessions logged in per user.
    pub sessions: Arc<SessionCount>,
    /// Session tokens issued and not yet expired.
    pub tokens: TokenBook,
}

#[derive(Debug, Default)]
pub struct Uploads {
    pub paths: HashSet<(String, String)>,
    pub partials: HashSet<(String, String)>,
}

impl Shared {
    pub fn new(config: ServerConfig, root: DataRoot) -> Self {
        Shared {
            users: UserStore::new(root.clone()),
            hashes: HashStore::new(root.clone(), config.hash_records),
            quota: QuotaBook::default(),
            uploads: Mutex::new(Uploads::default()),
            login_permits: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            ),
            throttle: LoginThrottle::new(config.throttle),
            sessions: Arc::new(SessionCount::default()),
            tokens: TokenBook::new(config.tokens),
            config,
            root,
        }
    }
}

/// Marks a path and its partial as being uploaded to, until dropped.
#[derive(Debug)]
pub struct UploadGuard {
    shared: Arc<Shared>,
    path: (String, String),
    /// `None` for an upload that writes no partial (a small one made without a name).
    partial: Option<(String, String)>,
}

impl UploadGuard {
    /// `None` if another upload to the same path (by this user), or to the same partial, is
    /// in progress. Without `partial`, only the path is claimed ([`UploadGuard::add_partial`]
    /// claims one later).
    pub fn acquire(
        shared: &Arc<Shared>,
        user: &str,
        path: &VPath,
        partial: Option<&str>,
    ) -> Option<Self> {
        let path = (user.to_owned(), path.display());
        let partial = partial.map(|p| (user.to_owned(), p.to_owned()));
        let mut up = shared.uploads.lock().unwrap();
        if up.paths.contains(&path) || partial.as_ref().is_some_and(|p| up.partials.contains(p)) {
            return None;
        }
        up.paths.insert(path.clone());
        if let Some(p) = &partial {
            up.partials.insert(p.clone());
        }
        Some(UploadGuard {
            shared: Arc::clone(shared),
            path,
            partial,
        })
    }

    /// Claims the partial too, for an upload that acquired only its path; false if another
    /// upload holds that partial.
    pub fn add_partial(&mut self, partial: &str) -> bool {
        debug_assert!(self.partial.is_none());
        let partial = (self.path.0.clone(), partial.to_owned());
        let mut up = self.shared.uploads.lock().unwrap();
        if !up.partials.insert(partial.clone()) {
            return false;
        }
        self.partial = Some(partial);
        true
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let mut up = self.shared.uploads.lock().unwrap();
        up.paths.remove(&self.path);
        if let Some(p) = &self.partial {
            up.partials.remove(p);
        }
    }
}

/// A logged-in user's handles.
#[derive(Debug)]
pub struct User {
    pub name: String,
    /// The home, as a capability: every path of this session is opened through it.
    pub home: Arc<Home>,
    /// The user's partial uploads directory (server-internal).
    pub partials: Arc<Dir>,
    pub usage: Arc<UserUsage>,
    /// Counts this session against the user's cap until the session ends.
    pub slot: SessionSlot,
}

/// What blocking file-system work needs of a logged-in user: cheap to clone and `Send`.
#[derive(Debug, Clone)]
pub struct UserFs {
    pub shared: Arc<Shared>,
    pub name: String,
    pub home: Arc<Home>,
    pub partials: Arc<Dir>,
    pub usage: Arc<UserUsage>,
}

#[derive(Debug)]
pub enum Phase {
    Connected,
    Greeted,
    Authenticated(User),
}

/// What the connection loop does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

#[derive(Debug)]
pub struct Session {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    pub phase: Phase,
    pub cwd: VPath,
    /// The client's hello asked for `session-token`: a password login is answered with one.
    pub wants_token: bool,
    /// The hash of the session token this session logged in with, for `logout`.
    pub token_hash: Option<blake3::Hash>,
}

impl Session {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        Session {
            shared,
            peer,
            phase: Phase::Connected,
            cwd: VPath::root(),
            wants_token: false,
            token_hash: None,
        }
    }

    pub fn user(&self) -> Result<&User, OpError> {
        match &self.phase {
            Phase::Authenticated(u) => Ok(u),
            _ => Err(OpError::new(ErrorCode::AuthRequired, "log in first")),
        }
    }

    pub fn user_fs(&self) -> Result<UserFs, OpError> {
        let u = self.user()?;
        Ok(UserFs {
            shared: Arc::clone(&self.shared),
            name: u.name.clone(),
            home: Arc::clone(&u.home),
            partials: Arc::clone(&u.partials),
            usage: Arc::clone(&u.usage),
        })
    }

    pub fn login(&mut self, user: User) {
        self.phase = Phase::Authenticated(user);
    }

    /// Whether `request` is allowed in the current phase.
    fn admit(&self, request: &Request) -> Result<(), WireError> {
        let e = |code, msg: &str| Err(WireError::new(code, msg));
        match (&self.phase, request) {
            (Phase::Connected, Request::Hello { .. }) => Ok(()),
            (Phase::Connected, _) => e(ErrorCode::BadRequest, "send hello first"),
            (_, Request::Hello { .. }) => e(ErrorCode::BadRequest, "hello was already sent"),
            (Phase::Greeted, Request::Login { .. } | Request::Quit) => Ok(()),
            (Phase::Greeted, _) => e(ErrorCode::AuthRequired, "log in first"),
            (Phase::Authenticated(_), Request::Login { .. }) => {
                e(ErrorCode::BadRequest, "already logged in")
            }
            (Phase::Authenticated(_), _) => Ok(()),
        }
    }

    /// Whether `frame` runs in a batch: a get, or a small upload from its start, once logged
    /// in (see ops/batch.rs).
    fn batchable(&self, frame: &RequestFrame) -> bool {
        matches!(self.phase, Phase::Authenticated(_))
            && match &frame.request {
                Request::Get { .. } => true,
                Request::Put {
                    size, offset, hash, ..
                } => hash.is_some() && *offset == 0 && *size <= ops::put::SMALL_PUT,
                _ => false,
            }
    }

    fn batch_item(&self, frame: RequestFrame, body: Bytes) -> batch::Item {
        let id = frame.id;
        match frame.request {
            Request::Get { path, offset, algo } => batch::Item::Get {
                id,
                target: self.cwd.resolve(&path),
                offset,
                algo,
            },
            Request::Put {
                path,
                size,
                hash,
                offset,
                overwrite,
                mtime,
            } => batch::Item::Put {
                id,
                target: self
                    .cwd
                    .resolve(&path)
                    .and_then(|t| t.may_create(false).map(|()| t)),
                args: ops::put::PutArgs {
                    path,
                    size,
                    hash,
                    offset,
                    overwrite,
                    mtime,
                },
                body,
            },
            _ => unreachable!("only batchable requests become items"),
        }
    }

    /// Runs `first` (a batchable request) together with the batchable requests already
    /// buffered behind it, in one trip to the blocking pool, and queues their replies in
    /// order. While a run is on the blocking pool, the connection reads and parses the
    /// requests that follow into the next run, which starts as soon as this one is answered
    /// (runs stay in order: only the parsing overlaps). Returns the request that stopped the
    /// runs, read but not yet handled (its body, if any, still unread).
    pub async fn handle_batch(
        &mut self,
        first: RequestFrame,
        conn: &mut Conn,
        limits: &Limits,
    ) -> Result<Option<Pending>, ConnError> {
        let body = conn.whole_body().await?;
        let mut run = Run::up_to(FIRST_RUN);
        run.push(self.batch_item(first, body));
        self.gather_buffered(&mut run, conn, limits);
        loop {
            let user = self.user_fs().expect("batches run logged in");
            let items = std::mem::take(&mut run.items);
            let mut job = tokio::task::spawn_blocking(move || batch::run(&user, items));
            let mut following = Run::up_to(run.limit * 2);
            // Gather the next run unless something already stopped this one (a full run
            // stopped nothing).
            let done = if run.next.is_none() && run.fatal.is_none() {
                self.gather_while(&mut following, conn, limits, &mut job)
                    .await
            } else {
                job.await
            }
            .map_err(|e| std::io::Error::other(format!("batch failed: {e}")))?;
            for d in done {
                match d {
                    batch::Done::Put(id, Ok(reply)) => {
                        conn.queue(&ReplyFrame::ok(id, reply));
                    }
                    batch::Done::Get(id, Ok(ready)) => {
                        if conn.queue(&ReplyFrame::ok(id, ready.reply)) {
                            match ready.body {
                                Body::Inline(bytes) => conn.queue_body(&bytes),
                                Body::File(file) => {
                                    conn.send_file(&file, ready.offset, ready.len).await?
                                }
                            }
                        }
                    }
                    batch::Done::Put(id, Err(e)) | batch::Done::Get(id, Err(e)) => {
                        conn.queue(&ReplyFrame::err(id, e.into_wire()));
                    }
                }
            }
            if let Some(e) = run.fatal {
                return Err(e);
            }
            // While runs are still growing, their replies go out at once: that is what the
            // small first runs are for.
            if conn.queued() >= FLUSH_AT || run.limit < batch::MAX_ITEMS {
                conn.flush().await?;
            }
            if run.next.is_some() || following.items.is_empty() {
                // A frame error right behind the run: as if the run had stopped there.
                if let (None, Some(e)) = (&run.next, following.fatal) {
                    return Err(e);
                }
                return Ok(run.next.or(following.next));
            }
            run = following;
        }
    }

    /// Adds the batchable requests already buffered to `run`, until it is full or a request
    /// that is not batchable (or not whole yet) stops it. Never reads from the socket.
    fn gather_buffered(&self, run: &mut Run, conn: &mut Conn, limits: &Limits) {
        let waiting = self.take_buffered(run, conn, limits);
        run.stop_at(waiting);
    }

    /// Adds the batchable requests already buffered to `run` until it is full or stopped, and
    /// returns a batchable request whose body is not all here yet (it stops the gathering
    /// too). Never reads from the socket.
    fn take_buffered(
        &self,
        run: &mut Run,
        conn: &mut Conn,
        limits: &Limits,
    ) -> Option<RequestFrame> {
        while run.is_open() {
            let header = match conn.buffered_header() {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    run.fatal = Some(e);
                    break;
                }
            };
            match Pending::of(header, limits) {
                Pending { parsed: Ok(f), .. } if self.batchable(&f) => {
                    if let Some(waiting) = self.take_body(run, conn, f) {
                        return Some(waiting);
                    }
                }
                other => run.next = Some(other),
            }
        }
        None
    }

    /// Adds `frame` to `run` if its body is all buffered; else gives it back.
    fn take_body(
        &self,
        run: &mut Run,
        conn: &mut Conn,
        frame: RequestFrame,
    ) -> Option<RequestFrame> {
        match conn.buffered_body() {
            Ok(Some(body)) => run.push(self.batch_item(frame, body)),
            Ok(None) => return Some(frame),
            Err(e) => run.fatal = Some(e),
        }
        None
    }

    /// Until `job` (the current run) is done: reads what the peer sends and gathers it into
    /// `run`, the next one. Returns the job's outcome. Reads only while the job runs, so it
    /// needs no timeout of its own; a request whose body is still arriving when the job ends
    /// stops `run` and is handled as usual after it.
    async fn gather_while(
        &self,
        run: &mut Run,
        conn: &mut Conn,
        limits: &Limits,
        job: &mut tokio::task::JoinHandle<Vec<batch::Done>>,
    ) -> Result<Vec<batch::Done>, tokio::task::JoinError> {
        let mut waiting: Option<RequestFrame> = None;
        loop {
            waiting = waiting.and_then(|frame| self.take_body(run, conn, frame));
            if waiting.is_none() {
                waiting = self.take_buffered(run, conn, limits);
            }
            if waiting.is_none() && !run.is_open() {
                return job.await;
            }
            let more = tokio::select! {
                biased;
                done = &mut *job => {
                    run.stop_at(waiting);
                    return done;
                }
                n = conn.read_ahead() => n,
            };
            if !matches!(more, Ok(n) if n > 0) {
                // End of stream or a failed socket: the usual path meets it after the run.
                run.stop_at(waiting);
                return job.await;
            }
        }
    }

    /// Handles one request, queueing its reply (and sending its body, for `get`). A body the
    /// handler did not consume is discarded by the caller.
    pub async fn handle(
        &mut self,
        frame: RequestFrame,
        conn: &mut Conn,
    ) -> Result<Flow, ConnError> {
        let RequestFrame { id, request, .. } = frame;
        if let Request::Put { hash: None, .. } = &request {
            // Whatever becomes of the put, its put_hash frame follows the body.
            conn.expect_trailer(id);
        }
        if let Err(e) = self.admit(&request) {
            conn.queue(&ReplyFrame::err(id, e));
            return Ok(Flow::Continue);
        }
        let result = match request {
            Request::Hello {
                version, features, ..
            } => {
                let r = ops::hello::run(self, version, &features);
                if r.is_ok() {
                    self.phase = Phase::Greeted;
                }
                r
            }
            Request::Login {
                user,
                password,
                token,
            } => {
                let r = ops::login::run(self, user, password, token).await;
                if r.is_ok() {
                    conn.set_max_header(self.shared.config.limits.max_header);
                }
                r
            }
            Request::Pwd => Ok(ops::pwd::run(self)),
            Request::Cd { path } => ops::cd::run(self, &path).await,
            Request::Ls { path, after, limit } => {
                ops::ls::run(self, path.as_deref(), after.as_deref(), limit).await
            }
            Request::Stat { path, algo } => ops::stat::run(self, &path, algo).await,
            Request::Mkdir { path, parents } => ops::mkdir::run(self, &path, parents).await,
            Request::Rm { path, recursive } => ops::rm::run(self, &path, recursive).await,
            Request::Mv {
                from,
                to,
                overwrite,
            } => ops::mv::run(self, &from, &to, overwrite).await,
            Request::Put {
                path,
                size,
                hash,
                offset,
                overwrite,
                mtime,
            } => {
                let args = ops::put::PutArgs {
                    path,
                    size,
                    hash,
                    offset,
                    overwrite,
                    mtime,
                };
                ops::put::run(self, conn, args).await?
            }
            Request::PutHash { .. } => Err(ops::put_hash::stray()),
            Request::Resume {
                path,
                size,
                hash,
                mtime,
            } => ops::resume::run(self, &path, size, hash.as_ref(), mtime).await,
            Request::Get { .. } => unreachable!("gets run in batches"),
            Request::Bench {
                size,
                download: true,
            } => {
                if conn.queue(&ReplyFrame::ok(id, ops::bench::reply(size, true))) {
                    conn.send_filler(size).await?;
                }
                return Ok(Flow::Continue);
            }
            Request::Bench {
                size,
                download: false,
            } => {
                conn.discard_body().await?;
                Ok(ops::bench::reply(size, false))
            }
            Request::Logout => Ok(ops::logout::run(self)),
            Request::Quit => {
                conn.queue(&ReplyFrame::ok(id, ops::quit::run()));
                return Ok(Flow::Close);
            }
        };
        match result {
            Ok(reply) => conn.queue(&ReplyFrame::ok(id, reply)),
            Err(e) => conn.queue(&ReplyFrame::err(id, e.into_wire())),
        };
        Ok(Flow::Continue)
    }
}

/// Serves one connection until the peer quits or closes, a fatal error, a timeout, or
/// shutdown (checked between requests).
pub async fn serve_connection(
    shared: Arc<Shared>,
    stream: Stream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let cfg = &shared.config;
    let mut conn = Conn::new(
        stream,
        cfg.limits.max_header_prelogin,
        cfg.limits.max_reply_header,
        cfg.idle_timeout,
        cfg.frame_timeout,
        cfg.io_buffer,
    );
    let limits = cfg.limits;
    let mut session = Session::new(Arc::clone(&shared), peer);
    let fail = |conn: &mut Conn, e: ConnError| -> bool {
        match e {
            // The peer is gone: nobody to tell (PROTOCOL.md §9).
            ConnError::Proto(p @ ProtoError::Truncated(_)) => {
                tracing::debug!(%peer, "{p}");
                false
            }
            ConnError::Proto(p) => {
                tracing::debug!(%peer, "fatal frame error: {p}");
                conn.queue_error(p.code(), p.to_string());
                true
            }
            ConnError::Timeout(what) => {
                tracing::debug!(%peer, "timed out {what}");
                conn.queue_error(ErrorCode::Timeout, format!("timed out {what}"));
                true
            }
            ConnError::Io(e) => {
                tracing::debug!(%peer, "connection failed: {e}");
                false
            }
        }
    };
    let mut pending: Option<Pending> = None;
    loop {
        let Pending {
            parsed,
            deferred_put,
        } = match pending.take() {
            Some(p) => p,
            None => match conn.next_header(&shutdown).await {
                Ok(Some(h)) => Pending::of(h, &limits),
                Ok(None) => break,
                Err(e) => {
                    if fail(&mut conn, e) {
                        break;
                    }
                    return;
                }
            },
        };
        let flow = match parsed {
            Ok(frame) if session.batchable(&frame) => {
                match session.handle_batch(frame, &mut conn, &limits).await {
                    Ok(next) => {
                        pending = next;
                        Ok(Flow::Continue)
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(frame) => session.handle(frame, &mut conn).await,
            Err(rejected) => {
                if deferred_put {
                    // The client will send the put_hash anyway; it is read and dropped below.
                    conn.expect_trailer(rejected.id);
                }
                conn.queue(&ReplyFrame::err(rejected.id, rejected.error.to_wire()));
                Ok(Flow::Continue)
            }
        };
        let flow = match flow {
            Ok(f) => f,
            Err(e) => {
                if fail(&mut conn, e) {
                    break;
                }
                return;
            }
        };
        // The body of a request still pending, or of a header put back (a frame that came
        // where a put_hash was due), belongs to it, handled next; any other is left over.
        if pending.is_none() && conn.body_remaining() > 0 && !conn.holds_put_back() {
            if let Err(e) = conn.discard_body().await {
                if fail(&mut conn, e) {
                    break;
                }
                return;
            }
        }
        if flow == Flow::Close {
            break;
        }
        // A put without hash that ended before reading its put_hash (refused, failed): the
        // trailer is dropped unanswered, the put's reply said all. Any other frame there is
        // put back and handled as itself.
        if conn.trailer_is_due() {
            match ops::put_hash::read(&mut conn, &limits, &shutdown).await {
                Ok(ops::put_hash::Trailer::Closed) => break,
                Ok(_) => {}
                Err(e) => {
                    if fail(&mut conn, e) {
                        break;
                    }
                    return;
                }
            }
        }
    }
    conn.close().await;
}

/// Opens a regular file for reading through the home capability. `O_NONBLOCK` so that a FIFO
/// placed in a home by other means cannot hang us; anything but a regular file is refused.
pub fn open_regular(home: &Home, path: &VPath) -> Result<File, OpError> {
    // Check the type first: opening a socket fails (ENXIO) and a device must not be opened.
    let meta = home
        .dir()
        .metadata(path.rel())
        .map_err(|e| OpError::io(path, e))?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(OpError::new(
            ErrorCode::PermissionDenied,
            format!("{}: not a regular file", path.display()),
        ));
    }
    let mut opts = OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = home
        .dir()
        .open_with(path.rel(), &opts)
        .map_err(|e| OpError::io(path, e))?
        .into_std();
    let meta = file.metadata().map_err(|e| OpError::io(path, e))?;
    if meta.is_dir() {
        return Err(OpError::new(
            ErrorCode::IsADirectory,
            format!("{}: is a directory", path.display()),
        ));
    }
    if !meta.is_file() {
        return Err(OpError::new(
            ErrorCode::PermissionDenied,
            format!("{}: not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Whether a request header (valid or not) is a `put` without `hash`, which a `put_hash`
/// frame follows.
fn is_put_without_hash(header: &ferry_proto::Header) -> bool {
    use serde_json::Value;
    header.fields().get("op").and_then(Value::as_str) == Some("put")
        && header.fields().get("hash").is_none_or(Value::is_null)
}

/// What tells uploads of the same size to the same path apart.
#[derive(Debug, Clone, Copy)]
pub enum UploadKey<'a> {
    /// The hash the put declares in its header.
    Hash(&'a Digest),
    /// A put whose hash comes after the body: the client's modification time of the file.
    /// A prefix held under this key may belong to another version of the file; the
    /// whole-file check after the body catches that (`checksum_mismatch`, partial removed).
    Mtime(Option<i64>),
}

impl<'a> UploadKey<'a> {
    pub fn of_put(hash: Option<&'a Digest>, mtime: Option<i64>) -> Self {
        match hash {
            Some(h) => UploadKey::Hash(h),
            None => UploadKey::Mtime(mtime),
        }
    }
}

/// The partial file of an upload identity: a hash of (user, path, size, key), so two
/// different files known by their hash never share a partial and the name reveals nothing.
pub fn partial_name(user: &str, path: &VPath, size: u64, key: UploadKey<'_>) -> String {
    let key = match key {
        UploadKey::Hash(hash) => hash.to_string(),
        // Digests read `algo:hex`, so these never equal one.
        UploadKey::Mtime(Some(t)) => format!("mtime:{t}"),
        UploadKey::Mtime(None) => "mtime:none".to_owned(),
    };
    let mut h = blake3::Hasher::new();
    for part in [user, &path.display(), &size.to_string(), &key] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    format!("{}.part", &h.finalize().to_hex()[..32])
}
