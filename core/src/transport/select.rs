//! Route selection across transports: one connection, several ways to the peer (ICE's
//! selected pair, the signaling server's relay, …), the best one carrying its packets.
//!
//! [`Routes`] is a [`Transport`] made of other transports. It starts a path on each for every
//! connection and tells the connection it is ready as soon as the *first* of them is (relay
//! first: the relay is ready at once, so the handshake and the first messages go through it
//! while ICE is still punching). From then on every ready route is probed end to end with
//! small probe datagrams (answered by the peer's `Routes`), and a [`Selector`] picks the
//! route with the lowest score, the seeds' model: the measured ping in milliseconds plus the
//! transport's penalty (`P2P_Transport_ICE_Penalty`, `P2P_Transport_SDR_Penalty`).
//!
//! Switching is sticky: a route must beat the one in use by [`HYSTERESIS_MS`] for
//! [`SWITCH_AFTER`] before it takes over, so two routes of about the same score do not make
//! the connection flap. A route in use that fails, or stops answering probes for
//! [`DEAD_AFTER`], is left at once for the best live one (a relay fallback when ICE dies).
//!
//! Switching needs nothing from the protocol: every route delivers under the connection's
//! one stand-in address, and the reliable layer retransmits whatever was in flight on the
//! route left behind, so nothing is lost or delivered twice (the replay window drops a
//! packet that arrives both ways). Each side chooses the route it *sends* on; it receives on
//! all of them.
//!
//! Signals of the routes' paths travel in the connection's rendezvous session, each behind
//! the wire id of its transport.
//!
//! Probes are not encrypted: they carry nothing but a random nonce, and an answer counts
//! only for a probe sent and not yet answered. Whoever sits on a route (a relay, say) can
//! delay or answer its probes and so sway which route is used, as it could by delaying the
//! traffic itself; every route carries the same end-to-end encrypted packets.

use super::{Path, PathConfig, PathParams, PathSink, RouteInfo, Transport};
use crate::proto::EndReason;
use rand_core::{OsRng, RngCore};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The wire id of [`Routes`] in rendezvous messages (direct UDP 0, ICE 1, relay 2).
pub const WIRE_ID: u8 = 3;

/// First byte of a route probe. No protocol packet starts with it (data packets start
/// `0x40`/`0x41`, handshake packets `0xC1`..`0xC5`), and probes never reach the endpoint.
pub const PROBE: u8 = 0xD0;
const PING: u8 = 1;
const PONG: u8 = 2;
/// `[PROBE][PING | PONG][nonce u64]`.
const PROBE_LEN: usize = 10;

/// A route must be better than the one in use by this many milliseconds of score…
pub const HYSTERESIS_MS: f64 = 5.0;
/// …for this long before it takes over.
pub const SWITCH_AFTER: Duration = Duration::from_millis(1000);
/// A route that answered no probe for this long is taken for dead.
pub const DEAD_AFTER: Duration = Duration::from_millis(2500);
/// Probe interval for the first [`FAST_PROBES`] probes after a route becomes ready (to
/// measure it soon), and after that.
const PROBE_FAST: Duration = Duration::from_millis(150);
const FAST_PROBES: u32 = 5;
const PROBE_SLOW: Duration = Duration::from_millis(1000);
/// Probes awaiting an answer, per route, before the oldest is forgotten.
const OUTSTANDING: usize = 8;
/// The probe task wakes when a probe is due, and at least this often (to notice a dead
/// route or a better one held long enough).
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// A [`Transport`] that runs several transports side by side for each connection and sends
/// on the best route among them (see the module documentation). Both peers need `Routes`
/// over the same transports.
#[derive(Debug, Clone)]
pub struct Routes {
    transports: Vec<Arc<dyn Transport>>,
}

impl Routes {
    /// Routes over `transports`, in order of preference when nothing is measured yet.
    pub fn new(transports: Vec<Arc<dyn Transport>>) -> Self {
        Self { transports }
    }

    /// Shared, as [`Sockets::set_p2p_transport`](crate::api::Sockets::set_p2p_transport)
    /// takes it.
    pub fn into_arc(self) -> Arc<dyn Transport> {
        Arc::new(self)
    }
}

