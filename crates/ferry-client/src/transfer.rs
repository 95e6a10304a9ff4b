//! Verified, resumable, pipelined uploads and downloads.
//!
//! Both directions pipeline: a writer sends every request (and every upload body) while a
//! reader takes the replies in order, so many small files cost no round trip each. The writer
//! tells the reader, through a channel, what each reply will be for.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_proto::{Digest, ErrorCode, HashAlgo, Hasher, Reply, Request, RequestFrame};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::client::{Client, check_id, read_results, unexpected};
use crate::error::{ClientError, Result};
use crate::hash_cache::{FileVersion, HashCache};
use crate::progress::Progress;

/// Files at least this large are asked about (`resume`) before upload, and read with
/// sendfile instead of into memory. When the server has `hash-after-body`, they are hashed
/// on a thread of their own while their body is sent, and the hash follows the body in a
/// `put_hash` frame; smaller files are read once into memory for both.
pub const LARGE_FILE: u64 = 1 << 20;

/// How long an upload answered `busy` (another upload to the same path in progress) is tried
/// again before it is reported.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(5);

/// Suffix of a download in progress, beside its final name.
pub const PARTIAL_SUFFIX: &str = ".ferry-part";
/// Suffix of the record that says which remote file a partial download belongs to.
pub const PARTIAL_META_SUFFIX: &str = ".ferry-part.json";

#[derive(Debug, Clone)]
pub struct PutItem {
    pub local: PathBuf,
    /// Remote path of the file (not of its directory).
    pub remote: String,
    /// The size the caller saw when it listed the file, if it did. A file listed smaller
    /// than [`LARGE_FILE`] is not looked at again before its upload, which opens and stats it
    /// anyway (a stat per file saved); should it have grown since, it is still sent whole,
    /// as a small file.
    pub listed_size: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub overwrite: bool,
    /// Continue interrupted uploads of the same file (same path and size, and same hash or,
    /// when the hash is sent after the body, same modification time).
    pub resume: bool,
    /// Where the hashes of uploaded large files are kept ([`HashCache`]), so that an
    /// unchanged file is not hashed again; `None` hashes every file.
    pub hash_cache: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PutOutcome {
    pub remote: String,
    pub size: u64,
    pub hash: Digest,
    /// Bytes the server already held from an interrupted upload.
    pub resumed_from: u64,
}

#[derive(Debug, Clone)]
pub struct GetItem {
    pub remote: String,
    /// Local path of the file (not of its directory).
    pub local: PathBuf,
    /// The caller read the local directory just before and saw no partial-download record
    /// beside `local`, so none is looked for: with many small files that failed lookup was
    /// one system call per file. `false` looks, as always.
    pub no_partial_record: bool,
}

#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Continue an interrupted download from its local partial.
    pub resume: bool,
    /// Replace a local file already under the final name. Without it the verified download
    /// takes its name only if that is still free when it is renamed into place, so a file
    /// that appeared since the caller checked is not clobbered either.
    pub overwrite: bool,
    /// Ask the server for the hash in this algorithm instead of its hash of record.
    pub algo: Option<HashAlgo>,
    /// Files from this size on are hashed on a thread of their own while they are received
    /// (see [`GetOptions::HASH_THREAD_MIN`]); smaller ones as they are written.
    pub hash_thread_min: u64,
}

impl GetOptions {
    /// A thread per file pays off from about here when one connection carries the files: a
    /// single 8 MiB download took 16.5 ms with it against 18.3 ms without. When several
    /// connections already keep every core busy, a thread and its buffers per file cost more
    /// than they overlap (50 files of 4 MiB over 4 connections: 0.14-0.18 s and 12 MiB of
    /// client memory without, 0.19-0.22 s and 24 MiB with), so they raise this.
    pub const HASH_THREAD_MIN: u64 = LARGE_FILE;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GetOutcome {
    pub remote: String,
    pub local: PathBuf,
    pub size: u64,
    pub hash: Digest,
    pub resumed_from: u64,
}

/// What a batch of uploads or downloads came to.
#[derive(Debug)]
pub struct Transferred<T> {
    /// One result per item, in order. The items a failed connection left unfinished carry
    /// [`ClientError::Interrupted`]; what of a large one arrived is kept for a resume.
    pub results: Vec<Result<T>>,
    /// Why the connection failed, if it did: the client cannot be used again
    /// ([`Client::is_broken`]).
    pub broken: Option<ClientError>,
}

/// Hashes a local file with blake3, reading it in large pieces.
pub fn hash_file(path: &Path, algo: HashAlgo) -> Result<Digest> {
    let mut file = File::open(path).map_err(|e| ClientError::local_file(path, e))?;
    let mut hasher = Hasher::new(algo);
    let mut buf = vec![0u8; crate::conn::IO_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ClientError::local_file(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize())
}

/// What the writer sent for one item, so the reader knows what the next reply is for.
enum PutSent {
    Request {
        index: usize,
        id: u64,
        offset: u64,
        /// Why what was sent is not the file (see [`Sent::spoiled`]).
        spoiled: Option<ClientError>,
    },
    LocalError {
        index: usize,
        error: ClientError,
    },
}

/// How one upload went out: from `offset`, and whether the file let it be sent as announced.
struct Sent {
    offset: u64,
    /// The file shrank while its body was sent, or could not be hashed: the body was
    /// completed with zeros and (after the body) declared with a hash it cannot have, so the
    /// server refuses it and the connection stays usable. The item fails with this error.
    spoiled: Option<ClientError>,
}

/// A large file's identity, worked out before the upload so `resume` can be asked.
struct Prepared {
    size: u64,
    /// `None`: the hash is computed while the body is sent and follows it (`put_hash`).
    hash: Option<Digest>,
    mtime: Option<i64>,
    offset: u64,
    /// The file as it was when its upload began, and when that was: its hash is kept in the
    /// [`HashCache`] only if the file is still that version once the server agrees.
    version: FileVersion,
    began: std::time::SystemTime,
    /// `hash` came from the [`HashCache`].
    cached: bool,
}

/// Why one item of a round of uploads or downloads did not finish.
enum Retry {
    Failed(ClientError),
    /// What this side held of the file belonged to another version (the server's partial of
    /// a resumed upload, or our partial of a download), and is gone now: transfer the file
    /// again from the start, once.
    Restart,
}

/// The items of a round that asked to be done again from the start.
fn restarted<T>(results: &[Result<T, Retry>]) -> Vec<usize> {
    results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Err(Retry::Restart)))
        .map(|(i, _)| i)
        .collect()
}

/// The final results once the restarted items were redone; `what` names a second restart.
/// An item still to restart when the connection failed (`broken`) was interrupted.
fn settle<T>(
    results: Vec<Result<T, Retry>>,
    what: &str,
    broken: Option<&ClientError>,
) -> Vec<Result<T>> {
    results
        .into_iter()
        .map(|r| {
            r.map_err(|e| match (e, broken) {
                (Retry::Failed(e), _) => e,
                (Retry::Restart, Some(cause)) => ClientError::interrupted(cause),
                (Retry::Restart, None) => ClientError::Local(format!("{what} restarted twice")),
            })
        })
        .collect()
}

