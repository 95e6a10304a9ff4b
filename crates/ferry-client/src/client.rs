//! A logged-in session with a ferry server and its commands.

use std::time::Duration;

use ferry_proto::message::SESSION_TOKEN;
use ferry_proto::{
    Digest, Entry, HashAlgo, Limits, PROTOCOL_VERSION, Reply, ReplyFrame, Request, RequestFrame,
};
use tokio::net::TcpStream;

use crate::conn::{Connection, IO_CHUNK, Stream, TLS_READ_BUFFER};
use crate::error::{ClientError, Result};
use crate::tls::{self, TlsMode, Trust};

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub tls: TlsMode,
    /// Ask for a session token on a password login (the `session-token` feature). Only
    /// worth it for a caller that keeps the token (the CLI's session cache): each one takes a
    /// slot of the user's bounded set on the server.
    pub session_token: bool,
}

/// What proves who is logging in.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    Password(&'a str),
    /// A session token from an earlier password login's [`LoggedIn::token`].
    Token(&'a str),
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    /// The starting working directory.
    pub cwd: String,
    /// A new session token (password logins that asked for one, on servers that issue them).
    pub token: Option<String>,
    /// How long the new token, or the token just used, stays valid if unused.
    pub token_ttl: Option<Duration>,
}

/// What the server said in its greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    pub version: u32,
    pub features: Vec<String>,
    pub server: String,
    /// Our own address as the server sees it.
    pub peer: String,
    pub max_header: u32,
}

/// One session with a server: connect, greet, log in, then issue commands.
pub struct Client {
    pub(crate) conn: Connection,
    next_id: u64,
    hello: ServerHello,
    trust: Option<Trust>,
    fingerprint: Option<Digest>,
    pub(crate) scratch: Vec<u8>,
    /// Why a batch of transfers found the connection failed (see [`Client::is_broken`]).
    pub(crate) broken: Option<String>,
}

/// Entries per `ls` reply at most: about 7 MiB of reply with hashes, well inside the 16 MiB
/// a reply header may take, so a directory of any size can be listed. (Each page costs the
/// server a pass over the whole directory, so pages are not made smaller than this.)
pub const LS_PAGE: u64 = 50_000;

