//! A Bloom filter of the uuids in one stored row (`round_uuids.filter`), so that a lookup by
//! uuid (datagrepper's `/id`) reads a few bytes per row instead of decoding every row.
//!
//! An index on the uuids themselves would be exact, but random keys land all over its
//! B-tree, and that tripled the journal thread's CPU per append. One filter row per stored
//! row is appended in seq order like the rows are. 16 bits per uuid and 6 probes leave
//! about one false positive in a thousand rows; a false positive costs decoding that row,
//! never a wrong answer, since the lookup compares the uuids it decodes.
//!
//! The hash is FNV-1a (64 bits), fixed by this file: filters are stored, so every hark
//! that reads a journal must hash a uuid as the one that wrote it did.

const BITS_PER_UUID: usize = 16;
const PROBES: u64 = 6;
const MIN_BYTES: usize = 8;

/// The stored hash of a uuid.
pub fn hash(uuid: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uuid.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bits a hash sets in a filter of `bits` bits (double hashing: h1 + i·h2).
fn probes(h: u64, bits: u64) -> impl Iterator<Item = u64> {
    let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
    (0..PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

/// The filter of a row holding these hashes.
pub fn build(hashes: &[u64]) -> Vec<u8> {
    let bytes = (hashes.len() * BITS_PER_UUID / 8).max(MIN_BYTES);
    let mut filter = vec![0u8; bytes];
    let bits = (bytes * 8) as u64;
    for &h in hashes {
        for bit in probes(h, bits) {
            filter[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    filter
}

/// False only when the row cannot hold the uuid of `h`.
pub fn may_hold(filter: &[u8], h: u64) -> bool {
    if filter.is_empty() {
        return true;
    }
    let bits = (filter.len() * 8) as u64;
    probes(h, bits).all(|bit| filter[(bit / 8) as usize] & (1 << (bit % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_uuid_put_in_is_found_and_few_others_are() {
        let ids: Vec<String> = (0..1000).map(|i| format!("uuid-{i}")).collect();
        let filter = build(&ids.iter().map(|u| hash(u)).collect::<Vec<_>>());
        assert_eq!(filter.len(), 2000);
        assert!(ids.iter().all(|u| may_hold(&filter, hash(u))));
        let false_positives = (0..100_000)
            .filter(|i| may_hold(&filter, hash(&format!("other-{i}"))))
            .count();
        // 16 bits and 6 probes per uuid: about 0.1 %.
        assert!(false_positives < 500, "{false_positives} of 100000");
    }

    #[test]
    fn the_hash_is_the_stored_one() {
        // FNV-1a 64 test vectors: a changed hash would make every stored filter lie.
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn an_empty_row_and_a_lone_uuid_have_the_minimum_size() {
        assert_eq!(build(&[]).len(), MIN_BYTES);
        let one = build(&[hash("x")]);
        assert_eq!(one.len(), MIN_BYTES);
        assert!(may_hold(&one, hash("x")));
    }
}