/// Per item of a round: its result, or (`None`) that the connection failed first.
fn or_interrupted<T>(
    results: impl IntoIterator<Item = Option<Result<T, Retry>>>,
    broken: Option<&ClientError>,
) -> Vec<Result<T, Retry>> {
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(Retry::Failed(match broken {
                    Some(cause) => ClientError::interrupted(cause),
                    None => ClientError::Closed,
                }))
            })
        })
        .collect()
}

impl Client {
    /// Uploads files, pipelined, each verified by the server against the hash we declare.
    /// Returns one result per item, in order, and whether the connection failed.
    pub async fn put_files(
        &mut self,
        items: &[PutItem],
        opts: &PutOptions,
        progress: &dyn Progress,
    ) -> Transferred<PutOutcome> {
        let busy_deadline = tokio::time::Instant::now() + BUSY_RETRY_FOR;
        let (mut results, mut broken) = self.put_round(items, opts, progress).await;
        // A resumed prefix that turned out to belong to another version of the file (the
        // server keys hash-after-body partials by size and mtime, not content) was discarded
        // by the server; upload those files again from the start, once.
        let retry = restarted(&results);
        if !retry.is_empty() && broken.is_none() {
            let again: Vec<PutItem> = retry.iter().map(|&i| items[i].clone()).collect();
            let fresh = PutOptions {
                resume: false,
                ..opts.clone()
            };
            let (redone, failed) = self.put_round(&again, &fresh, progress).await;
            for (i, r) in retry.into_iter().zip(redone) {
                results[i] = r;
            }
            broken = failed;
        }
        // A file another upload is writing right now is `busy`. Most often that other upload
        // is this user's own, interrupted a moment ago, whose connection the server has not yet
        // let go of (a command run again right after Ctrl-C): try such files again for a
        // while from the start of the command before reporting them. Each attempt sends the
        // body again (the server skips it): a large file on a slow link outlasts that while on
        // its first attempt and is not sent twice, and a path that turns busy late in a long
        // transfer is someone else's upload, reported at once. Progress counted those files
        // once; the attempts again are not shown.
        let deadline = busy_deadline;
        let mut pause = Duration::from_millis(50);
        while broken.is_none() {
            let busy: Vec<usize> = results
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    matches!(r, Err(Retry::Failed(e)) if e.remote_code() == Some(ErrorCode::Busy))
                })
                .map(|(i, _)| i)
                .collect();
            if busy.is_empty() || tokio::time::Instant::now() + pause > deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
            let again: Vec<PutItem> = busy.iter().map(|&i| items[i].clone()).collect();
            let (redone, failed) = self
                .put_round(&again, opts, &crate::progress::NoProgress)
                .await;
            for (i, r) in busy.into_iter().zip(redone) {
                results[i] = r;
            }
            broken = failed;
        }
        self.note_broken(broken.as_ref());
        Transferred {
            results: settle(results, "upload", broken.as_ref()),
            broken,
        }
    }

    /// Remembers that the connection failed (see [`Client::is_broken`]).
    fn note_broken(&mut self, broken: Option<&ClientError>) {
        if let Some(e) = broken {
            self.broken.get_or_insert_with(|| e.to_string());
        }
    }

    /// A round on a connection that already failed: every item interrupted, at once.
    fn refuse_round<T>(&self, n: usize) -> Option<(Vec<Result<T, Retry>>, ClientError)> {
        let e = self.check_usable().err()?;
        let results = (0..n)
            .map(|_| Err(Retry::Failed(ClientError::interrupted(&e))))
            .collect();
        Some((results, e))
    }

    async fn put_round(
        &mut self,
        items: &[PutItem],
        opts: &PutOptions,
        progress: &dyn Progress,
    ) -> (Vec<Result<PutOutcome, Retry>>, Option<ClientError>) {
        if let Some((results, e)) = self.refuse_round(items.len()) {
            return (results, Some(e));
        }
        let mut cache = None;
        let prepared = match self.prepare_large_puts(items, opts, &mut cache).await {
            Ok(p) => p,
            Err(e) => {
                return (
                    or_interrupted(items.iter().map(|_| None), Some(&e)),
                    Some(e),
                );
            }
        };
        let first_id = self.reserve_ids(items.len());
        let (mut reader, mut writer) = self.conn.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<PutSent>();

        let send = async {
            for (index, item) in items.iter().enumerate() {
                let id = first_id + index as u64;
                match send_one_put(
                    &mut writer,
                    id,
                    item,
                    prepared[index].as_ref(),
                    opts,
                    progress,
                )
                .await
                {
                    Ok(Sent { offset, spoiled }) => {
                        let _ = tx.send(PutSent::Request {
                            index,
                            id,
                            offset,
                            spoiled,
                        });
                    }
                    Err(error) if error.connection_usable() => {
                        let _ = tx.send(PutSent::LocalError { index, error });
                    }
                    Err(error) => return Err(error),
                }
            }
            drop(tx);
            writer.flush().await
        };
        let receive = async {
            let mut results: Vec<Option<Result<PutOutcome, Retry>>> =
                (0..items.len()).map(|_| None).collect();
            // Until the connection fails, if it does: the results so far are kept.
            let failed = async {
                while let Some(sent) = rx.recv().await {
                    match sent {
                        PutSent::LocalError { index, error } => {
                            progress.finish_file(&items[index].remote, false);
                            results[index] = Some(Err(Retry::Failed(error)));
                        }
                        PutSent::Request {
                            index,
                            id,
                            offset,
                            spoiled,
                        } => {
                            let reply = reader.read_reply().await?;
                            check_id(&reply, id)?;
                            let prep = prepared[index].as_ref();
                            let outcome = match reply.result {
                                // Refused as it had to be: say why.
                                Err(e)
                                    if e.code == ErrorCode::ChecksumMismatch
                                        && spoiled.is_some() =>
                                {
                                    Err(Retry::Failed(spoiled.expect("checked")))
                                }
                                Ok(Reply::Put { path, size, hash }) => {
                                    if let (Some(p), Some(cache)) = (prep, cache.as_mut()) {
                                        // The server's own hash of what it received: keep it
                                        // if the file is still the version that was sent.
                                        if let Ok(meta) = fs::metadata(&items[index].local) {
                                            let now = FileVersion::of(&meta);
                                            cache.record(&p.version, &now, p.began, hash.clone());
                                        }
                                    }
                                    Ok(PutOutcome {
                                        remote: path,
                                        size,
                                        hash,
                                        resumed_from: offset,
                                    })
                                }
                                Ok(other) => Err(Retry::Failed(unexpected("put", &other))),
                                Err(e)
                                    if e.code == ErrorCode::ChecksumMismatch
                                        && prep.is_some_and(|p| p.cached) =>
                                {
                                    // The kept hash was wrong (the file changed in a way its
                                    // stat did not show): forget it, and upload the file again,
                                    // hashing it.
                                    if let (Some(p), Some(cache)) = (prep, cache.as_mut()) {
                                        cache.forget(&p.version);
                                    }
                                    tracing::warn!(
                                        "{}: the hash kept from an earlier upload did not match; \
                                         uploading it again",
                                        items[index].local.display()
                                    );
                                    Err(Retry::Restart)
                                }
                                Err(e) if offset > 0 && e.code == ErrorCode::ChecksumMismatch => {
                                    Err(Retry::Restart)
                                }
                                Err(e) => Err(Retry::Failed(ClientError::Remote(e))),
                            };
                            if !matches!(outcome, Err(Retry::Restart)) {
                                progress.finish_file(&items[index].remote, outcome.is_ok());
                            }
                            results[index] = Some(outcome);
                        }
                    }
                }
                Ok::<_, ClientError>(())
            }
            .await;
            (results, failed.err())
        };
        let (sent, (results, received)) = tokio::join!(send, receive);
        if let Some(cache) = cache.as_mut() {
            // Not worth a warning on every upload (a read-only home, say): without the file,
            // files are hashed as they are sent, as with --rehash.
            if let Err(e) = cache.save() {
                tracing::debug!("cannot save {}: {e}", cache.path().display());
            }
        }
        let broken = sent.err().or(received);
        (or_interrupted(results, broken.as_ref()), broken)
    }

    /// Works out the large files' identities and asks, in one pipelined round, how much of
    /// each the server already holds from an interrupted upload. With `hash-after-body` the
    /// identity is size and mtime, and nothing is read here; otherwise each file is hashed
    /// first, since the put header carries the hash.
    async fn prepare_large_puts(
        &mut self,
        items: &[PutItem],
        opts: &PutOptions,
        cache: &mut Option<HashCache>,
    ) -> Result<Vec<Option<Prepared>>> {
        let deferred = self
            .hello()
            .features
            .iter()
            .any(|f| f == ferry_proto::message::HASH_AFTER_BODY);
        let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(items.len());
        let mut asks = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if item.listed_size.is_some_and(|n| n < LARGE_FILE) {
                prepared.push(None);
                continue;
            }
            let began = std::time::SystemTime::now();
            let (size, mtime, version) = match fs::metadata(&item.local) {
                Ok(m) if m.is_file() && m.len() >= LARGE_FILE => {
                    (m.len(), mtime_secs(&m), FileVersion::of(&m))
                }
                _ => {
                    prepared.push(None);
                    continue;
                }
            };
            if cache.is_none() {
                *cache = opts.hash_cache.as_ref().map(HashCache::load);
            }
            let kept = cache.as_mut().and_then(|c| c.get(&version));
            let cached = kept.is_some();
            let hash = if kept.is_some() || deferred {
                kept
            } else {
                match hash_file(&item.local, HashAlgo::Blake3) {
                    Ok(h) => Some(h),
                    Err(_) => {
                        // The send step reports the error for this item.
                        prepared.push(None);
                        continue;
                    }
                }
            };
            if opts.resume {
                asks.push((
                    index,
                    Request::Resume {
                        path: item.remote.clone(),
                        size,
                        mtime: if hash.is_none() { mtime } else { None },
                        hash: hash.clone(),
                    },
                ));
            }
            prepared.push(Some(Prepared {
                size,
                hash,
                mtime,
                offset: 0,
                version,
                began,
                cached,
            }));
        }
        if !asks.is_empty() {
            let (indexes, requests): (Vec<usize>, Vec<Request>) = asks.into_iter().unzip();
            let replies = self.call_many(requests).await?;
            for (index, reply) in indexes.into_iter().zip(replies) {
                // A failed `resume` (say, the directory is gone) just means starting at 0;
                // the put itself reports the real problem.
                if let Ok(Reply::Resume { offset, .. }) = reply {
                    if let Some(p) = prepared[index].as_mut() {
                        p.offset = offset.min(p.size);
                    }
                }
            }
        }
        Ok(prepared)
    }

    fn reserve_ids(&mut self, n: usize) -> u64 {
        let first = self.next_id();
        for _ in 1..n {
            self.next_id();
        }
        first
    }

    /// Downloads files, pipelined, each verified against the server's hash before it takes
    /// its final name. Returns one result per item, in order, and whether the connection
    /// failed.
    pub async fn get_files(
        &mut self,
        items: &[GetItem],
        opts: &GetOptions,
        progress: &dyn Progress,
    ) -> Transferred<GetOutcome> {
        self.get_files_then(items, Vec::new(), opts, progress)
            .await
            .0
    }

    /// [`Self::get_files`], with `then` pipelined behind the downloads: their replies (bodies
    /// skipped) come second. A tree download asks for the next page of its listing this way,
    /// so the server lists it while the client is still writing files.
    pub async fn get_files_then(
        &mut self,
        items: &[GetItem],
        then: Vec<Request>,
        opts: &GetOptions,
        progress: &dyn Progress,
    ) -> (Transferred<GetOutcome>, Vec<Result<Reply>>) {
        let (mut results, then_replies, mut broken) =
            self.get_round(items, then, opts, progress).await;
        // A partial that turned out to belong to another file is thrown away and the download
        // done again from the start, once.
        let retry = restarted(&results);
        if !retry.is_empty() && broken.is_none() {
            let again: Vec<GetItem> = retry.iter().map(|&i| items[i].clone()).collect();
            let fresh = GetOptions {
                resume: false,
                ..opts.clone()
            };
            let (redone, _, failed) = self.get_round(&again, Vec::new(), &fresh, progress).await;
            for (i, r) in retry.into_iter().zip(redone) {
                results[i] = r;
            }
            broken = failed;
        }
        self.note_broken(broken.as_ref());
        let done = Transferred {
            results: settle(results, "download", broken.as_ref()),
            broken,
        };
        (done, then_replies)
    }

    #[allow(clippy::type_complexity)]
    async fn get_round(
        &mut self,
        items: &[GetItem],
        then: Vec<Request>,
        opts: &GetOptions,
        progress: &dyn Progress,
    ) -> (
        Vec<Result<GetOutcome, Retry>>,
        Vec<Result<Reply>>,
        Option<ClientError>,
    ) {
        let then_count = then.len();
        if let Some((results, e)) = self.refuse_round(items.len()) {
            let then_replies = (0..then_count)
                .map(|_| Err(ClientError::interrupted(&e)))
                .collect();
            return (results, then_replies, Some(e));
        }
        let first_id = self.reserve_ids(items.len() + then_count);
        let first_then_id = first_id + items.len() as u64;
        let mut scratch = self.scratch();
        let (mut reader, mut writer) = self.conn.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Leftover)>();

        let send = async {
            for (index, item) in items.iter().enumerate() {
                let id = first_id + index as u64;
                let held = if item.no_partial_record {
                    Leftover::Nothing
                } else if opts.resume {
                    PartialMeta::load(&item.local, &item.remote)
                } else {
                    Leftover::Unknown
                };
                let offset = match &held {
                    Leftover::Resumable(m) => m.held,
                    _ => 0,
                };
                writer
                    .queue(&RequestFrame::new(
                        id,
                        Request::Get {
                            path: item.remote.clone(),
                            offset,
                            algo: opts.algo,
                        },
                    ))
                    .await?;
                let _ = tx.send((index, id, held));
            }
            drop(tx);
            for (i, request) in then.into_iter().enumerate() {
                writer
                    .queue(&RequestFrame::new(first_then_id + i as u64, request))
                    .await?;
            }
            writer.flush().await
        };
        let receive = async {
            let mut results = Vec::with_capacity(items.len());
            let mut then_replies = Vec::new();
            let mut targets = TargetDir::default();
            // Until the connection fails, if it does: the results so far are kept.
            let failed = async {
                while let Some((index, id, held)) = rx.recv().await {
                    let item = &items[index];
                    let reply = reader.read_reply().await?;
                    check_id(&reply, id)?;
                    let (size, offset, mtime, hash) = match reply.result {
                        Ok(Reply::Get {
                            size,
                            offset,
                            mtime,
                            hash,
                            ..
                        }) => (size, offset, mtime, hash),
                        Ok(other) => {
                            results.push(Err(Retry::Failed(unexpected("get", &other))));
                            continue;
                        }
                        Err(e) => {
                            progress.finish_file(&item.remote, false);
                            results.push(Err(Retry::Failed(ClientError::Remote(e))));
                            continue;
                        }
                    };
                    if let Leftover::Resumable(h) = &held {
                        if h.size != size || h.hash != hash || offset != h.held {
                            reader.skip_body(&mut scratch).await?;
                            PartialMeta::discard(&item.local);
                            results.push(Err(Retry::Restart));
                            continue;
                        }
                    }
                    progress.start_file(&item.remote, size, offset);
                    let opened =
                        DownloadSink::open(item, size, offset, &hash, &held, opts, &mut targets);
                    let mut sink = match opened {
                        Ok(s) => s,
                        Err(e) => {
                            reader.skip_body(&mut scratch).await?;
                            progress.finish_file(&item.remote, false);
                            results.push(Err(Retry::Failed(e)));
                            continue;
                        }
                    };
                    let local_error = sink.receive(&mut reader, &mut scratch, progress).await?;
                    let outcome = match local_error {
                        Some(e) => Err(e),
                        None => sink
                            .finish(&item.remote, mtime, opts.overwrite, &mut targets)
                            .map(|hash| GetOutcome {
                                remote: item.remote.clone(),
                                local: item.local.clone(),
                                size,
                                hash,
                                resumed_from: offset,
                            }),
                    };
                    progress.finish_file(&item.remote, outcome.is_ok());
                    results.push(outcome.map_err(Retry::Failed));
                }
                then_replies =
                    read_results(&mut reader, &mut scratch, first_then_id, then_count).await?;
                Ok::<_, ClientError>(())
            }
            .await;
            (results, then_replies, failed.err())
        };
        let (sent, (results, mut then_replies, received)) = tokio::join!(send, receive);
        self.scratch = scratch;
        let broken = sent.err().or(received);
        if let Some(e) = &broken {
            then_replies.resize_with(then_count, || Err(ClientError::interrupted(e)));
        }
        let mut results: Vec<Option<Result<GetOutcome, Retry>>> =
            results.into_iter().map(Some).collect();
        results.resize_with(items.len(), || None);
        (
            or_interrupted(results, broken.as_ref()),
            then_replies,
            broken,
        )
    }
}

