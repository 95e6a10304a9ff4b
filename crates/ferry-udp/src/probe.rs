//! The ping probe: a fixed 32-byte header and a padding tail, as pure encode/decode functions.
//!
//! Byte layout (all integers big-endian; `docs/UDP.md` is the human-readable counterpart):
//!
//! | offset | size | field                                                                 |
//! |-------:|-----:|-----------------------------------------------------------------------|
//! |      0 |    3 | magic `fry` (`66 72 79`), lowercase on purpose                         |
//! |      3 |    1 | version, [`VERSION`]                                                  |
//! |      4 |    4 | CRC-32 (IEEE) of the whole datagram with these four bytes zeroed      |
//! |      8 |    8 | session id, random per run                                            |
//! |     16 |    8 | sequence number, the first probe of a run is 1                        |
//! |     24 |    8 | send time, nanoseconds since the run started (sender's monotonic clock) |
//! |     32 |    … | padding up to the probe size: byte at offset `i` is `b'a' + i % 26`   |
//!
//! An echo server that upper-cases turns the magic into `FRY`; [`decode`] names that case
//! ([`DecodeError::UpperCased`]) so the ping can tell the user what is wrong. Any other change
//! to the bytes (truncation, a flipped bit, upper-cased padding) fails the checksum.

use crc32fast::Hasher;
use thiserror::Error;

/// The three magic bytes that open every probe.
pub const MAGIC: [u8; 3] = *b"fry";
/// What an upper-casing echo server makes of [`MAGIC`].
const UPPER_MAGIC: [u8; 3] = *b"FRY";
/// The probe format version this code writes and accepts.
pub const VERSION: u8 = 1;
/// Bytes before the padding; also the smallest probe.
pub const HEADER_LEN: usize = 32;

const CHECKSUM_RANGE: std::ops::Range<usize> = 4..8;

/// The fields a probe carries; its size is the length of the datagram it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub session: u64,
    pub seq: u64,
    /// Nanoseconds since the sending run started, echoed back unchanged.
    pub sent_ns: u64,
}

/// Why a datagram is not a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("too short for a probe ({len} bytes, need at least {HEADER_LEN})")]
    Truncated { len: usize },
    /// The magic came back as `FRY`: the echo server upper-cases (`--upper`).
    #[error("probe came back upper-cased (is the server running with --upper?)")]
    UpperCased,
    #[error("not a probe (bad magic)")]
    BadMagic,
    #[error("unsupported probe version {0}")]
    UnsupportedVersion(u8),
    #[error("probe checksum mismatch (bytes changed in transit)")]
    BadChecksum,
}

/// Why a probe cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("probe size {size} is below the {HEADER_LEN}-byte header")]
pub struct SizeError {
    pub size: usize,
}

/// Writes `probe` as a datagram of exactly `size` bytes.
pub fn encode(probe: &Probe, size: usize) -> Result<Vec<u8>, SizeError> {
    if size < HEADER_LEN {
        return Err(SizeError { size });
    }
    let mut buf = Vec::with_capacity(size);
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&probe.session.to_be_bytes());
    buf.extend_from_slice(&probe.seq.to_be_bytes());
    buf.extend_from_slice(&probe.sent_ns.to_be_bytes());
    buf.extend((HEADER_LEN..size).map(|i| b'a' + (i % 26) as u8));
    let sum = checksum(&buf);
    buf[CHECKSUM_RANGE].copy_from_slice(&sum.to_be_bytes());
    Ok(buf)
}

/// Writes probes of one size fast enough that the send timestamp is not skewed by the size.
///
/// [`encode`] builds and checksums the whole datagram, which for 65,507 bytes costs more than a
/// loopback round trip and would land in every RTT, since the send time is taken before
/// encoding. The padding never changes within a run, so this keeps one buffer with the padding
/// written once and its CRC known, and per probe only writes and checksums the 32-byte header,
/// joining the two CRCs with [`Hasher::combine`] (zlib's `crc32_combine`: one multiplication
/// modulo the CRC polynomial per set bit of the padding length, at most 16 at any UDP size).
/// The bytes are identical to [`encode`]'s.
#[derive(Debug, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
    /// The CRC of the padding, which also knows the padding's length.
    padding: Hasher,
}

impl Encoder {
    pub fn new(size: usize) -> Result<Self, SizeError> {
        let blank = Probe {
            session: 0,
            seq: 0,
            sent_ns: 0,
        };
        let buf = encode(&blank, size)?;
        let mut padding = Hasher::new();
        padding.update(&buf[HEADER_LEN..]);
        Ok(Self { buf, padding })
    }

    /// The probe as a datagram, valid until the next call.
    pub fn encode(&mut self, probe: &Probe) -> &[u8] {
        let header = &mut self.buf[..HEADER_LEN];
        header[CHECKSUM_RANGE].fill(0);
        header[8..16].copy_from_slice(&probe.session.to_be_bytes());
        header[16..24].copy_from_slice(&probe.seq.to_be_bytes());
        header[24..32].copy_from_slice(&probe.sent_ns.to_be_bytes());
        let mut hasher = Hasher::new();
        hasher.update(header);
        hasher.combine(&self.padding);
        header[CHECKSUM_RANGE].copy_from_slice(&hasher.finalize().to_be_bytes());
        &self.buf
    }
}

