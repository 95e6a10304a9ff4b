//! `ferry udp serve|send|ping`.

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The echo server.
    Serve,
}

pub fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry udp is not built yet")
}