/// Sends one upload: header then body. Returns the offset it started from.
async fn send_one_put(
    writer: &mut crate::conn::FrameWriter<'_>,
    id: u64,
    item: &PutItem,
    prepared: Option<&Prepared>,
    opts: &PutOptions,
    progress: &dyn Progress,
) -> Result<Sent> {
    let local = |e| ClientError::io(item.local.display().to_string(), e);
    // Before this item's header is queued, nothing of it is on the wire: a file that went
    // away or cannot be read since it was listed fails alone, and the other files still go.
    // (As an I/O error it used to end the whole transfer, as a network failure.)
    let unreadable = |e| ClientError::local_file(&item.local, e);
    let mut file = File::open(&item.local).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(ClientError::Local(format!(
            "{}: not a regular file",
            item.local.display()
        )));
    }
    let mtime = mtime_secs(&meta);
    match prepared {
        Some(p) if p.size == meta.len() && (p.hash.is_some() || p.mtime == mtime) => {
            // Over TLS the body is read into user space anyway, to be encrypted: the hashing
            // thread takes those very buffers instead of reading the file a second time.
            if p.hash.is_none() && writer.is_tls() {
                return send_body_tls_hashed(writer, id, item, p, &file, mtime, opts, progress)
                    .await;
            }
            // Without a hash in the header, hash the file on a thread of its own while the
            // body goes out (both read the same, open file); the hash follows the body.
            let hashing = match p.hash {
                Some(_) => None,
                None => Some(spawn_hash(file.try_clone().map_err(local)?, p.size)),
            };
            let body_len = p.size - p.offset;
            let frame = put_header(id, item, p, mtime, opts);
            writer.queue(&frame).await?;
            progress.start_file(&item.remote, p.size, p.offset);
            let sent = writer
                .send_file(&file, p.offset, body_len, progress)
                .await?;
            let mut spoiled = (sent < body_len).then(|| shrank(item, p.offset + sent, p.size));
            if let Some(hashing) = hashing {
                // The server now waits for this frame, whatever happened to the file.
                let hashed = hashing
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread died")));
                let hash = match (hashed, &spoiled) {
                    (Ok(hash), None) => hash,
                    (Err(e), None) => {
                        spoiled = Some(unhashable(item, e));
                        unmatchable()
                    }
                    (_, Some(_)) => unmatchable(),
                };
                writer
                    .queue(&RequestFrame::new(id, Request::PutHash { hash }))
                    .await?;
            }
            Ok(Sent {
                offset: p.offset,
                spoiled,
            })
        }
        Some(_) => Err(ClientError::Local(format!(
            "{}: changed while being uploaded",
            item.local.display()
        ))),
        None => {
            // A small file: one read into memory serves both the hash and the body.
            let data = read_small(&mut file, meta.len()).map_err(unreadable)?;
            let hash = Digest::of(HashAlgo::Blake3, &data);
            let size = data.len() as u64;
            let frame = RequestFrame {
                id,
                request: Request::Put {
                    path: item.remote.clone(),
                    size,
                    hash: Some(hash),
                    offset: 0,
                    overwrite: opts.overwrite,
                    mtime,
                },
                body_len: size,
            };
            writer.queue(&frame).await?;
            progress.start_file(&item.remote, size, 0);
            writer.queue_body(&data).await?;
            progress.advance(size);
            Ok(Sent {
                offset: 0,
                spoiled: None,
            })
        }
    }
}

