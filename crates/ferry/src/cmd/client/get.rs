//! `ferry get REMOTE... [LOCAL_DIR]`: download files, or directories with `-r`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ferry_client::{
    Client, ClientError, GetItem, GetOptions, LS_PAGE, PARTIAL_META_SUFFIX, Transferred,
};
use ferry_proto::{EntryKind, HashAlgo, Reply, Request};

use super::crew::{self, Crew};
use super::progress::Bars;
use super::{Output, Remote, error_json, finish_transfer, remote_basename, remote_join};

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Remote files (directories with -r) to download. With two or more paths, the last one
    /// is the local directory to download into (default: the current directory); `get FILE
    /// NAME`, NAME not an existing directory, saves FILE as NAME.
    #[arg(required = true, num_args = 1.., value_name = "PATH")]
    pub paths: Vec<String>,
    /// Download directories and everything in them.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Replace local files that already exist.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Start interrupted downloads over instead of continuing them.
    #[arg(long)]
    pub no_resume: bool,
    /// Verify with this hash algorithm instead of the server's hash of record (blake3).
    #[arg(long, value_parser = parse_algo)]
    pub algo: Option<HashAlgo>,
    /// Download over this many connections at once (1-64), the files shared out among
    /// them: faster for many files on a machine with several cores.
    #[arg(short = 'j', long, default_value = "1", value_name = "N", value_parser = crew::parse_connections)]
    pub connections: std::num::NonZeroUsize,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

/// `name` if it is one plain path component: not empty, `.` or `..`, and free of separators
/// and NUL, so joining it to a local directory stays inside that directory.
pub fn safe_local_name(name: &str) -> Option<&str> {
    let plain =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    plain.then_some(name)
}

pub fn parse_algo(s: &str) -> Result<HashAlgo, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// What a local directory held before this download wrote to it, read once, so that each
/// file's "is it there already?" and "is a partial-download record beside it?" are lookups
/// here, not a failing statx and a failing open per file.
#[derive(Default)]
struct Present {
    /// Empty for a directory this run just made.
    names: HashSet<OsString>,
}

impl Present {
    /// Makes `local`, the target of a remote directory, and reads what is in it: nothing
    /// when mkdir made it just now, so only directories that were already there are read.
    fn make_dir(local: &Path) -> std::io::Result<Present> {
        match std::fs::create_dir(local) {
            Ok(()) => return Ok(Present::default()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => std::fs::create_dir_all(local)?,
        }
        let mut names = HashSet::new();
        for entry in std::fs::read_dir(local)? {
            names.insert(entry?.file_name());
        }
        Ok(Present { names })
    }

    /// The names in `dir`, unless it holds more than `limit`: then `None`, and the caller
    /// looks file by file, which costs less than reading a huge directory for a few files.
    fn read_at_most(dir: &Path, limit: usize) -> Option<Present> {
        let mut names = HashSet::new();
        for entry in std::fs::read_dir(dir).ok()? {
            if names.len() == limit {
                return None;
            }
            names.insert(entry.ok()?.file_name());
        }
        Some(Present { names })
    }

    fn has(&self, name: &str) -> bool {
        !self.names.is_empty() && self.names.contains(std::ffi::OsStr::new(name))
    }

    fn has_partial_record(&self, name: &str) -> bool {
        // No name to build for a directory just made.
        !self.names.is_empty() && self.has(&format!("{name}{PARTIAL_META_SUFFIX}"))
    }
}

/// A remote directory being listed into a local one, a page at a time.
struct Listing {
    remote: String,
    local: PathBuf,
    /// What the local directory held when it was made or found; `None` if it cannot be read
    /// (each file's name is then looked at on its own).
    present: Option<Present>,
    /// The last name listed so far.
    after: Option<String>,
}

impl Listing {
    /// Makes (or finds) the local directory. On failure, what to report it under, and why.
    fn start(remote: String, local: PathBuf) -> Result<Self, (String, ClientError)> {
        match Present::make_dir(&local) {
            Ok(p) => Ok(Listing {
                remote,
                local,
                present: Some(p),
                after: None,
            }),
            Err(e) => {
                let what = local.display().to_string();
                Err((what.clone(), ClientError::Local(format!("{what}: {e}"))))
            }
        }
    }

