//! Limits the server's listeners share: a token bucket; a fixed-size table of buckets keyed
//! by source address for traffic from anyone (STUN, TURN before authentication), whose
//! memory does not grow with the number of sources; and per-source connection counts.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            last: Instant::now(),
            rate,
            burst,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_n(1.0)
    }

    /// Takes `n` tokens if there are that many.
    pub fn take_n(&mut self, n: f64) -> bool {
        self.take_n_at(n, Instant::now())
    }

    /// Takes `n` tokens at `now` if there are that many.
    pub fn take_n_at(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now.max(self.last);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// The unit one source is limited as: an IPv4 address, or an IPv6 /64 (one subscriber's
/// usual prefix, so an attacker cannot multiply its share by changing the low bits).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Per-source token buckets in a fixed number of slots: a source's slot is a keyed hash of
/// its [`source_key`], so memory is the same for ten sources or ten million (spoofed ones
/// included). Two sources that share a slot share its budget, which errs toward limiting.
#[derive(Debug)]
pub struct RateTable {
    slots: Vec<Bucket>,
    hasher: RandomState,
}

impl RateTable {
    /// `slots` buckets of `rate` a second with bursts of `burst`.
    pub fn new(slots: usize, rate: f64, burst: f64) -> RateTable {
        RateTable {
            slots: vec![Bucket::new(rate, burst); slots.max(1)],
            hasher: RandomState::new(),
        }
    }

    /// Takes one token from `ip`'s bucket; false when it is over its rate.
    pub fn allow(&mut self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    /// As [`allow`](Self::allow), at `now`.
    pub fn allow_at(&mut self, ip: IpAddr, now: Instant) -> bool {
        let i = (self.hasher.hash_one(source_key(ip)) % self.slots.len() as u64) as usize;
        self.slots[i].take_n_at(1.0, now)
    }
}

/// Connections counted per source ([`source_key`]): those still logging in (including
/// unfinished HTTP and websocket upgrades) and those logged in, each under its own cap.
#[derive(Debug)]
pub struct SourceSlots {
    counts: Mutex<HashMap<IpAddr, (usize, usize)>>,
    max_pending: usize,
    max_logged_in: usize,
}

/// One connection's place in [`SourceSlots`], given back when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    table: Arc<SourceSlots>,
    key: IpAddr,
    logged_in: bool,
}

impl SourceSlots {
    /// At most `max_pending` connections per source logging in, `max_logged_in` logged in.
    pub fn new(max_pending: usize, max_logged_in: usize) -> Arc<SourceSlots> {
        Arc::new(SourceSlots {
            counts: Mutex::new(HashMap::new()),
            max_pending,
            max_logged_in,
        })
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, (usize, usize)>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `ip`; `None` when that source has its most
    /// connections logging in.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut counts = self.counts();
        let c = counts.entry(key).or_default();
        if c.0 >= self.max_pending {
            if *c == (0, 0) {
                counts.remove(&key);
            }
            return None;
        }
        c.0 += 1;
        Some(SourceSlot {
            table: self.clone(),
            key,
            logged_in: false,
        })
    }

    /// Sources with connections (for tests).
    pub fn sources(&self) -> usize {
        self.counts().len()
    }
}

impl SourceSlot {
    /// Moves the connection from logging in to logged in; false when its source has its
    /// most logged-in connections (the slot stays as it was).
    pub fn log_in(&mut self) -> bool {
        if self.logged_in {
            return true;
        }
        let mut counts = self.table.counts();
        let Some(c) = counts.get_mut(&self.key) else {
            return false;
        };
        if c.1 >= self.table.max_logged_in {
            return false;
        }
        c.0 -= 1;
        c.1 += 1;
        self.logged_in = true;
        true
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts();
        if let Some(c) = counts.get_mut(&self.key) {
            if self.logged_in {
                c.1 -= 1;
            } else {
                c.0 -= 1;
            }
            if *c == (0, 0) {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = Bucket::new(10.0, 20.0);
        let t0 = Instant::now();
        let taken = (0..100).filter(|_| b.take_n_at(1.0, t0)).count();
        assert_eq!(taken, 20);
        let later = t0 + Duration::from_millis(500);
        let taken = (0..100).filter(|_| b.take_n_at(1.0, later)).count();
        assert_eq!(taken, 5);
    }

    #[test]
    fn sources_are_limited_apart_and_an_ipv6_prefix_is_one_source() {
        let mut t = RateTable::new(4096, 1.0, 3.0);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!((0..10).filter(|_| t.allow_at(a, t0)).count(), 3);
        // Another source has its own budget (unless it shares the slot: 1 in 4096).
        let shared = t.hasher.hash_one(source_key(a)) % 4096 == t.hasher.hash_one(b) % 4096;
        if !shared {
            assert!(t.allow_at(b, t0));
        }
        // Every address of one /64 draws on one budget.
        let p1: IpAddr = "2001:db8::1".parse().unwrap();
        let p2: IpAddr = "2001:db8::ffff:1:2:3".parse().unwrap();
        assert_eq!(source_key(p1), source_key(p2));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_key(mapped), a);
        assert!(
            !t.allow_at(mapped, t0),
            "the mapped form is the same source"
        );
    }

    #[test]
    fn a_source_has_so_many_connections_logging_in_and_so_many_logged_in() {
        let t = SourceSlots::new(2, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut a = t.acquire(ip).unwrap();
        let b = t.acquire(ip).unwrap();
        assert!(t.acquire(ip).is_none(), "two logging in at most");
        assert!(t.acquire("192.0.2.2".parse().unwrap()).is_some());
        assert!(a.log_in());
        let more: Vec<SourceSlot> = (0..2)
            .map(|_| {
                let mut s = t.acquire(ip).unwrap();
                assert!(s.log_in());
                s
            })
            .collect();
        let mut c = t.acquire(ip).unwrap();
        assert!(!c.log_in(), "three logged in at most");
        drop((a, b, c, more));
        assert_eq!(t.sources(), 0, "every count given back");
    }
}
