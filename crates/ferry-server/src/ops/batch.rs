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

/// Blocking: runs the items in order.
pub fn run(u: &UserFs, items: Vec<Item>) -> Vec<Done> {
    let mut budget = MAX_BYTES.saturating_sub(items.iter().map(Item::held).sum());
    let mut puts = put::SmallPuts::default();
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
                    .and_then(|t| get::open(u, &t, offset, algo, &mut budget)),
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
