//! Peer address → the name a local process looked up to reach it, from observed DNS
//! answers (A/AAAA, CNAME chains already followed back to the asked name). Bounded: at
//! capacity the least recently answered address goes first, and the evictions are
//! counted. An entry lives for its TTL, but at least the configured floor: resolvers
//! and applications cache answers longer than a short TTL says, and a connection made
//! from a 5-second answer can last for hours.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

struct Entry {
    name: Arc<str>,
    expires: Instant,
    /// Position in `order`: the answer's sequence number.
    stamp: u64,
}

pub struct DomainNames {
    capacity: usize,
    ttl_floor: Duration,
    entries: HashMap<IpAddr, Entry>,
    /// Sequence number of each address's latest answer → the address, oldest first.
    order: BTreeMap<u64, IpAddr>,
    next_stamp: u64,
    evicted: u64,
}

impl DomainNames {
    pub fn new(capacity: usize, ttl_floor: Duration) -> Self {
        Self { capacity, ttl_floor, entries: HashMap::new(), order: BTreeMap::new(), next_stamp: 0, evicted: 0 }
    }

    /// Records that `name` resolved to these addresses (with their TTLs in seconds).
    pub fn learn(&mut self, name: &str, addresses: &[(IpAddr, u32)], now: Instant) {
        if name.is_empty() || self.capacity == 0 {
            return;
        }
        let name: Arc<str> = Arc::from(name);
        for &(address, ttl) in addresses {
            let expires = now + Duration::from_secs(u64::from(ttl)).max(self.ttl_floor);
            let stamp = self.next_stamp;
            self.next_stamp += 1;
            if let Some(old) = self.entries.insert(address, Entry { name: Arc::clone(&name), expires, stamp }) {
                self.order.remove(&old.stamp);
            }
            self.order.insert(stamp, address);
            while self.entries.len() > self.capacity {
                let Some((_, oldest)) = self.order.pop_first() else { break };
                self.entries.remove(&oldest);
                self.evicted += 1;
            }
        }
    }

    /// The name for this address, unless none was seen or it has expired.
    pub fn name_of(&self, address: IpAddr, now: Instant) -> Option<Arc<str>> {
        self.entries.get(&address).filter(|e| e.expires > now).map(|e| Arc::clone(&e.name))
    }

    /// Drops expired entries (expiry alone is not an eviction).
    pub fn purge_expired(&mut self, now: Instant) {
        let order = &mut self.order;
        self.entries.retain(|_, e| {
            let keep = e.expires > now;
            if !keep {
                order.remove(&e.stamp);
            }
            keep
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Evictions since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn latest_answer_names_the_address_until_ttl_or_floor() {
        let now = Instant::now();
        let mut names = DomainNames::new(10, Duration::from_mins(1));
        names.learn("a.test", &[(ip("10.0.0.1"), 5), (ip("::1"), 600)], now);
        assert_eq!(names.name_of(ip("10.0.0.1"), now).as_deref(), Some("a.test"));
        // The 5 s TTL is raised to the 60 s floor; the 600 s one is kept.
        assert_eq!(names.name_of(ip("10.0.0.1"), now + Duration::from_secs(59)).as_deref(), Some("a.test"));
        assert_eq!(names.name_of(ip("10.0.0.1"), now + Duration::from_secs(61)).as_deref(), None);
        assert_eq!(names.name_of(ip("::1"), now + Duration::from_secs(599)).as_deref(), Some("a.test"));
        names.learn("b.test", &[(ip("10.0.0.1"), 5)], now);
        assert_eq!(names.name_of(ip("10.0.0.1"), now).as_deref(), Some("b.test"));
        names.purge_expired(now + Duration::from_secs(61));
        assert_eq!((names.len(), names.evicted()), (1, 0));
    }

    #[test]
    fn full_map_evicts_least_recently_answered_and_counts_it() {
        let now = Instant::now();
        let mut names = DomainNames::new(2, Duration::from_mins(1));
        names.learn("one.test", &[(ip("10.0.0.1"), 60)], now);
        names.learn("two.test", &[(ip("10.0.0.2"), 60)], now);
        names.learn("one.test", &[(ip("10.0.0.1"), 60)], now); // refreshed: now the newest
        names.learn("three.test", &[(ip("10.0.0.3"), 60)], now);
        assert_eq!(names.name_of(ip("10.0.0.2"), now).as_deref(), None);
        assert_eq!(names.name_of(ip("10.0.0.1"), now).as_deref(), Some("one.test"));
        assert_eq!((names.len(), names.evicted()), (2, 1));
    }
}