impl Transport for Routes {
    fn wire_id(&self) -> u8 {
        WIRE_ID
    }

    fn penalty(&self, _config: &PathConfig) -> i32 {
        0
    }

    fn start_path(&self, params: PathParams, sink: PathSink) -> Arc<dyn Path> {
        let penalties = self
            .transports
            .iter()
            .map(|t| t.penalty(&params.config))
            .collect();
        let shared = Arc::new(Shared {
            outer: sink.clone(),
            wire_ids: self.transports.iter().map(|t| t.wire_id()).collect(),
            names: self.transports.iter().map(|t| t.name()).collect(),
            paths: OnceLock::new(),
            current: AtomicUsize::new(NONE),
            state: Mutex::new(State {
                selector: Selector::new(penalties),
                told_ready: false,
                failures: Vec::new(),
            }),
        });
        let paths = self
            .transports
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let sub = sink.for_route(i, Arc::downgrade(&shared));
                t.start_path(params.clone(), sub)
            })
            .collect();
        // Set once, just made: nothing else can have set it.
        let _ = shared.paths.set(paths);
        let weak = Arc::downgrade(&shared);
        params.runtime.spawn(async move {
            let mut wake = runtime_now();
            loop {
                tokio::time::sleep_until(wake.into()).await;
                let Some(s) = weak.upgrade() else { return };
                let now = runtime_now();
                match s.think(now) {
                    Some(next) => {
                        wake = next.clamp(now + Duration::from_millis(5), now + MAX_SLEEP)
                    }
                    None => return,
                }
            }
        });
        Arc::new(RoutesPath { shared })
    }
}

const NONE: usize = usize::MAX;

/// What one connection's routes share with their sinks and the probe task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The connection's own sink.
    outer: PathSink,
    wire_ids: Vec<u8>,
    names: Vec<&'static str>,
    paths: OnceLock<Vec<Arc<dyn Path>>>,
    /// The route sent on ([`NONE`] before any is ready), read on every send.
    current: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    selector: Selector,
    /// The connection was told a route is ready.
    told_ready: bool,
    /// Why routes failed (route, reason, text), for the connection's end if all do.
    failures: Vec<(usize, EndReason, String)>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, i: usize) -> Option<&Arc<dyn Path>> {
        self.paths.get()?.get(i)
    }

    /// A route's path has a route.
    pub(crate) fn route_ready(&self, i: usize) {
        let now = runtime_now();
        let mut st = self.state();
        st.selector.route_ready(i, now);
        st.failures.retain(|f| f.0 != i);
        self.apply(&mut st, now);
        if !st.told_ready {
            st.told_ready = true;
            drop(st);
            self.outer.ready();
        }
    }

    /// A route's path cannot be made (or was lost for good).
    pub(crate) fn route_failed(&self, i: usize, reason: EndReason, why: String) {
        let now = runtime_now();
        let mut st = self.state();
        st.selector.route_failed(i);
        tracing::debug!(route = self.names.get(i).copied(), why = %why, "route failed");
        st.failures.retain(|f| f.0 != i);
        st.failures.push((i, reason, why));
        self.apply(&mut st, now);
        if st.failures.len() == self.wire_ids.len() {
            // Every route failed: the connection ends with the first transport's reason
            // (the one preferred), and every route's story.
            let text = st
                .failures
                .iter()
                .map(|(i, _, d)| format!("{}: {d}", self.names[*i]))
                .collect::<Vec<_>>()
                .join("; ");
            let reason = st
                .failures
                .iter()
                .min_by_key(|f| f.0)
                .map_or(EndReason::MISC_GENERIC, |f| f.1);
            drop(st);
            self.outer.failed(reason, text);
        }
    }

    /// A signal from a route's path, for the peer's side of that route.
    pub(crate) fn route_signal(&self, i: usize, data: Vec<u8>) {
        let mut tagged = Vec::with_capacity(data.len() + 1);
        tagged.push(self.wire_ids[i]);
        tagged.extend_from_slice(&data);
        self.outer.signal(tagged);
    }

    /// A datagram that came in on route `i`: true when it was a probe (handled here).
    pub(crate) fn route_probe(&self, i: usize, datagram: &[u8]) -> bool {
        if datagram.first() != Some(&PROBE) {
            return false;
        }
        if datagram.len() != PROBE_LEN {
            return true;
        }
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&datagram[2..]);
        match datagram[1] {
            PING => {
                let mut pong = [0u8; PROBE_LEN];
                pong.copy_from_slice(datagram);
                pong[1] = PONG;
                if let Some(p) = self.path(i) {
                    p.send(&pong);
                }
            }
            PONG => {
                let now = runtime_now();
                let mut st = self.state();
                st.selector.pong(i, u64::from_be_bytes(nonce), now);
                self.apply(&mut st, now);
            }
            _ => {}
        }
        true
    }

    /// Sends the probes that are due and re-selects; when the next probe is due (`None`
    /// once the path is closed).
    fn think(&self, now: Instant) -> Option<Instant> {
        let mut st = self.state();
        while let Some((i, nonce)) = st.selector.poll_probe(now) {
            let mut ping = [0u8; PROBE_LEN];
            ping[0] = PROBE;
            ping[1] = PING;
            ping[2..].copy_from_slice(&nonce.to_be_bytes());
            if let Some(p) = self.path(i) {
                p.send(&ping);
            }
        }
        self.apply(&mut st, now);
        let open = self.current.load(Ordering::Relaxed) != CLOSED;
        open.then(|| st.selector.next_probe().unwrap_or(now + MAX_SLEEP))
    }

    /// Re-selects and publishes the route to send on.
    fn apply(&self, st: &mut State, now: Instant) {
        if self.current.load(Ordering::Relaxed) == CLOSED {
            return;
        }
        if let Some(to) = st.selector.reselect(now) {
            let from = self.current.swap(to, Ordering::Relaxed);
            tracing::debug!(
                from = self.names.get(from).copied(),
                to = self.names.get(to).copied(),
                "route switched"
            );
        }
    }
}

