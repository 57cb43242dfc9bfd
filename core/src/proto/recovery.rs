//! Round-trip time estimation, CUBIC congestion control and a token-bucket pacer.

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

/// CUBIC congestion control (RFC 9438), in bytes.
///
/// Why CUBIC: it is loss-based like the TCP it shares paths with, so it is fair to them; its
/// window grows as a cubic function of the time since the last loss, independent of the RTT,
/// so it refills a fast path in a few round trips after a reduction instead of Reno's one
/// packet per RTT; and its Reno-friendly estimate keeps it from doing worse than Reno on short
/// or lossy paths. Slow start doubles the window every round trip until the first loss; each
/// loss (at most one reduction per round trip) multiplies it by 0.7. The window only grows
/// while the sender actually uses it, so an idle or application-limited game connection does
/// not build up a window it never tested. Pacing spreads every window over the round trip
/// (see `Connection`), and `SendRateMin` / `SendRateMax` clamp the resulting rate.
///
/// Not every loss is congestion: on wireless links and busy home routers packets are lost at
/// random while no queue builds. The sender keeps a model of the path, as BBR does with its
/// min-RTT estimate, and a loss counts as congestion only when the model says the path is
/// congested: a queue is building (the smoothed RTT stands more than
/// [`QUEUE_DELAY_SHARE`] of the minimum above it, at least [`QUEUE_DELAY_MIN`] and at most
/// [`QUEUE_DELAY_MAX`]), or the
/// recent loss rate reaches [`RANDOM_LOSS_RATE_MAX`]. Any other loss is random and the window
/// is not cut at all: the path delivers what is sent at this rate, less a random share. A
/// real bottleneck fills its queue before it drops, so congestion still gets the full CUBIC
/// reduction and flows sharing a bottleneck with TCP or QUIC back off as they do; a sender
/// that overshoots a policer, which has no queue, sees its loss rate climb past the bound and
/// cuts too. (Until 2026-12-04 a random loss cut the window by 12%, TCP Veno's rule, which at
/// 5% random loss still kept the window a few packets wide.)
#[derive(Debug, Clone)]
pub struct Cubic {
    /// Bytes that may be in flight.
    pub window: u64,
    ssthresh: u64,
    recovery_start: Option<Instant>,
    mss: u64,
    /// The window just before the last reduction, in bytes.
    w_max: f64,
    /// Seconds from the epoch start until the window returns to `w_max`.
    k: f64,
    epoch_start: Option<Instant>,
    /// The window Reno would have now, in bytes.
    w_est: f64,
    /// The state before the last reduction, to undo it if the loss proves spurious.
    before_cut: Option<Box<Cubic>>,
}

/// The most bytes a connection keeps in flight, however large its window grows: 4 MiB,
/// enough for 40 MB/s at 100 ms. Reliable bytes sent and not yet acknowledged beyond it
/// count against the send buffer (see `SendQueue::buffered`), so what a connection holds is
/// at most its send buffer plus this.
pub const MAX_WINDOW: u64 = 4 * 1024 * 1024;

const CUBIC_C: f64 = 0.4;
const CUBIC_BETA: f64 = 0.7;
/// A smoothed RTT more than this share of the minimum above it means a queue is building...
pub const QUEUE_DELAY_SHARE: f64 = 0.25;
/// ... but never less than this above it (timer and scheduling noise)...
pub const QUEUE_DELAY_MIN: Duration = Duration::from_millis(1);
/// ... and always when it is this far above it: an AQM (CoDel, PIE) keeps its standing
/// queue near 5 ms however long the path, and a queue that stands that long is congestion.
pub const QUEUE_DELAY_MAX: Duration = Duration::from_millis(4);
/// Above this recent loss rate (the share of packets lost, averaged over the last few dozen)
/// no loss counts as random: links that lose a fifth of what they carry are congested or
/// policed, not noisy.
pub const RANDOM_LOSS_RATE_MAX: f64 = 0.2;

impl Cubic {
    /// A window for packets of `mss` bytes: ten packets to start.
    pub fn new(mss: usize) -> Self {
        let mss = mss as u64;
        Self {
            window: 10 * mss,
            ssthresh: u64::MAX,
            recovery_start: None,
            mss,
            w_max: 0.0,
            k: 0.0,
            epoch_start: None,
            w_est: 0.0,
            before_cut: None,
        }
    }

    /// Undoes the last reduction: the packet it was for arrived after all (it was reordered,
    /// not lost).
    pub fn undo(&mut self) {
        if let Some(before) = self.before_cut.take() {
            *self = *before;
        }
    }

    fn min_window(&self) -> u64 {
        2 * self.mss
    }

