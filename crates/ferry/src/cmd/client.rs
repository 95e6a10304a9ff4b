//! The client commands: put, get, ls, stat, mkdir, rm, mv, pwd and shell.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PutArgs {}

pub fn put(_args: PutArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry put is not built yet")
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {}

pub fn get(_args: GetArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry get is not built yet")
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {}

pub fn ls(_args: LsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry ls is not built yet")
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {}

pub fn stat(_args: StatArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry stat is not built yet")
}

#[derive(Debug, clap::Args)]
pub struct MkdirArgs {}

pub fn mkdir(_args: MkdirArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry mkdir is not built yet")
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {}

pub fn rm(_args: RmArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry rm is not built yet")
}

#[derive(Debug, clap::Args)]
pub struct MvArgs {}

pub fn mv(_args: MvArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry mv is not built yet")
}

#[derive(Debug, clap::Args)]
pub struct PwdArgs {}

pub fn pwd(_args: PwdArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry pwd is not built yet")
}

#[derive(Debug, clap::Args)]
pub struct ShellArgs {}

pub fn shell(_args: ShellArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ferry shell is not built yet")
}
