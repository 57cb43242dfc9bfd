//! Which client hellos a server keeps state for before the client has proven its address:
//! the one-round-trip first contact (QUIC-style), made safe to be the default.
//!
//! A hello without a cookie or address token may come from a spoofed address, and may be a
//! copy of a real client's signed hello captured on the way. So an unproven hello is taken in
//! only when it is
//!
//! - **fresh**: stamped by the client's clock within [`HELLO_FRESHNESS`] of ours (a client whose
//!   clock is further off still connects, through the cookie round trip);
//! - **new**: its ephemeral key was not seen in an unproven hello within the last
//!   2 × [`HELLO_FRESHNESS`] (a replay of a fresh capture, from any address, gets a cookie, which
//!   only the holder of the address can return);
//! - **within budget**: at most [`UNPROVEN_VERIFY_RATE`] unproven hellos per second get their
//!   signatures checked (a flood of forged signatures from spoofed addresses costs at most
//!   that many verifications per second; past it, clients get cookies).
//!
//! Anything else is answered with a stateless cookie, as under load. The memory of seen keys
//! is bounded ([`MAX_SEEN_HELLOS`]); when it is full, every unproven hello gets a cookie until
//! entries expire. A server's replies to an unproven address stay within the amplification
//! bound either way, and such a connection reaches Connected only when the client's first
//! packet shows it holds the session keys.

use super::types::TokenBucket;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How far a hello's timestamp may be from the server's clock, either way.
pub const HELLO_FRESHNESS: Duration = Duration::from_secs(30);
/// Unproven hellos whose signatures a server checks per second, at most (also the burst).
pub const UNPROVEN_VERIFY_RATE: f64 = 1000.0;
/// Ephemeral keys remembered, at most (about 100 bytes each): those of the hellos a server
/// kept state for in the last 2 × [`HELLO_FRESHNESS`] (at 1,000 new clients a second, 60,000).
pub const MAX_SEEN_HELLOS: usize = 65_536;
/// How long a key is remembered: past the last instant a copy of its hello could be fresh,
/// with room for the one-second steps of the endpoint's unix clock.
const REMEMBER: Duration = Duration::from_secs(2 * HELLO_FRESHNESS.as_secs() + 2);

/// Why an unproven hello gets a cookie rather than state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its timestamp is outside [`HELLO_FRESHNESS`] of our clock.
    Stale,
    /// Its ephemeral key was seen before (a replay).
    Replayed,
    /// The verification budget or the memory of seen keys is spent.
    Busy,
}

/// The freshness check, replay memory and verification budget of one endpoint.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Keys seen, with the instant each may be forgotten (in insertion order, so expiry
    /// runs from the front).
    expiry: VecDeque<(Instant, [u8; 32])>,
    /// The same keys, for lookup. SipHash with a random key: the keys are chosen by the
    /// sender, so a predictable hash would let it collide them.
    seen: HashSet<[u8; 32]>,
    /// Signature checks of unproven hellos.
    budget: TokenBucket,
}

impl Admission {
    /// Whether an unproven hello stamped `sent_at` (client's unix seconds) with ephemeral
    /// key `ephemeral` may have its signature checked and be taken in at `now`, when our
    /// unix clock reads `unix_now`. On `Ok` one verification is spent; the caller
    /// [`remember`](Self::remember)s the key once it keeps state for the hello (not before,
    /// or forged hellos would fill the memory).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        unix_now: u64,
        sent_at: u64,
        ephemeral: &[u8; 32],
    ) -> Result<(), Refused> {
        while let Some((t, key)) = self.expiry.front() {
            if *t > now {
                break;
            }
            self.seen.remove(key);
            self.expiry.pop_front();
        }
        if unix_now.abs_diff(sent_at) > HELLO_FRESHNESS.as_secs() {
            return Err(Refused::Stale);
        }
        if self.seen.contains(ephemeral) {
            return Err(Refused::Replayed);
        }
        if self.seen.len() >= MAX_SEEN_HELLOS
            || !self
                .budget
                .take(now, UNPROVEN_VERIFY_RATE, UNPROVEN_VERIFY_RATE, 1.0)
        {
            return Err(Refused::Busy);
        }
        Ok(())
    }

    /// Remembers the key of a hello the server kept state for, proven or not (when there
    /// is room), so that a copy of it from another address is not taken in unproven.
    pub(crate) fn remember(&mut self, now: Instant, ephemeral: &[u8; 32]) {
        if self.seen.len() < MAX_SEEN_HELLOS && self.seen.insert(*ephemeral) {
            // A hello stamped t is fresh until our clock reads t + HELLO_FRESHNESS, at most
            // 2 × HELLO_FRESHNESS from now.
            self.expiry.push_back((now + REMEMBER, *ephemeral));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_replayed_and_over_budget_hellos_are_refused() {
        let t0 = Instant::now();
        let mut a = Admission::default();
        let unix = 1_000_000;
        assert_eq!(a.admit(t0, unix, unix - 31, &[1; 32]), Err(Refused::Stale));
        assert_eq!(a.admit(t0, unix, unix + 31, &[1; 32]), Err(Refused::Stale));
        // A client clock 30 s ahead: the hello stays fresh until our clock reads unix + 60.
        assert_eq!(a.admit(t0, unix, unix + 30, &[1; 32]), Ok(()));
        a.remember(t0, &[1; 32]);
        assert_eq!(a.admit(t0, unix, unix, &[1; 32]), Err(Refused::Replayed));
        let last_fresh = t0 + 2 * HELLO_FRESHNESS;
        assert_eq!(
            a.admit(last_fresh, unix + 60, unix + 30, &[1; 32]),
            Err(Refused::Replayed),
            "still remembered at the last instant a copy is fresh"
        );
        let forgotten = last_fresh + Duration::from_secs(2);
        assert_eq!(
            a.admit(forgotten, unix + 62, unix + 30, &[1; 32]),
            Err(Refused::Stale),
            "forgotten only once every copy is stale"
        );
        assert!(a.seen.is_empty());
        // The budget: UNPROVEN_VERIFY_RATE at once, then UNPROVEN_VERIFY_RATE per second;
        // hellos that fail verification (never remembered) spend it too.
        let mut b = Admission::default();
        let mut key = [0u8; 32];
        let mut admitted = 0;
        for i in 0..2000u32 {
            key[..4].copy_from_slice(&i.to_be_bytes());
            if b.admit(t0, unix, unix, &key).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, UNPROVEN_VERIFY_RATE as usize);
        assert!(b.seen.is_empty());
        key[..4].copy_from_slice(&5000u32.to_be_bytes());
        assert_eq!(b.admit(t0, unix, unix, &key), Err(Refused::Busy));
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(b.admit(t1, unix, unix, &key), Ok(()));
    }

    #[test]
    fn the_memory_of_seen_keys_is_bounded() {
        let t0 = Instant::now();
        let unix = 1_000_000;
        let mut a = Admission::default();
        let mut key = [0u8; 32];
        for i in 0..(MAX_SEEN_HELLOS as u32 + 100) {
            key[..4].copy_from_slice(&i.to_be_bytes());
            a.remember(t0, &key);
        }
        assert_eq!(a.seen.len(), MAX_SEEN_HELLOS);
        assert_eq!(a.expiry.len(), MAX_SEEN_HELLOS);
        // Full: every unproven hello gets a cookie, until the oldest expire.
        key[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(a.admit(t0, unix, unix, &key), Err(Refused::Busy));
        assert_eq!(a.admit(t0 + REMEMBER, unix, unix, &key), Ok(()));
        assert!(a.seen.is_empty());
    }
}