/// Why an upload is refused on purpose: the file shrank to `now` bytes of the `size` its
/// header announced while it was sent.
fn shrank(item: &PutItem, now: u64, size: u64) -> ClientError {
    ClientError::Local(format!(
        "{}: changed while it was being sent (it shrank to {now} of {size} bytes); not \
         uploaded, try again",
        item.local.display()
    ))
}

/// Why an upload is refused on purpose: its file could not be hashed after it was sent.
fn unhashable(item: &PutItem, e: std::io::Error) -> ClientError {
    let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "changed while it was being sent (it shrank)".to_owned()
    } else {
        format!("cannot be hashed: {e}")
    };
    ClientError::Local(format!(
        "{}: {what}; not uploaded, try again",
        item.local.display()
    ))
}

/// The hash declared for an upload whose body is not the file: that of no bytes at all,
/// which a body of 1 MiB or more cannot have, so the server refuses it.
fn unmatchable() -> Digest {
    Digest::of(HashAlgo::Blake3, b"")
}

/// The `put` header for the body still to send (from `p.offset`), with the hash when it is
/// known up front.
fn put_header(
    id: u64,
    item: &PutItem,
    p: &Prepared,
    mtime: Option<i64>,
    opts: &PutOptions,
) -> RequestFrame {
    RequestFrame {
        id,
        request: Request::Put {
            path: item.remote.clone(),
            size: p.size,
            hash: p.hash.clone(),
            offset: p.offset,
            overwrite: opts.overwrite,
            mtime,
        },
        body_len: p.size - p.offset,
    }
}

