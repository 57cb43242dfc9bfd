//! Path MTU discovery, packetization-layer style (DPLPMTUD, RFC 8899): a connection starts
//! at [`BASE_MTU`], which every path must carry, and probes larger sizes with padded PINGs up
//! to its configured `MTU_PacketSize`. An acknowledged probe raises the size data packets
//! use; a size whose probe is lost [`MAX_PROBES`] times is above the path's limit. The
//! search is a binary one and ends when the bounds are within [`GRANULARITY`]; it runs again
//! after [`RAISE_INTERVAL`], since paths change.
//!
//! A path whose limit falls below the size in use (a black hole: a route change, a tunnel)
//! shows as lost packets larger than the base with no larger packet acknowledged after them,
//! or as probe timeouts with nothing acknowledged at all. Either way the connection falls
//! back to the base at once (the lost data is resent in smaller packets) and searches again.
//!
//! Probes are not data: their loss says nothing about congestion, so it never cuts the
//! window, and nothing is resent for them.

use std::time::{Duration, Instant};

/// The UDP payload every path is assumed to carry (QUIC's minimum: IPv6's 1280-byte minimum
/// MTU less headers, with room for a tunnel or two).
pub const BASE_MTU: usize = 1200;
/// Probes of one size lost before the size counts as too large.
pub const MAX_PROBES: u8 = 3;
/// The search stops when the largest size known to work and the smallest known not to are
/// this close.
pub const GRANULARITY: usize = 20;
/// How long after a search ends it runs again, to find a limit that rose.
pub const RAISE_INTERVAL: Duration = Duration::from_secs(600);
/// Lost packets larger than the base, with no larger packet acknowledged after them, that
/// count as a black hole.
const BLACK_HOLE_LOSSES: u32 = 3;

/// A probe in flight.
#[derive(Debug, Clone, Copy)]
struct Probe {
    pn: u64,
    size: usize,
    sent: Instant,
}

/// One connection's search.
#[derive(Debug)]
pub(crate) struct Pmtud {
    /// The size data packets use: the largest known to work.
    current: usize,
    /// The configured upper bound.
    max: usize,
    /// The smallest size known not to work (exclusive bound), while searching.
    too_big: usize,
    /// Searching; when not, the next search starts at this instant.
    searching: bool,
    next_search: Option<Instant>,
    /// Tries of the size being probed.
    tries: u8,
    probe: Option<Probe>,
    /// The newest packet larger than the base that was acknowledged.
    largest_big_acked: Option<u64>,
    /// The newest packet of at most the base size that was acknowledged.
    largest_small_acked: Option<u64>,
    /// Lost packets larger than the base sent after the newest big one acknowledged and
    /// before a small one that was (the path carried the small, not the big).
    suspicious: u32,
}

impl Pmtud {
    /// A search up to `max` (the configured packet size). A `max` at or below the base
    /// means no search: the connection uses `max`.
    pub(crate) fn new(max: usize) -> Self {
        let current = max.min(BASE_MTU);
        Self {
            current,
            max,
            too_big: max + 1,
            searching: max > current,
            next_search: None,
            tries: 0,
            probe: None,
            largest_big_acked: None,
            largest_small_acked: None,
            suspicious: 0,
        }
    }

    /// The packet size to use now.
    pub(crate) fn mtu(&self) -> usize {
        self.current
    }

    /// The packet number of the probe in flight.
    pub(crate) fn probe_pn(&self) -> Option<u64> {
        self.probe.map(|p| p.pn)
    }

    /// The size to probe now, if a probe is due (none in flight, a search running).
    pub(crate) fn probe_due(&mut self, now: Instant) -> Option<usize> {
        if !self.searching {
            match self.next_search {
                Some(t) if t <= now => self.start_search(),
                Some(_) => {}
                None => self.next_search = Some(now + RAISE_INTERVAL),
            }
        }
        if !self.searching || self.probe.is_some() {
            return None;
        }
        // The first try of a search goes straight to the upper bound (most paths carry
        // it); after that, halfway between what works and what does not.
        Some(if self.too_big > self.max {
            self.max
        } else {
            (self.current + self.too_big) / 2
        })
    }

    /// Records the probe just sent as packet `pn`.
    pub(crate) fn on_probe_sent(&mut self, pn: u64, size: usize, now: Instant) {
        self.probe = Some(Probe {
            pn,
            size,
            sent: now,
        });
    }