    fn next_page(&self) -> Request {
        Request::Ls {
            path: Some(self.remote.clone()),
            after: self.after.clone(),
            limit: Some(ls_page()),
        }
    }
}

/// Entries per listing page: [`LS_PAGE`], or `FERRY_LS_PAGE` (a smaller page costs the
/// server more passes over a large directory; the tests use it to cross page boundaries
/// without 50,000 files).
fn ls_page() -> u64 {
    std::env::var("FERRY_LS_PAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(LS_PAGE)
}

fn exists_error(item: &GetItem) -> ClientError {
    ClientError::Local(format!(
        "{} exists (use --force to replace it)",
        item.local.display()
    ))
}

/// From what size a download is hashed on a thread of its own: with a crew, only files large
/// enough that one connection carries it alone for a while (the connections themselves keep
/// the cores busy; see [`GetOptions::HASH_THREAD_MIN`]).
fn hash_thread_min(connections: std::num::NonZeroUsize) -> u64 {
    if connections.get() == 1 {
        GetOptions::HASH_THREAD_MIN
    } else {
        64 << 20
    }
}

/// From this many named files on, `get` reads the local directory once instead of looking
/// for each file (two system calls each); below it, reading could cost more than it saves.
const NAMED_FILES_TO_READ_DIR: usize = 8;

pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    crew::block_on(args.connections, run(args))
}

async fn run(args: GetArgs) -> anyhow::Result<ExitCode> {
    let (remotes, mut local_dir) = if args.paths.len() >= 2 {
        let (dest, rest) = args.paths.split_last().expect("two or more");
        (rest.to_vec(), PathBuf::from(dest))
    } else {
        (args.paths.clone(), PathBuf::from("."))
    };
    // `get FILE DEST`, DEST not an existing local directory: save FILE as DEST, as cp and
    // scp do. A DEST ending in `/` always means a directory.
    let mut save_as = None;
    if remotes.len() == 1
        && args.paths.len() == 2
        && !args.recursive
        && !local_dir.is_dir()
        && !local_dir.as_os_str().to_string_lossy().ends_with('/')
    {
        if let Some(name) = local_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        {
            save_as = Some(name);
            local_dir = match local_dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
        }
    }
    let (mut client, mut crew) = Crew::connect(&args.remote, args.connections).await?;
    let opts = GetOptions {
        resume: !args.no_resume,
        overwrite: args.force,
        algo: args.algo,
        hash_thread_min: hash_thread_min(args.connections),
    };
    let done = get_paths(
        &mut client,
        &mut crew,
        &remotes,
        &local_dir,
        save_as.as_deref(),
        args.recursive,
        &opts,
        args.output,
    )
    .await;
    crew.quit().await;
    done
}

/// Downloads `remotes` into `local_dir` (a single file under the name `save_as`, if given),
/// replacing local files only with `opts.overwrite`, sharing the files out between `client`
/// and the `crew`; shared with the shell's `get`.
#[allow(clippy::too_many_arguments)]
pub async fn get_paths(
    client: &mut Client,
    crew: &mut Crew,
    remotes: &[String],
    local_dir: &Path,
    save_as: Option<&str>,
    recursive: bool,
    opts: &GetOptions,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut first_failure: Option<ClientError> = None;
    let mut report = Vec::new();
    let mut fail = |what: &str, e: ClientError, report: &mut Vec<serde_json::Value>| {
        eprintln!("ferry: get {what}: {e}");
        let mut j = error_json(&e);
        j["remote"] = serde_json::json!(what);
        report.push(j);
        first_failure.get_or_insert(e);
    };
    if !local_dir.is_dir() {
        fail(
            &local_dir.display().to_string(),
            ClientError::Local(format!("{}: no such local directory", local_dir.display())),
            &mut report,
        );
        return finish_transfer("get", report, 0, 0, started, output, first_failure);
    }

    // What each top-level path is, in one round trip.
    let stats = client
        .call_many(
            remotes
                .iter()
                .map(|p| Request::Stat {
                    path: p.clone(),
                    algo: None,
                })
                .collect(),
        )
        .await?;
    let mut items = Vec::new();
    let mut sizes = Vec::new();
    // Per item: whether its local name is taken, when a directory listing already says;
    // `None` looks on disk.
    let mut taken: Vec<Option<bool>> = Vec::new();
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for (remote, stat) in remotes.iter().zip(stats) {
        // Named after the path the server resolved (`docs/..` is the home's root, not `..`).
        let name = match &stat {
            Ok(Reply::Stat(e)) => remote_basename(&e.name).to_owned(),
            _ => remote_basename(remote).to_owned(),
        };
        let Some(name) = safe_local_name(&name) else {
            fail(
                remote,
                ClientError::Local(format!(
                    "{remote}: has no name to save it under here; get what is inside it instead"
                )),
                &mut report,
            );
            continue;
        };
        let local = local_dir.join(save_as.unwrap_or(name));
        match stat {
            Ok(Reply::Stat(e)) if e.kind == EntryKind::Dir => {
                if recursive {
                    dirs.push((remote.clone(), local));
                } else {
                    fail(
                        remote,
                        ClientError::Local(format!("{remote}: is a directory (use -r)")),
                        &mut report,
                    );
                }
            }
            Ok(Reply::Stat(e)) => {
                items.push(GetItem {
                    remote: remote.clone(),
                    local,
                    no_partial_record: false,
                });
                sizes.push(e.size);
                taken.push(None);
            }
            Ok(_) => fail(
                remote,
                ClientError::Unexpected("stat answered with another op".into()),
                &mut report,
            ),
            Err(e) => fail(remote, e, &mut report),
        }
    }
    // Many named files, all going straight into `local_dir`: read it once, as for a tree,
    // rather than look twice for each file, unless it is far larger than the download.
    if items.len() >= NAMED_FILES_TO_READ_DIR {
        if let Some(present) = Present::read_at_most(local_dir, 4 * items.len() + 64) {
            for (item, taken) in items.iter_mut().zip(taken.iter_mut()) {
                if let Some(name) = item.local.file_name().and_then(|n| n.to_str()) {
                    *taken = Some(present.has(name));
                    item.no_partial_record = !present.has_partial_record(name);
                }
            }
        }
    }
    // Never overwrite silently. (A file that appears after this check is not replaced
    // either: without `force` the download takes its name only if it is still free.)
    let mut pending = Vec::new();
    let mut pending_sizes = Vec::new();
    for ((item, size), taken) in items.into_iter().zip(sizes).zip(taken) {
        if !opts.overwrite && taken.unwrap_or_else(|| item.local.exists()) {
            fail(&item.remote, exists_error(&item), &mut report);
        } else {
            pending.push(item);
            pending_sizes.push(size);
        }
    }
    // Remote directories are listed a page at a time (a directory of any size fits). Each
    // round pipelines the gets of what the last round listed with the next page of every
    // listing still open and the first page of each directory found. (Small first pages,
    // to start the gets sooner, measured slower: 2,000 files in pages of 256 then 2,048 took
    // ~70 ms where one page took ~53, under strace; see docs/BENCHMARKS.md.)
    let mut open: Vec<Listing> = Vec::new();
    for (remote, local) in dirs {
        match Listing::start(remote, local) {
            Ok(l) => open.push(l),
            Err((what, e)) => fail(&what, e, &mut report),
        }
    }
    let bars = std::sync::Arc::new(Bars::growing(output.show_progress(), crew.wanted() == 0));
    bars.grow(pending.len(), pending_sizes.iter().sum());
    let (mut files, mut bytes) = (0u64, 0u64);
    while !pending.is_empty() || !open.is_empty() {
        let pages = open.iter().map(Listing::next_page).collect();
        // Should the command's own connection fail, every listing still open is reported
        // interrupted with its page, and the loop ends.
        let (got, listed) =
            get_shared(client, crew, &pending, &pending_sizes, pages, opts, &bars).await;
        for (item, res) in pending.iter().zip(got.results) {
            match res {
                Ok(done) => {
                    files += 1;
                    bytes += done.size;
                    // Only `--json` prints the report: 2,000 unread JSON objects were a
                    // visible part of a small-file download's CPU.
                    if !output.json {
                        continue;
                    }
                    report.push(serde_json::json!({
                        "ok": true, "remote": done.remote, "local": done.local,
                        "size": done.size, "hash": done.hash,
                        "resumed_from": done.resumed_from,
                    }));
                }
                Err(e) => fail(&item.remote, e, &mut report),
            }
        }
        pending.clear();
        pending_sizes.clear();
        let mut still_open = Vec::new();
        for (mut listing, page) in open.into_iter().zip(listed) {
            let (entries, more) = match page {
                Ok(Reply::Ls { entries, more, .. }) => (entries, more),
                Ok(_) => {
                    let e = ClientError::Unexpected("ls answered with another op".into());
                    fail(&listing.remote, e, &mut report);
                    continue;
                }
                Err(e) => {
                    fail(&listing.remote, e, &mut report);
                    continue;
                }
            };
            let last = entries.last().map(|e| e.name.clone());
            for e in entries {
                // A listing comes from the server: a name that could climb out of the
                // target directory is refused, whatever the server meant by it.
                let Some(name) = safe_local_name(&e.name) else {
                    let e = ClientError::Unexpected(format!(
                        "server listed an unsafe name {:?} in {}; skipped",
                        e.name, listing.remote
                    ));
                    fail(&listing.remote, e, &mut report);
                    continue;
                };
                let r = remote_join(&listing.remote, name);
                let l = listing.local.join(name);
                match e.kind {
                    EntryKind::Dir => match Listing::start(r, l) {
                        Ok(sub) => still_open.push(sub),
                        Err((what, e)) => fail(&what, e, &mut report),
                    },
                    EntryKind::File => {
                        let present = listing.present.as_ref();
                        let item = GetItem {
                            remote: r,
                            local: l,
                            no_partial_record: present.is_some_and(|p| !p.has_partial_record(name)),
                        };
                        let taken = present.map(|p| p.has(name));
                        if !opts.overwrite && taken.unwrap_or_else(|| item.local.exists()) {
                            fail(&item.remote, exists_error(&item), &mut report);
                        } else {
                            pending.push(item);
                            pending_sizes.push(e.size);
                        }
                    }
                    _ => {}
                }
            }
            // An old server ignores `limit` and says nothing of `more`: its one page is all.
            if let (true, Some(last)) = (more, last) {
                listing.after = Some(last);
                still_open.push(listing);
            }
        }
        open = still_open;
        bars.grow(pending.len(), pending_sizes.iter().sum());
    }
    bars.finish();
    finish_transfer("get", report, files, bytes, started, output, first_failure)
}

/// One round of downloads, `then` pipelined behind them on `client` (see
/// [`Client::get_files_then`]), the files shared out between `client` and the crew.
async fn get_shared(
    client: &mut Client,
    crew: &mut Crew,
    items: &[GetItem],
    sizes: &[u64],
    then: Vec<Request>,
    opts: &GetOptions,
    bars: &std::sync::Arc<Bars>,
) -> (
    Transferred<ferry_client::GetOutcome>,
    Vec<Result<Reply, ClientError>>,
) {
    let member = |mut member: Client, share: Vec<GetItem>| {
        let (opts, bars) = (opts.clone(), bars.clone());
        async move {
            let got = member.get_files(&share, &opts, &*bars).await;
            (member, got)
        }
    };
    let own = async |mine: &[GetItem]| client.get_files_then(mine, then, opts, &**bars).await;
    crew.share(items, sizes, member, own).await
}
