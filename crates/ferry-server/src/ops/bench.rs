//! `bench`: memory-to-memory throughput, like iperf3. A download is answered with filler bytes
//! from memory; an upload's body is read and dropped. No disk and no hashing, so a user can
//! tell the network (and the TLS cost) from the rest of a transfer.

use ferry_proto::Reply;

pub fn reply(size: u64, download: bool) -> Reply {
    Reply::Bench { size, download }
}
