//! Fake network conditions: one direction of a bad network as a sans-IO component.
//!
//! A [`Conditioner`] takes datagrams with [`push`](Conditioner::push) and hands them back
//! with [`pop_due`](Conditioner::pop_due) when the network would have delivered them: later,
//! out of order, twice, or never. It reads no clock and draws from a seeded generator, so the
//! same seed and inputs give the same output. The driver puts one on each side of every
//! socket, set from the global `FakePacket*` and `FakeRateLimit*` config values; benchmarks
//! use it as an impairing relay.
//!
//! Each datagram goes through, in order (the order of the reference library):
//!
//! 1. **rate limit**: a token bucket filled at `rate` bytes per second that holds at most
//!    `burst` bytes; a datagram larger than what the bucket holds is dropped, like a policer
//!    at a provider's edge. A rate of 0 turns it off.
//! 2. **loss**: dropped with probability `loss_pct`.
//! 3. **lag**: delayed by `lag`.
//! 4. **jitter**: with probability `jitter_pct`, delayed further by an exponentially
//!    distributed time of mean `jitter_avg`, capped at `jitter_max` (0: uncapped). Jitter
//!    never reorders: a datagram is never due before the one pushed before it, so a delayed
//!    datagram holds back (clumps) those behind it.
//! 5. **reorder**: with probability `reorder_pct`, delayed by `reorder_time` on top, outside
//!    the order kept by jitter, so datagrams pushed within that time overtake it.
//! 6. **duplication**: with probability `dup_pct`, a copy is also delivered, a uniformly
//!    random time in `0..=dup_time_max` after the original is due.
//!
//! What is held is bounded: beyond [`MAX_HELD`] datagrams or [`MAX_HELD_BYTES`] bytes, new
//! ones are dropped (and counted), as a router's full queue would.

use crate::proto::types::TokenBucket;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Most datagrams a conditioner holds at once.
pub const MAX_HELD: usize = 100_000;
/// Most bytes a conditioner holds at once.
pub const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

/// What one direction of the fake network does. The default does nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Percent (0 to 100) of datagrams dropped.
    pub loss_pct: f32,
    /// Delay added to every datagram.
    pub lag: Duration,
    /// Percent of datagrams given a random extra delay (see the module notes).
    pub jitter_pct: f32,
    /// Mean of that extra delay (exponentially distributed).
    pub jitter_avg: Duration,
    /// Cap on that extra delay; zero means no cap.
    pub jitter_max: Duration,
    /// Percent of datagrams held back by `reorder_time`, so later ones overtake them.
    pub reorder_pct: f32,
    /// How long a reordered datagram is held back.
    pub reorder_time: Duration,
    /// Percent of datagrams delivered twice.
    pub dup_pct: f32,
    /// Most a duplicate trails its original by.
    pub dup_time_max: Duration,
    /// Token-bucket rate in bytes per second; 0 turns the limit off.
    pub rate: u64,
    /// Token-bucket capacity in bytes.
    pub burst: u64,
}

impl Impairment {
    /// Nothing: datagrams pass untouched.
    pub const NONE: Self = Self {
        loss_pct: 0.0,
        lag: Duration::ZERO,
        jitter_pct: 0.0,
        jitter_avg: Duration::ZERO,
        jitter_max: Duration::ZERO,
        reorder_pct: 0.0,
        reorder_time: Duration::ZERO,
        dup_pct: 0.0,
        dup_time_max: Duration::ZERO,
        rate: 0,
        burst: 0,
    };

    /// True when it changes nothing: datagrams can skip the conditioner.
    pub fn is_clean(&self) -> bool {
        *self == Self::NONE
    }
}

/// Counts of what a conditioner did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConditionerStats {
    /// Datagrams pushed.
    pub pushed: u64,
    /// Dropped by the rate limit.
    pub rate_dropped: u64,
    /// Dropped as random loss.
    pub lost: u64,
    /// Dropped because too much was held already.
    pub overflow_dropped: u64,
    /// Given jitter.
    pub jittered: u64,
    /// Held back to be reordered.
    pub reordered: u64,
    /// Duplicated.
    pub duplicated: u64,
}