    /// Acknowledged data packet `pn` of `size` bytes.
    pub(crate) fn on_acked(&mut self, pn: u64, size: usize) {
        if size > BASE_MTU {
            if self.largest_big_acked.is_none_or(|l| pn > l) {
                self.largest_big_acked = Some(pn);
                self.suspicious = 0;
            }
        } else if self.largest_small_acked.is_none_or(|l| pn > l) {
            self.largest_small_acked = Some(pn);
        }
    }

    /// Acknowledged packet `pn`: the probe's size, when it was the probe (the path carries
    /// that size).
    pub(crate) fn on_probe_acked(&mut self, pn: u64) -> Option<usize> {
        let probe = self.probe.filter(|p| p.pn == pn)?;
        self.probe = None;
        self.tries = 0;
        self.current = self.current.max(probe.size);
        self.narrowed();
        Some(probe.size)
    }

    /// Whether the probe in flight is lost by now: a packet sent after it was acknowledged
    /// (`largest_acked`) more than `loss_delay` after it went, or `timeout` passed. Returns
    /// the lost probe's size.
    pub(crate) fn check_probe(
        &mut self,
        now: Instant,
        largest_acked: Option<u64>,
        loss_delay: Duration,
        timeout: Duration,
    ) -> Option<usize> {
        let p = self.probe?;
        let overtaken = largest_acked.is_some_and(|l| l > p.pn) && now >= p.sent + loss_delay;
        if !overtaken && now < p.sent + timeout {
            return None;
        }
        self.probe = None;
        if !overtaken {
            // Nothing sent after it was acknowledged either: the path, not the size, may be
            // what failed (an outage). Try the size again rather than count it against it.
            return Some(p.size);
        }
        self.tries += 1;
        if self.tries >= MAX_PROBES {
            self.tries = 0;
            self.too_big = p.size;
            self.narrowed();
        }
        Some(p.size)
    }

    /// A data packet `pn` of `size` bytes was declared lost; `next_pn` is the number the
    /// next packet gets. True when that makes a black hole: the size in use fell back to
    /// the base.
    pub(crate) fn on_lost(&mut self, pn: u64, size: usize, now: Instant, next_pn: u64) -> bool {
        if size <= BASE_MTU
            || self.current <= BASE_MTU
            || self.largest_big_acked.is_some_and(|l| pn < l)
            || self.largest_small_acked.is_none_or(|l| l < pn)
        {
            return false;
        }
        self.suspicious += 1;
        if self.suspicious >= BLACK_HOLE_LOSSES {
            self.black_hole(now, next_pn, self.current);
            return true;
        }
        false
    }

    /// Repeated probe timeouts with nothing acknowledged: if packets larger than the base
    /// are in use, they may be what the path drops. True when the size fell back.
    pub(crate) fn on_silence(&mut self, now: Instant, next_pn: u64) -> bool {
        if self.current > BASE_MTU {
            // Silence may be an outage rather than the size: search from the top again.
            self.black_hole(now, next_pn, self.max + 1);
            return true;
        }
        false
    }

    /// Falls back to the base; the search runs again below `too_big`.
    fn black_hole(&mut self, now: Instant, next_pn: u64, too_big: usize) {
        self.too_big = too_big;
        self.current = BASE_MTU.min(self.max);
        self.suspicious = 0;
        // What was sent at the old size is lost or not; only later packets say anything
        // about the sizes tried next.
        self.largest_big_acked = Some(next_pn);
        self.largest_small_acked = None;
        self.probe = None;
        self.tries = 0;
        // Search again at once, below the size that failed: probes cost no window.
        self.searching = self.max > self.current;
        self.next_search = (!self.searching).then_some(now + RAISE_INTERVAL);
        self.narrowed();
    }

    fn start_search(&mut self) {
        self.searching = self.max > self.current;
        self.too_big = self.max + 1;
        self.tries = 0;
        self.next_search = None;
    }

