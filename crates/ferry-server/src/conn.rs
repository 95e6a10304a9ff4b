//! One connection's framed IO: reading frame headers and streamed bodies with timeouts,
//! buffering replies, and sending download bodies with `sendfile(2)`.
//!
//! Replies are queued in a buffer and written when the connection next has to wait for the
//! peer (or before a body is sent), so a burst of pipelined requests is answered with few
//! writes while each reply still goes out before we block on reading.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_proto::{ErrorCode, FrameDecoder, FrameEvent, Header, ProtoError, ReplyFrame, WireError};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::cache;

/// Read buffer between frames (headers; the decoder reserves more for a long header).
const SMALL_BUFFER: usize = 8 * 1024;

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A frame-fatal protocol error: answer once with id 0, then close.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The peer was too slow: answer `timeout` with id 0, then close.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The socket failed: just close.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The byte stream under the frames: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// The plain socket is lent to a blocking thread reading a body straight from it
    /// ([`Conn::lend_plain`]); no IO goes through the connection meanwhile.
    Lent,
}

impl Stream {
    /// # Panics
    /// While the socket is lent ([`Stream::Lent`]).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
            Stream::Lent => panic!("the socket is lent to a body reader"),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Lent => Poll::Ready(Err(lent())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Lent => Poll::Ready(Err(lent())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Lent => Poll::Ready(Err(lent())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Lent => Poll::Ready(Err(lent())),
        }
    }
}

fn lent() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the socket is lent to a body reader",
    )
}

/// Body bytes that must arrive within each frame timeout (or all that is left of the body): a
/// body has to move, not just trickle. One byte at a time, each just inside the timeout, would
/// otherwise hold a connection slot (and, for a large upload, a blocking thread) for as long
/// as the sender liked. 64 KiB per 30 s is 2.2 kB/s, below any link a transfer runs on.
pub const MIN_BODY_PROGRESS: u64 = 64 * 1024;

/// How far a body has come since it last made [`MIN_BODY_PROGRESS`]: its waits for more end
/// at [`BodyPace::deadline`].
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    since: std::time::Instant,
    moved: u64,
    patience: Duration,
}

impl BodyPace {
    /// A body starting now, allowed `patience` (the frame timeout) for each stretch.
    pub fn new(patience: Duration) -> Self {
        BodyPace {
            since: std::time::Instant::now(),
            moved: 0,
            patience,
        }
    }

    pub fn deadline(&self) -> std::time::Instant {
        self.since + self.patience
    }

    /// `n` more bytes arrived.
    pub fn moved(&mut self, n: u64) {
        self.moved += n;
        if self.moved >= MIN_BODY_PROGRESS {
            self.since = std::time::Instant::now();
            self.moved = 0;
        }
    }
}

/// A framed connection.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: FrameDecoder,
    idle_timeout: Duration,
    frame_timeout: Duration,
    io_buffer: usize,
    /// Replies are encoded with this header limit (`Limits::max_reply_header`, which clients
    /// accept): far above the request limit, so large listings fit.
    reply_max_header: u32,
    /// A header read while looking for a `put_hash` trailer that turned out to be another
    /// frame: handed out again by the next [`Conn::next_header`].
    put_back: Option<Header>,
    /// The id of a `put` sent without a hash whose `put_hash` trailer has not been read yet.
    trailer_due: Option<u64>,
    /// Recycled buffers of the large TLS body being read; gone between bodies.
    body_buffers: Option<std::sync::Arc<BodyBuffers>>,
    /// The pace of the body being read; gone between bodies.
    body_pace: Option<BodyPace>,
}

impl Conn {
    pub fn new(
        stream: Stream,
        max_header: u32,
        reply_max_header: u32,
        idle_timeout: Duration,
        frame_timeout: Duration,
        io_buffer: usize,
    ) -> Self {
        let _ = stream.tcp().set_nodelay(true);
        Conn {
            stream,
            rbuf: BytesMut::with_capacity(SMALL_BUFFER),
            wbuf: BytesMut::with_capacity(4096),
            decoder: FrameDecoder::new(max_header),
            idle_timeout,
            frame_timeout,
            io_buffer,
            reply_max_header,
            put_back: None,
            trailer_due: None,
            body_buffers: None,
            body_pace: None,
        }
    }

