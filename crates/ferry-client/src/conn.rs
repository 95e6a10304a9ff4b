//! Framed IO over one TCP connection: a reader and a writer half that can run concurrently,
//! which pipelining needs (a client that only writes while the server only writes back would
//! deadlock once both socket buffers fill).

use std::os::fd::AsRawFd;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use ferry_proto::{FrameDecoder, FrameEvent, ReplyFrame, RequestFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp;
use tokio_rustls::client::TlsStream;

use crate::error::{ClientError, Result};

/// Size of the buffers used to move bodies: large, so a gigabyte costs few system calls.
pub(crate) const IO_CHUNK: usize = 1 << 20;

/// Queued outgoing bytes are flushed once they exceed this, so many small frames share one
/// write without holding much memory.
const WRITE_COALESCE: usize = 256 * 1024;

/// Read buffer under TLS. rustls asks the socket for one record at a time, so a 1 GiB
/// download took 65,885 `recvfrom` calls of 16 KiB; reading the socket in large pieces
/// beneath it cuts that 16-fold. One buffer per connection, and a client has one.
pub(crate) const TLS_READ_BUFFER: usize = 256 * 1024;

/// TLS over a buffered TCP stream (see [`TLS_READ_BUFFER`]).
pub(crate) type TlsConn = TlsStream<tokio::io::BufReader<TcpStream>>;

/// The byte stream under the frames: plain TCP, or TLS over TCP.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsConn>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0.get_ref(),
        }
    }
}

pub(crate) struct Connection {
    stream: Stream,
    decoder: FrameDecoder,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Header limit for what we send (the server's, learned in hello).
    send_max_header: u32,
}

impl Connection {
    pub(crate) fn new(stream: Stream, recv_max_header: u32) -> Self {
        // Latency matters more than packet count for request/response: Nagle would delay
        // small frames behind the previous reply's ACK.
        let _ = stream.tcp().set_nodelay(true);
        Connection {
            stream,
            decoder: FrameDecoder::new(recv_max_header),
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            send_max_header: 64 * 1024,
        }
    }

    pub(crate) fn set_send_max_header(&mut self, max: u32) {
        self.send_max_header = max;
    }

    pub(crate) fn split(&mut self) -> (FrameReader<'_>, FrameWriter<'_>) {
        let (r, w) = match &mut self.stream {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadAny::Plain(r), WriteAny::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadAny::Tls(r), WriteAny::Tls(w))
            }
        };
        (
            FrameReader {
                half: r,
                decoder: &mut self.decoder,
                rbuf: &mut self.rbuf,
                failed: None,
            },
            FrameWriter {
                half: w,
                wbuf: &mut self.wbuf,
                max_header: self.send_max_header,
            },
        )
    }

    pub(crate) fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.stream.tcp().peer_addr()
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }
}

/// The read half of either kind of stream.
pub(crate) enum ReadAny<'a> {
    Plain(tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsConn>),
}

impl AsyncRead for ReadAny<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadAny::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadAny::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The write half of either kind of stream; only plain TCP can send files zero-copy.
pub(crate) enum WriteAny<'a> {
    Plain(tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsConn>),
}

impl WriteAny<'_> {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            WriteAny::Plain(w) => Some(w.as_ref()),
            WriteAny::Tls(_) => None,
        }
    }
}

impl AsyncWrite for WriteAny<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteAny::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteAny::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteAny::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteAny::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteAny::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteAny::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

pub(crate) struct FrameReader<'a> {
    half: ReadAny<'a>,
    decoder: &'a mut FrameDecoder,
    rbuf: &'a mut BytesMut,
    /// A read failure [`FrameReader::fill_body`] met after it had filled part of a buffer:
    /// those bytes go out first (into the partial, for a resume), the failure with the next
    /// call.
    failed: Option<ClientError>,
}