/// A large upload over TLS with its hash after the body: each piece of the file is read
/// once, into a buffer that is encrypted, sent and then hashed. A fresh upload hashes each
/// piece right there, while it is still in this core's cache: on a thread of its own the
/// hashing read every piece back from the other core, and two runs of eight alternating
/// 1 GiB TLS uploads took 1.33 / 1.57 s (median) hashing here against 1.48 / 1.69 s there.
/// A resumed one hands the pieces to a [`HashWorker`], whose thread first hashes the prefix
/// the server already holds, alongside the sending.
#[allow(clippy::too_many_arguments)]
async fn send_body_tls_hashed(
    writer: &mut crate::conn::FrameWriter<'_>,
    id: u64,
    item: &PutItem,
    p: &Prepared,
    file: &File,
    mtime: Option<i64>,
    opts: &PutOptions,
    progress: &dyn Progress,
) -> Result<Sent> {
    use std::os::unix::fs::FileExt;
    let local = |e| ClientError::io(item.local.display().to_string(), e);
    let mut hashing = if p.offset == 0 {
        PieceHasher::Here(Hasher::new(HashAlgo::Blake3), vec![0; UPLOAD_HASH_READ])
    } else {
        let prefix = file.try_clone().map_err(local)?;
        PieceHasher::Worker(
            HashWorker::start_after_prefix(Hasher::new(HashAlgo::Blake3), prefix, p.offset)
                .map_err(local)?,
        )
    };
    let frame = put_header(id, item, p, mtime, opts);
    // Once the header is out, the server expects the whole body and then the hash: any
    // failure from here on fails the connection (an I/O error), never just this item.
    let fatal = |e: ClientError| match e {
        e if e.connection_usable() => local(std::io::Error::other(e.to_string())),
        e => e,
    };
    writer.queue(&frame).await?;
    progress.start_file(&item.remote, p.size, p.offset);
    let mut pos = p.offset;
    let end = p.size;
    while pos < end {
        let mut buf = match &mut hashing {
            PieceHasher::Here(_, spare) => std::mem::take(spare),
            PieceHasher::Worker(worker) => worker.buffer().await.map_err(fatal)?,
        };
        let want = (end - pos).min(buf.len() as u64) as usize;
        let n = loop {
            match file.read_at(&mut buf[..want], pos) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                r => break r.map_err(local)?,
            }
        };
        if n == 0 {
            // What the hasher holds is moot now (a worker's thread ends as it is dropped).
            writer.pad_body(pos - p.offset, end - p.offset).await?;
            let hash = unmatchable();
            writer
                .queue(&RequestFrame::new(id, Request::PutHash { hash }))
                .await?;
            return Ok(Sent {
                offset: p.offset,
                spoiled: Some(shrank(item, pos, p.size)),
            });
        }
        writer.write_body(&buf[..n]).await?;
        pos += n as u64;
        progress.advance(n as u64);
        match &mut hashing {
            PieceHasher::Here(hasher, spare) => {
                hasher.update(&buf[..n]);
                *spare = buf;
            }
            PieceHasher::Worker(worker) => worker.hash(buf, n).map_err(fatal)?,
        }
    }
    let hash = match hashing {
        PieceHasher::Here(hasher, _) => hasher.finalize(),
        PieceHasher::Worker(worker) => worker.finish(&item.local).map_err(fatal)?,
    };
    writer
        .queue(&RequestFrame::new(id, Request::PutHash { hash }))
        .await?;
    Ok(Sent {
        offset: p.offset,
        spoiled: None,
    })
}

/// Where [`send_body_tls_hashed`] hashes the pieces it sent: here (with the one buffer they
/// are read into), or on a [`HashWorker`]'s thread.
enum PieceHasher {
    Here(Hasher, Vec<u8>),
    Worker(HashWorker),
}

/// Read size of the upload hash thread: small enough that what one read copies is still in
/// the core's 2 MiB L2 when blake3 reads it. Four alternating 1 GiB plain uploads each: client
/// CPU 0.51 s with 256 KiB (and with 128 KiB) against 0.55 s with 1 MiB, wall 0.74 vs 0.76 s.
const UPLOAD_HASH_READ: usize = 256 * 1024;

/// Hashes (blake3) the first `len` bytes of an open file, all that its upload announced (a
/// file that grows meanwhile is uploaded as those bytes), on a thread of its own; the result
/// arrives on the returned channel. A file shorter than that by then gives `UnexpectedEof`.
/// Positioned reads, so the descriptor's offset is left alone.
fn spawn_hash(file: File, len: u64) -> tokio::sync::oneshot::Receiver<std::io::Result<Digest>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let hash = move || {
        use std::os::unix::fs::FileExt;
        let mut hasher = Hasher::new(HashAlgo::Blake3);
        let mut buf = vec![0u8; UPLOAD_HASH_READ];
        let mut pos = 0u64;
        loop {
            let want = (len - pos).min(buf.len() as u64) as usize;
            if want == 0 {
                return Ok(hasher.finalize());
            }
            match file.read_at(&mut buf[..want], pos) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    pos += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    };
    let spawned = std::thread::Builder::new()
        .name("ferry-put-hash".into())
        .spawn(move || {
            let _ = tx.send(hash());
        });
    // If no thread can be made, `tx` is dropped with the closure: the receiver reports it.
    drop(spawned);
    rx
}

/// Reads all of a small file that fstat said holds `len` bytes, with one read(2) when it
/// still does: the read asks for a byte more than that, so getting exactly `len` is the end
/// of the file, with no second read to find it (`read_to_end` made an fstat, an lseek and
/// two reads of it). A file that shrank is read to its new end; one that grew is read to
/// its end as well, as `read_to_end` did. Either way what is returned is what was read, and
/// the caller hashes and sends exactly that.
fn read_small(file: &mut File, len: u64) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    let mut data = vec![0u8; len + 1];
    let mut filled = 0;
    loop {
        match file.read(&mut data[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if filled == len {
            // The read came back short of what it asked for, at the stat's size.
            break;
        }
        if filled == data.len() {
            file.read_to_end(&mut data)?;
            return Ok(data);
        }
    }
    data.truncate(filled);
    Ok(data)
}

/// rename(2) that fails with `AlreadyExists` rather than replace `to` (renameat2 with
/// RENAME_NOREPLACE). Where the file system cannot do that, a plain rename, as before.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from_c = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to_c = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => fs::rename(from, to),
        _ => Err(e),
    }
}