    /// Hands `header` out again from the next [`Conn::next_header`]; its body (if any) is
    /// still unread, as it was when the header came.
    pub fn put_back(&mut self, header: Header) {
        debug_assert!(self.put_back.is_none());
        self.put_back = Some(header);
    }

    /// Whether a header was put back and waits, with its body, to be handled.
    pub fn holds_put_back(&self) -> bool {
        self.put_back.is_some()
    }

    /// Notes that a `put_hash` frame for the put `id` is to follow that put's body.
    pub fn expect_trailer(&mut self, id: u64) {
        self.trailer_due = Some(id);
    }

    pub fn trailer_is_due(&self) -> bool {
        self.trailer_due.is_some()
    }

    /// The put whose `put_hash` trailer is still to come, if any; reading it is now the
    /// caller's job.
    pub fn take_trailer_due(&mut self) -> Option<u64> {
        self.trailer_due.take()
    }

    pub fn set_max_header(&mut self, n: u32) {
        self.decoder.set_max_header(n);
    }

    /// Body bytes of the current request not yet read.
    pub fn body_remaining(&self) -> u64 {
        self.decoder.body_remaining()
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        // Large reads only inside a body; between frames a small buffer is enough, so
        // thousands of idle connections cost little memory.
        let want = if self.decoder.body_remaining() > 0 {
            self.io_buffer
        } else {
            SMALL_BUFFER
        };
        if self.rbuf.capacity() - self.rbuf.len() < want / 4 {
            self.rbuf.reserve(want);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// The next request header. `Ok(None)`: the peer closed cleanly between frames, or the
    /// server is shutting down and the connection is idle.
    pub async fn next_header(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Header>, ConnError> {
        // Whatever body came before is read; the next one starts its own pace.
        self.body_pace = None;
        if let Some(h) = self.put_back.take() {
            return Ok(Some(h));
        }
        self.body_buffers = None;
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let mut started: Option<Instant> = None;
        loop {
            match self.decoder.decode(&mut self.rbuf)? {
                Some(FrameEvent::Header(h)) => return Ok(Some(h)),
                // Bodies are always drained by their request's handler; nothing to do here.
                Some(FrameEvent::Body(_)) => continue,
                None => {}
            }
            self.flush().await?;
            let n = if self.rbuf.is_empty() && self.decoder.at_frame_boundary() {
                if self.rbuf.capacity() > 4 * SMALL_BUFFER {
                    // Give back a body-sized buffer before waiting idle.
                    self.rbuf = BytesMut::new();
                }
                let idle = self.idle_timeout;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(None),
                    r = timeout(idle, self.read_more()) => match r {
                        Ok(r) => r?,
                        Err(_) => return Err(ConnError::Timeout("waiting for a request")),
                    },
                }
            } else {
                let deadline = *started.get_or_insert_with(Instant::now) + self.frame_timeout;
                match timeout_at(deadline, self.read_more()).await {
                    Ok(r) => r?,
                    Err(_) => return Err(ConnError::Timeout("inside a frame header")),
                }
            };
            if n == 0 {
                self.decoder.finish(&self.rbuf)?;
                return Ok(None);
            }
        }
    }

    /// The next piece of the current request's body, or `None` once it is all read. The
    /// peer must keep sending, and fast enough: [`MIN_BODY_PROGRESS`] bytes (or the rest of the
    /// body) within each frame timeout.
    pub async fn next_body_chunk(&mut self) -> Result<Option<Bytes>, ConnError> {
        loop {
            if self.decoder.body_remaining() == 0 {
                self.body_buffers = None;
                self.body_pace = None;
                return Ok(None);
            }
            let pace = self
                .body_pace
                .get_or_insert_with(|| BodyPace::new(self.frame_timeout));
            if let Some(FrameEvent::Body(b)) = self.decoder.decode(&mut self.rbuf)? {
                pace.moved(b.len() as u64);
                return Ok(Some(b));
            }
            let deadline = Instant::from_std(pace.deadline());
            self.flush().await?;
            if matches!(self.stream, Stream::Tls(_))
                && (self.body_buffers.is_some()
                    || self.decoder.body_remaining() >= self.io_buffer as u64)
            {
                return match timeout_at(deadline, self.read_tls_body()).await {
                    Ok(Ok(b)) => {
                        if let Some(pace) = self.body_pace.as_mut() {
                            pace.moved(b.len() as u64);
                        }
                        Ok(Some(b))
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(ConnError::Timeout("inside a body")),
                };
            }
            match timeout_at(deadline, self.read_more()).await {
                Ok(Ok(0)) => return Err(ProtoError::Truncated("inside a body").into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ConnError::Timeout("inside a body")),
            }
        }
    }

    /// The next request header if it is already buffered; never reads from the socket. Lets
    /// the session gather a run of pipelined requests into one batch.
    pub fn buffered_header(&mut self) -> Result<Option<Header>, ConnError> {
        if self.decoder.body_remaining() == 0 {
            self.body_pace = None;
        }
        if let Some(h) = self.put_back.take() {
            return Ok(Some(h));
        }
        if self.decoder.body_remaining() > 0 {
            return Ok(None);
        }
        match self.decoder.decode(&mut self.rbuf)? {
            Some(FrameEvent::Header(h)) => Ok(Some(h)),
            Some(FrameEvent::Body(_)) => unreachable!("no body is pending"),
            None => Ok(None),
        }
    }

    /// Reads whatever the peer has sent into the buffer: the byte count, 0 at the end of the
    /// stream. No timeout: for gathering the next batch run while one runs, raced against it
    /// (so it must stay cancel-safe, as `read_buf` is).
    pub async fn read_ahead(&mut self) -> io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < self.io_buffer / 4 {
            self.rbuf.reserve(self.io_buffer);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// The whole body of the current request if all of it is buffered already.
    pub fn buffered_body(&mut self) -> Result<Option<Bytes>, ConnError> {
        let want = self.decoder.body_remaining();
        if want == 0 {
            return Ok(Some(Bytes::new()));
        }
        if (self.rbuf.len() as u64) < want {
            return Ok(None);
        }
        match self.decoder.decode(&mut self.rbuf)? {
            Some(FrameEvent::Body(b)) if b.len() as u64 == want => Ok(Some(b)),
            _ => unreachable!("a buffered body comes out whole"),
        }
    }

    pub fn is_plain(&self) -> bool {
        matches!(self.stream, Stream::Plain(_))
    }

    /// Takes the plain socket out of the runtime for a blocking thread that reads the current
    /// body straight from it. Deregistered, its arrivals no longer wake a runtime worker (a
    /// 1 GiB body woke one ~12,000 times for nothing). Give it back with
    /// [`Conn::return_plain`]; until then the connection does no IO.
    ///
    /// Call only after [`Conn::buffered_body_chunk`] has handed out what is buffered, and on a
    /// plain connection ([`Conn::is_plain`]).
    pub fn lend_plain(&mut self) -> io::Result<std::net::TcpStream> {
        debug_assert!(self.rbuf.is_empty() || self.decoder.body_remaining() == 0);
        match std::mem::replace(&mut self.stream, Stream::Lent) {
            Stream::Plain(s) => s.into_std(),
            other => {
                self.stream = other;
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "only a plain socket can be lent",
                ))
            }
        }
    }

    /// Takes the socket back from [`Conn::lend_plain`], with the number of body bytes read
    /// from it meanwhile.
    pub fn return_plain(&mut self, sock: std::net::TcpStream, body_read: u64) -> io::Result<()> {
        debug_assert!(matches!(self.stream, Stream::Lent));
        self.decoder.consume_body(body_read);
        self.stream = Stream::Plain(TcpStream::from_std(sock)?);
        Ok(())
    }

    /// How long a body may stall before the connection times out.
    pub fn frame_timeout(&self) -> Duration {
        self.frame_timeout
    }

    /// The current body's bytes already buffered (they came with its header), never reading
    /// from the socket. After it, the rest of the body is still in the socket, unread.
    pub fn buffered_body_chunk(&mut self) -> Result<Option<Bytes>, ConnError> {
        if self.decoder.body_remaining() == 0 || self.rbuf.is_empty() {
            return Ok(None);
        }
        match self.decoder.decode(&mut self.rbuf)? {
            Some(FrameEvent::Body(b)) => Ok(Some(b)),
            _ => unreachable!("a body is pending and bytes are buffered"),
        }
    }

    /// The next piece of a large body over TLS (nothing of it buffered), up to
    /// [`TLS_BODY_CHUNK`] bytes, in a recycled buffer. Through `rbuf`, each piece went to the
    /// upload's writer as part of a freshly reserved allocation, which malloc then handed back
    /// to the kernel: new memory to fault in and zero all the time (75,000-95,000 minor faults
    /// and about 0.2 s of the server's 1.8 s CPU per GiB uploaded). Only TLS bodies come this
    /// way; plain TCP keeps its own path.
    async fn read_tls_body(&mut self) -> Result<Bytes, ConnError> {
        let Stream::Tls(tls) = &mut self.stream else {
            unreachable!("only TLS bodies are read this way");
        };
        let pool = std::sync::Arc::clone(self.body_buffers.get_or_insert_default());
        let mut buf = pool.take(TLS_BODY_CHUNK);
        let want = self.decoder.body_remaining().min(buf.len() as u64) as usize;
        // tokio-rustls fills the buffer with every record that is ready.
        let n = tls.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(ProtoError::Truncated("inside a body").into());
        }
        self.decoder.consume_body(n as u64);
        Ok(Bytes::from_owner(PooledChunk { buf, len: n, pool }))
    }

    /// Reads the whole body of the current request into memory. The caller bounds its size.
    pub async fn whole_body(&mut self) -> Result<Bytes, ConnError> {
        let want = self.decoder.body_remaining() as usize;
        let Some(first) = self.next_body_chunk().await? else {
            return Ok(Bytes::new());
        };
        if first.len() == want {
            return Ok(first);
        }
        let mut body = BytesMut::with_capacity(want);
        body.extend_from_slice(&first);
        while let Some(chunk) = self.next_body_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// Reads and drops whatever is left of the current request's body.
    pub async fn discard_body(&mut self) -> Result<(), ConnError> {
        while self.next_body_chunk().await?.is_some() {}
        Ok(())
    }

    /// Queues a reply. A reply whose header would exceed the limit is replaced by a
    /// `too_large` error for the same id; returns whether the original was queued.
    pub fn queue(&mut self, frame: &ReplyFrame) -> bool {
        match frame.encode(self.reply_max_header, &mut self.wbuf) {
            Ok(()) => true,
            Err(e) => {
                let err = ReplyFrame::err(
                    frame.id,
                    WireError::new(ErrorCode::TooLarge, format!("reply too large: {e}")),
                );
                err.encode(self.reply_max_header, &mut self.wbuf)
                    .expect("a short error reply encodes");
                false
            }
        }
    }

    /// Queues body bytes behind the reply just queued.
    pub fn queue_body(&mut self, body: &[u8]) {
        self.wbuf.extend_from_slice(body);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.wbuf.len()
    }

    /// Queues an error with id 0 (fatal errors, timeouts, busy).
    pub fn queue_error(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.queue(&ReplyFrame::err(0, WireError::new(code, message)));
    }

    /// Writes the queued replies; the peer must accept them within the frame timeout.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        // TLS holds written records until flushed.
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match timeout(self.frame_timeout, write).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::Timeout("writing a reply")),
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Flushes the replies, then sends `len` bytes of `file` from `offset`: on plain TCP with
    /// `sendfile(2)`, straight from the page cache to the socket; over TLS through a buffer,
    /// since the bytes must be encrypted. A file that shrinks under us (changed on the host
    /// meanwhile) is completed with zeros ([`Conn::pad_shrunk`]).
    pub async fn send_file(&mut self, file: &File, offset: u64, len: u64) -> Result<(), ConnError> {
        self.flush().await?;
        let stream = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(_) => return self.copy_file(file, offset, offset + len).await,
            Stream::Lent => return Err(lent().into()),
        };
        let sock = stream.as_raw_fd();
        let fd = file.as_raw_fd();
        let end = offset + len;
        let mut off = offset as libc::off_t;
        // Sent a window at a time, each in the page cache first (see `cache`).
        let mut windows = cache::Windows::new(file, offset, end)?;
        while (off as u64) < end {
            let want = (windows.cached_from(off as u64).await? - off as u64) as usize;
            match timeout(self.frame_timeout, stream.writable()).await {
                Ok(r) => r?,
                Err(_) => return Err(ConnError::Timeout("sending a file")),
            }
            let res = stream.try_io(Interest::WRITABLE, || {
                // SAFETY: both fds are open for the duration of the call; `off` is a valid
                // pointer to our offset, which sendfile advances.
                let n = unsafe { libc::sendfile(sock, fd, &mut off, want) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(0) => return self.pad_shrunk(off as u64, end).await,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    // A file system without sendfile support: copy through user space.
                    return self.copy_file(file, off as u64, end).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Flushes the replies, then sends `len` filler bytes from memory (the `bench` body).
    pub async fn send_filler(&mut self, len: u64) -> Result<(), ConnError> {
        self.flush().await?;
        self.send_zeros(len, "sending a bench body").await
    }

    /// Completes the body of a file that shrank while it was sent, from `at` to `end`, with
    /// zeros. Its reply already announced the size and the hash, so the body must still be
    /// that long for the connection to go on; the client's hash check then refuses this one
    /// file (unless the lost tail was zeros, in which case the bytes sent are the very bytes
    /// the hash describes), as a client gives up an upload.
    async fn pad_shrunk(&mut self, at: u64, end: u64) -> Result<(), ConnError> {
        tracing::warn!(
            at,
            end,
            "a file shrank while it was sent (changed outside ferry); the rest goes as zeros \
             and the client's hash check refuses it"
        );
        self.send_zeros(end - at, "sending a file").await
    }

    async fn send_zeros(&mut self, len: u64, what: &'static str) -> Result<(), ConnError> {
        /// Zeros, shared by every connection: nothing is allocated per body.
        static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            match timeout(self.frame_timeout, self.stream.write_all(&ZEROS[..n])).await {
                Ok(r) => r?,
                Err(_) => return Err(ConnError::Timeout(what)),
            }
            left -= n as u64;
        }
        match timeout(self.frame_timeout, self.stream.flush()).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::Timeout(what)),
        }
        Ok(())
    }

    async fn copy_file(&mut self, file: &File, mut off: u64, end: u64) -> Result<(), ConnError> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; self.io_buffer];
        let mut windows = cache::Windows::new(file, off, end)?;
        while off < end {
            let want = ((windows.cached_from(off).await? - off) as usize).min(buf.len());
            let n = file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return self.pad_shrunk(off, end).await;
            }
            match timeout(self.frame_timeout, self.stream.write_all(&buf[..n])).await {
                Ok(r) => r?,
                Err(_) => return Err(ConnError::Timeout("sending a file")),
            }
            off += n as u64;
        }
        match timeout(self.frame_timeout, self.stream.flush()).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::Timeout("sending a file")),
        }
        Ok(())
    }

    /// Flushes what is queued (briefly), shuts the write side down, and drains what the peer
    /// still sends for a moment: closing with unread input would make the kernel send a reset
    /// that can destroy our last reply before the peer reads it.
    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(2), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
        drain(&mut self.stream).await;
    }
}