    /// Ends the search once the bounds are within [`GRANULARITY`].
    fn narrowed(&mut self) {
        if self.searching && self.too_big.saturating_sub(self.current) <= GRANULARITY {
            self.searching = false;
            self.next_search = None;
        }
        if self.searching && self.current >= self.max {
            self.searching = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `p`'s search from `now` against a path that carries up to `limit` bytes;
    /// returns the probes sent.
    fn run(p: &mut Pmtud, mut now: Instant, limit: usize) -> u64 {
        let mut pn = 0;
        while let Some(size) = p.probe_due(now) {
            pn += 1;
            p.on_probe_sent(pn, size, now);
            now += Duration::from_millis(100);
            if size <= limit {
                assert_eq!(p.on_probe_acked(pn), Some(size));
            } else {
                // A later packet was acknowledged: the probe is lost.
                let lost = p.check_probe(now, Some(pn + 1), Duration::ZERO, Duration::MAX);
                assert_eq!(lost, Some(size));
            }
            assert!(pn < 100, "the search ends");
        }
        pn
    }

    fn search(max: usize, limit: usize) -> (usize, u64) {
        let mut p = Pmtud::new(max);
        let probes = run(&mut p, Instant::now(), limit);
        (p.mtu(), probes)
    }

    #[test]
    fn the_search_finds_the_limit_within_the_granularity() {
        assert_eq!(
            search(1452, 1500),
            (1452, 1),
            "one probe where the path carries it"
        );
        for limit in [1200, 1250, 1280, 1400, 1451] {
            let (found, probes) = search(1452, limit);
            assert!(
                found <= limit && found + GRANULARITY >= limit.min(1452),
                "limit {limit}: found {found}"
            );
            assert!(probes <= 30, "limit {limit}: {probes} probes");
        }
        assert_eq!(search(1000, 9000), (1000, 0), "no search below the base");
        assert_eq!(search(1200, 9000), (1200, 0));
    }

    #[test]
    fn a_probe_that_times_out_with_nothing_acknowledged_is_tried_again() {
        let now = Instant::now();
        let mut p = Pmtud::new(1452);
        for pn in 1..=10 {
            let size = p.probe_due(now).expect("still searching");
            assert_eq!(size, 1452, "an outage does not count against the size");
            p.on_probe_sent(pn, size, now);
            let late = now + Duration::from_secs(1);
            let lost = p.check_probe(late, Some(pn - 1), Duration::ZERO, Duration::ZERO);
            assert_eq!(lost, Some(1452));
        }
        assert_eq!(p.mtu(), BASE_MTU);
    }

    #[test]
    fn silence_falls_back_but_searches_from_the_top_again() {
        let now = Instant::now();
        let mut p = Pmtud::new(1452);
        p.on_probe_sent(1, 1452, now);
        p.on_probe_acked(1);
        assert!(p.on_silence(now, 10));
        assert_eq!(p.mtu(), BASE_MTU);
        assert_eq!(p.probe_due(now), Some(1452));
    }

    #[test]
    fn losses_after_a_big_packet_was_acknowledged_are_not_a_black_hole() {
        let now = Instant::now();
        let mut p = Pmtud::new(1452);
        p.on_probe_sent(1, 1452, now);
        p.on_probe_acked(1);
        assert_eq!(p.mtu(), 1452);
        p.on_acked(10, 1452);
        // A burst lost before packet 10 (congestion): not about the size.
        for pn in 2..10 {
            assert!(!p.on_lost(pn, 1452, now, 20));
        }
        // Lost after it, with no later small packet acknowledged: could be any loss.
        assert!(!p.on_lost(11, 1452, now, 20));
        // A later small packet got through while these big ones did not: the path shrank.
        p.on_acked(14, 300);
        assert!(!p.on_lost(11, 1452, now, 20));
        assert!(!p.on_lost(12, 1452, now, 20));
        assert!(p.on_lost(13, 1452, now, 20));
        assert_eq!(p.mtu(), BASE_MTU);
        // And the search runs again, below the size that failed.
        // The rest of what went at the old size is lost too, and changes nothing.
        p.on_acked(19, 300);
        for pn in 15..19 {
            assert!(!p.on_lost(pn, 1452, now, 20));
        }
        let next = p.probe_due(now).expect("searching again");
        assert!(next > BASE_MTU && next < 1452);
    }

    #[test]
    fn a_finished_search_runs_again_after_the_raise_interval() {
        let now = Instant::now();
        let mut p = Pmtud::new(1452);
        run(&mut p, now, 1300);
        assert!(p.mtu() <= 1300 && p.mtu() + GRANULARITY >= 1300);
        // The search's last look (within its few seconds) scheduled the next one.
        assert_eq!(p.probe_due(now + RAISE_INTERVAL / 2), None);
        let later = now + RAISE_INTERVAL + Duration::from_secs(10);
        assert_eq!(p.probe_due(later), Some(1452));
        // The path carries more now.
        run(&mut p, later, 1500);
        assert_eq!(p.mtu(), 1452);
    }
}