impl FrameReader<'_> {
    /// Reads the next reply header. Any body it declares must then be read with
    /// [`FrameReader::read_body`] or [`FrameReader::skip_body`].
    pub(crate) async fn read_reply(&mut self) -> Result<ReplyFrame> {
        debug_assert!(self.decoder.at_frame_boundary());
        loop {
            match self.decoder.decode(self.rbuf)? {
                Some(FrameEvent::Header(h)) => {
                    return ReplyFrame::from_header(h).map_err(|r| ClientError::Proto(r.error));
                }
                Some(FrameEvent::Body(_)) => {
                    return Err(ClientError::Unexpected("body bytes between replies".into()));
                }
                None => {}
            }
            let n = self
                .half
                .read_buf(self.rbuf)
                .await
                .map_err(|e| ClientError::io("reading from server", e))?;
            if n == 0 {
                return Err(match self.decoder.finish(self.rbuf) {
                    Ok(()) => ClientError::Closed,
                    Err(e) => ClientError::Proto(e),
                });
            }
        }
    }

    /// Hands every byte of the current body to `sink`, in large pieces.
    pub(crate) async fn read_body(
        &mut self,
        scratch: &mut [u8],
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        while self.decoder.body_remaining() > 0 {
            if !self.rbuf.is_empty() {
                if let Some(FrameEvent::Body(chunk)) = self.decoder.decode(self.rbuf)? {
                    sink(&chunk)?;
                }
                continue;
            }
            // Nothing buffered: read straight into the scratch buffer, skipping a copy.
            let want = self.decoder.body_remaining().min(scratch.len() as u64) as usize;
            let n = self
                .half
                .read(&mut scratch[..want])
                .await
                .map_err(|e| ClientError::io("reading from server", e))?;
            if n == 0 {
                return Err(ClientError::Proto(ferry_proto::ProtoError::Truncated(
                    "inside a body",
                )));
            }
            self.decoder.consume_body(n as u64);
            sink(&scratch[..n])?;
        }
        Ok(())
    }

    /// Body bytes of the current reply not yet read.
    pub(crate) fn body_remaining(&self) -> u64 {
        self.decoder.body_remaining()
    }

    /// Fills as much of `buf` as the rest of the current body allows, and returns how much
    /// that was. Unlike [`FrameReader::read_body`] the bytes land in the caller's buffer,
    /// which can then be handed to another thread without a copy.
    ///
    /// Should the connection fail with part of `buf` filled, that part is returned and the
    /// failure comes with the next call, so that what arrived is kept.
    pub(crate) async fn fill_body(&mut self, buf: &mut [u8]) -> Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let want = self.decoder.body_remaining().min(buf.len() as u64) as usize;
        let mut filled = 0;
        while filled < want {
            let n = if !self.rbuf.is_empty() {
                // Bytes that arrived together with the header.
                let n = self.rbuf.len().min(want - filled);
                buf[filled..filled + n].copy_from_slice(&self.rbuf[..n]);
                self.rbuf.advance(n);
                n
            } else {
                let read = match self.half.read(&mut buf[filled..want]).await {
                    Ok(0) => Err(ClientError::Proto(ferry_proto::ProtoError::Truncated(
                        "inside a body",
                    ))),
                    Ok(n) => Ok(n),
                    Err(e) => Err(ClientError::io("reading from server", e)),
                };
                match read {
                    Ok(n) => n,
                    Err(e) if filled > 0 => {
                        self.failed = Some(e);
                        return Ok(filled);
                    }
                    Err(e) => return Err(e),
                }
            };
            self.decoder.consume_body(n as u64);
            filled += n;
        }
        Ok(filled)
    }

    pub(crate) async fn skip_body(&mut self, scratch: &mut [u8]) -> Result<()> {
        self.read_body(scratch, |_| Ok(())).await
    }
}

pub(crate) struct FrameWriter<'a> {
    half: WriteAny<'a>,
    wbuf: &'a mut BytesMut,
    max_header: u32,
}

