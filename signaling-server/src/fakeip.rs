//! The server's FakeIP pool: global fake IPv4 addresses (169.254.1.0 to 169.254.254.255,
//! 65,024 of them) for identities, and up to [`MAX_FAKE_PORTS`] fake ports on each.
//! Allocation and release take constant time however full the pool is: a free list, from
//! which a random entry is taken.

use crate::protocol::MAX_FAKE_PORTS;
use punchline_identity::Identity;
use rand_core::{OsRng, RngCore};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Addresses in the pool: 169.254.1.0/24 to 169.254.254.0/24 (the first and last /24 of
/// the link-local range are reserved).
pub const POOL_SIZE: usize = 254 * 256;

fn addr_of(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 1 + (i >> 8) as u8, i as u8)
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeIpError {
    /// Every address is held.
    PoolFull,
    /// The identity holds its most ports already.
    PortLimit,
}

/// The pool.
#[derive(Debug, Default)]
pub struct FakeIps {
    by_identity: HashMap<Identity, (Ipv4Addr, Vec<u16>)>,
    by_ip: HashMap<Ipv4Addr, Identity>,
    /// Unheld address indices (filled on first use).
    free: Vec<u16>,
    filled: bool,
}

fn random_below(n: usize) -> usize {
    // n <= 65,024: the modulo bias of a 64-bit draw is negligible.
    (OsRng.next_u64() % n as u64) as usize
}

impl FakeIps {
    /// Addresses held.
    pub fn held(&self) -> usize {
        self.by_ip.len()
    }

    /// One more fake port for `who` (and its address, first time): the address and all its
    /// ports.
    pub fn allocate(&mut self, who: &Identity) -> Result<(Ipv4Addr, Vec<u16>), FakeIpError> {
        if !self.by_identity.contains_key(who) {
            if !self.filled {
                self.free = (0..POOL_SIZE as u16).collect();
                self.filled = true;
            }
            if self.free.is_empty() {
                return Err(FakeIpError::PoolFull);
            }
            let i = self.free.swap_remove(random_below(self.free.len()));
            let ip = addr_of(i);
            self.by_ip.insert(ip, who.clone());
            self.by_identity.insert(who.clone(), (ip, Vec::new()));
        }
        let Some((ip, ports)) = self.by_identity.get_mut(who) else {
            return Err(FakeIpError::PoolFull);
        };
        if ports.len() >= MAX_FAKE_PORTS {
            return Err(FakeIpError::PortLimit);
        }
        let port = loop {
            // At most MAX_FAKE_PORTS of 64,512 are taken: this loops about once.
            let p = 1024 + random_below(65536 - 1024) as u16;
            if !ports.contains(&p) {
                break p;
            }
        };
        ports.push(port);
        Ok((*ip, ports.clone()))
    }

    /// Who holds `ip`.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&Identity> {
        self.by_ip.get(&ip)
    }

    /// Releases `who`'s address; whether it held one.
    pub fn release(&mut self, who: &Identity) -> bool {
        let Some((ip, _)) = self.by_identity.remove(who) else {
            return false;
        };
        self.by_ip.remove(&ip);
        let o = ip.octets();
        self.free.push((u16::from(o[2] - 1) << 8) | u16::from(o[3]));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_pool_is_handed_out_then_it_says_full_and_releases_refill_it() {
        let mut pool = FakeIps::default();
        let ids: Vec<Identity> = (0..POOL_SIZE + 1)
            .map(|i| format!("str:{i}").parse().unwrap())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for id in &ids[..POOL_SIZE] {
            let (ip, ports) = pool.allocate(id).unwrap();
            assert_eq!(ports.len(), 1);
            let o = ip.octets();
            assert!(
                o[0] == 169 && o[1] == 254 && (1..=254).contains(&o[2]),
                "{ip}"
            );
            assert!(seen.insert(ip), "{ip} given twice");
        }
        assert_eq!(pool.held(), POOL_SIZE);
        assert_eq!(pool.allocate(&ids[POOL_SIZE]), Err(FakeIpError::PoolFull));
        let (ip0, _) = pool.allocate(&ids[0]).unwrap();
        assert_eq!(pool.holder(ip0), Some(&ids[0]));
        assert!(pool.release(&ids[0]));
        assert_eq!(pool.holder(ip0), None);
        assert!(!pool.release(&ids[0]));
        let (again, _) = pool.allocate(&ids[POOL_SIZE]).unwrap();
        assert_eq!(again, ip0, "the one free address");
        for _ in 2..=MAX_FAKE_PORTS {
            pool.allocate(&ids[1]).unwrap();
        }
        assert_eq!(pool.allocate(&ids[1]), Err(FakeIpError::PortLimit));
    }
}
