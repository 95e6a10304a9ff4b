//! `ferry put LOCAL... [REMOTE_DIR]`: upload files, or directories with `-r`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ferry_client::{Client, ClientError, PutItem, PutOptions, PutOutcome};
use ferry_proto::{EntryKind, ErrorCode, Request};

use super::crew::{self, Crew};
use super::progress::Bars;
use super::{Output, Remote, error_json, finish_transfer, remote_join, remote_split};

#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// Local files (directories with -r) to upload. With two or more paths, the last one is
    /// the remote directory to upload into (default: the remote working directory); `put
    /// FILE NAME`, NAME not an existing remote directory, uploads FILE as NAME.
    #[arg(required = true, num_args = 1.., value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Upload directories and everything in them.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Replace remote files that already exist.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Start interrupted uploads over instead of continuing them.
    #[arg(long)]
    pub no_resume: bool,
    /// Hash every file as it is sent, even an unchanged one whose hash was kept from an
    /// earlier upload ($FERRY_CONFIG_DIR/hashes).
    #[arg(long)]
    pub rehash: bool,
    /// Upload over this many connections at once (1-64), the files shared out among them:
    /// faster for many files on a machine with several cores.
    #[arg(short = 'j', long, default_value = "1", value_name = "N", value_parser = crew::parse_connections)]
    pub connections: std::num::NonZeroUsize,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

pub fn put(args: PutArgs) -> anyhow::Result<ExitCode> {
    crew::block_on(args.connections, run(args))
}

async fn run(args: PutArgs) -> anyhow::Result<ExitCode> {
    let (locals, mut remote_dir) = split_target(&args.paths);
    let (mut client, mut crew) = Crew::connect(&args.remote, args.connections).await?;
    let opts = PutOptions {
        overwrite: args.force,
        resume: !args.no_resume,
        hash_cache: (!args.rehash).then(ferry_client::tls::default_hash_cache),
    };
    // `put FILE DEST`, DEST not an existing remote directory: upload FILE as DEST, as cp and
    // scp do. A DEST ending in `/` always means a directory.
    let mut save_as = None;
    if let [local] = &locals[..] {
        if args.paths.len() == 2
            && !remote_dir.ends_with('/')
            && std::fs::metadata(local).is_ok_and(|m| m.is_file())
        {
            let as_file = match client.stat(&remote_dir, None).await {
                Ok(entry) => entry.kind != EntryKind::Dir,
                Err(e) => e.remote_code() == Some(ErrorCode::NotFound),
            };
            if as_file {
                let (dir, name) = remote_split(&remote_dir);
                save_as = Some(name.to_owned());
                remote_dir = dir.to_owned();
            }
        }
    }
    let done = put_paths(
        &mut client,
        &mut crew,
        &locals,
        &remote_dir,
        save_as.as_deref(),
        args.recursive,
        &opts,
        args.output,
    )
    .await;
    crew.quit().await;
    done
}

/// With two or more paths the last is the destination directory.
fn split_target(paths: &[PathBuf]) -> (Vec<PathBuf>, String) {
    if paths.len() >= 2 {
        let (dest, locals) = paths.split_last().expect("two or more");
        (locals.to_vec(), dest.to_string_lossy().into_owned())
    } else {
        (paths.to_vec(), ".".to_owned())
    }
}

/// Uploads `locals` into `remote_dir` (the one local file under the name `save_as`, if
/// given), sharing the files out between `client` and the `crew`; shared with the shell's
/// `put`.
#[allow(clippy::too_many_arguments)]
pub async fn put_paths(
    client: &mut Client,
    crew: &mut Crew,
    locals: &[PathBuf],
    remote_dir: &str,
    save_as: Option<&str>,
    recursive: bool,
    opts: &PutOptions,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut plan = Plan::default();
    for local in locals {
        plan.add(local, remote_dir, save_as, recursive);
    }
    let mut first_failure: Option<ClientError> = None;
    let mut report = Vec::new();
    for (local, err) in plan.local_errors.drain(..) {
        eprintln!("ferry: put {}: {err}", local.display());
        report.push(serde_json::json!({"local": local, "ok": false, "code": "local", "message": err.to_string()}));
        first_failure.get_or_insert(err);
    }
    if !plan.dirs.is_empty() {
        let requests = plan
            .dirs
            .iter()
            .map(|d| Request::Mkdir {
                path: d.clone(),
                parents: true,
            })
            .collect();
        for (dir, res) in plan.dirs.iter().zip(client.call_many(requests).await?) {
            if let Err(e) = res {
                if e.remote_code() != Some(ErrorCode::AlreadyExists) {
                    eprintln!("ferry: mkdir {dir}: {e}");
                    first_failure.get_or_insert(e);
                }
            }
        }
    }
    let total: u64 = plan.sizes.iter().sum();
    let bars = std::sync::Arc::new(Bars::new(
        output.show_progress(),
        crew.wanted() == 0,
        plan.items.len(),
        total,
    ));
    let results = put_shared(client, crew, &plan.items, &plan.sizes, opts, &bars).await;
    bars.finish();
    let (mut files, mut bytes) = (0u64, 0u64);
    for (item, res) in plan.items.iter().zip(results) {
        match res {
            Ok(done) => {
                files += 1;
                bytes += done.size;
                // Only `--json` prints the report: 2,000 unread JSON objects were a visible
                // part of a small-file upload's CPU.
                if !output.json {
                    continue;
                }
                report.push(serde_json::json!({
                    "ok": true, "local": item.local, "remote": done.remote, "size": done.size,
                    "hash": done.hash, "resumed_from": done.resumed_from,
                }));
            }
            Err(e) => {
                let hint = if e.remote_code() == Some(ErrorCode::AlreadyExists) {
                    " (use --force to replace it)"
                } else {
                    ""
                };
                eprintln!("ferry: put {}: {e}{hint}", item.local.display());
                let mut j = error_json(&e);
                j["local"] = serde_json::json!(item.local);
                j["remote"] = serde_json::json!(item.remote);
                report.push(j);
                first_failure.get_or_insert(e);
            }
        }
    }
    finish_transfer("put", report, files, bytes, started, output, first_failure)
}