impl FrameWriter<'_> {
    /// Queues a request header; call [`FrameWriter::flush`] (or queue enough) to send it.
    pub(crate) async fn queue(&mut self, frame: &RequestFrame) -> Result<()> {
        frame.encode(self.max_header, self.wbuf)?;
        self.flush_if_full().await
    }

    /// Queues body bytes after a queued header.
    pub(crate) async fn queue_body(&mut self, bytes: &[u8]) -> Result<()> {
        self.wbuf.extend_from_slice(bytes);
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> Result<()> {
        if self.wbuf.len() >= WRITE_COALESCE {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes body bytes after the queued ones, without copying them into the queue.
    pub(crate) async fn write_body(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_queued().await?;
        self.half
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::io("writing to server", e))
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.half.tcp().is_none()
    }

    /// Writes what is queued (not flushing TLS records).
    async fn write_queued(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.half
                .write_all(self.wbuf)
                .await
                .map_err(|e| ClientError::io("writing to server", e))?;
            self.wbuf.clear();
        }
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.write_queued().await?;
        // TLS holds written records until flushed.
        self.half
            .flush()
            .await
            .map_err(|e| ClientError::io("writing to server", e))
    }

    /// Sends `len` bytes of `file` from `offset` as the body already announced, zero-copy
    /// with sendfile(2) where the kernel allows, falling back to read/write otherwise.
    /// Returns how many came from the file: fewer than `len` if it shrank meanwhile, the rest
    /// then sent as zeros ([`FrameWriter::pad_body`]).
    pub(crate) async fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
        progress: &dyn crate::Progress,
    ) -> Result<u64> {
        self.flush().await?;
        let Some(stream) = self.half.tcp() else {
            return self.copy_file(file, offset, 0, len, progress).await;
        };
        let sock = stream.as_raw_fd();
        let fd = file.as_raw_fd();
        let mut off = offset as libc::off_t;
        let mut remaining = len;
        while remaining > 0 {
            stream
                .writable()
                .await
                .map_err(|e| ClientError::io("writing to server", e))?;
            let count = remaining.min(1 << 30) as usize;
            let res = stream.try_io(Interest::WRITABLE, || {
                // SAFETY: both descriptors are open for the duration of the call, and `off`
                // is a valid pointer to a local.
                let n = unsafe { libc::sendfile(sock, fd, &mut off, count) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as u64)
                }
            });
            match res {
                Ok(0) => return self.pad_body(len - remaining, len).await,
                Ok(n) => {
                    remaining -= n;
                    progress.advance(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL)
                        || e.raw_os_error() == Some(libc::ENOSYS) =>
                {
                    return self
                        .copy_file(file, off as u64, len - remaining, len, progress)
                        .await;
                }
                Err(e) => return Err(ClientError::io("sending file", e)),
            }
        }
        Ok(len)
    }

    /// [`FrameWriter::send_file`] through user space, `len` bytes of which `sent` are out.
    async fn copy_file(
        &mut self,
        file: &std::fs::File,
        mut offset: u64,
        sent: u64,
        len: u64,
        progress: &dyn crate::Progress,
    ) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; IO_CHUNK];
        let mut remaining = len - sent;
        while remaining > 0 {
            let want = remaining.min(buf.len() as u64) as usize;
            let n = file
                .read_at(&mut buf[..want], offset)
                .map_err(|e| ClientError::io("reading local file", e))?;
            if n == 0 {
                return self.pad_body(len - remaining, len).await;
            }
            self.half
                .write_all(&buf[..n])
                .await
                .map_err(|e| ClientError::io("writing to server", e))?;
            offset += n as u64;
            remaining -= n as u64;
            progress.advance(n as u64);
        }
        self.flush().await?;
        Ok(len)
    }

    /// Completes a body of `len` bytes, of which `sent` are out, with zeros, and returns
    /// `sent`. A file that shrank while it was sent cannot end its body early (the server
    /// reads the announced length, and would take the next request for body bytes); the
    /// upload is then made to fail its verification instead, and the connection goes on.
    pub(crate) async fn pad_body(&mut self, sent: u64, len: u64) -> Result<u64> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut left = len - sent;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.write_body(&ZEROS[..n]).await?;
            left -= n as u64;
        }
        self.flush().await?;
        Ok(sent)
    }
}
