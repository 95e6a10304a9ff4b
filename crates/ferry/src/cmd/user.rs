//! `ferry user add|passwd|del|list`: user management against the data root.

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List users.
    List,
}

pub fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry user is not built yet")
}