impl Client {
    /// Connects (over TLS unless told otherwise) and exchanges greetings.
    pub async fn connect(addr: &str, opts: &ConnectOptions) -> Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::io(format!("connecting to {addr}"), e))?;
        let (stream, trust, fingerprint) = match &opts.tls {
            TlsMode::Plain => (Stream::Plain(tcp), None, None),
            TlsMode::Tls { ca, known_hosts } => {
                let prepared = tls::prepare(ca.as_deref(), known_hosts, addr)?;
                let connector = tokio_rustls::TlsConnector::from(prepared.config);
                let name = tls::server_name(addr)?;
                let buffered = tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp);
                match connector.connect(name, buffered).await {
                    Ok(s) => {
                        let trust = prepared.verifier.as_ref().and_then(|v| v.decision());
                        if let (Some(v), Some(Trust::FirstUse(fp))) = (&prepared.verifier, &trust) {
                            v.remember(fp)?;
                        }
                        let fingerprint = s
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|cert| tls::fingerprint(cert));
                        (
                            Stream::Tls(Box::new(s)),
                            trust.or(Some(Trust::Verified)),
                            fingerprint,
                        )
                    }
                    Err(e) => {
                        if let Some(v) = &prepared.verifier {
                            if let Some(Trust::Changed { pinned, offered }) = v.decision() {
                                return Err(ClientError::CertificateChanged(tls::changed_message(
                                    addr,
                                    &pinned,
                                    &offered,
                                    v.known_hosts(),
                                )));
                            }
                        }
                        return Err(ClientError::Tls(format!(
                            "TLS handshake with {addr} failed: {e} (is the server plain TCP? \
                             then both sides need --plain)"
                        )));
                    }
                }
            }
        };
        let limits = Limits::default();
        let mut conn = Connection::new(stream, limits.max_reply_header);
        // Until the server tells us its limit, stay under the pre-login one.
        conn.set_send_max_header(limits.max_header_prelogin);
        let mut client = Client {
            conn,
            next_id: 1,
            hello: ServerHello {
                version: 0,
                features: Vec::new(),
                server: String::new(),
                peer: String::new(),
                max_header: limits.max_header,
            },
            trust,
            fingerprint,
            scratch: Vec::new(),
            broken: None,
        };
        let reply = client
            .call(Request::Hello {
                version: PROTOCOL_VERSION,
                features: ferry_proto::message::FEATURES
                    .iter()
                    .filter(|f| opts.session_token || **f != SESSION_TOKEN)
                    .map(|s| s.to_string())
                    .collect(),
                client: Some(format!("ferry/{}", env!("CARGO_PKG_VERSION"))),
            })
            .await?;
        match reply {
            Reply::Hello {
                version,
                features,
                server,
                peer,
                max_header,
            } => {
                client.hello = ServerHello {
                    version,
                    features,
                    server,
                    peer,
                    max_header,
                };
            }
            other => return Err(unexpected("hello", &other)),
        }
        Ok(client)
    }

    pub fn hello(&self) -> &ServerHello {
        &self.hello
    }

    /// Whether a batch of transfers ([`Client::get_files`], [`Client::put_files`]) ended
    /// with the connection failed: nothing more can be done with this client.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// How the server's certificate was trusted (None on plain TCP).
    pub fn trust(&self) -> Option<&Trust> {
        self.trust.as_ref()
    }

    /// The fingerprint of the certificate the server presented (None on plain TCP).
    pub fn server_fingerprint(&self) -> Option<&Digest> {
        self.fingerprint.as_ref()
    }

    /// Whether the server accepts session tokens on this connection (both sides named
    /// `session-token` in the greeting).
    pub fn offers_session_tokens(&self) -> bool {
        self.hello.features.iter().any(|f| f == SESSION_TOKEN)
    }

    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    pub fn server_addr(&self) -> Option<std::net::SocketAddr> {
        self.conn.peer_addr().ok()
    }

    /// Logs in with a password; returns the starting working directory.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<String> {
        Ok(self
            .login_with(user, Credential::Password(password))
            .await?
            .cwd)
    }

    /// Logs in with a password or a session token. A refused token is a
    /// [`ClientError::Remote`] with code `token_invalid`; the password still works.
    pub async fn login_with(&mut self, user: &str, credential: Credential<'_>) -> Result<LoggedIn> {
        let request = match credential {
            Credential::Password(p) => Request::login_password(user, p),
            Credential::Token(t) => Request::login_token(user, t),
        };
        match self.call(request).await? {
            Reply::Login {
                cwd,
                token,
                token_ttl,
                ..
            } => {
                self.conn.set_send_max_header(self.hello.max_header);
                Ok(LoggedIn {
                    cwd,
                    token,
                    token_ttl: token_ttl.map(Duration::from_secs),
                })
            }
            other => Err(unexpected("login", &other)),
        }
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(crate) fn scratch(&mut self) -> Vec<u8> {
        let s = std::mem::take(&mut self.scratch);
        if s.len() < IO_CHUNK {
            // Zeroed by the allocator (fresh pages from the kernel for a block this size), so
            // only the part reads fill is ever touched: with many connections (`-j`) most of
            // each buffer stays untouched and costs no memory.
            return vec![0; IO_CHUNK];
        }
        s
    }

    /// Fails at once on a connection a batch of transfers found failed: it may have stopped
    /// in the middle of a frame, so nothing more can be read from it.
    pub(crate) fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(cause) => Err(ClientError::Interrupted(format!(
                "the connection failed earlier ({cause})"
            ))),
            None => Ok(()),
        }
    }

    /// Sends one request without a body and waits for its reply. A reply body, if any, is
    /// discarded (use the transfer functions for downloads).
    pub async fn call(&mut self, request: Request) -> Result<Reply> {
        self.check_usable()?;
        let id = self.next_id();
        let frame = RequestFrame::new(id, request);
        let mut scratch = self.scratch();
        let (mut reader, mut writer) = self.conn.split();
        writer.queue(&frame).await?;
        writer.flush().await?;
        let reply = reader.read_reply().await?;
        if reply.body_len > 0 {
            reader.skip_body(&mut scratch).await?;
        }
        self.scratch = scratch;
        check_id(&reply, id)?;
        Ok(reply.result?)
    }

    /// Sends many body-less requests at once and returns their results in order: one round
    /// trip for the lot.
    pub async fn call_many(&mut self, requests: Vec<Request>) -> Result<Vec<Result<Reply>>> {
        self.check_usable()?;
        let first = self.next_id;
        self.next_id += requests.len() as u64;
        let count = requests.len();
        let mut scratch = self.scratch();
        let (mut reader, mut writer) = self.conn.split();
        let send = async {
            for (i, request) in requests.into_iter().enumerate() {
                writer
                    .queue(&RequestFrame::new(first + i as u64, request))
                    .await?;
            }
            writer.flush().await
        };
        let receive = read_results(&mut reader, &mut scratch, first, count);
        let (sent, received) = tokio::join!(send, receive);
        self.scratch = scratch;
        sent?;
        received
    }

    pub async fn pwd(&mut self) -> Result<String> {
        match self.call(Request::Pwd).await? {
            Reply::Pwd { cwd } => Ok(cwd),
            other => Err(unexpected("pwd", &other)),
        }
    }

    pub async fn cd(&mut self, path: &str) -> Result<String> {
        match self
            .call(Request::Cd {
                path: path.to_owned(),
            })
            .await?
        {
            Reply::Cd { cwd } => Ok(cwd),
            other => Err(unexpected("cd", &other)),
        }
    }

    /// Lists a directory (or describes one file); `None` lists the working directory. A
    /// directory too large for one reply is asked for in pages of [`LS_PAGE`] entries.
    pub async fn ls(&mut self, path: Option<&str>) -> Result<(String, Vec<Entry>)> {
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let reply = self
                .call(Request::Ls {
                    path: path.map(str::to_owned),
                    after: after.take(),
                    limit: Some(LS_PAGE),
                })
                .await?;
            match reply {
                Reply::Ls {
                    path,
                    entries,
                    more,
                } => {
                    after = entries.last().map(|e| e.name.clone()).filter(|_| more);
                    listed.extend(entries);
                    if after.is_none() {
                        return Ok((path, listed));
                    }
                }
                other => return Err(unexpected("ls", &other)),
            }
        }
    }

    pub async fn stat(&mut self, path: &str, algo: Option<HashAlgo>) -> Result<Entry> {
        match self
            .call(Request::Stat {
                path: path.to_owned(),
                algo,
            })
            .await?
        {
            Reply::Stat(entry) => Ok(entry),
            other => Err(unexpected("stat", &other)),
        }
    }

    pub async fn mkdir(&mut self, path: &str, parents: bool) -> Result<String> {
        match self
            .call(Request::Mkdir {
                path: path.to_owned(),
                parents,
            })
            .await?
        {
            Reply::Mkdir { path } => Ok(path),
            other => Err(unexpected("mkdir", &other)),
        }
    }

    pub async fn rm(&mut self, path: &str, recursive: bool) -> Result<String> {
        match self
            .call(Request::Rm {
                path: path.to_owned(),
                recursive,
            })
            .await?
        {
            Reply::Rm { path } => Ok(path),
            other => Err(unexpected("rm", &other)),
        }
    }

    pub async fn mv(&mut self, from: &str, to: &str, overwrite: bool) -> Result<(String, String)> {
        match self
            .call(Request::Mv {
                from: from.to_owned(),
                to: to.to_owned(),
                overwrite,
            })
            .await?
        {
            Reply::Mv { from, to } => Ok((from, to)),
            other => Err(unexpected("mv", &other)),
        }
    }

    /// Ends, on the server, the session token this session logged in with; whether there was
    /// one to end.
    pub async fn logout(&mut self) -> Result<bool> {
        match self.call(Request::Logout).await? {
            Reply::Logout { revoked } => Ok(revoked),
            other => Err(unexpected("logout", &other)),
        }
    }

    /// Says goodbye; the server closes the connection after answering.
    pub async fn quit(mut self) -> Result<()> {
        if self.is_broken() {
            return Ok(());
        }
        match self.call(Request::Quit).await {
            Ok(Reply::Quit) | Err(ClientError::Closed) => Ok(()),
            Ok(other) => Err(unexpected("quit", &other)),
            Err(e) => Err(e),
        }
    }
}

/// Reads the replies to `count` requests sent with ids from `first` on, in order, skipping
/// any bodies. The outer error means the connection failed.
pub(crate) async fn read_results(
    reader: &mut crate::conn::FrameReader<'_>,
    scratch: &mut [u8],
    first: u64,
    count: usize,
) -> Result<Vec<Result<Reply>>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let reply = reader.read_reply().await?;
        if reply.body_len > 0 {
            reader.skip_body(scratch).await?;
        }
        check_id(&reply, first + i as u64)?;
        out.push(reply.result.map_err(ClientError::from));
    }
    Ok(out)
}

pub(crate) fn check_id(reply: &ReplyFrame, id: u64) -> Result<()> {
    // Id 0 is the server speaking for the connection (busy, timeout, a fatal frame error).
    if reply.id == 0 {
        if let Err(e) = &reply.result {
            return Err(ClientError::Remote(e.clone()));
        }
    }
    if reply.id != id {
        return Err(ClientError::Unexpected(format!(
            "reply id {} where {id} was expected",
            reply.id
        )));
    }
    Ok(())
}

pub(crate) fn unexpected(op: &str, reply: &Reply) -> ClientError {
    ClientError::Unexpected(format!("{} reply to a {op} request", reply.op()))
}
