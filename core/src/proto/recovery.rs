//! Round-trip time estimation, NewReno congestion control and a token-bucket pacer.

use std::time::{Duration, Instant};

/// RTT estimate in the manner of RFC 9002.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    /// Smoothed RTT.
    pub smoothed: Duration,
    /// RTT variation.
    pub var: Duration,
    /// Smallest sample seen.
    pub min: Duration,
    /// Most recent sample.
    pub latest: Duration,
    has_sample: bool,
}

impl RttEstimator {
    /// The RTT assumed before the first sample.
    pub const INITIAL: Duration = Duration::from_millis(200);
    /// Most the peer delays an ack on purpose.
    pub const MAX_ACK_DELAY: Duration = Duration::from_millis(5);

    /// An estimator with no samples.
    pub fn new() -> Self {
        Self {
            smoothed: Self::INITIAL,
            var: Self::INITIAL / 2,
            min: Self::INITIAL,
            latest: Self::INITIAL,
            has_sample: false,
        }
    }

    /// True after the first sample.
    pub fn has_sample(&self) -> bool {
        self.has_sample
    }

    /// Adds a sample; `ack_delay` is what the peer reported.
    pub fn update(&mut self, sample: Duration, ack_delay: Duration) {
        self.latest = sample;
        if !self.has_sample {
            self.has_sample = true;
            self.min = sample;
            self.smoothed = sample;
            self.var = sample / 2;
            return;
        }
        self.min = self.min.min(sample);
        let ack_delay = ack_delay.min(Self::MAX_ACK_DELAY);
        let adjusted = if sample >= self.min + ack_delay {
            sample - ack_delay
        } else {
            sample
        };
        let diff = self.smoothed.abs_diff(adjusted);
        self.var = (self.var * 3 + diff) / 4;
        self.smoothed = (self.smoothed * 7 + adjusted) / 8;
    }

    /// The probe timeout before backoff.
    pub fn pto(&self) -> Duration {
        self.smoothed + (self.var * 4).max(Duration::from_millis(1)) + Self::MAX_ACK_DELAY
    }

    /// How long after a later packet was acked an earlier one counts as lost.
    pub fn loss_delay(&self) -> Duration {
        (self.smoothed.max(self.latest) * 9 / 8).max(Duration::from_millis(1))
    }
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new()
    }
}

/// NewReno congestion window.
#[derive(Debug, Clone)]
pub struct NewReno {
    /// Bytes that may be in flight.
    pub window: u64,
    ssthresh: u64,
    recovery_start: Option<Instant>,
    mss: u64,
}

impl NewReno {
    /// A window for packets of `mss` bytes.
    pub fn new(mss: usize) -> Self {
        let mss = mss as u64;
        Self {
            window: 10 * mss,
            ssthresh: u64::MAX,
            recovery_start: None,
            mss,
        }
    }

    fn min_window(&self) -> u64 {
        2 * self.mss
    }

    /// Grows the window for `bytes` newly acknowledged of a packet sent at `sent`.
    pub fn on_ack(&mut self, sent: Instant, bytes: u64) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
        } else {
            self.window += (self.mss * bytes / self.window).max(1);
        }
    }

    /// Shrinks the window for a loss of a packet sent at `sent`; one reduction per round trip.
    pub fn on_loss(&mut self, now: Instant, sent: Instant) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        self.window = (self.window / 2).max(self.min_window());
        self.ssthresh = self.window;
    }

    /// True while in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.window < self.ssthresh
    }
}

/// Spreads packets over time at a rate, allowing a small burst.
#[derive(Debug, Clone)]
pub struct Pacer {
    tokens: f64,
    last: Option<Instant>,
}

impl Pacer {
    /// An empty-history pacer.
    pub fn new() -> Self {
        Self {
            tokens: 0.0,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant, rate: u64, burst: u64) {
        let burst = burst as f64;
        match self.last {
            None => self.tokens = burst,
            Some(last) => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                self.tokens = (self.tokens + dt * rate as f64).min(burst);
            }
        }
        self.last = Some(now);
    }

    /// When a packet of `size` bytes may go, at `rate` bytes/s with `burst` bytes of
    /// allowance: `None` means now.
    pub fn delay(&mut self, now: Instant, size: usize, rate: u64, burst: u64) -> Option<Instant> {
        self.refill(now, rate, burst);
        if self.tokens >= size as f64 {
            return None;
        }
        let missing = size as f64 - self.tokens;
        let wait = Duration::from_secs_f64(missing / rate.max(1) as f64);
        Some(now + wait.max(Duration::from_micros(1)))
    }

    /// Spends `size` bytes.
    pub fn on_send(&mut self, size: usize) {
        self.tokens -= size as f64;
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_converges_to_samples() {
        let mut r = RttEstimator::new();
        for _ in 0..50 {
            r.update(Duration::from_millis(40), Duration::ZERO);
        }
        assert!(r.smoothed.abs_diff(Duration::from_millis(40)) < Duration::from_millis(1));
        assert_eq!(r.min, Duration::from_millis(40));
    }

    #[test]
    fn newreno_halves_once_per_recovery() {
        let t0 = Instant::now();
        let mut cc = NewReno::new(1000);
        cc.on_ack(t0, 10_000);
        assert_eq!(cc.window, 20_000);
        let t1 = t0 + Duration::from_millis(10);
        cc.on_loss(t1, t0);
        assert_eq!(cc.window, 10_000);
        cc.on_loss(t1, t0); // same flight: no second cut
        assert_eq!(cc.window, 10_000);
        cc.on_ack(t1 + Duration::from_millis(1), 10_000); // congestion avoidance
        assert_eq!(cc.window, 11_000);
    }

    #[test]
    fn pacer_spaces_packets_at_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        assert_eq!(p.delay(t0, 1000, 100_000, 1000), None);
        p.on_send(1000);
        let next = p.delay(t0, 1000, 100_000, 1000).unwrap();
        assert_eq!(next - t0, Duration::from_millis(10));
    }
}
