//! The one-request commands: ls, stat, mkdir, rm, mv, pwd.

use std::process::ExitCode;

use ferry_client::Client;
use ferry_proto::{Entry, EntryKind, HashAlgo};

use super::get::parse_algo;
use super::{Output, Remote, block_on, error_json, exit_for_failures};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Directory (or file) to list; default the remote working directory.
    pub path: Option<String>,
    /// Long format: kind, size, modification time, name, hash of record.
    #[arg(short = 'l', long)]
    pub long: bool,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    #[arg(required = true, num_args = 1..)]
    pub paths: Vec<String>,
    /// Also print the file's hash in this algorithm (blake3, sha256, md5).
    #[arg(long, value_parser = parse_algo)]
    pub algo: Option<HashAlgo>,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct MkdirArgs {
    #[arg(required = true, num_args = 1..)]
    pub paths: Vec<String>,
    /// Create missing parents; an existing directory is fine.
    #[arg(short = 'p', long)]
    pub parents: bool,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[arg(required = true, num_args = 1..)]
    pub paths: Vec<String>,
    /// Remove directories and everything in them.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct MvArgs {
    pub from: String,
    pub to: String,
    /// Replace the destination if it exists.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct PwdArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

pub fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    block_on(async {
        let mut c = args.remote.connect().await?;
        run_ls(&mut c, args.path.as_deref(), args.long, args.output).await
    })
}

pub async fn run_ls(
    c: &mut Client,
    path: Option<&str>,
    long: bool,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let (path, entries) = c.ls(path).await?;
    if output.json {
        outln!("{}", serde_json::json!({"path": path, "entries": entries}));
    } else {
        for e in &entries {
            outln!("{}", format_entry(e, long));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn format_entry(e: &Entry, long: bool) -> String {
    let suffix = if e.kind == EntryKind::Dir { "/" } else { "" };
    if !long {
        return format!("{}{suffix}", e.name);
    }
    let kind = match e.kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Other => '?',
    };
    let hash = e.hash.as_ref().map(|h| h.to_string()).unwrap_or_default();
    format!(
        "{kind} {:>12}  {}  {}{suffix}  {hash}",
        e.size,
        format_time(e.mtime),
        e.name
    )
    .trim_end()
    .to_owned()
}

/// Unix seconds as `YYYY-MM-DD HH:MM` UTC (days-to-civil, after Howard Hinnant).
pub fn format_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

pub fn stat(args: StatArgs) -> anyhow::Result<ExitCode> {
    block_on(async {
        let mut c = args.remote.connect().await?;
        let mut first = None;
        let mut out = Vec::new();
        for p in &args.paths {
            match c.stat(p, args.algo).await {
                Ok(e) => {
                    if !args.output.json {
                        outln!("{}", format_entry(&e, true));
                    }
                    out.push(serde_json::to_value(&e)?);
                }
                Err(err) => {
                    eprintln!("ferry: stat {p}: {err}");
                    out.push(error_json(&err));
                    first.get_or_insert(err);
                }
            }
        }
        if args.output.json {
            outln!("{}", serde_json::Value::Array(out));
        }
        Ok(exit_for_failures(first.as_ref()))
    })
}

/// Runs one simple command per path, reporting each result.
async fn each_path(
    remote: &Remote,
    output: Output,
    paths: &[String],
    verb: &str,
    mut op: impl AsyncFnMut(&mut Client, &str) -> ferry_client::Result<String>,
) -> anyhow::Result<ExitCode> {
    let mut c = remote.connect().await?;
    let mut first = None;
    let mut out = Vec::new();
    for p in paths {
        match op(&mut c, p).await {
            Ok(done) => out.push(serde_json::json!({"ok": true, "path": done})),
            Err(err) => {
                eprintln!("ferry: {verb} {p}: {err}");
                out.push(error_json(&err));
                first.get_or_insert(err);
            }
        }
    }
    if output.json {
        outln!("{}", serde_json::Value::Array(out));
    }
    Ok(exit_for_failures(first.as_ref()))
}

pub fn mkdir(args: MkdirArgs) -> anyhow::Result<ExitCode> {
    let parents = args.parents;
    block_on(each_path(
        &args.remote,
        args.output,
        &args.paths,
        "mkdir",
        async |c, p| c.mkdir(p, parents).await,
    ))
}

pub fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let recursive = args.recursive;
    block_on(each_path(
        &args.remote,
        args.output,
        &args.paths,
        "rm",
        async |c, p| c.rm(p, recursive).await,
    ))
}

pub fn mv(args: MvArgs) -> anyhow::Result<ExitCode> {
    block_on(async {
        let mut c = args.remote.connect().await?;
        match c.mv(&args.from, &args.to, args.force).await {
            Ok((from, to)) => {
                if args.output.json {
                    outln!(
                        "{}",
                        serde_json::json!({"ok": true, "from": from, "to": to})
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                eprintln!("ferry: mv {} {}: {err}", args.from, args.to);
                if args.output.json {
                    outln!("{}", error_json(&err));
                }
                Ok(exit_for_failures(Some(&err)))
            }
        }
    })
}

pub fn pwd(args: PwdArgs) -> anyhow::Result<ExitCode> {
    block_on(async {
        let mut c = args.remote.connect().await?;
        let cwd = c.pwd().await?;
        if args.output.json {
            outln!("{}", serde_json::json!({"cwd": cwd}));
        } else {
            outln!("{cwd}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00");
        assert_eq!(format_time(1_795_000_000), "2026-11-18 11:06");
    }
}