/// Reads a probe from a whole datagram; never panics, whatever the bytes.
pub fn decode(datagram: &[u8]) -> Result<Probe, DecodeError> {
    if datagram.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            len: datagram.len(),
        });
    }
    if datagram[..3] != MAGIC {
        return Err(if datagram[..3] == UPPER_MAGIC {
            DecodeError::UpperCased
        } else {
            DecodeError::BadMagic
        });
    }
    if datagram[3] != VERSION {
        return Err(DecodeError::UnsupportedVersion(datagram[3]));
    }
    let stored = u32::from_be_bytes(be_array(&datagram[CHECKSUM_RANGE]));
    if stored != checksum(datagram) {
        return Err(DecodeError::BadChecksum);
    }
    Ok(Probe {
        session: u64::from_be_bytes(be_array(&datagram[8..16])),
        seq: u64::from_be_bytes(be_array(&datagram[16..24])),
        sent_ns: u64::from_be_bytes(be_array(&datagram[24..32])),
    })
}

fn be_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("caller slices exactly N bytes")
}

/// CRC-32/IEEE (the one in zlib and Ethernet) of `datagram` as if its checksum field were zero.
fn checksum(datagram: &[u8]) -> u32 {
    let mut hasher = Hasher::new();
    hasher.update(&datagram[..CHECKSUM_RANGE.start]);
    hasher.update(&[0; 4]);
    hasher.update(&datagram[CHECKSUM_RANGE.end..]);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: Probe = Probe {
        session: 0x0123_4567_89ab_cdef,
        seq: 7,
        sent_ns: 1_500_000,
    };

    #[test]
    fn round_trips_at_every_interesting_size() {
        for size in [HEADER_LEN, HEADER_LEN + 1, 64, 1500, crate::MAX_DATAGRAM] {
            let bytes = encode(&SAMPLE, size).unwrap();
            assert_eq!(bytes.len(), size);
            assert_eq!(decode(&bytes), Ok(SAMPLE));
        }
    }

    #[test]
    fn layout_matches_the_documentation() {
        let bytes = encode(&SAMPLE, 40).unwrap();
        assert_eq!(&bytes[..4], b"fry\x01");
        assert_eq!(
            &bytes[8..16],
            &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        );
        assert_eq!(&bytes[16..24], &7u64.to_be_bytes());
        assert_eq!(&bytes[24..32], &1_500_000u64.to_be_bytes());
        assert_eq!(&bytes[32..], b"ghijklmn");
    }

    #[test]
    fn the_documented_example_is_byte_exact() {
        // docs/UDP.md's example; the checksum was computed independently with zlib.crc32.
        let expected = [
            0x66, 0x72, 0x79, 0x01, 0xea, 0xf1, 0xc9, 0x59, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0, 0, 0, 0x16, 0xe3, 0x60, 0x67, 0x68,
            0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e,
        ];
        assert_eq!(encode(&SAMPLE, 40).unwrap(), expected);
    }

    #[test]
    fn the_encoder_writes_the_same_bytes_as_encode() {
        for size in [HEADER_LEN, HEADER_LEN + 1, 64, 1500, crate::MAX_DATAGRAM] {
            let mut encoder = Encoder::new(size).unwrap();
            for seq in [1, 2, u64::MAX] {
                let probe = Probe { seq, ..SAMPLE };
                assert_eq!(
                    encoder.encode(&probe),
                    encode(&probe, size).unwrap(),
                    "{size}"
                );
            }
        }
        assert!(Encoder::new(HEADER_LEN - 1).is_err());
    }

    #[test]
    fn refuses_sizes_below_the_header() {
        assert_eq!(
            encode(&SAMPLE, HEADER_LEN - 1),
            Err(SizeError {
                size: HEADER_LEN - 1
            })
        );
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = encode(&SAMPLE, 100).unwrap();
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).unwrap_err();
            if len < HEADER_LEN {
                assert_eq!(err, DecodeError::Truncated { len });
            } else {
                assert_eq!(err, DecodeError::BadChecksum, "cut at {len}");
            }
        }
    }

    #[test]
    fn upper_casing_is_detected() {
        let mut bytes = encode(&SAMPLE, 64).unwrap();
        bytes.make_ascii_uppercase();
        assert_eq!(decode(&bytes), Err(DecodeError::UpperCased));
    }

    #[test]
    fn any_single_bit_flip_is_rejected() {
        let bytes = encode(&SAMPLE, 48).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn other_versions_and_magics_are_named() {
        let mut bytes = encode(&SAMPLE, 64).unwrap();
        bytes[3] = 2;
        assert_eq!(decode(&bytes), Err(DecodeError::UnsupportedVersion(2)));
        bytes[0] = b'x';
        assert_eq!(decode(&bytes), Err(DecodeError::BadMagic));
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic generator: the point is many shapes of input, not randomness.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let len = round % 80;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&bytes);
            let mut with_magic = bytes.clone();
            if with_magic.len() >= 4 {
                with_magic[..4].copy_from_slice(b"fry\x01");
                assert!(decode(&with_magic).is_err());
            }
        }
    }
}