    /// True while in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.window < self.ssthresh
    }

    /// Grows the window for `bytes` newly acknowledged of a packet sent at `sent`;
    /// `cwnd_limited` says whether the sender was using the window when it sent.
    pub fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        rtt: Duration,
        cwnd_limited: bool,
    ) {
        if self.recovery_start.is_some_and(|r| sent <= r) || !cwnd_limited {
            return;
        }
        if self.in_slow_start() {
            self.window = (self.window + bytes).min(MAX_WINDOW);
            return;
        }
        let mss = self.mss as f64;
        let window = self.window as f64;
        let epoch = *self.epoch_start.get_or_insert_with(|| {
            self.k = if self.w_max > window {
                ((self.w_max - window) / mss / CUBIC_C).cbrt()
            } else {
                0.0
            };
            self.w_est = window;
            now
        });
        let t = now.saturating_duration_since(epoch).as_secs_f64() + rtt.as_secs_f64();
        let cubic = (CUBIC_C * (t - self.k).powi(3)) * mss + self.w_max.max(window);
        self.w_est += mss * (3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA)) * bytes as f64 / window;
        // Grow toward the target, but by at most half a window per round trip.
        let target = cubic.max(self.w_est).min(1.5 * window);
        if target > window {
            let grow = (target - window) * bytes as f64 / window;
            self.window = (self.window + grow.max(1.0) as u64).min(MAX_WINDOW);
        }
    }

    /// Whether a packet sent at `sent` belongs to the flight the last cut answered.
    pub fn in_episode(&self, sent: Instant) -> bool {
        self.recovery_start.is_some_and(|r| sent <= r)
    }

    /// Shrinks the window for a loss of a packet sent at `sent`, when the path model says
    /// the path is `congested` ([`congested`]); one reduction per round trip. Returns
    /// whether the window was cut (not for a random loss, nor when the loss falls in the same
    /// round trip as the last cut).
    pub fn on_loss(&mut self, now: Instant, sent: Instant, congested: bool) -> bool {
        if !congested {
            return false;
        }
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return false;
        }
        let mut before = self.clone();
        before.before_cut = None;
        self.before_cut = Some(Box::new(before));
        self.recovery_start = Some(now);
        self.epoch_start = None;
        let window = self.window as f64;
        // Fast convergence: give way to newer flows when losses come before the old peak.
        self.w_max = if window < self.w_max {
            window * (1.0 + CUBIC_BETA) / 2.0
        } else {
            window
        };
        self.window = ((window * CUBIC_BETA) as u64).max(self.min_window());
        self.ssthresh = self.window;
        true
    }
}

/// Whether a loss now means congestion, by the path model: a queue building (the smoothed
/// RTT `srtt` well above the minimum `min_rtt`), or a recent loss rate no random link has.
pub fn congested(srtt: Duration, min_rtt: Duration, loss_rate: f64) -> bool {
    let queue_delay = srtt.saturating_sub(min_rtt);
    let threshold = min_rtt
        .mul_f64(QUEUE_DELAY_SHARE)
        .clamp(QUEUE_DELAY_MIN, QUEUE_DELAY_MAX);
    let building = queue_delay > threshold;
    building || loss_rate >= RANDOM_LOSS_RATE_MAX
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
    fn cubic_slow_starts_cuts_once_per_recovery_and_regrows_to_the_old_peak() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(10);
        let mut cc = Cubic::new(1000);
        cc.on_ack(t0, t0, 10_000, rtt, true);
        assert_eq!(cc.window, 20_000, "slow start adds what was acknowledged");
        cc.on_ack(t0, t0, 10_000, rtt, false);
        assert_eq!(cc.window, 20_000, "no growth while application-limited");
        let t1 = t0 + rtt;
        assert!(cc.on_loss(t1, t0, true));
        assert_eq!(cc.window, 14_000);
        assert!(!cc.on_loss(t1, t0, true), "same flight: no second cut");
        assert_eq!(cc.window, 14_000);
        // Acks of packets sent after the loss grow it back toward 20 000 and beyond.
        let mut now = t1;
        for _ in 0..200 {
            now += rtt;
            cc.on_ack(now, now - rtt, cc.window, rtt, true);
        }
        assert!(cc.window > 20_000, "window {}", cc.window);
    }

    #[test]
    fn a_loss_with_no_queue_built_and_a_low_loss_rate_cuts_nothing() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        let ms = Duration::from_millis;
        let mut random = Cubic::new(1000);
        assert!(!random.on_loss(t1, t0, congested(ms(23), ms(20), 0.05)));
        assert_eq!(random.window, 10_000);
        let mut queued = Cubic::new(1000);
        assert!(queued.on_loss(t1, t0, congested(ms(26), ms(20), 0.05)));
        assert_eq!(queued.window, 7_000);
        let mut policed = Cubic::new(1000);
        assert!(policed.on_loss(t1, t0, congested(ms(20), ms(20), RANDOM_LOSS_RATE_MAX)));
        assert_eq!(policed.window, 7_000);
        // On a short path the floor decides: over 1 ms above a 1 ms minimum is a queue.
        assert!(!congested(Duration::from_micros(1900), ms(1), 0.0));
        assert!(congested(Duration::from_micros(2100), ms(1), 0.0));
        // On a long one the cap: an AQM's 5 ms standing queue on an 80 ms path.
        assert!(congested(ms(85), ms(80), 0.0));
        assert!(!congested(ms(83), ms(80), 0.0));
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
