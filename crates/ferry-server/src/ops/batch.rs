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

/// A run of at least this many puts is shared by two threads (see [`run`]).
const SPLIT_AT: usize = 8;

/// Blocking: runs the items, answering in order.
///
/// A run of puts only, all to different paths, is shared by two threads, each taking the
/// next item not yet taken until none is left: the puts touch different files, so the outcome
/// is the one of running them one by one, and a profile of 2,000 pipelined 4 KiB puts showed
/// the server's blocking thread as the one busy core of the transfer (the file-system calls
/// of a put cost ~20 µs, mostly in the kernel). Taking items one at a time rather than a half
/// each keeps both threads busy to the end. A run with a get, or two puts to one path, runs
/// in order on this thread.
pub fn run(u: &UserFs, items: Vec<Item>) -> Vec<Done> {
    if items.len() >= SPLIT_AT && independent_puts(&items) {
        return run_shared(u, items);
    }
    let budget = MAX_BYTES.saturating_sub(items.iter().map(Item::held).sum());
    run_in_order(u, items, budget)
}

/// Runs independent items on this thread and one more, answering in order.
fn run_shared(u: &UserFs, items: Vec<Item>) -> Vec<Done> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = items.len();
    let slots: Vec<Mutex<Option<Item>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let done: Vec<Mutex<Option<Done>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        let mut puts = put::SmallPuts::default();
        let mut gets = get::Gets::default();
        // Puts read nothing into memory: the budget is the gets', and there are none.
        let mut budget = MAX_BYTES;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = slots.get(i).and_then(|s| s.lock().unwrap().take()) else {
                break;
            };
            *done[i].lock().unwrap() = Some(run_one(u, &mut puts, &mut gets, item, &mut budget));
        }
        puts.sync();
    };
    std::thread::scope(|scope| {
        // Without a second thread this one does all of it.
        let other = std::thread::Builder::new()
            .name("ferry-puts".into())
            .spawn_scoped(scope, work);
        work();
        if let Ok(other) = other {
            if let Err(panic) = other.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    done.into_iter()
        .map(|d| d.into_inner().unwrap().expect("every item was run"))
        .collect()
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
        .map(|item| run_one(u, &mut puts, &mut gets, item, &mut budget))
        .collect();
    puts.sync();
    done
}

/// Runs one item; the caller calls [`put::SmallPuts::sync`] before answering.
fn run_one(
    u: &UserFs,
    puts: &mut put::SmallPuts,
    gets: &mut get::Gets,
    item: Item,
    budget: &mut u64,
) -> Done {
    match item {
        Item::Get {
            id,
            target,
            offset,
            algo,
        } => Done::Get(
            id,
            target
                .map_err(OpError::from)
                .and_then(|t| get::open(u, gets, &t, offset, algo, budget)),
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
                .and_then(|t| put::put_small(u, puts, &t, &args, &body)),
        ),
    }
}