/// [`Shared::current`] once the path is closed.
const CLOSED: usize = usize::MAX - 1;

/// The connection's path over all its routes.
#[derive(Debug)]
struct RoutesPath {
    shared: Arc<Shared>,
}

impl Path for RoutesPath {
    fn handle_signal(&self, signal: &[u8]) {
        let Some((&id, rest)) = signal.split_first() else {
            return;
        };
        // A transport we lack: the peer's route of that kind never becomes ready here.
        if let Some(i) = self.shared.wire_ids.iter().position(|w| *w == id) {
            if let Some(p) = self.shared.path(i) {
                p.handle_signal(rest);
            }
        }
    }

    fn send(&self, datagram: &[u8]) {
        let i = self.shared.current.load(Ordering::Relaxed);
        if let Some(p) = self.shared.path(i) {
            p.send(datagram);
        }
    }

    fn route(&self) -> RouteInfo {
        let i = self.shared.current.load(Ordering::Relaxed);
        // The routes' own infos first, without the selector's lock held while their paths
        // take theirs.
        let routes: Vec<RouteInfo> = self
            .shared
            .paths
            .get()
            .into_iter()
            .flatten()
            .map(|p| p.route())
            .collect();
        let mut info = routes.get(i).cloned().unwrap_or_default();
        let st = self.shared.state();
        let mut pairs = Vec::new();
        for (j, r) in routes.into_iter().enumerate() {
            pairs.push(format!(
                "route {}{}: {}",
                self.shared.names[j],
                if j == i { " (in use)" } else { "" },
                st.selector.describe(j),
            ));
            pairs.extend(r.pairs.into_iter().map(|l| format!("  {l}")));
        }
        info.pairs = pairs;
        info.switches = st.selector.switches;
        info
    }

    fn close(&self) {
        self.shared.current.store(CLOSED, Ordering::Relaxed);
        for p in self.shared.paths.get().into_iter().flatten() {
            p.close();
        }
    }
}

