//! The client commands: put, get, ls, stat, mkdir, rm, mv, pwd and shell.
//!
//! Every command connects, logs in, does its work and reports. Server address and user come
//! from flags or FERRY_SERVER / FERRY_USER; the password from FERRY_PASSWORD (for scripts) or
//! a prompt, never from the command line. A password login leaves a session token in the
//! session cache (`ferry_client::sessions`); later commands log in with it, and only ask for
//! the password when it is missing, expired or refused.

mod crew;
mod get;
mod ops;
mod progress;
mod put;
mod shell;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use ferry_client::sessions::{CachedSession, SessionCache};
use ferry_client::{Client, ClientError, ConnectOptions, Credential, TlsMode, Trust};
use ferry_proto::ErrorCode;

pub use get::{GetArgs, get};
pub use ops::{LsArgs, MkdirArgs, MvArgs, PwdArgs, RmArgs, StatArgs, ls, mkdir, mv, pwd, rm, stat};
pub use put::{PutArgs, put};
pub use shell::{ShellArgs, shell};

/// Where to connect and as whom, shared by every client command.
///
/// The password comes from FERRY_PASSWORD or a prompt. After a password login the server's
/// session token is kept in the config directory (`sessions`, mode 0600, beside
/// `known_hosts`), so later commands to the same server as the same user need no password
/// until the token expires (1 h unused by default) or `ferry logout` forgets it.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Server address, host:port.
    #[arg(
        long,
        short = 's',
        env = "FERRY_SERVER",
        default_value = "127.0.0.1:9696"
    )]
    pub server: String,
    /// User to log in as (default: your local user name). The password comes from
    /// FERRY_PASSWORD or a prompt; after one password login, commands to the same server as
    /// the same user log in with the session token kept in the config directory (no password
    /// needed) until it expires unused (1 h by default) or `ferry logout` forgets it.
    #[arg(long, short = 'u', env = "FERRY_USER")]
    pub user: Option<String>,
    /// Plain TCP instead of TLS (only for a server started with --plain).
    #[arg(long, env = "FERRY_PLAIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub plain: bool,
    /// Trust only server certificates signed by this CA (PEM) instead of the system roots
    /// and pinned fingerprints.
    #[arg(long, value_name = "PEM", conflicts_with = "plain")]
    pub ca: Option<std::path::PathBuf>,
}

/// How a first login is repeated on more connections of the same command.
#[derive(Clone)]
struct Relogin {
    user: String,
    credential: Secret,
}

#[derive(Clone)]
enum Secret {
    Token(String),
    Password(String),
}

/// How to report, shared by every client command.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Output {
    /// Print results as JSON on stdout, for scripts (implies --quiet).
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl Output {
    /// Whether to draw progress bars: only for a person watching a terminal.
    pub fn show_progress(&self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }
}

impl Remote {
    fn user(&self) -> anyhow::Result<String> {
        if let Some(u) = &self.user {
            return Ok(u.clone());
        }
        std::env::var("USER").context("no user given: use --user NAME or set FERRY_USER")
    }

    fn password(&self, user: &str) -> anyhow::Result<String> {
        match std::env::var("FERRY_PASSWORD") {
            Ok(p) => Ok(p),
            Err(_) => {
                if !std::io::stdin().is_terminal() {
                    anyhow::bail!(
                        "no password: set FERRY_PASSWORD, or run from a terminal to be asked"
                    );
                }
                rpassword::prompt_password(format!("{user}@{}'s password: ", self.server))
                    .context("reading the password")
            }
        }
    }