/// Uploads `items`, shared out between `client` and the crew.
async fn put_shared(
    client: &mut Client,
    crew: &mut Crew,
    items: &[PutItem],
    sizes: &[u64],
    opts: &PutOptions,
    bars: &std::sync::Arc<Bars>,
) -> Vec<Result<PutOutcome, ClientError>> {
    let member = |mut member: Client, share: Vec<PutItem>| {
        let (opts, bars) = (opts.clone(), bars.clone());
        async move {
            let put = member.put_files(&share, &opts, &*bars).await;
            (member, put)
        }
    };
    let own = async |mine: &[PutItem]| (client.put_files(mine, opts, &**bars).await, ());
    crew.share(items, sizes, member, own).await.0.results
}

/// What a `put` will do: remote directories to create, then files to send.
#[derive(Default)]
struct Plan {
    dirs: Vec<String>,
    items: Vec<PutItem>,
    sizes: Vec<u64>,
    local_errors: Vec<(PathBuf, ClientError)>,
}

impl Plan {
    fn add(&mut self, local: &Path, remote_dir: &str, save_as: Option<&str>, recursive: bool) {
        let name = match (save_as, local.file_name()) {
            (Some(n), _) => n.to_owned(),
            (None, Some(n)) => n.to_string_lossy().into_owned(),
            // `.` or `..`: name it after the directory it stands for.
            (None, None) => match std::fs::canonicalize(local) {
                Ok(p) => p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                Err(e) => return self.fail(local, e.to_string()),
            },
        };
        let meta = match std::fs::metadata(local) {
            Ok(m) => m,
            Err(e) => return self.fail(local, e.to_string()),
        };
        let remote = remote_join(remote_dir, &name);
        if meta.is_file() {
            self.items.push(PutItem {
                local: local.to_path_buf(),
                remote,
                listed_size: Some(meta.len()),
            });
            self.sizes.push(meta.len());
        } else if meta.is_dir() {
            if !recursive {
                return self.fail(local, "is a directory (use -r to upload it)".into());
            }
            self.dirs.push(remote.clone());
            self.walk(local, &remote);
        } else {
            self.fail(local, "not a regular file or directory".into());
        }
    }

    fn walk(&mut self, dir: &Path, remote: &str) {
        // Each name taken once: a sort keyed on `DirEntry::file_name` made a copy of two
        // names per comparison.
        let mut entries: Vec<_> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| (e.file_name(), e))
                .collect(),
            Err(e) => return self.fail(dir, e.to_string()),
        };
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, entry) in entries {
            let path = entry.path();
            let name = name.to_string_lossy().into_owned();
            // Following links to directories could loop; links to files are uploaded as files.
            let is_link = entry.file_type().map(|t| t.is_symlink());
            let meta = match is_link {
                // Not a link: stat the name relative to the open directory, which is what
                // following a link would give, and spares the kernel the whole path.
                Ok(false) => entry.metadata(),
                _ => std::fs::metadata(&path),
            };
            let meta = match meta {
                Ok(m) => m,
                Err(e) => {
                    self.fail(&path, e.to_string());
                    continue;
                }
            };
            let is_link = is_link.unwrap_or(false);
            let target = remote_join(remote, &name);
            if meta.is_file() {
                self.items.push(PutItem {
                    local: path,
                    remote: target,
                    listed_size: Some(meta.len()),
                });
                self.sizes.push(meta.len());
            } else if meta.is_dir() && !is_link {
                self.dirs.push(target.clone());
                self.walk(&path, &target);
            } else {
                self.fail(&path, "skipped: not a regular file or directory".into());
            }
        }
    }

    fn fail(&mut self, path: &Path, why: String) {
        self.local_errors
            .push((path.to_path_buf(), ClientError::Local(why)));
    }
}
