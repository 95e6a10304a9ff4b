//! `ferry bench`: memory-to-memory throughput against a ferry server, like iperf3, so a user
//! can tell the network (and TLS) from the disk.

use std::process::ExitCode;

use super::client::{Remote, block_on};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to run, in seconds.
    #[arg(long, short = 't', default_value_t = 5.0)]
    pub seconds: f64,
    /// Server to client (download) instead of client to server (upload), as iperf3's -R.
    #[arg(long, short = 'R')]
    pub reverse: bool,
    /// Print one JSON document on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        anyhow::bail!("--seconds must be between 0 and 3600");
    }
    block_on(async {
        let mut client = args.remote.connect().await?;
        let direction = if args.reverse { "download" } else { "upload" };
        let transport = if client.is_tls() { "TLS" } else { "plain TCP" };
        if !args.json {
            outln!(
                "ferry bench: {direction} with {} over {transport} for {} s (memory to memory)",
                args.remote.server,
                args.seconds
            );
        }
        let mut intervals = Vec::new();
        let (mut last_at, mut last_bytes) = (0.0f64, 0u64);
        let json = args.json;
        let total = client
            .bench(args.seconds, args.reverse, |s| {
                let at = s.at.as_secs_f64();
                if at - last_at >= 1.0 {
                    let bytes = s.bytes - last_bytes;
                    if !json {
                        outln!("{}", line(last_at, at, bytes, ""));
                    }
                    intervals.push(serde_json::json!({
                        "start": last_at, "end": at, "bytes": bytes,
                        "bits_per_second": bits_per_second(bytes, at - last_at),
                    }));
                    (last_at, last_bytes) = (at, s.bytes);
                }
            })
            .await?;
        let secs = total.at.as_secs_f64();
        if json {
            outln!(
                "{}",
                serde_json::json!({
                    "direction": direction, "transport": transport, "seconds": secs,
                    "bytes": total.bytes,
                    "bits_per_second": bits_per_second(total.bytes, secs),
                    "intervals": intervals,
                })
            );
        } else {
            outln!("{}", line(0.0, secs, total.bytes, "  total"));
        }
        let _ = client.quit().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn bits_per_second(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs.max(1e-9)
}

fn line(from: f64, to: f64, bytes: u64, tag: &str) -> String {
    format!(
        "[{from:6.2}-{to:6.2} s] {:>10.2} MiB {:>8.2} Gbit/s{tag}",
        bytes as f64 / (1024.0 * 1024.0),
        bits_per_second(bytes, to - from) / 1e9
    )
}