/// The most a piece of a large TLS body holds. Each piece is handed from the connection to
/// the upload's writer and on to its hashing thread, each hand-off a wake-up: in 256 KiB
/// pieces, a 1 GiB upload cost each of those three threads about 4,000 sleeps and wake-ups.
/// In 1 MiB pieces a 1 GiB TLS upload took 1.31–1.37 s against 1.36–1.41 s (six alternating
/// pairs, server CPU 1.35 against 1.41 s), for at most ~10 MiB of pieces in flight.
const TLS_BODY_CHUNK: usize = 1 << 20;

/// Buffers a large TLS body is read into (see [`Conn::next_body_chunk`]), shared by the
/// chunks handed out: each comes back when the writer drops its chunk.
#[derive(Debug, Default)]
struct BodyBuffers {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl BodyBuffers {
    /// About as many chunks as an upload has in flight (its channel, the writer and the
    /// hashing thread each hold some); a buffer that comes back beyond these is freed.
    const KEEP: usize = 8;

    fn take(&self, size: usize) -> Vec<u8> {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        free.unwrap_or_else(|| vec![0; size])
    }
}

/// One chunk of a TLS body, in a buffer from [`BodyBuffers`] that goes back when dropped.
struct PooledChunk {
    buf: Vec<u8>,
    len: usize,
    pool: std::sync::Arc<BodyBuffers>,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < BodyBuffers::KEEP {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

async fn drain(stream: &mut Stream) {
    let mut sink = vec![0u8; 64 * 1024];
    let _ = timeout(Duration::from_millis(500), async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Tells a peer the server is at its connection cap, then closes. Bounded in time.
pub async fn refuse_busy(mut stream: Stream) {
    let mut buf = BytesMut::new();
    ReplyFrame::err(
        0,
        WireError::new(
            ErrorCode::Busy,
            "server is at its connection limit; try again later",
        ),
    )
    .encode(u32::MAX, &mut buf)
    .expect("busy reply encodes");
    let _ = timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(&buf).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    })
    .await;
    drain(&mut stream).await;
}