fn mtime_secs(meta: &fs::Metadata) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    Some(meta.mtime())
}

fn partial_path(local: &Path, suffix: &str) -> PathBuf {
    let mut name = local.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    local.with_file_name(name)
}

/// The record kept beside a partial download: which remote file, of what size and hash, it
/// is a prefix of. Without it a partial is never resumed, so two files are never spliced.
///
/// Only large downloads get one: redoing a small download costs less than writing, and then
/// removing, a record for every small file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartialMeta {
    remote: String,
    size: u64,
    hash: Digest,
    #[serde(skip)]
    held: u64,
}

/// What an earlier, interrupted run left beside a download's target.
enum Leftover {
    /// No record: there is nothing to resume, and nothing a new partial could be paired with.
    Nothing,
    /// A record may exist but does not describe what is there now (or was not looked for);
    /// it must go before a partial without a record of its own is written.
    Unknown,
    Resumable(PartialMeta),
}

impl PartialMeta {
    fn load(local: &Path, remote: &str) -> Leftover {
        let text = match fs::read_to_string(partial_path(local, PARTIAL_META_SUFFIX)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Leftover::Nothing,
            Err(_) => return Leftover::Unknown,
        };
        let Ok(mut meta) = serde_json::from_str::<PartialMeta>(&text) else {
            return Leftover::Unknown;
        };
        let Ok(held) = fs::metadata(partial_path(local, PARTIAL_SUFFIX)).map(|m| m.len()) else {
            return Leftover::Unknown;
        };
        if meta.remote != remote || held > meta.size {
            return Leftover::Unknown;
        }
        meta.held = held;
        Leftover::Resumable(meta)
    }

    fn save(&self, local: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string(self).expect("serializing partial record");
        fs::write(partial_path(local, PARTIAL_META_SUFFIX), text)
    }

    fn discard(local: &Path) {
        let _ = fs::remove_file(partial_path(local, PARTIAL_SUFFIX));
        let _ = fs::remove_file(partial_path(local, PARTIAL_META_SUFFIX));
    }
}

/// Buffers a large download or TLS upload moves through: enough that receiving and writing never wait for
/// the hasher while it keeps up, few enough to keep memory small.
const HASH_BUFFERS: usize = 4;

/// Hashes a large transfer on a thread of its own, so hashing overlaps the network instead of
/// adding to it; for a download the thread also writes each buffer to the partial
/// ([`HashWorker::start_writing`]). Buffers go to the thread full and come back empty; no
/// more than [`HASH_BUFFERS`] ever exist, so neither channel can fill up and block.
struct HashWorker {
    full: Option<std::sync::mpsc::SyncSender<(Vec<u8>, usize)>>,
    empty: mpsc::Receiver<Vec<u8>>,
    made: usize,
    /// Size of each buffer.
    buf_len: usize,
    thread: Option<std::thread::JoinHandle<Result<Hasher, WorkerError>>>,
}

/// What stopped a [`HashWorker`]'s thread.
enum WorkerError {
    /// Reading the prefix of a resumed upload.
    Prefix(std::io::Error),
    /// Writing a download's partial (the thread hashed on, so the body could be read out).
    Write(std::io::Error),
}

impl HashWorker {
    /// For a download: writes each buffer to `file` (at its offset), then hashes it, so the
    /// connection's thread only receives (and decrypts). That thread had been the download's
    /// bottleneck: 84 % of the client's samples against the hash thread's 16 % on a 1 GiB TLS
    /// get, which now splits its work between the two. 1 MiB buffers (256 KiB ones were
    /// slower: plain 0.60-0.75 vs 0.66-0.72 s, TLS 1.11-1.19 vs 1.21-1.27 s per GiB, three
    /// alternating runs each).
    fn start_writing(hasher: Hasher, file: File) -> std::io::Result<Self> {
        Self::spawn(hasher, None, Some(file), crate::conn::IO_CHUNK)
    }

    /// Like [`HashWorker::start`], but the thread first hashes the first `len` bytes of
    /// `file` (what a resumed upload does not send) before the buffers it is given. For an
    /// upload over TLS: 256 KiB buffers, which the read, the encryption and the hash each find
    /// in cache (four alternating 1 GiB TLS uploads: client CPU 1.06 vs 1.11 s, wall 1.38 vs
    /// 1.44 s, against 1 MiB).
    fn start_after_prefix(hasher: Hasher, file: File, len: u64) -> std::io::Result<Self> {
        Self::spawn(hasher, Some((file, len)), None, UPLOAD_HASH_READ)
    }

    fn spawn(
        mut hasher: Hasher,
        prefix: Option<(File, u64)>,
        mut sink: Option<File>,
        buf_len: usize,
    ) -> std::io::Result<Self> {
        let (full, to_hash) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(HASH_BUFFERS);
        let (hashed, empty) = mpsc::channel(HASH_BUFFERS);
        let thread = std::thread::Builder::new()
            .name("ferry-hash".into())
            .spawn(move || {
                if let Some((file, len)) = prefix {
                    hash_prefix(&mut hasher, &file, len).map_err(WorkerError::Prefix)?;
                }
                let mut write_error = None;
                for (buf, n) in to_hash {
                    if let (Some(file), None) = (sink.as_mut(), &write_error) {
                        write_error = file.write_all(&buf[..n]).err();
                    }
                    hasher.update(&buf[..n]);
                    // Fails only once the download was abandoned; the loop then ends as well.
                    let _ = hashed.try_send(buf);
                }
                match write_error {
                    Some(e) => Err(WorkerError::Write(e)),
                    None => Ok(hasher),
                }
            })?;
        Ok(HashWorker {
            full: Some(full),
            empty,
            made: 0,
            buf_len,
            thread: Some(thread),
        })
    }

    /// A buffer to fill: a new one while there are few, then one the hasher is done with.
    async fn buffer(&mut self) -> Result<Vec<u8>> {
        if let Ok(buf) = self.empty.try_recv() {
            return Ok(buf);
        }
        if self.made < HASH_BUFFERS {
            self.made += 1;
            return Ok(vec![0; self.buf_len]);
        }
        self.empty.recv().await.ok_or_else(hasher_died)
    }

    fn hash(&mut self, buf: Vec<u8>, n: usize) -> Result<()> {
        let full = self.full.as_ref().ok_or_else(hasher_died)?;
        full.send((buf, n)).map_err(|_| hasher_died())
    }

    /// The digest, once every buffer is hashed (and written). `partial` names the file a
    /// write error is reported against.
    fn finish(mut self, partial: &Path) -> Result<Digest> {
        drop(self.full.take());
        let thread = self.thread.take().ok_or_else(hasher_died)?;
        let hasher = thread.join().map_err(|_| hasher_died())?;
        let hasher = hasher.map_err(|e| match e {
            WorkerError::Prefix(e) => ClientError::io("hashing the resumed prefix", e),
            WorkerError::Write(e) => ClientError::local_file(partial, e),
        })?;
        Ok(hasher.finalize())
    }
}

