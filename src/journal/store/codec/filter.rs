//! Bloom filters over the postings of a run: "may this run hold entity E",
//! "may it hold an event (E, ts, name tag)". A lookup reads a run only
//! where its filter says maybe, and the writer's dedup check of a new
//! entity event then rarely reads the index at all.
//!
//! Written here rather than taken from a crate because the bits are stored
//! in the journal's files: the hash and the bit positions are part of the
//! on-disk format and must never change with a dependency's version.
//! Stored form: `k u8 · bits as u64 LE words`.

use super::CodecError;

/// Bits per key of an entity filter: about 2 % false positives (with 6
/// probes), each of which costs an entity query one more read.
pub const ENTITY_BITS: usize = 8;
/// Bits per key of an event filter: about 0.3 % false positives (8
/// probes). The writer probes every run's event filter for every new
/// entity event, so its false positives cost reads of the postings on the
/// writer's path; at 8 bits they were a third of its dedup time.
pub const EVENT_BITS: usize = 12;

/// A Bloom filter over 64-bit key hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    probes: u8,
    words: Box<[u64]>,
}

impl Filter {
    /// An empty filter sized for `keys` keys at `bits_per_key`, with the
    /// number of probes that gives the fewest false positives (bits × ln 2).
    pub fn with_keys(keys: usize, bits_per_key: usize) -> Filter {
        let words = (keys * bits_per_key).div_ceil(64).max(1);
        let probes = ((bits_per_key as f64) * std::f64::consts::LN_2).round() as u8;
        Filter {
            probes: probes.clamp(1, 16),
            words: vec![0; words].into_boxed_slice(),
        }
    }

    fn positions(&self, hash: u64) -> impl Iterator<Item = usize> {
        // Double hashing (Kirsch–Mitzenmacher): probe i is h1 + i·h2.
        let bits = (self.words.len() * 64) as u64;
        let h1 = hash;
        let h2 = mix(hash) | 1;
        (0..u64::from(self.probes))
            .map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize)
    }

    /// Adds a key.
    pub fn insert(&mut self, hash: u64) {
        for bit in self.positions(hash).collect::<Vec<_>>() {
            self.words[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// Whether the key may have been added (never `false` for one that was).
    pub fn may_contain(&self, hash: u64) -> bool {
        self.positions(hash)
            .all(|bit| self.words[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Bytes in memory, roughly.
    pub fn heap_bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.words.len() * 8);
        out.push(self.probes);
        for w in self.words.iter() {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Reads the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Filter, CodecError> {
        let (&probes, words) = bytes
            .split_first()
            .ok_or(CodecError::Postings("empty filter"))?;
        if probes == 0 || words.is_empty() || words.len() % 8 != 0 {
            return Err(CodecError::Postings("filter size"));
        }
        Ok(Filter {
            probes,
            words: words
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("chunks of 8")))
                .collect(),
        })
    }
}

/// SplitMix64's finaliser: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a over `bytes`, continuing from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The hash an entity filter holds for `entity`.
pub fn entity_hash(entity: &[u8]) -> u64 {
    mix(fnv(FNV_OFFSET, entity))
}

/// The hash an event filter holds for an event of `entity` with `ts` and
/// name tag `tag` (what identifies an entity event for dedup).
pub fn event_hash(entity: &[u8], ts: u64, tag: u16) -> u64 {
    let h = fnv(FNV_OFFSET, entity);
    let h = fnv(h, &[0xff]);
    let h = fnv(h, &ts.to_le_bytes());
    mix(fnv(h, &tag.to_le_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_keys_are_found_and_few_others_are() {
        let n = 5_000;
        let mut f = Filter::with_keys(n, ENTITY_BITS);
        for i in 0..n as u64 {
            f.insert(event_hash(i.to_string().as_bytes(), 1_700_000_000 + i, 7));
        }
        for i in 0..n as u64 {
            assert!(f.may_contain(event_hash(i.to_string().as_bytes(), 1_700_000_000 + i, 7)));
        }
        let false_positives = (n as u64..2 * n as u64)
            .filter(|i| f.may_contain(event_hash(i.to_string().as_bytes(), 1, 7)))
            .count();
        assert!(false_positives < n / 20, "{false_positives} of {n}");
        let back = Filter::from_bytes(&f.to_bytes()).unwrap();
        assert_eq!(back, f);
        assert!(Filter::from_bytes(&[5, 1, 2]).is_err());
        assert!(Filter::from_bytes(&[]).is_err());
    }

    #[test]
    fn hashes_are_part_of_the_format() {
        // Stored filters hold these values: they must never change.
        assert_eq!(entity_hash(b"42"), 0xa428_ce54_7116_3b02);
        assert_eq!(event_hash(b"42", 1_700_000_000, 7), 0x5b71_5b81_9e45_22df);
    }
}
