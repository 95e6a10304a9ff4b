//! Memory-to-memory throughput against a server (`ferry bench`), like iperf3.

use std::time::{Duration, Instant};

use ferry_proto::{Reply, Request, RequestFrame};

use crate::client::{Client, check_id, unexpected};
use crate::error::{ClientError, Result};

/// Bytes one `bench` request moves: large enough that the round trip between requests is
/// noise, small enough to report progress every fraction of a second.
pub const BENCH_CHUNK: u64 = 64 << 20;

/// One interval of a bench run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchSample {
    /// Since the start of the run.
    pub at: Duration,
    pub bytes: u64,
}

impl Client {
    /// Moves `size` bytes one way (`download`: server to client) and returns how long it took.
    pub async fn bench_once(&mut self, size: u64, download: bool) -> Result<Duration> {
        static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];
        let id = self.next_id();
        let mut scratch = self.scratch();
        let started = Instant::now();
        let (mut reader, mut writer) = self.conn.split();
        let frame = RequestFrame {
            id,
            request: Request::Bench { size, download },
            body_len: if download { 0 } else { size },
        };
        writer.queue(&frame).await?;
        if !download {
            let mut left = size;
            while left > 0 {
                let n = left.min(ZEROS.len() as u64) as usize;
                writer.queue_body(&ZEROS[..n]).await?;
                left -= n as u64;
            }
        }
        writer.flush().await?;
        let reply = reader.read_reply().await?;
        check_id(&reply, id)?;
        let result = match reply.result {
            Ok(Reply::Bench { size: got, .. }) if got == size => Ok(()),
            Ok(other) => Err(unexpected("bench", &other)),
            Err(e) => Err(ClientError::Remote(e)),
        };
        if reply.body_len > 0 {
            reader.read_body(&mut scratch, |_| Ok(())).await?;
        }
        self.scratch = scratch;
        result.map(|()| started.elapsed())
    }

    /// Runs for `seconds`, calling `report` after every chunk with the bytes moved so far.
    pub async fn bench(
        &mut self,
        seconds: f64,
        download: bool,
        mut report: impl FnMut(BenchSample),
    ) -> Result<BenchSample> {
        let start = Instant::now();
        let limit = Duration::from_secs_f64(seconds.max(0.01));
        let mut bytes = 0u64;
        while start.elapsed() < limit {
            self.bench_once(BENCH_CHUNK, download).await?;
            bytes += BENCH_CHUNK;
            report(BenchSample {
                at: start.elapsed(),
                bytes,
            });
        }
        Ok(BenchSample {
            at: start.elapsed(),
            bytes,
        })
    }
}