/// A worker left unfinished (the connection failed mid-body) still writes what it was given,
/// and is waited for: a resume reads the partial's length, which must be final by then.
impl Drop for HashWorker {
    fn drop(&mut self) {
        drop(self.full.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Hashes the first `len` bytes of `file`, with positioned reads.
fn hash_prefix(hasher: &mut Hasher, file: &File, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; crate::conn::IO_CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let want = (len - pos).min(buf.len() as u64) as usize;
        match file.read_at(&mut buf[..want], pos) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shrank while it was being hashed",
                ));
            }
            Ok(n) => {
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn hasher_died() -> ClientError {
    ClientError::Local("the hashing thread stopped".into())
}

enum SinkHasher {
    /// Small bodies: a thread would cost more than the hashing.
    Inline(Hasher),
    Thread(HashWorker),
}

/// Where a download's body goes: a file beside the target, hashed as it is written, which
/// takes the target's name only once the whole file verifies. A large one is a named partial
/// (kept for resume); a small one has no name at all until then ([`TargetDir`]).
struct DownloadSink {
    file: File,
    /// The named partial, or `None` for an unnamed (`O_TMPFILE`) file.
    partial: Option<PathBuf>,
    target: PathBuf,
    hasher: SinkHasher,
    expected: Digest,
    /// Whether a [`PartialMeta`] record is beside the partial, to be removed with it.
    record: bool,
}

/// The directory small downloads are going into, kept open from one file to the next (a
/// tree arrives directory by directory), for files created in it without a name.
///
/// Such a file (`O_TMPFILE`) is linked under its final name once it verifies, and `linkat`
/// fails rather than replace a name that is taken, so a file that appeared meanwhile is kept.
/// If the client dies first, the kernel frees the file: nothing half-written is left under
/// any name. It also costs less than creating a named partial and renaming it (a create and a
/// rename, each a name lookup and a directory update, against a link): on tmpfs 2,000 such
/// files took 15.5 ms against 19 ms.
#[derive(Default)]
struct TargetDir {
    path: PathBuf,
    /// `None`: the directory could not be opened, or cannot hold unnamed files.
    dir: Option<std::os::fd::OwnedFd>,
}

impl TargetDir {
    /// The open directory of `local`, if unnamed files can be made there.
    fn of(&mut self, local: &Path) -> Option<std::os::fd::BorrowedFd<'_>> {
        use rustix::fs::{Mode, OFlags};
        use std::os::fd::AsFd;
        let parent = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if self.path != parent {
            self.path = parent.to_owned();
            self.dir = rustix::fs::open(
                parent,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok();
        }
        self.dir.as_ref().map(|d| d.as_fd())
    }

    /// A new file without a name in `local`'s directory; `None` where the file system (or
    /// kernel) has no `O_TMPFILE`, after which this directory is not asked again.
    fn create_unnamed(&mut self, local: &Path) -> Option<File> {
        use rustix::fs::{Mode, OFlags};
        let dir = self.of(local)?;
        // Read and write: should linking fail, the bytes are copied out to a named partial.
        match rustix::fs::openat(
            dir,
            ".",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        ) {
            Ok(fd) => Some(File::from(fd)),
            Err(_) => {
                self.dir = None;
                None
            }
        }
    }

    /// Gives an unnamed file of this directory the name `local`; `AlreadyExists` if taken.
    fn link(&mut self, file: &File, local: &Path) -> std::io::Result<()> {
        use rustix::fs::AtFlags;
        use std::os::fd::AsRawFd;
        let name = local.file_name().unwrap_or_default();
        let Some(dir) = self.of(local) else {
            return Err(std::io::Error::other("the directory is gone"));
        };
        match rustix::fs::linkat(file, "", dir, name, AtFlags::EMPTY_PATH) {
            // Before Linux 6.10 AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc links do not.
            Err(rustix::io::Errno::NOENT) => rustix::fs::linkat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{}", file.as_raw_fd()),
                dir,
                name,
                AtFlags::SYMLINK_FOLLOW,
            ),
            r => r,
        }
        .map_err(std::io::Error::from)
    }
}

impl DownloadSink {
    fn open(
        item: &GetItem,
        size: u64,
        offset: u64,
        expected: &Digest,
        leftover: &Leftover,
        opts: &GetOptions,
        targets: &mut TargetDir,
    ) -> Result<Self> {
        let overwrite = opts.overwrite;
        let partial = partial_path(&item.local, PARTIAL_SUFFIX);
        let io = |e| ClientError::local_file(&partial, e);
        let mut hasher = Hasher::new(expected.algo());
        let large = size >= LARGE_FILE;
        if !large && offset == 0 {
            if !matches!(leftover, Leftover::Nothing) {
                // What an earlier run left for this name must not outlive this download: a
                // record beside an old partial would let a later resume splice two files.
                for leftover in [PARTIAL_META_SUFFIX, PARTIAL_SUFFIX] {
                    let path = partial_path(&item.local, leftover);
                    match fs::remove_file(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(ClientError::local_file(&path, e));
                        }
                        _ => {}
                    }
                }
            }
            // A link cannot replace a file, so a download that may is renamed as before.
            if let Some(file) = (!overwrite)
                .then(|| targets.create_unnamed(&item.local))
                .flatten()
            {
                return Ok(DownloadSink {
                    file,
                    partial: None,
                    target: item.local.clone(),
                    hasher: SinkHasher::Inline(hasher),
                    expected: expected.clone(),
                    record: false,
                });
            }
        }
        let (file, record) = if offset > 0 {
            // Resuming: the prefix we hold is part of what the hash covers.
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&partial)
                .map_err(io)?;
            let mut buf = vec![0u8; crate::conn::IO_CHUNK];
            let mut left = offset;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                f.read_exact(&mut buf[..want]).map_err(io)?;
                hasher.update(&buf[..want]);
                left -= want as u64;
            }
            f.set_len(offset).map_err(io)?;
            (f, true)
        } else {
            let f = File::create(&partial).map_err(io)?;
            if large {
                PartialMeta {
                    remote: item.remote.clone(),
                    size,
                    hash: expected.clone(),
                    held: 0,
                }
                .save(&item.local)
                .map_err(io)?;
            }
            (f, large)
        };
        let hasher = if large && size >= opts.hash_thread_min {
            let writer = file.try_clone().map_err(io)?;
            SinkHasher::Thread(HashWorker::start_writing(hasher, writer).map_err(io)?)
        } else {
            SinkHasher::Inline(hasher)
        };
        Ok(DownloadSink {
            file,
            partial: Some(partial),
            target: item.local.clone(),
            hasher,
            expected: expected.clone(),
            record,
        })
    }

    /// Writes and hashes the whole body. The outer error means the connection failed; the
    /// inner one is a local failure, after which the body is still read to its end so the
    /// connection stays usable.
    async fn receive(
        &mut self,
        reader: &mut crate::conn::FrameReader<'_>,
        scratch: &mut [u8],
        progress: &dyn Progress,
    ) -> Result<Option<ClientError>> {
        let partial = self.partial.as_ref().unwrap_or(&self.target);
        let io = |e| ClientError::local_file(partial, e);
        let mut local_error = None;
        match &mut self.hasher {
            SinkHasher::Inline(hasher) => {
                let file = &mut self.file;
                reader
                    .read_body(scratch, |chunk| {
                        if local_error.is_none() {
                            hasher.update(chunk);
                            if let Err(e) = file.write_all(chunk) {
                                local_error = Some(io(e));
                            }
                        }
                        progress.advance(chunk.len() as u64);
                        Ok(())
                    })
                    .await?;
            }
            SinkHasher::Thread(worker) => {
                while reader.body_remaining() > 0 {
                    let mut buf = match worker.buffer().await {
                        Ok(buf) => buf,
                        Err(e) => {
                            local_error = Some(e);
                            break;
                        }
                    };
                    let n = reader.fill_body(&mut buf).await?;
                    progress.advance(n as u64);
                    // The worker writes it (a write error comes back from `finish`).
                    if let Err(e) = worker.hash(buf, n) {
                        local_error = Some(e);
                        break;
                    }
                }
                if local_error.is_some() {
                    reader
                        .read_body(scratch, |chunk| {
                            progress.advance(chunk.len() as u64);
                            Ok(())
                        })
                        .await?;
                }
            }
        }
        Ok(local_error)
    }

    fn finish(
        self,
        remote: &str,
        mtime: i64,
        overwrite: bool,
        targets: &mut TargetDir,
    ) -> Result<Digest> {
        let actual = match self.hasher {
            SinkHasher::Inline(h) => h.finalize(),
            SinkHasher::Thread(w) => w.finish(self.partial.as_ref().unwrap_or(&self.target))?,
        };
        let record = partial_path(&self.target, PARTIAL_META_SUFFIX);
        let forget = |partial: Option<&PathBuf>| {
            if let Some(p) = partial {
                let _ = fs::remove_file(p);
            }
            if self.record {
                let _ = fs::remove_file(&record);
            }
        };
        if actual != self.expected {
            drop(self.file);
            forget(self.partial.as_ref());
            return Err(ClientError::ChecksumMismatch {
                path: remote.to_owned(),
                expected: self.expected,
                actual,
            });
        }
        let io = |e| ClientError::local_file(&self.target, e);
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
        // On the open descriptor (futimens), which saves looking the path up again.
        let _ = self.file.set_modified(when);
        let placed = match &self.partial {
            Some(partial) => {
                drop(self.file);
                if overwrite {
                    fs::rename(partial, &self.target).map_err(io)?;
                    Ok(())
                } else {
                    rename_noreplace(partial, &self.target)
                }
            }
            None => match targets.link(&self.file, &self.target) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    // Linking is refused here (no /proc, say): copy out to a named partial.
                    let partial = partial_path(&self.target, PARTIAL_SUFFIX);
                    copy_out(self.file, &partial, when).map_err(io)?;
                    rename_noreplace(&partial, &self.target).inspect_err(|_| {
                        let _ = fs::remove_file(&partial);
                    })
                }
                r => r,
            },
        };
        if let Err(e) = placed {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io(e));
            }
            // Something took the name while we downloaded: it stays, and so does nothing
            // of ours.
            forget(self.partial.as_ref());
            return Err(ClientError::Local(format!(
                "{} exists (use --force to replace it)",
                self.target.display()
            )));
        }
        if self.record {
            let _ = fs::remove_file(&record);
        }
        Ok(actual)
    }
}

