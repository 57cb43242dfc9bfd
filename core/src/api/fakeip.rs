//! FakeIP: IPv4 addresses that stand for identities, for code that can only name peers by
//! address (the seeds' FakeIP calls).
//!
//! Global fake IPs come from the signaling server (a [`FakeIpProvider`]), unique among its
//! clients, in 169.254.1.0 to 169.254.254.255. Without a server a process allocates local
//! ones, in 169.254.0.0/24, meaningful only inside it.

use punchline_identity::Identity;
use std::net::Ipv4Addr;

/// Most fake ports one identity holds.
pub const MAX_FAKE_PORTS: usize = 4;

/// What kind of address an IPv4 address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeIpType {
    /// A real address.
    NotFake,
    /// A global fake IP, from a signaling server.
    GlobalIpv4,
    /// A fake IP local to this process.
    LocalIpv4,
}

/// The kind of fake IP `ip` is, if any.
pub fn get_ipv4_fake_ip_type(ip: Ipv4Addr) -> FakeIpType {
    match ip.octets() {
        [169, 254, 0, _] => FakeIpType::LocalIpv4,
        [169, 254, 255, _] => FakeIpType::NotFake,
        [169, 254, _, _] => FakeIpType::GlobalIpv4,
        _ => FakeIpType::NotFake,
    }
}

/// True for an address in the fake-IP ranges.
pub fn is_fake_ipv4(ip: Ipv4Addr) -> bool {
    get_ipv4_fake_ip_type(ip) != FakeIpType::NotFake
}

/// The outcome of [`Sockets::begin_async_request_fake_ip`](super::Sockets::begin_async_request_fake_ip),
/// passed to the `Callback_FakeIPResult` callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeIpResult {
    /// `Ok`, or why it failed.
    pub result: Result<(), String>,
    /// Our identity.
    pub identity: Identity,
    /// The address (unspecified on failure).
    pub ip: Ipv4Addr,
    /// The fake ports on it.
    pub ports: Vec<u16>,
}

/// Allocates global fake IPs (the signaling client implements it). Called on the caller's
/// thread; must not block. Answers come back through
/// [`Sockets::complete_fake_ip_request`](super::Sockets::complete_fake_ip_request) and
/// [`Sockets::learn_fake_ip`](super::Sockets::learn_fake_ip).
pub trait FakeIpProvider: Send + Sync + 'static {
    /// Asks for a fake IP with `num_ports` ports for our identity.
    fn request_fake_ip(&self, num_ports: usize);
    /// Asks who holds `ip`.
    fn resolve_fake_ip(&self, ip: Ipv4Addr);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            get_ipv4_fake_ip_type(Ipv4Addr::new(169, 254, 0, 7)),
            FakeIpType::LocalIpv4
        );
        assert_eq!(
            get_ipv4_fake_ip_type(Ipv4Addr::new(169, 254, 12, 34)),
            FakeIpType::GlobalIpv4
        );
        assert!(!is_fake_ipv4(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!is_fake_ipv4(Ipv4Addr::new(169, 254, 255, 1)));
    }
}