    /// Connects, greets and logs in: with the cached session token if there is one for this
    /// server, user and certificate, else (or if the server refuses it) with the password,
    /// keeping the token the server answers with.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(self.connect_again_able().await?.0)
    }

    /// [`Remote::connect`], and how more connections can log in the same way without asking
    /// again (for `--connections`).
    async fn connect_again_able(&self) -> anyhow::Result<(Client, Relogin)> {
        let user = self.user()?;
        let mut client = self.greet().await?;
        let cache = SessionCache::default_location();
        let fingerprint = client.server_fingerprint().cloned();
        let cached = client
            .offers_session_tokens()
            .then(|| cache.get(&self.server, &user, fingerprint.as_ref(), SystemTime::now()))
            .flatten();
        if let Some(cached) = cached {
            match client
                .login_with(&user, Credential::Token(&cached.token))
                .await
            {
                Ok(logged_in) => {
                    // The server slides a used token's expiry; note it now and then (not on
                    // every command: each note is a file write).
                    if let Some(ttl) = logged_in.token_ttl {
                        let now = SystemTime::now();
                        let expires = now + ttl;
                        let noted = SystemTime::UNIX_EPOCH + Duration::from_secs(cached.expires);
                        if expires > noted + Duration::from_secs(60) {
                            self.keep_token(
                                &cache,
                                &user,
                                fingerprint.as_ref(),
                                &cached.token,
                                ttl,
                            );
                        }
                    }
                    let again = Relogin {
                        user,
                        credential: Secret::Token(cached.token),
                    };
                    return Ok((client, again));
                }
                Err(e) if e.remote_code() == Some(ErrorCode::TokenInvalid) => {
                    let _ = cache.remove(&self.server, &user);
                }
                Err(e) => return Err(e).with_context(|| format!("login as {user} failed")),
            }
        }
        let password = self.password(&user)?;
        let logged_in = client
            .login_with(&user, Credential::Password(&password))
            .await
            .with_context(|| format!("login as {user} failed"))?;
        let credential = match (logged_in.token, logged_in.token_ttl) {
            (Some(token), Some(ttl)) => {
                self.keep_token(&cache, &user, fingerprint.as_ref(), &token, ttl);
                // A token login costs the server a hash lookup; a password one, argon2id.
                Secret::Token(token)
            }
            _ => Secret::Password(password),
        };
        Ok((client, Relogin { user, credential }))
    }

    /// One more connection, logged in as `again` says.
    async fn connect_again(&self, again: &Relogin) -> anyhow::Result<Client> {
        let mut client = self.greet().await?;
        let credential = match &again.credential {
            Secret::Token(t) => Credential::Token(t),
            Secret::Password(p) => Credential::Password(p),
        };
        client
            .login_with(&again.user, credential)
            .await
            .with_context(|| format!("login as {} failed", again.user))?;
        Ok(client)
    }

    /// Connects and greets, asking for session tokens.
    async fn greet(&self) -> anyhow::Result<Client> {
        let tls = if self.plain {
            TlsMode::Plain
        } else {
            TlsMode::Tls {
                ca: self.ca.clone(),
                known_hosts: ferry_client::tls::default_known_hosts(),
            }
        };
        let options = ConnectOptions {
            tls,
            session_token: true,
        };
        let client = Client::connect(&self.server, &options)
            .await
            .with_context(|| format!("cannot reach ferry server at {}", self.server))?;
        if let Some(Trust::FirstUse(fp)) = client.trust() {
            eprintln!(
                "ferry: trusting {} on first use; its certificate is {fp} (pinned in {})",
                self.server,
                ferry_client::tls::default_known_hosts().display()
            );
        }
        Ok(client)
    }

    /// Logs in with the cached token only and asks the server to end it; whether it did.
    async fn end_token_on_server(&self, user: &str) -> anyhow::Result<bool> {
        let client = self.greet().await?;
        let fingerprint = client.server_fingerprint().cloned();
        let cache = SessionCache::default_location();
        let Some(cached) = cache.get(&self.server, user, fingerprint.as_ref(), SystemTime::now())
        else {
            return Ok(false);
        };
        Ok(end_with_token(client, user, &cached.token).await?)
    }

    /// Saves a token; a cache that cannot be written only costs password logins later.
    fn keep_token(
        &self,
        cache: &SessionCache,
        user: &str,
        fingerprint: Option<&ferry_proto::Digest>,
        token: &str,
        ttl: Duration,
    ) {
        let saved = cache.put(
            &self.server,
            user,
            fingerprint,
            token,
            ttl,
            SystemTime::now(),
        );
        if let Err(e) = saved {
            eprintln!(
                "ferry: cannot save the session token in {}: {e}",
                cache.path().display()
            );
        }
    }

    /// Forgets the cached token for this server and user.
    pub fn forget_token(&self) -> anyhow::Result<bool> {
        let user = self.user()?;
        let cache = SessionCache::default_location();
        cache
            .remove(&self.server, &user)
            .with_context(|| format!("updating {}", cache.path().display()))
    }
}

