//! The client commands: put, get, ls, stat, mkdir, rm, mv, pwd and shell.
//!
//! Every command connects, logs in, does its work and reports. Server address and user come
//! from flags or FERRY_SERVER / FERRY_USER; the password from FERRY_PASSWORD (for scripts) or
//! a prompt, never from the command line.

mod get;
mod ops;
mod progress;
mod put;
mod shell;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use ferry_client::{Client, ClientError, ConnectOptions, TlsMode, Trust};

pub use get::{GetArgs, get};
pub use ops::{LsArgs, MkdirArgs, MvArgs, PwdArgs, RmArgs, StatArgs, ls, mkdir, mv, pwd, rm, stat};
pub use put::{PutArgs, put};
pub use shell::{ShellArgs, shell};

/// Where to connect and as whom, shared by every client command.
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
    /// User to log in as (default: your local user name).
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

    /// Connects, greets and logs in.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let user = self.user()?;
        let password = match std::env::var("FERRY_PASSWORD") {
            Ok(p) => p,
            Err(_) => {
                if !std::io::stdin().is_terminal() {
                    anyhow::bail!(
                        "no password: set FERRY_PASSWORD, or run from a terminal to be asked"
                    );
                }
                rpassword::prompt_password(format!("{user}@{}'s password: ", self.server))
                    .context("reading the password")?
            }
        };
        let tls = if self.plain {
            TlsMode::Plain
        } else {
            TlsMode::Tls {
                ca: self.ca.clone(),
                known_hosts: ferry_client::tls::default_known_hosts(),
            }
        };
        let mut client = Client::connect(&self.server, &ConnectOptions { tls })
            .await
            .with_context(|| format!("cannot reach ferry server at {}", self.server))?;
        if let Some(Trust::FirstUse(fp)) = client.trust() {
            eprintln!(
                "ferry: trusting {} on first use; its certificate is {fp} (pinned in {})",
                self.server,
                ferry_client::tls::default_known_hosts().display()
            );
        }
        client
            .login(&user, &password)
            .await
            .with_context(|| format!("login as {user} failed"))?;
        Ok(client)
    }
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
    serde_json::json!({
        "ok": false,
        "code": err.remote_code().map(|c| c.as_str()).unwrap_or("local"),
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
        println!(
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
