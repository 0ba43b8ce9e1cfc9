//! A hasher for the tables keyed by what the kernel hands out, looked up once or more
//! per HTTP exchange: pids, socket addresses in kernel memory, exchange ids. The
//! standard library's `SipHash` (about a tenth of the stage thread's time in a profile
//! under load) guards against keys an attacker chooses; these are not chosen from
//! outside, so one multiply-rotate round per word does (the scheme of rustc's `FxHash`).
//! Tables keyed by peers' addresses and ports keep `SipHash`.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// A `HashMap` keyed by kernel-given integers.
pub type KernelKeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KernelKeyHasher>>;

#[derive(Clone, Copy, Default)]
pub struct KernelKeyHasher(u64);

/// An odd constant with well-spread bits (the golden ratio's, as `FxHash` uses).
const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl KernelKeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for KernelKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::KernelKeyMap;

    #[test]
    fn socket_addresses_and_pids_spread_and_find_their_entries() {
        // Kernel socket addresses: aligned, close together.
        let mut map = KernelKeyMap::default();
        for i in 0..10_000u64 {
            map.insert((1000 + (i % 7) as u32, 0xffff_8880_0000_0000 + i * 2048), i);
        }
        assert_eq!(map.len(), 10_000);
        assert!(
            (0..10_000u64).all(|i| map.get(&(1000 + (i % 7) as u32, 0xffff_8880_0000_0000 + i * 2048)) == Some(&i))
        );
    }
}