struct Held<T> {
    due: Instant,
    seq: u64,
    len: usize,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    // Reversed: the heap's top is the earliest due, first pushed among equals.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// One direction of a fake network, holding items of type `T` (a datagram and its address).
pub struct Conditioner<T> {
    imp: Impairment,
    rng: ChaCha8Rng,
    held: BinaryHeap<Held<T>>,
    held_bytes: usize,
    seq: u64,
    /// When the last in-order (not reordered) datagram is due: jitter never goes before it.
    last_due: Option<Instant>,
    /// The rate limit.
    bucket: TokenBucket,
    stats: ConditionerStats,
}

impl<T> std::fmt::Debug for Conditioner<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conditioner")
            .field("impairment", &self.imp)
            .field("held", &self.held.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<T: Clone> Conditioner<T> {
    /// A conditioner applying `imp`, drawing chances from `seed`.
    pub fn new(imp: Impairment, seed: u64) -> Self {
        Self {
            imp,
            rng: ChaCha8Rng::seed_from_u64(seed),
            held: BinaryHeap::new(),
            held_bytes: 0,
            seq: 0,
            last_due: None,
            bucket: TokenBucket::default(),
            stats: ConditionerStats::default(),
        }
    }

    /// Changes the conditions; datagrams already held keep their times.
    pub fn set(&mut self, imp: Impairment) {
        self.bucket.clamp(imp.burst as f64);
        self.imp = imp;
    }

    /// The conditions in force.
    pub fn impairment(&self) -> &Impairment {
        &self.imp
    }

    /// What it has done so far.
    pub fn stats(&self) -> ConditionerStats {
        self.stats
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// How many datagrams are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// A uniform draw in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, pct: f32) -> bool {
        pct > 0.0 && self.unit() * 100.0 < f64::from(pct)
    }

    /// Takes a datagram of `len` bytes at `now`; it comes out of [`pop_due`](Self::pop_due)
    /// when due, unless it is dropped.
    pub fn push(&mut self, now: Instant, item: T, len: usize) {
        self.stats.pushed += 1;
        if !self.admit_rate(now, len) {
            self.stats.rate_dropped += 1;
            return;
        }
        if self.chance(self.imp.loss_pct) {
            self.stats.lost += 1;
            return;
        }
        let mut due = now + self.imp.lag;
        if self.imp.jitter_avg > Duration::ZERO && self.chance(self.imp.jitter_pct) {
            self.stats.jittered += 1;
            // Exponential with the given mean: -mean * ln(U), U in (0, 1].
            let u = 1.0 - self.unit();
            let mut jitter = self.imp.jitter_avg.mul_f64(-u.ln());
            if self.imp.jitter_max > Duration::ZERO {
                jitter = jitter.min(self.imp.jitter_max);
            }
            due += jitter;
        }
        if let Some(last) = self.last_due {
            due = due.max(last);
        }
        self.last_due = Some(due);
        let dup = self.chance(self.imp.dup_pct);
        if self.chance(self.imp.reorder_pct) {
            self.stats.reordered += 1;
            due += self.imp.reorder_time;
        }
        if dup {
            self.stats.duplicated += 1;
            let max = self.imp.dup_time_max.as_micros() as u64;
            let after = Duration::from_micros(if max == 0 {
                0
            } else {
                self.rng.next_u64() % (max + 1)
            });
            self.hold(due + after, item.clone(), len);
        }
        self.hold(due, item, len);
    }

    fn admit_rate(&mut self, now: Instant, len: usize) -> bool {
        if self.imp.rate == 0 {
            return true;
        }
        self.bucket
            .take(now, self.imp.rate as f64, self.imp.burst as f64, len as f64)
    }

    fn hold(&mut self, due: Instant, item: T, len: usize) {
        if self.held.len() >= MAX_HELD || self.held_bytes + len > MAX_HELD_BYTES {
            self.stats.overflow_dropped += 1;
            return;
        }
        self.seq += 1;
        self.held_bytes += len;
        self.held.push(Held {
            due,
            seq: self.seq,
            len,
            item,
        });
    }

    /// The next datagram due by `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.held.peek().is_some_and(|h| h.due <= now) {
            let h = self.held.pop()?;
            self.held_bytes -= h.len;
            Some(h.item)
        } else {
            None
        }
    }

    /// When the next held datagram is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.peek().map(|h| h.due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Pushes `n` numbered datagrams of `len` bytes, one every `gap`, and collects
    /// `(number, delivery time)` until everything is out.
    fn run(imp: Impairment, n: u32, len: usize, gap: Duration) -> Vec<(u32, Duration)> {
        let t0 = Instant::now();
        let mut c = Conditioner::new(imp, 7);
        let mut out = Vec::new();
        let mut now = t0;
        for i in 0..n {
            c.push(now, i, len);
            while let Some(x) = c.pop_due(now) {
                out.push((x, now - t0));
            }
            now += gap;
        }
        while let Some(t) = c.next_due() {
            now = now.max(t);
            while let Some(x) = c.pop_due(now) {
                out.push((x, now - t0));
            }
        }
        out
    }

