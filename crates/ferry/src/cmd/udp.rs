//! `ferry udp serve|send|ping`: the course's UDP echo server and client, and a ping over the
//! echo service. Argument parsing and printing only; the work is in `ferry_udp`, and
//! `docs/UDP.md` documents the probe format and the statistics.
//!
//! Output contract (tests rely on it): `serve` prints `ferry udp listening on ADDR` on stdout
//! once bound; `send` prints each reply followed by a newline on stdout; `ping` prints replies and
//! the summary (or one JSON object with `--json`) on stdout, notices about ignored datagrams
//! on stderr. No reply at all exits with code 3 ("network").

use std::future::Future;
use std::io::{self, BufRead, IsTerminal, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_udp::ping::{Observation, PingConfig};
use ferry_udp::stats::{Summary, as_millis};
use ferry_udp::{Client, SendConfig, SendError, ServerConfig};
use serde::Serialize;

use super::exit;

const DEFAULT_ADDR: &str = "127.0.0.1:9696";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer every datagram to its sender (the course's echo server).
    Serve(ServeArgs),
    /// Send TEXT, or each line of stdin, and print each reply (the course's client).
    Send(SendArgs),
    /// Measure loss, duplicates, reordering, RTT and jitter against `ferry udp serve`.
    Ping(PingArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (`[::]:PORT` serves IPv4 and IPv6; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    listen: String,
    /// Upper-case ASCII letters in replies, like the course's server (breaks `ferry udp ping`).
    #[arg(long)]
    upper: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Server address (HOST:PORT, or HOST for port 9696).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    to: String,
    /// Milliseconds to wait for each reply before resending.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Resends after a silent timeout before giving up with exit code 3.
    #[arg(long, value_name = "N", default_value_t = 2)]
    retries: u32,
    /// The message; without it each line of stdin is sent (with a `>>> ` prompt on a terminal).
    text: Option<String>,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// Echo server address (HOST:PORT, or HOST for port 9696); it must echo unchanged.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    to: String,
    /// Number of probes.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Milliseconds between probes (0 sends back to back).
    #[arg(long, short = 'i', value_name = "MS", default_value_t = 1000)]
    interval: u64,
    /// Datagram size of each probe, 32-byte header included.
    #[arg(long, short = 's', value_name = "BYTES", default_value_t = 64,
          value_parser = clap::value_parser!(u64)
              .range(ferry_udp::probe::HEADER_LEN as u64..=ferry_udp::MAX_DATAGRAM as u64))]
    size: u64,
    /// Milliseconds a probe may wait for its echo; also the wait after the last probe.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Print one JSON object with the summary instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Serve(args) => serve(args),
        Command::Send(args) => send(args),
        Command::Ping(args) => ping(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let addr = resolve(&args.listen)?;
    runtime()?.block_on(async {
        // Handlers go in before the address is printed, so a signal sent as soon as a test
        // reads the line is handled rather than killing the process.
        let shutdown = shutdown_signal().context("installing signal handlers")?;
        let socket = ferry_udp::bind(addr).with_context(|| format!("binding udp {addr}"))?;
        let local = socket.local_addr()?;
        // The server keeps serving even if nobody reads stdout, hence no `?`.
        let _ = writeln!(io::stdout(), "ferry udp listening on {local}");
        tracing::info!(%local, upper = args.upper, "udp echo server listening");
        let config = ServerConfig { upper: args.upper };
        let stats = ferry_udp::server::run(socket, config, shutdown).await?;
        tracing::info!(
            datagrams = stats.datagrams,
            bytes = stats.bytes,
            send_errors = stats.send_errors,
            "udp echo server stopped"
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let peer = resolve(&args.to)?;
    let config = SendConfig {
        timeout: Duration::from_millis(args.timeout),
        retries: args.retries,
    };
    let client = Client::connect(peer, config)?;
    let mut out = io::stdout().lock();
    if let Some(text) = args.text {
        return exchange(&client, text.as_bytes(), &mut out);
    }
    let stdin = io::stdin();
    let interactive = stdin.is_terminal();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        if interactive {
            out.write_all(b">>> ")?;
            out.flush()?;
        }
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            if interactive {
                out.write_all(b"\n")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        // The line terminator is not part of the message; everything else is sent as typed.
        if line.ends_with(b"\n") {
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
        }
        let code = exchange(&client, &line, &mut out)?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
}

/// One request and its reply on `out`; silence is exit code 3 after a message on stderr.
fn exchange(client: &Client, message: &[u8], out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match client.request(message) {
        Ok(reply) => {
            out.write_all(&reply)?;
            out.write_all(b"\n")?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ SendError::NoReply { .. }) => {
            eprintln!("ferry: {err}");
            Ok(ExitCode::from(exit::NETWORK))
        }
        Err(err) => Err(err.into()),
    }
}

/// `--json` output: the run's parameters beside the summary.
#[derive(Serialize)]
struct JsonReport<'a> {
    target: SocketAddr,
    session: String,
    count: u64,
    size: usize,
    interval_ms: u64,
    timeout_ms: u64,
    interrupted: bool,
    elapsed_ms: f64,
    #[serde(flatten)]
    summary: &'a Summary,
}

fn ping(args: PingArgs) -> anyhow::Result<ExitCode> {
    let target = resolve(&args.to)?;
    let config = PingConfig::new(
        args.count,
        Duration::from_millis(args.interval),
        args.size as usize,
        Duration::from_millis(args.timeout),
    );
    let json = args.json;
    runtime()?.block_on(async {
        let stop = shutdown_signal().context("installing signal handlers")?;
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = ferry_udp::bind(local).context("binding the ping socket")?;
        if !json {
            writeln!(
                io::stdout(),
                "PING {target} (udp): {} probes of {} bytes every {} ms, timeout {} ms, session {:016x}",
                config.count, config.size, args.interval, args.timeout, config.session
            )?;
        }
        let mut ignored = 0;
        let outcome = ferry_udp::ping::run(&socket, target, &config, stop, |seen| {
            print_observation(&seen, !json, &mut ignored);
        })
        .await?;
        let summary = outcome.summary(config.timeout);
        if json {
            let report = JsonReport {
                target,
                session: format!("{:016x}", config.session),
                count: config.count,
                size: config.size,
                interval_ms: args.interval,
                timeout_ms: args.timeout,
                interrupted: outcome.interrupted,
                elapsed_ms: as_millis(outcome.end),
                summary: &summary,
            };
            writeln!(io::stdout(), "{}", serde_json::to_string(&report)?)?;
        } else {
            print_summary(target, &summary)?;
        }
        if summary.upper_cased > 0 {
            eprintln!(
                "ferry: {} of the echoes came back upper-cased: run the server without --upper",
                summary.upper_cased
            );
        }
        if summary.sent > 0 && summary.received == 0 {
            eprintln!("ferry: no valid replies from {target}");
            return Ok(ExitCode::from(exit::NETWORK));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Ignored datagrams noted on stderr before the rest are only counted, so a flood of junk
/// does not flood the terminal.
const MAX_NOTICES: u64 = 10;

/// Reply lines go to stdout in text mode only; ignored datagrams are noted on stderr in both
/// modes, which keeps `--json` stdout a single object. A closed stdout is not an error here:
/// the summary's write reports it.
fn print_observation(seen: &Observation<'_>, replies: bool, ignored: &mut u64) {
    if matches!(
        seen,
        Observation::Foreign { .. } | Observation::Malformed { .. }
    ) {
        *ignored += 1;
        if *ignored > MAX_NOTICES {
            if *ignored == MAX_NOTICES + 1 {
                eprintln!("(further ignored datagrams are counted, not shown)");
            }
            return;
        }
    }
    match seen {
        Observation::Sent { .. } => {}
        Observation::Reply { .. } if !replies => {}
        Observation::Reply {
            seq,
            from,
            len,
            rtt,
            duplicate,
            late,
        } => {
            let note = match (duplicate, late) {
                (true, _) => " (DUP!)",
                (false, true) => " (late: counted as lost)",
                (false, false) => "",
            };
            let _ = writeln!(
                io::stdout(),
                "{len} bytes from {from}: seq={seq} rtt={:.3} ms{note}",
                as_millis(*rtt)
            );
        }
        Observation::Foreign { from, len, session } => {
            eprintln!(
                "ignored {len}-byte probe of another run (session {session:016x}) from {from}"
            );
        }
        Observation::Malformed { from, len, why } => {
            eprintln!("ignored malformed {len}-byte datagram from {from}: {why}");
        }
    }
}

fn print_summary(target: SocketAddr, s: &Summary) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "--- {target} udp ping statistics ---")?;
    writeln!(
        out,
        "{} sent, {} received, {:.1}% loss, {} duplicates, {} reordered, {} late, {} pending, \
         {} foreign, {} malformed",
        s.sent,
        s.received,
        s.loss_percent,
        s.duplicates,
        s.reordered,
        s.late,
        s.pending,
        s.foreign,
        s.malformed
    )?;
    if let Some(rtt) = &s.rtt {
        writeln!(
            out,
            "rtt min/avg/max/p50/p99 = {:.3}/{:.3}/{:.3}/{:.3}/{:.3} ms, jitter {:.3} ms \
             (RFC 3550 estimator {:.3} ms)",
            as_millis(rtt.min),
            as_millis(rtt.avg),
            as_millis(rtt.max),
            as_millis(rtt.p50),
            as_millis(rtt.p99),
            as_millis(rtt.jitter),
            as_millis(rtt.jitter_rfc3550)
        )?;
    }
    Ok(())
}

/// `HOST:PORT`, or a bare `HOST` on the default port; the first address it resolves to.
fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let mut found = match addr.to_socket_addrs() {
        Ok(found) => found,
        Err(_) => (addr, ferry_udp::DEFAULT_PORT)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve address {addr:?}"))?,
    };
    found
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One socket, one task: a single thread is all either command needs.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
