//! The `ferry` binary: parses the command line, sets up logging and hands off to one module
//! per command under `cmd/`. Everything else lives in the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!` for command output. When stdout is a pipe whose reader has gone (`ferry ls |
/// head`), `println!` panics; this ends the process quietly instead, as `ls` or `cat` would.
/// (SIGPIPE stays ignored: the client sends files with sendfile(2), where a closed socket
/// must be an error, not a signal that kills the process.)
macro_rules! outln {
    () => {
        $crate::cmd::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cmd::print_line(format_args!($($arg)*))
    };
}

mod cmd;

/// A multi-user file server and client with verified, resumable transfers.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (e.g. `info`, `ferry=debug`); also read from FERRY_LOG.
    #[arg(long, global = true, env = "FERRY_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the file server.
    Serve(cmd::serve::Args),
    /// Manage the server's users (runs against the data root, not over the network).
    #[command(subcommand)]
    User(cmd::user::Command),
    /// Upload files or directories.
    Put(cmd::client::PutArgs),
    /// Download files or directories.
    Get(cmd::client::GetArgs),
    /// List a remote directory.
    Ls(cmd::client::LsArgs),
    /// Show metadata (and optionally a hash) of remote paths.
    Stat(cmd::client::StatArgs),
    /// Create remote directories.
    Mkdir(cmd::client::MkdirArgs),
    /// Remove remote files or directories.
    Rm(cmd::client::RmArgs),
    /// Move or rename within your home.
    Mv(cmd::client::MvArgs),
    /// Print the remote working directory (your home's root).
    Pwd(cmd::client::PwdArgs),
    /// An interactive session, like sftp's prompt.
    Shell(cmd::client::ShellArgs),
    /// Log out: end the session token kept for a server and user, on the server and here (see
    /// `--user` in any client command's help); the next command asks for the password again.
    Logout(cmd::client::LogoutArgs),
    /// Memory-to-memory throughput against a server, like iperf3.
    Bench(cmd::bench::Args),
    /// The course's UDP echo server, its client, and a loss/RTT ping.
    #[command(subcommand)]
    Udp(cmd::udp::Command),
    /// Demonstrations of how the protocol works.
    #[command(subcommand)]
    Demo(cmd::demo::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(args),
        Command::User(c) => cmd::user::run(c),
        Command::Put(a) => cmd::client::put(a),
        Command::Get(a) => cmd::client::get(a),
        Command::Ls(a) => cmd::client::ls(a),
        Command::Stat(a) => cmd::client::stat(a),
        Command::Mkdir(a) => cmd::client::mkdir(a),
        Command::Rm(a) => cmd::client::rm(a),
        Command::Mv(a) => cmd::client::mv(a),
        Command::Pwd(a) => cmd::client::pwd(a),
        Command::Shell(a) => cmd::client::shell(a),
        Command::Logout(a) => cmd::client::logout(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Udp(c) => cmd::udp::run(c),
        Command::Demo(c) => cmd::demo::run(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // A closed stdout (`ferry ls | head`) is not a failure worth reporting.
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("ferry: {err:#}");
            ExitCode::from(cmd::exit_code_for(&err))
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    // A broken pipe inside a client error is the server's socket (the server closed it mid
    // upload), a failure to report: taking it for stdout made such a `put` exit 0 silently.
    if err.chain().any(|e| e.is::<ferry_client::ClientError>()) {
        return false;
    }
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