    fn ids(out: &[(u32, Duration)]) -> Vec<u32> {
        out.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn clean_conditions_deliver_everything_at_once_in_order() {
        assert!(Impairment::default().is_clean());
        let out = run(Impairment::default(), 100, 1000, MS);
        assert_eq!(ids(&out), (0..100).collect::<Vec<_>>());
        assert!(out.iter().all(|(i, t)| *t == MS * *i));
    }

    #[test]
    fn lag_delays_every_datagram_by_the_same_time() {
        let imp = Impairment {
            lag: 40 * MS,
            ..Impairment::default()
        };
        let out = run(imp, 50, 100, MS);
        assert_eq!(ids(&out), (0..50).collect::<Vec<_>>());
        assert!(out.iter().all(|(i, t)| *t == MS * *i + 40 * MS));
    }

    #[test]
    fn loss_drops_about_the_given_share() {
        let imp = Impairment {
            loss_pct: 10.0,
            ..Impairment::default()
        };
        let out = run(imp, 10_000, 100, MS);
        let lost = 10_000 - out.len();
        assert!((850..1150).contains(&lost), "lost {lost}");
        let kept = ids(&out);
        assert!(
            kept.windows(2).all(|w| w[0] < w[1]),
            "loss alone never reorders"
        );
    }

    #[test]
    fn jitter_clumps_but_never_reorders() {
        let imp = Impairment {
            lag: 10 * MS,
            jitter_pct: 30.0,
            jitter_avg: 5 * MS,
            jitter_max: 20 * MS,
            ..Impairment::default()
        };
        let out = run(imp, 5_000, 100, MS);
        assert_eq!(ids(&out), (0..5_000).collect::<Vec<_>>(), "all, in order");
        let extra: Vec<Duration> = out.iter().map(|(i, t)| *t - MS * *i - 10 * MS).collect();
        assert!(extra.iter().all(|e| *e <= 20 * MS), "capped at max");
        // Delayed datagrams hold back the ones behind them: more than 30% arrive late.
        let late = extra.iter().filter(|e| **e > Duration::ZERO).count();
        assert!(late > 1_500 && late < 5_000, "late {late}");
        // Clumps: some datagrams pushed 1 ms apart arrive together.
        assert!(out.windows(2).any(|w| w[0].1 == w[1].1));
    }

    #[test]
    fn reorder_holds_some_back_so_later_ones_overtake_them() {
        let imp = Impairment {
            lag: 5 * MS,
            reorder_pct: 5.0,
            reorder_time: 10 * MS,
            ..Impairment::default()
        };
        let out = run(imp, 4_000, 100, MS);
        assert_eq!(out.len(), 4_000, "reorder never drops");
        let held_back: Vec<&(u32, Duration)> = out
            .iter()
            .filter(|(i, t)| *t == MS * *i + 15 * MS)
            .collect();
        assert!(
            (140..260).contains(&held_back.len()),
            "held back {}",
            held_back.len()
        );
        let inversions = ids(&out).windows(2).filter(|w| w[0] > w[1]).count();
        assert!(inversions >= held_back.len() / 2, "inversions {inversions}");
    }

    #[test]
    fn duplicates_trail_their_originals_within_the_max() {
        let imp = Impairment {
            dup_pct: 10.0,
            dup_time_max: 8 * MS,
            ..Impairment::default()
        };
        let out = run(imp, 5_000, 100, MS);
        let dups = out.len() - 5_000;
        assert!((400..600).contains(&dups), "duplicates {dups}");
        let mut first = std::collections::HashMap::new();
        for (i, t) in &out {
            match first.get(i) {
                None => {
                    first.insert(*i, *t);
                }
                Some(t0) => assert!(*t - *t0 <= 8 * MS),
            }
        }
        assert_eq!(first.len(), 5_000, "every datagram at least once");
    }

    #[test]
    fn the_rate_limit_is_a_token_bucket_with_a_burst() {
        // 100 kB/s with a 10 kB burst, offered 1000-byte datagrams at 1 MB/s for a second.
        let imp = Impairment {
            rate: 100_000,
            burst: 10_000,
            ..Impairment::default()
        };
        let out = run(imp, 1_000, 1_000, MS);
        // The burst, then one datagram per 10 ms: about 10 + 100.
        assert!((105..=111).contains(&out.len()), "passed {}", out.len());
        assert_eq!(
            ids(&out)[..10],
            (0..10).collect::<Vec<_>>(),
            "the burst first"
        );
        // Below the rate, nothing is dropped.
        let out = run(imp, 200, 1_000, 20 * MS);
        assert_eq!(out.len(), 200);
    }

    #[test]
    fn what_is_held_is_bounded() {
        let imp = Impairment {
            lag: Duration::from_secs(10),
            ..Impairment::default()
        };
        let t0 = Instant::now();
        let mut c = Conditioner::new(imp, 1);
        for i in 0..(MAX_HELD + 10) {
            c.push(t0, i, 10);
        }
        assert_eq!(c.len(), MAX_HELD);
        assert_eq!(c.stats().overflow_dropped, 10);
        let mut c = Conditioner::new(imp, 1);
        for i in 0..100 {
            c.push(t0, i, MAX_HELD_BYTES / 10);
        }
        assert_eq!(c.len(), 10);
    }

    #[test]
    fn the_same_seed_gives_the_same_network() {
        let imp = Impairment {
            loss_pct: 20.0,
            jitter_pct: 50.0,
            jitter_avg: 3 * MS,
            reorder_pct: 10.0,
            reorder_time: 5 * MS,
            dup_pct: 10.0,
            dup_time_max: 5 * MS,
            ..Impairment::default()
        };
        assert_eq!(run(imp, 1_000, 100, MS), run(imp, 1_000, 100, MS));
    }
}