/// `ferry logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// Forget the session tokens of every server and user, not just this one (each server is
    /// asked to end its token first).
    #[arg(long)]
    pub all: bool,
}

/// Removes cached session tokens; for one server and user, first asks that server to end the
/// token (if it can be reached), so a copy of the file taken earlier is worthless too.
pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let cache = SessionCache::default_location();
    if args.all {
        // Each server is asked to end its token first, so a copy of the file taken earlier is
        // worthless there too; then the file goes, whatever the servers said.
        let entries = cache.entries(SystemTime::now());
        let ended = block_on(end_every_token(&entries));
        let removed = cache
            .clear()
            .with_context(|| format!("removing {}", cache.path().display()))?;
        if !removed {
            eprintln!("ferry: no session tokens were kept");
            return Ok(ExitCode::SUCCESS);
        }
        for (s, said) in entries.iter().zip(ended) {
            let who = format!("{}@{}", s.user, s.server);
            match said {
                Ok(true) => eprintln!("ferry: logged out {who} (the server ended the token)"),
                Ok(false) => {
                    eprintln!("ferry: logged out {who} (the server no longer held the token)")
                }
                Err(e) => eprintln!(
                    "ferry: logged out {who} on this machine; could not end the token on the \
                     server ({e:#}), where it stays valid until it expires"
                ),
            }
        }
        eprintln!(
            "ferry: forgot every session token ({})",
            cache.path().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let remote = &args.remote;
    let user = remote.user()?;
    let who = format!("{user}@{}", remote.server);
    if !cache.contains(&remote.server, &user) {
        eprintln!("ferry: no session token kept for {who}");
        return Ok(ExitCode::SUCCESS);
    }
    let on_server = block_on(remote.end_token_on_server(&user));
    remote.forget_token()?;
    match on_server {
        Ok(true) => eprintln!("ferry: logged out {who} (the server ended the token)"),
        Ok(false) => eprintln!("ferry: logged out {who} (the server no longer held the token)"),
        Err(e) => eprintln!(
            "ferry: logged out {who} on this machine; could not reach the server ({e:#}), \
             where the token stays valid until it expires"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `logout --all` gives each server to end its token: a cached server may be gone or
/// unreachable, and logging out must not hang on it.
const END_TOKEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the server of each cached session, all at once, to end its token; for each, whether
/// it did (`false`: it no longer held it) or why it could not be asked. The token goes only
/// to a server that shows the certificate it was issued over (pinned for this one connection
/// in a scratch known-hosts file, so nothing is pinned in the user's).
async fn end_every_token(entries: &[CachedSession]) -> Vec<anyhow::Result<bool>> {
    let mut asking = tokio::task::JoinSet::new();
    for (i, s) in entries.iter().cloned().enumerate() {
        asking.spawn(async move {
            let ended = tokio::time::timeout(END_TOKEN_TIMEOUT, end_token(&s, i))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in {END_TOKEN_TIMEOUT:?}")));
            (i, ended)
        });
    }
    let mut said: Vec<anyhow::Result<bool>> = entries
        .iter()
        .map(|_| Err(anyhow::anyhow!("not asked")))
        .collect();
    while let Some(done) = asking.join_next().await {
        if let Ok((i, ended)) = done {
            said[i] = ended;
        }
    }
    said
}

/// Logs in to `s.server` with the cached token and asks it to end it.
async fn end_token(s: &CachedSession, nth: usize) -> anyhow::Result<bool> {
    let scratch = ferry_client::tls::config_dir()
        .join(format!(".logout-{}-{nth}.known_hosts", std::process::id()));
    let tls = match &s.fingerprint {
        None => TlsMode::Plain,
        Some(fp) => {
            std::fs::create_dir_all(ferry_client::tls::config_dir())?;
            std::fs::write(&scratch, format!("{} {fp}\n", s.server))?;
            TlsMode::Tls {
                ca: None,
                known_hosts: scratch.clone(),
            }
        }
    };
    let options = ConnectOptions {
        tls,
        session_token: true,
    };
    let asked = async {
        let client = match Client::connect(&s.server, &options).await {
            Err(ClientError::CertificateChanged(_)) => {
                return Err(ClientError::Local(
                    "it showed another certificate than the one the token was issued over, \
                     so the token was not sent"
                        .into(),
                ));
            }
            connected => connected?,
        };
        end_with_token(client, &s.user, &s.token).await
    }
    .await;
    let _ = std::fs::remove_file(&scratch);
    Ok(asked?)
}

/// Logs in on `client` with `token` and asks the server to end it; whether it did (`false`:
/// the server no longer held it, or issues no tokens).
async fn end_with_token(mut client: Client, user: &str, token: &str) -> Result<bool, ClientError> {
    if !client.offers_session_tokens() {
        return Ok(false);
    }
    match client.login_with(user, Credential::Token(token)).await {
        Ok(_) => {}
        Err(e) if e.remote_code() == Some(ErrorCode::TokenInvalid) => return Ok(false),
        Err(e) => return Err(e),
    }
    let ended = client.logout().await?;
    let _ = client.quit().await;
    Ok(ended)
}

/// Runs an async command body on a small runtime: one connection needs no more.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
        .block_on(f)
}

/// Joins a remote directory and a name with exactly one `/`.
pub fn remote_join(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "." {
        name.to_owned()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// A remote file path as (directory, name): `/a.txt` → (`/`, `a.txt`), `a.txt` → (`.`, `a.txt`).
pub fn remote_split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => (".", path),
    }
}

/// The last component of a remote path.
pub fn remote_basename(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

/// A JSON line for one failed item.
pub fn error_json(err: &ClientError) -> serde_json::Value {
    let code = match err {
        ClientError::Interrupted(_) => "interrupted",
        e => e.remote_code().map_or("local", |c| c.as_str()),
    };
    serde_json::json!({
        "ok": false,
        "code": code,
        "message": err.to_string(),
    })
}

/// Exit code for a run in which some items failed: that of the first failure.
pub fn exit_for_failures(first: Option<&ClientError>) -> ExitCode {
    match first {
        None => ExitCode::SUCCESS,
        Some(e) => ExitCode::from(super::exit_code_for_client(e)),
    }
}

/// Reports a transfer of many files: one JSON document with `--json`, else a summary line on
/// stderr (unless `--quiet`). The exit code is that of the first failure.
pub fn finish_transfer(
    verb: &str,
    report: Vec<serde_json::Value>,
    files: u64,
    bytes: u64,
    started: std::time::Instant,
    output: Output,
    first_failure: Option<ClientError>,
) -> anyhow::Result<ExitCode> {
    let seconds = started.elapsed().as_secs_f64();
    if output.json {
        let count = if verb == "put" {
            "uploaded"
        } else {
            "downloaded"
        };
        outln!(
            "{}",
            serde_json::json!({"files": report, count: files, "bytes": bytes, "seconds": seconds})
        );
    } else if !output.quiet {
        eprintln!(
            "{verb}: {files} file(s), {} in {seconds:.2} s ({}/s), verified",
            human_bytes(bytes),
            human_bytes((bytes as f64 / seconds.max(1e-6)) as u64)
        );
    }
    Ok(exit_for_failures(first_failure.as_ref()))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
