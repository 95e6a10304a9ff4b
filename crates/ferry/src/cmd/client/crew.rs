//! `--connections N`: one command moving its files over several connections at once.
//!
//! The first connection logs in as every command does; the others (the crew) are opened
//! only once there are files to share out, log in the same way (with the session token the
//! first login used or got, so the server pays for argon2id at most once), and each runs
//! its share of the files in a task of its own on a multi-thread runtime, so that the
//! per-file work of both ends (hashing, writing, the file system's calls) spreads over the
//! cores instead of queueing behind one connection.

use std::future::Future;
use std::num::NonZeroUsize;

use ferry_client::{Client, ClientError, Transferred};

use super::{Relogin, Remote};

/// Connections one command may open, the first included. The server's default limit is 256
/// sessions per user; this leaves room for the user's other commands.
pub const MAX_CONNECTIONS: usize = 64;

pub fn parse_connections(s: &str) -> Result<NonZeroUsize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=MAX_CONNECTIONS) => Ok(NonZeroUsize::new(n).expect("not zero")),
        Ok(_) => Err(format!("must be 1 to {MAX_CONNECTIONS}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The connections besides the first, opened on demand.
pub struct Crew {
    members: Vec<Client>,
    /// Members wanted: `--connections` less the first.
    want: usize,
    /// How to open more; `None` once opening one failed (the command goes on with those it
    /// has) or for a caller that opens none (the shell).
    source: Option<(Remote, Relogin)>,
}

impl Crew {
    /// No crew: everything goes over the first connection.
    pub fn none() -> Self {
        Crew {
            members: Vec::new(),
            want: 0,
            source: None,
        }
    }

    /// Connects and logs in the first connection, and makes a crew that can open up to
    /// `connections - 1` more.
    pub async fn connect(
        remote: &Remote,
        connections: NonZeroUsize,
    ) -> anyhow::Result<(Client, Crew)> {
        let want = connections.get() - 1;
        if want == 0 {
            return Ok((remote.connect().await?, Crew::none()));
        }
        let (client, again) = remote.connect_again_able().await?;
        let crew = Crew {
            members: Vec::new(),
            want,
            source: Some((remote.clone(), again)),
        };
        Ok((client, crew))
    }

    /// Opens, all at once, the members `files` files can use (one file per connection at
    /// most). A connection that cannot be opened is reported once; the transfer goes on over
    /// those open.
    pub async fn man(&mut self, files: usize) {
        let missing = self
            .want
            .min(files.saturating_sub(1))
            .saturating_sub(self.members.len());
        let Some((remote, again)) = self.source.as_ref().filter(|_| missing > 0) else {
            return;
        };
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..missing {
            let (remote, again) = (remote.clone(), again.clone());
            opening.spawn(async move { remote.connect_again(&again).await });
        }
        let mut failed = None;
        while let Some(opened) = opening.join_next().await {
            match opened.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(client) => self.members.push(client),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            eprintln!(
                "ferry: opened {} of {} connections ({e:#}); going on with those",
                self.members.len() + 1,
                self.want + 1
            );
            self.source = None;
        }
    }

    /// Connections wanted besides the first (0: a single-connection transfer).
    pub fn wanted(&self) -> usize {
        self.want
    }

    /// Runs a round of transfers of `items` (of `sizes` bytes) shared out: `own` runs the
    /// first share on the command's own connection (in this task), `member` each other share
    /// on a crew member in a task of its own. Returns the results in item order, whether the
    /// own connection failed, and what `own` returned besides. With no crew, or fewer than
    /// two items, `own` runs them all.
    ///
    /// A member whose connection fails leaves the crew; the items it left unfinished are
    /// reported interrupted (what of them arrived is kept for a resume) and the other shares
    /// go on. A later round opens a connection in its place.
    pub async fn share<I, R, X, F, Fut, Own>(
        &mut self,
        items: &[I],
        sizes: &[u64],
        member: F,
        own: Own,
    ) -> (Transferred<R>, X)
    where
        I: Clone,
        R: Send + 'static,
        F: Fn(Client, Vec<I>) -> Fut,
        Fut: Future<Output = Shift<R>> + Send + 'static,
        Own: AsyncFnOnce(&[I]) -> (Transferred<R>, X),
    {
        self.man(items.len()).await;
        if self.members.is_empty() || items.len() < 2 {
            return own(items).await;
        }
        // No more shares than items: a later round of a tree may have fewer files than
        // there are connections, and an empty share would only cost its member a task.
        let shares = share_out(sizes, (self.members.len() + 1).min(items.len()));
        let (first, others) = shares.split_first().expect("two or more shares");
        let running = self.spawn(others, items, &member);
        let mine: Vec<I> = first.iter().map(|&i| items[i].clone()).collect();
        let (main, besides) = own(&mine).await;
        // Gathered even if the own connection failed: no task is left running.
        let mut parts = vec![main.results];
        let mut again = Vec::new();
        for (share, got) in others.iter().zip(self.gather(running, others).await) {
            if let Some(e) = &got.broken {
                let left: Vec<usize> = share
                    .iter()
                    .zip(&got.results)
                    .filter(|(_, r)| matches!(r, Err(ClientError::Interrupted(_))))
                    .map(|(&i, _)| i)
                    .collect();
                if !left.is_empty() {
                    eprintln!(
                        "ferry: a transfer connection failed ({e}); trying its {} unfinished \
                         file(s) again",
                        left.len()
                    );
                }
                again.extend(left);
            }
            parts.push(got.results);
        }
        let mut results = merge(&shares, parts);
        if !again.is_empty() {
            again.sort_unstable();
            self.retry(items, sizes, &again, &member, &mut results)
                .await;
        }
        let done = Transferred {
            results,
            broken: main.broken,
        };
        (done, besides)
    }

    /// The files of `items` at `again` (indices), which a member whose connection failed left
    /// interrupted, go once more over the members left and those opened in the failed ones'
    /// place, each resuming what arrived; their results replace those in `results`. Without
    /// a connection to take them, they stay interrupted.
    async fn retry<I, R, F, Fut>(
        &mut self,
        items: &[I],
        sizes: &[u64],
        again: &[usize],
        member: &F,
        results: &mut [Result<R, ClientError>],
    ) where
        I: Clone,
        R: Send + 'static,
        F: Fn(Client, Vec<I>) -> Fut,
        Fut: Future<Output = Shift<R>> + Send + 'static,
    {
        // As many connections as files (the command's own is busy no more, but stays out).
        self.man(again.len() + 1).await;
        if self.members.is_empty() {
            return;
        }
        let retried: Vec<I> = again.iter().map(|&i| items[i].clone()).collect();
        let retried_sizes: Vec<u64> = again.iter().map(|&i| sizes[i]).collect();
        let shares = share_out(&retried_sizes, self.members.len().min(retried.len()));
        let running = self.spawn(&shares, &retried, member);
        for (share, got) in shares.iter().zip(self.gather(running, &shares).await) {
            for (&j, r) in share.iter().zip(got.results) {
                results[again[j]] = r;
            }
        }
    }

    /// Runs `work` on `shares[k]` of `items` with the k-th member, each in a task of its
    /// own. [`Crew::gather`] waits for them and takes the members back.
    fn spawn<I, R, F, Fut>(&mut self, shares: &[Vec<usize>], items: &[I], work: F) -> Running<R>
    where
        I: Clone,
        R: Send + 'static,
        F: Fn(Client, Vec<I>) -> Fut,
        Fut: Future<Output = Shift<R>> + Send + 'static,
    {
        debug_assert!(shares.len() <= self.members.len());
        let members = self.members.drain(..shares.len()).collect::<Vec<_>>();
        let tasks = members
            .into_iter()
            .zip(shares)
            .map(|(client, share)| {
                let mine = share.iter().map(|&i| items[i].clone()).collect();
                tokio::spawn(work(client, mine))
            })
            .collect();
        Running { tasks }
    }

    /// The results of each share [`Crew::spawn`] started for `shares`, in its order; the
    /// members whose connection is still usable rejoin the crew.
    async fn gather<R>(
        &mut self,
        running: Running<R>,
        shares: &[Vec<usize>],
    ) -> Vec<Transferred<R>> {
        let mut out = Vec::with_capacity(running.tasks.len());
        for (task, share) in running.tasks.into_iter().zip(shares) {
            match task.await {
                Ok((client, done)) => {
                    if done.broken.is_none() {
                        self.members.push(client);
                    }
                    out.push(done);
                }
                Err(e) => {
                    let e = ClientError::Local(format!("a transfer connection's task failed: {e}"));
                    out.push(Transferred {
                        results: share
                            .iter()
                            .map(|_| Err(ClientError::interrupted(&e)))
                            .collect(),
                        broken: Some(e),
                    });
                }
            }
        }
        out
    }

    /// Says goodbye on every member.
    pub async fn quit(&mut self) {
        for client in self.members.drain(..) {
            let _ = client.quit().await;
        }
    }
}

/// What a member's task gives back: the member, and its share's results.
type Shift<R> = (Client, Transferred<R>);

/// Shares running on crew members.
#[must_use = "gather the results"]
struct Running<R> {
    tasks: Vec<tokio::task::JoinHandle<Shift<R>>>,
}

/// Splits items of `sizes` into `n` shares of about equal bytes (and, for equal sizes,
/// equal counts): each item goes to the share with the fewest bytes so far, so each share
/// keeps the items' order. Returns the items' indices per share; no share is empty unless
/// there are fewer items than shares, and then only the last ones are.
pub fn share_out(sizes: &[u64], n: usize) -> Vec<Vec<usize>> {
    let n = n.max(1);
    let mut shares: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); n];
    for (i, &size) in sizes.iter().enumerate() {
        // Ties go to the share with fewer items, then the first: round robin for equal sizes.
        let k = (0..n)
            .min_by_key(|&k| (shares[k].0, shares[k].1.len(), k))
            .expect("n >= 1");
        // Every item costs a little (a header, a file created): count at least 4 KiB.
        shares[k].0 += size.max(4096);
        shares[k].1.push(i);
    }
    shares.into_iter().map(|(_, s)| s).collect()
}

