//! Runs of pipelined gets and small puts, done in one trip to the blocking pool.
//!
//! Done one by one, every small file cost the server two or three hand-offs between an async
//! worker and a blocking thread. A profile of 2,000 pipelined 4 KiB puts showed ~13 futex
//! calls and 3 epoll waits per file, and three quarters of the server's time in the
//! scheduler rather than in the file system. So the session gathers the gets and small puts
//! already buffered behind the current request (never waiting for more), runs them here in
//! order on one blocking thread, and answers them in order: one hand-off per run.

use bytes::Bytes;
use ferry_proto::{HashAlgo, Reply, WireError};

use super::OpError;
use super::get::{self, Ready};
use super::put::{self, PutArgs};
use crate::home::VPath;
use crate::session::UserFs;

/// Requests in one run at most.
pub const MAX_ITEMS: usize = 256;
/// Body bytes one run holds in memory at most: the puts' bodies it gathered plus the gets'
/// bodies it reads. (A single put may take it past this, up to `put::SMALL_PUT`.)
pub const MAX_BYTES: u64 = 1 << 20;

/// One request of a run; the path is resolved, or its error is the answer.
#[derive(Debug)]
pub enum Item {
    Get {
        id: u64,
        target: Result<VPath, WireError>,
        offset: u64,
        algo: Option<HashAlgo>,
    },
    Put {
        id: u64,
        target: Result<VPath, WireError>,
        args: PutArgs,
        body: Bytes,
    },
}

impl Item {
    /// Memory this item holds before it runs.
    pub fn held(&self) -> u64 {
        match self {
            Item::Get { .. } => 0,
            Item::Put { body, .. } => body.len() as u64,
        }
    }
}

/// One request's outcome, in the run's order.
#[derive(Debug)]
pub enum Done {
    Get(u64, Result<Ready, OpError>),
    Put(u64, Result<Reply, OpError>),
}

/// A run of at least this many puts is split between two threads (see [`run`]).
const SPLIT_AT: usize = 16;

/// Blocking: runs the items, answering in order.
///
/// A run of puts only, all to different paths, is split in two halves that run at once on
/// two threads: they touch different files, so the outcome is the one of running them one
/// by one, and a profile of 2,000 pipelined 4 KiB puts showed the server's blocking thread
/// as the one busy core of the transfer (the file system calls of a put cost ~20 µs, mostly
/// in the kernel). A run with a get, or two puts to one path, runs in order on this thread.
pub fn run(u: &UserFs, mut items: Vec<Item>) -> Vec<Done> {
    if items.len() >= SPLIT_AT && independent_puts(&items) {
        // Each half gets the whole budget: puts read nothing into memory.
        let budget = MAX_BYTES;
        // Behind a lock so that, if no thread can be had, this thread takes the half back.
        let second = std::sync::Mutex::new(Some(items.split_off(items.len() / 2)));
        let take_second = || second.lock().unwrap().take().unwrap_or_default();
        return std::thread::scope(|scope| {
            let other = std::thread::Builder::new()
                .name("ferry-puts".into())
                .spawn_scoped(scope, || run_in_order(u, take_second(), budget));
            let mut done = run_in_order(u, items, budget);
            match other {
                Ok(other) => match other.join() {
                    Ok(rest) => done.extend(rest),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                Err(_) => done.extend(run_in_order(u, take_second(), budget)),
            }
            done
        });
    }
    let budget = MAX_BYTES.saturating_sub(items.iter().map(Item::held).sum());
    run_in_order(u, items, budget)
}

/// Whether the items are all puts, each to another path (or to no valid path at all).
fn independent_puts(items: &[Item]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.iter().all(|item| match item {
        Item::Put { target: Ok(t), .. } => seen.insert(t),
        Item::Put { target: Err(_), .. } => true,
        Item::Get { .. } => false,
    })
}

/// Runs the items in order; `budget` is how many body bytes the gets may still read into
/// memory.
fn run_in_order(u: &UserFs, items: Vec<Item>, mut budget: u64) -> Vec<Done> {
    let mut puts = put::SmallPuts::default();
    let mut gets = get::Gets::default();
    let done = items
        .into_iter()
        .map(|item| match item {
            Item::Get {
                id,
                target,
                offset,
                algo,
            } => Done::Get(
                id,
                target
                    .map_err(OpError::from)
                    .and_then(|t| get::open(u, &mut gets, &t, offset, algo, &mut budget)),
            ),
            Item::Put {
                id,
                target,
                args,
                body,
            } => Done::Put(
                id,
                target
                    .map_err(OpError::from)
                    .and_then(|t| put::put_small(u, &mut puts, &t, &args, &body)),
            ),
        })
        .collect();
    puts.sync();
    done
}