/// One route as the selector sees it.
#[derive(Debug, Clone)]
struct RouteState {
    penalty: i32,
    ready: bool,
    failed: bool,
    ready_at: Option<Instant>,
    /// Smoothed round trip of its probes.
    srtt: Option<Duration>,
    last_answer: Option<Instant>,
    outstanding: VecDeque<(u64, Instant)>,
    probes: u32,
    next_probe: Option<Instant>,
}

/// Picks the route to send on from what the probes measured. Sans-IO: time comes in, probes
/// to send come out.
#[derive(Debug)]
pub struct Selector {
    routes: Vec<RouteState>,
    current: Option<usize>,
    /// A route better than the current one, since when.
    better: Option<(usize, Instant)>,
    /// Times the route in use changed after the first choice.
    pub switches: u32,
    nonce_key: u64,
}

impl Selector {
    /// A selector over routes with these penalties (milliseconds).
    pub fn new(penalties: Vec<i32>) -> Self {
        Self {
            routes: penalties
                .into_iter()
                .map(|penalty| RouteState {
                    penalty,
                    ready: false,
                    failed: false,
                    ready_at: None,
                    srtt: None,
                    last_answer: None,
                    outstanding: VecDeque::new(),
                    probes: 0,
                    next_probe: None,
                })
                .collect(),
            current: None,
            better: None,
            switches: 0,
            nonce_key: OsRng.next_u64(),
        }
    }

    /// The route in use.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// Route `i` is ready (again): probe it from now.
    pub fn route_ready(&mut self, i: usize, now: Instant) {
        let Some(r) = self.routes.get_mut(i) else {
            return;
        };
        if !r.ready || r.failed {
            r.ready_at = Some(now);
            r.last_answer = None;
            r.probes = 0;
            r.outstanding.clear();
        }
        r.ready = true;
        r.failed = false;
        r.next_probe = Some(now);
    }

    /// Route `i` failed: it is not used until it is ready again.
    pub fn route_failed(&mut self, i: usize) {
        if let Some(r) = self.routes.get_mut(i) {
            r.failed = true;
            r.next_probe = None;
            r.outstanding.clear();
        }
    }