/// Puts per-share results back in item order: `parts[k][j]` is the result of item
/// `shares[k][j]`.
pub fn merge<R>(shares: &[Vec<usize>], parts: Vec<Vec<R>>) -> Vec<R> {
    let total = shares.iter().map(Vec::len).sum();
    let mut slots: Vec<Option<R>> = (0..total).map(|_| None).collect();
    for (share, part) in shares.iter().zip(parts) {
        debug_assert_eq!(share.len(), part.len());
        for (&i, r) in share.iter().zip(part) {
            slots[i] = Some(r);
        }
    }
    slots
        .into_iter()
        .map(|r| r.expect("every item is in one share"))
        .collect()
}

/// Runs a client command body: on a current-thread runtime for one connection, on a
/// multi-thread one (a worker per extra connection, at most one per core) for more.
pub fn block_on<F: Future>(connections: NonZeroUsize, f: F) -> F::Output {
    if connections.get() == 1 {
        return super::block_on(f);
    }
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads((connections.get() - 1).clamp(1, cores))
        .enable_all()
        .build()
        .expect("building the tokio runtime")
        .block_on(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sizes_go_round_robin_and_order_is_kept() {
        let shares = share_out(&[10; 7], 3);
        assert_eq!(shares, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
    }

    #[test]
    fn shares_balance_bytes() {
        // One large file and many small ones: the large one gets a share to itself.
        let mut sizes = vec![1 << 30];
        sizes.extend([4096u64; 10]);
        let shares = share_out(&sizes, 2);
        assert_eq!(shares[0], vec![0]);
        assert_eq!(shares[1], (1..11).collect::<Vec<_>>());
        // Empty files still count, so they are shared out too.
        assert_eq!(share_out(&[0; 4], 2), vec![vec![0, 2], vec![1, 3]]);
    }

    #[test]
    fn fewer_items_than_shares_leaves_the_last_ones_empty() {
        assert_eq!(
            share_out(&[5, 5], 4),
            vec![vec![0], vec![1], vec![], vec![]]
        );
        assert_eq!(share_out(&[], 2), vec![Vec::<usize>::new(), vec![]]);
        assert_eq!(share_out(&[1, 2, 3], 1), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn merge_undoes_share_out() {
        let sizes: Vec<u64> = (0..50).map(|i| (i * 7919) % 1000).collect();
        for n in 1..6 {
            let shares = share_out(&sizes, n);
            let parts: Vec<Vec<usize>> = shares.clone();
            assert_eq!(merge(&shares, parts), (0..50).collect::<Vec<_>>());
        }
    }

    #[test]
    fn connections_are_bounded() {
        assert_eq!(parse_connections("1").unwrap().get(), 1);
        assert_eq!(parse_connections("64").unwrap().get(), 64);
        for bad in ["0", "65", "-1", "x", ""] {
            assert!(parse_connections(bad).is_err(), "{bad}");
        }
    }
}
