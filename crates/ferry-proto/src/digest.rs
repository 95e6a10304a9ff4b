//! Integrity values, written `algo:hex` on the wire (`blake3:af13…`, `md5:9e10…`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A hash algorithm a client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgo {
    /// The default: fast, parallel, and what ferry records.
    #[default]
    Blake3,
    Sha256,
    /// The course's algorithm, and what a Python standard-library client has at hand.
    Md5,
}

impl HashAlgo {
    pub const ALL: [HashAlgo; 3] = [HashAlgo::Blake3, HashAlgo::Sha256, HashAlgo::Md5];

    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Blake3 => "blake3",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Md5 => "md5",
        }
    }

    /// Length of the raw digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgo::Blake3 | HashAlgo::Sha256 => 32,
            HashAlgo::Md5 => 16,
        }
    }

    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blake3" => Ok(HashAlgo::Blake3),
            "sha256" => Ok(HashAlgo::Sha256),
            "md5" => Ok(HashAlgo::Md5),
            other => Err(DigestParseError::UnknownAlgo(other.to_owned())),
        }
    }
}

/// Why a string is not a valid `algo:hex` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("digest must be written algo:hex")]
    MissingColon,
    #[error("unknown hash algorithm {0:?} (expected blake3, sha256 or md5)")]
    UnknownAlgo(String),
    #[error("digest hex is not valid lowercase hexadecimal")]
    BadHex,
    #[error("{algo} digest must be {expected} bytes, got {got}")]
    BadLength {
        algo: HashAlgo,
        expected: usize,
        got: usize,
    },
}

/// A digest together with the algorithm that produced it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algo: HashAlgo,
    bytes: Vec<u8>,
}

impl Digest {
    /// Builds a digest, checking the length matches the algorithm.
    pub fn new(algo: HashAlgo, bytes: Vec<u8>) -> Result<Self, DigestParseError> {
        if bytes.len() != algo.digest_len() {
            return Err(DigestParseError::BadLength {
                algo,
                expected: algo.digest_len(),
                got: bytes.len(),
            });
        }
        Ok(Digest { algo, bytes })
    }

    /// Hashes a whole slice in one call.
    pub fn of(algo: HashAlgo, data: &[u8]) -> Self {
        let mut h = Hasher::new(algo);
        h.update(data);
        h.finalize()
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn to_hex(&self) -> String {
        let mut buf = [0u8; 2 * MAX_DIGEST_LEN];
        encode_hex(&self.bytes, &mut buf).to_owned()
    }
}

/// The longest digest of any [`HashAlgo`], in bytes.
const MAX_DIGEST_LEN: usize = 32;

/// Lowercase hex of `bytes` in `buf`. Digests are written and read for every file of a
/// listing or transfer, so this and [`decode_hex`] work on the stack, byte by byte, rather
/// than through an allocating iterator.
fn encode_hex<'a>(bytes: &[u8], buf: &'a mut [u8; 2 * MAX_DIGEST_LEN]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in buf.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    std::str::from_utf8(&buf[..2 * bytes.len()]).expect("hex digits are ASCII")
}

/// The bytes of lowercase hex; `None` for an odd length or any other character (uppercase
/// included: accepting both would give one digest two spellings).
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let hex = hex.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        bytes.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
    }
    Some(bytes)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 2 * MAX_DIGEST_LEN];
        f.write_str(self.algo.name())?;
        f.write_str(":")?;
        f.write_str(encode_hex(&self.bytes, &mut buf))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex_part) = s.split_once(':').ok_or(DigestParseError::MissingColon)?;
        let algo: HashAlgo = algo.parse()?;
        let bytes = decode_hex(hex_part).ok_or(DigestParseError::BadHex)?;
        Digest::new(algo, bytes)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Parses the string where the deserializer has it, without a copy of its own.
        struct DigestText;
        impl serde::de::Visitor<'_> for DigestText {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a digest string algo:hex")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Digest, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(DigestText)
    }
}

/// A streaming hasher for any [`HashAlgo`].
#[derive(Clone)]
pub enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
    Md5(md5::Md5),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Self {
        use sha2::Digest as _;
        match algo {
            HashAlgo::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            HashAlgo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Md5 => Hasher::Md5(md5::Md5::new()),
        }
    }

    pub fn algo(&self) -> HashAlgo {
        match self {
            Hasher::Blake3(_) => HashAlgo::Blake3,
            Hasher::Sha256(_) => HashAlgo::Sha256,
            Hasher::Md5(_) => HashAlgo::Md5,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Blake3(h) => {
                h.update(data);
            }
            Hasher::Sha256(h) => h.update(data),
            Hasher::Md5(h) => h.update(data),
        }
    }

    pub fn finalize(self) -> Digest {
        use sha2::Digest as _;
        let (algo, bytes) = match self {
            Hasher::Blake3(h) => (HashAlgo::Blake3, h.finalize().as_bytes().to_vec()),
            Hasher::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            Hasher::Md5(h) => (HashAlgo::Md5, h.finalize().to_vec()),
        };
        Digest { algo, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(
            Digest::of(HashAlgo::Md5, b"abc").to_string(),
            "md5:900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            Digest::of(HashAlgo::Sha256, b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Digest::of(HashAlgo::Blake3, b"abc").to_string(),
            "blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn round_trip_and_rejects() {
        let d = Digest::of(HashAlgo::Blake3, b"ferry");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!("md5".parse::<Digest>(), Err(DigestParseError::MissingColon));
        assert!(matches!(
            "crc32:00".parse::<Digest>(),
            Err(DigestParseError::UnknownAlgo(_))
        ));
        assert_eq!("md5:zz".parse::<Digest>(), Err(DigestParseError::BadHex));
        assert_eq!(
            "md5:900150983CD24FB0D6963F7D28E17F72".parse::<Digest>(),
            Err(DigestParseError::BadHex)
        );
        assert!(matches!(
            "md5:0011".parse::<Digest>(),
            Err(DigestParseError::BadLength { got: 2, .. })
        ));
    }

    proptest::proptest! {
        /// The table-driven hex agrees with `{:02x}` both ways, and nothing but the one
        /// lowercase spelling of a digest parses as it.
        #[test]
        fn hex_matches_the_formatter(bytes in proptest::collection::vec(proptest::num::u8::ANY, 16..=16), noise in "[0-9a-fA-Fg:]{0,40}") {
            let reference: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let d = Digest::new(HashAlgo::Md5, bytes.clone()).unwrap();
            proptest::prop_assert_eq!(d.to_string(), format!("md5:{reference}"));
            proptest::prop_assert_eq!(d.to_hex(), reference.clone());
            proptest::prop_assert_eq!(format!("md5:{reference}").parse::<Digest>(), Ok(d.clone()));
            let upper = format!("md5:{}", reference.to_uppercase());
            if upper != format!("md5:{reference}") {
                proptest::prop_assert_eq!(upper.parse::<Digest>(), Err(DigestParseError::BadHex));
            }
            let parsed = format!("md5:{noise}").parse::<Digest>();
            let canonical = noise.len() == 32 && noise.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
            proptest::prop_assert_eq!(parsed.is_ok(), canonical);
            if let Ok(p) = parsed {
                proptest::prop_assert_eq!(p.to_hex(), noise);
            }
        }
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        for algo in HashAlgo::ALL {
            let mut h = Hasher::new(algo);
            for chunk in data.chunks(777) {
                h.update(chunk);
            }
            assert_eq!(h.finalize(), Digest::of(algo, &data));
        }
    }
}