/// Copies an unnamed download into a new file at `partial`, with its mtime.
fn copy_out(mut file: File, partial: &Path, when: std::time::SystemTime) -> std::io::Result<()> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut named = File::create(partial)?;
    let copied = std::io::copy(&mut file, &mut named).and_then(|_| named.set_modified(when));
    if copied.is_err() {
        let _ = fs::remove_file(partial);
    }
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// `read_small` against a file that holds `actual` bytes when fstat said `stated`.
    fn read_as_stated(actual: usize, stated: u64) -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = pattern(actual);
        fs::write(&path, &data).unwrap();
        let mut file = File::open(&path).unwrap();
        (read_small(&mut file, stated).unwrap(), data)
    }

    /// The upload hash covers exactly the bytes announced: a file that grew since is hashed
    /// as its first `len` bytes (what sendfile sends), one that shrank is an error.
    #[test]
    fn an_upload_is_hashed_over_the_announced_length_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Several hash reads' worth, and a length that ends inside one.
        let data = pattern(3 * UPLOAD_HASH_READ + 1000);
        fs::write(&path, &data).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let hash = |len: u64| {
            let file = File::open(&path).unwrap();
            runtime.block_on(spawn_hash(file, len)).unwrap()
        };
        for len in [
            0,
            1,
            UPLOAD_HASH_READ as u64,
            2 * UPLOAD_HASH_READ as u64 + 17,
        ] {
            let expected = Digest::of(HashAlgo::Blake3, &data[..len as usize]);
            assert_eq!(hash(len).unwrap(), expected, "first {len} bytes");
        }
        let whole = Digest::of(HashAlgo::Blake3, &data);
        assert_eq!(hash(data.len() as u64).unwrap(), whole);
        let past_the_end = hash(data.len() as u64 + 1).unwrap_err();
        assert_eq!(past_the_end.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn read_small_returns_the_whole_file_whatever_fstat_said() {
        for (actual, stated) in [
            (4096, 4096),
            (0, 0),
            // Grew after the stat: by one byte (the one the read asks for beyond the stated
            // size), and by much more.
            (4097, 4096),
            (3, 0),
            (5000, 100),
            (3 * 1024 * 1024, 10),
            // Shrank after the stat.
            (7, 5000),
            (0, 4096),
        ] {
            let (got, data) = read_as_stated(actual, stated);
            assert!(
                got == data,
                "{actual} bytes stated as {stated}: read {} bytes",
                got.len()
            );
        }
    }

    #[test]
    fn rename_noreplace_keeps_what_is_under_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        fs::write(&from, b"new").unwrap();
        fs::write(&to, b"old").unwrap();
        let err = rename_noreplace(&from, &to).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(fs::read(&to).unwrap(), b"old");
        assert_eq!(fs::read(&from).unwrap(), b"new");

        fs::remove_file(&to).unwrap();
        rename_noreplace(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"new");
        assert!(!from.exists());
    }

    #[test]
    fn an_unnamed_download_appears_only_under_a_free_name() {
        let dir = tempfile::tempdir().unwrap();
        let (taken, free) = (dir.path().join("taken"), dir.path().join("free"));
        fs::write(&taken, b"old").unwrap();
        let mut targets = TargetDir::default();
        let mut file = targets
            .create_unnamed(&taken)
            .expect("tmpfs and ext4 have O_TMPFILE");
        file.write_all(b"new bytes").unwrap();
        assert_eq!(names(dir.path()), ["taken"], "no name before the link");

        let err = targets.link(&file, &taken).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(fs::read(&taken).unwrap(), b"old");
        targets.link(&file, &free).unwrap();
        assert_eq!(fs::read(&free).unwrap(), b"new bytes");
        assert_eq!(names(dir.path()), ["free", "taken"]);

        // A second directory is opened in turn; one that is gone has no unnamed files.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let file = targets.create_unnamed(&sub.join("x")).unwrap();
        targets.link(&file, &sub.join("x")).unwrap();
        assert_eq!(names(&sub), ["x"]);
        assert!(targets.create_unnamed(&dir.path().join("gone/x")).is_none());
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}