    /// The next probe due on any route, with its nonce.
    pub fn poll_probe(&mut self, now: Instant) -> Option<(usize, u64)> {
        let key = self.nonce_key;
        for (i, r) in self.routes.iter_mut().enumerate() {
            let Some(at) = r.next_probe else { continue };
            if at > now || !r.ready || r.failed {
                continue;
            }
            r.probes += 1;
            let nonce =
                key ^ (u64::from(r.probes) << 8 | i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if r.outstanding.len() == OUTSTANDING {
                r.outstanding.pop_front();
            }
            r.outstanding.push_back((nonce, now));
            let gap = if r.probes < FAST_PROBES {
                PROBE_FAST
            } else {
                PROBE_SLOW
            };
            r.next_probe = Some(now + gap);
            return Some((i, nonce));
        }
        None
    }

    /// When the next probe is due on any route.
    pub fn next_probe(&self) -> Option<Instant> {
        self.routes
            .iter()
            .filter(|r| r.ready && !r.failed)
            .filter_map(|r| r.next_probe)
            .min()
    }

    /// The answer to a probe on route `i`. Answers to no probe of ours are ignored.
    pub fn pong(&mut self, i: usize, nonce: u64, now: Instant) {
        let Some(r) = self.routes.get_mut(i) else {
            return;
        };
        let Some(k) = r.outstanding.iter().position(|(n, _)| *n == nonce) else {
            return;
        };
        let (_, sent) = r.outstanding[k];
        r.outstanding.drain(..=k);
        let sample = now.saturating_duration_since(sent);
        r.srtt = Some(match r.srtt {
            None => sample,
            Some(s) => (s * 3 + sample) / 4,
        });
        r.last_answer = Some(now);
    }

    /// True while route `i` is usable: ready, not failed, and answering probes.
    pub fn alive(&self, i: usize, now: Instant) -> bool {
        let Some(r) = self.routes.get(i) else {
            return false;
        };
        if !r.ready || r.failed {
            return false;
        }
        let since = r.last_answer.or(r.ready_at).unwrap_or(now);
        now.saturating_duration_since(since) < DEAD_AFTER
    }

    /// Route `i`'s score: its ping in milliseconds plus its penalty (`None` unmeasured).
    pub fn score(&self, i: usize) -> Option<f64> {
        let r = self.routes.get(i)?;
        Some(r.srtt?.as_secs_f64() * 1000.0 + f64::from(r.penalty))
    }

    /// Chooses again; the new route when the one to send on changes.
    pub fn reselect(&mut self, now: Instant) -> Option<usize> {
        let live: Vec<usize> = (0..self.routes.len())
            .filter(|&i| self.alive(i, now))
            .collect();
        // The best live route: lowest score among the measured; else (nothing measured)
        // the lowest penalty, then the first.
        let best = live
            .iter()
            .copied()
            .filter(|&i| self.score(i).is_some())
            .min_by(|&a, &b| {
                self.score(a)
                    .partial_cmp(&self.score(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .or_else(|| live.iter().copied().min_by_key(|&i| self.routes[i].penalty));
        let best = best?;
        let cur = match self.current {
            Some(c) if self.alive(c, now) => c,
            // Nothing yet, or the route in use died: take the best live one at once.
            _ => {
                self.better = None;
                if self.current.is_some() {
                    self.switches += 1;
                }
                self.current = Some(best);
                return Some(best);
            }
        };
        if best == cur {
            self.better = None;
            return None;
        }
        let clearly_better = match (self.score(best), self.score(cur)) {
            (Some(b), Some(c)) => b + HYSTERESIS_MS < c,
            // The route in use is unmeasured (its probes unanswered so far) and another
            // is: keep it until it is measured or dies.
            _ => false,
        };
        if !clearly_better {
            self.better = None;
            return None;
        }
        match self.better {
            Some((i, since)) if i == best => {
                if now.saturating_duration_since(since) >= SWITCH_AFTER {
                    self.better = None;
                    self.current = Some(best);
                    self.switches += 1;
                    return Some(best);
                }
            }
            _ => self.better = Some((best, now)),
        }
        None
    }

    /// One line about route `i`, for the detailed status.
    pub fn describe(&self, i: usize) -> String {
        let Some(r) = self.routes.get(i) else {
            return String::new();
        };
        let state = if r.failed {
            "failed"
        } else if !r.ready {
            "not ready"
        } else {
            "ready"
        };
        match (r.srtt, self.score(i)) {
            (Some(rtt), Some(score)) => format!(
                "{state}, ping {:.1} ms, penalty {} ms, score {score:.1}",
                rtt.as_secs_f64() * 1000.0,
                r.penalty
            ),
            _ => format!("{state}, ping unmeasured, penalty {} ms", r.penalty),
        }
    }
}

/// The time on the clock of the runtime the caller runs on (the system's outside one): the
/// clock the probe loop's timers run on.
fn runtime_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl PathSink {
    /// A sink for route `index` of a [`Routes`] path: its datagrams go straight to the
    /// connection (probes aside), its notes to the selector.
    fn for_route(&self, index: usize, shared: Weak<Shared>) -> PathSink {
        let mut s = self.clone();
        s.route = Some(super::RouteTag { index, shared });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Answers every due probe of route `i` after `rtt`, until `until`.
    fn run(
        sel: &mut Selector,
        start: Instant,
        until: Duration,
        rtts: &[Option<Duration>],
    ) -> Instant {
        let mut now = start;
        let mut pending: Vec<(usize, u64, Instant)> = Vec::new();
        while now < start + until {
            while let Some((i, nonce)) = sel.poll_probe(now) {
                if let Some(rtt) = rtts[i] {
                    pending.push((i, nonce, now + rtt));
                }
            }
            pending.retain(|&(i, nonce, at)| {
                if at <= now {
                    sel.pong(i, nonce, now);
                    false
                } else {
                    true
                }
            });
            sel.reselect(now);
            now += ms(10);
        }
        now
    }

    #[test]
    fn the_first_ready_route_carries_at_once() {
        let t0 = Instant::now();
        let mut sel = Selector::new(vec![0, 10]);
        assert_eq!(sel.reselect(t0), None);
        sel.route_ready(1, t0);
        assert_eq!(sel.reselect(t0), Some(1), "relay first, unmeasured");
        assert_eq!(sel.switches, 0);
    }

    #[test]
    fn a_better_route_takes_over_after_it_stays_better() {
        let t0 = Instant::now();
        let mut sel = Selector::new(vec![0, 10]);
        sel.route_ready(1, t0);
        sel.reselect(t0);
        let rtts = [Some(ms(20)), Some(ms(30))];
        let t1 = run(&mut sel, t0, ms(500), &rtts);
        assert_eq!(sel.current(), Some(1));
        sel.route_ready(0, t1);
        let t2 = run(&mut sel, t1, ms(900), &rtts);
        assert_eq!(sel.current(), Some(1), "not before SWITCH_AFTER");
        run(&mut sel, t2, ms(1000), &rtts);
        assert_eq!(sel.current(), Some(0));
        assert_eq!(sel.switches, 1);
    }

    #[test]
    fn penalties_count_and_hysteresis_holds_the_route() {
        let t0 = Instant::now();
        // Route 0 pings 20 ms with a 15 ms penalty (35); route 1 pings 32 ms (32): less
        // than the hysteresis apart, so whichever carries first keeps carrying.
        let mut sel = Selector::new(vec![15, 0]);
        sel.route_ready(0, t0);
        sel.route_ready(1, t0);
        sel.reselect(t0);
        let first = sel.current().unwrap();
        run(&mut sel, t0, ms(5000), &[Some(ms(20)), Some(ms(32))]);
        assert_eq!(sel.current(), Some(first));
        assert_eq!(sel.switches, 0);
        // With a 30 ms penalty route 0 scores 50 against 32: route 1 wins.
        let mut sel = Selector::new(vec![30, 0]);
        sel.route_ready(0, t0);
        sel.reselect(t0);
        sel.route_ready(1, t0);
        run(&mut sel, t0, ms(5000), &[Some(ms(20)), Some(ms(32))]);
        assert_eq!(sel.current(), Some(1));
    }

    #[test]
    fn a_dead_route_is_left_at_once_and_a_failed_one_too() {
        let t0 = Instant::now();
        let mut sel = Selector::new(vec![0, 10]);
        sel.route_ready(0, t0);
        sel.route_ready(1, t0);
        let t1 = run(&mut sel, t0, ms(3000), &[Some(ms(5)), Some(ms(30))]);
        assert_eq!(sel.current(), Some(0));
        // Route 0 stops answering: within DEAD_AFTER (plus a probe interval) it is left.
        let t2 = run(&mut sel, t1, DEAD_AFTER + ms(1100), &[None, Some(ms(30))]);
        assert_eq!(sel.current(), Some(1));
        // It comes back (an ICE restart): ready again, measured, and taken back.
        sel.route_ready(0, t2);
        run(&mut sel, t2, ms(3000), &[Some(ms(5)), Some(ms(30))]);
        assert_eq!(sel.current(), Some(0));
        sel.route_failed(0);
        assert_eq!(sel.reselect(t2 + ms(3000)), Some(1));
    }

    #[test]
    fn answers_to_probes_never_sent_are_ignored() {
        let t0 = Instant::now();
        let mut sel = Selector::new(vec![0]);
        sel.route_ready(0, t0);
        let (_, nonce) = sel.poll_probe(t0).unwrap();
        sel.pong(0, nonce ^ 1, t0 + ms(1));
        sel.pong(7, nonce, t0 + ms(1));
        assert_eq!(sel.score(0), None);
        sel.pong(0, nonce, t0 + ms(4));
        assert_eq!(sel.score(0), Some(4.0));
        // Once answered, the same answer again counts for nothing.
        sel.pong(0, nonce, t0 + ms(40));
        assert_eq!(sel.score(0), Some(4.0));
    }
}
