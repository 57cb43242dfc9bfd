//! Route selection across transports on loopback: peers with `Routes` over ICE and the
//! signaling server's relay connect through the relay first, move to ICE once it is up and
//! measured better, fall back to the relay when the ICE route dies, and lose or repeat no
//! message on the way.

use punchline::proto::ConnectionInfoFlags;
use punchline::transport::{Path, PathConfig, PathParams, PathSink, RouteKind, Routes, Transport};
use punchline::{ConnectionHandle, ConnectionState, SendFlags, Sockets};
use punchline_ice::IceTransport;
use punchline_signaling::Config;
use punchline_tests::peers::*;
use punchline_tests::server::Signaling;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A transport that starts its inner one late (ICE that takes a while) and whose route can
/// be cut (every datagram it would send dropped).
#[derive(Debug)]
struct Gate {
    inner: Arc<dyn Transport>,
    delay: Duration,
    cut: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct GatePath {
    /// Signals from the peer before the inner path exists; `None` once it does.
    early: Mutex<Option<Vec<Vec<u8>>>>,
    inner: OnceLock<Arc<dyn Path>>,
    cut: Arc<AtomicBool>,
    closed: AtomicBool,
}

impl Transport for Gate {
    fn wire_id(&self) -> u8 {
        self.inner.wire_id()
    }
    fn penalty(&self, config: &PathConfig) -> i32 {
        self.inner.penalty(config)
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn start_path(&self, params: PathParams, sink: PathSink) -> Arc<dyn Path> {
        let path = Arc::new(GatePath {
            early: Mutex::new(Some(Vec::new())),
            cut: self.cut.clone(),
            ..GatePath::default()
        });
        let (inner, delay, p) = (self.inner.clone(), self.delay, path.clone());
        params.runtime.clone().spawn(async move {
            tokio::time::sleep(delay).await;
            if p.closed.load(Ordering::SeqCst) {
                return;
            }
            let started = inner.start_path(params, sink);
            let mut early = p.early.lock().unwrap();
            let _ = p.inner.set(started.clone());
            for s in early.take().unwrap_or_default() {
                started.handle_signal(&s);
            }
        });
        path
    }
}

impl Path for GatePath {
    fn handle_signal(&self, signal: &[u8]) {
        let mut early = self.early.lock().unwrap();
        match early.as_mut() {
            Some(queue) => queue.push(signal.to_vec()),
            None => self.inner.get().unwrap().handle_signal(signal),
        }
    }
    fn send(&self, datagram: &[u8]) {
        if !self.cut.load(Ordering::SeqCst) {
            if let Some(p) = self.inner.get() {
                p.send(datagram);
            }
        }
    }
    fn route(&self) -> punchline::transport::RouteInfo {
        self.inner.get().map(|p| p.route()).unwrap_or_default()
    }
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(p) = self.inner.get() {
            p.close();
        }
    }
}

/// A peer whose P2P transport is `Routes` over ICE (started `ice_delay` late, cut while
/// `cut` is set) and the server's relay.
fn routes_peer(sig: &Signaling, ice_delay: Duration, cut: Arc<AtomicBool>) -> Peer {
    let p = peer_with(sig, None);
    let gate = Gate {
        inner: IceTransport::loopback_only().into_arc(),
        delay: ice_delay,
        cut,
    };
    p.sockets.set_p2p_transport(
        Routes::new(vec![Arc::new(gate), Arc::new(p.client.relay_transport())]).into_arc(),
    );
    p
}

/// Both ends send numbered reliable messages every few milliseconds and check that what
/// arrives is exactly the sequence sent, until `done` says so or `limit` passes.
struct Traffic {
    sent: [u32; 2],
    got: [u32; 2],
}

impl Traffic {
    fn new() -> Self {
        Self {
            sent: [0; 2],
            got: [0; 2],
        }
    }

    fn run(
        &mut self,
        ends: [(&Sockets, ConnectionHandle); 2],
        limit: Duration,
        mut done: impl FnMut() -> bool,
    ) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            for (k, (s, h)) in ends.iter().enumerate() {
                let m = format!("m{}", self.sent[k]);
                s.send_message_to_connection(*h, m.into_bytes(), SendFlags::RELIABLE)
                    .unwrap();
                self.sent[k] += 1;
                let other = 1 - k;
                for m in s.receive_messages_on_connection(*h, 64).unwrap() {
                    assert_eq!(
                        m.payload.as_ref(),
                        format!("m{}", self.got[other]).as_bytes(),
                        "a message lost, repeated or out of order"
                    );
                    self.got[other] += 1;
                }
            }
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Stops sending and waits until everything sent has arrived.
    fn drain(&mut self, ends: [(&Sockets, ConnectionHandle); 2]) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let mut all = true;
            for (k, (s, h)) in ends.iter().enumerate() {
                let other = 1 - k;
                for m in s.receive_messages_on_connection(*h, 64).unwrap() {
                    assert_eq!(
                        m.payload.as_ref(),
                        format!("m{}", self.got[other]).as_bytes()
                    );
                    self.got[other] += 1;
                }
                all &= self.got[other] == self.sent[other];
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < end,
                "sent {:?}, received {:?}",
                self.sent,
                self.got
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn route(p: &Peer, h: ConnectionHandle) -> RouteKind {
    info(p, h).route
}

#[test]
fn relay_first_then_ice_takes_over_without_losing_a_message() {
    let sig = Signaling::start(Config::default(), false);
    let ice_delay = Duration::from_millis(3000);
    let a = routes_peer(&sig, ice_delay, Arc::new(AtomicBool::new(false)));
    let b = routes_peer(&sig, ice_delay, Arc::new(AtomicBool::new(false)));
    let started = Instant::now();
    let (ha, hb) = connect(&a, &b, &[], &[]);
    for (p, h) in [(&a, ha), (&b, hb)] {
        let i = info(p, h);
        assert_eq!(i.state, ConnectionState::Connected, "{i:?}");
        assert_eq!(
            i.route,
            RouteKind::Relayed,
            "the relay carries first: {i:?}"
        );
        assert!(i.flags.contains(ConnectionInfoFlags::RELAYED));
    }
    // The first message, before ICE has even started.
    a.sockets
        .send_message_to_connection(ha, b"first".to_vec(), SendFlags::RELIABLE)
        .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let first = loop {
        if let Some(m) = b
            .sockets
            .receive_messages_on_connection(hb, 1)
            .unwrap()
            .pop()
        {
            break m;
        }
        assert!(Instant::now() < end, "the first message did not arrive");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(first.payload.as_ref(), b"first");
    assert!(
        started.elapsed() < ice_delay,
        "delivered {:?} after connect began: not before ICE started",
        started.elapsed()
    );
    let detail = a.sockets.get_detailed_connection_status(ha).unwrap();
    assert!(detail.contains("route relay (in use)"), "{detail}");
    assert!(detail.contains("route ice: not ready"), "{detail}");

    // Traffic both ways while ICE comes up and takes over.
    let mut t = Traffic::new();
    let upgraded = t.run(
        [(&a.sockets, ha), (&b.sockets, hb)],
        Duration::from_secs(15),
        || route(&a, ha) == RouteKind::DirectLocal && route(&b, hb) == RouteKind::DirectLocal,
    );
    assert!(
        upgraded,
        "no switch to ICE: {}",
        a.sockets.get_detailed_connection_status(ha).unwrap()
    );
    // Some more on the new route, then everything must have arrived once, in order.
    t.run(
        [(&a.sockets, ha), (&b.sockets, hb)],
        Duration::from_millis(300),
        || false,
    );
    t.drain([(&a.sockets, ha), (&b.sockets, hb)]);
    assert!(t.sent[0] > 50 && t.sent[1] > 50, "{:?}", t.sent);
    for (p, h) in [(&a, ha), (&b, hb)] {
        let i = info(p, h);
        assert!(!i.flags.contains(ConnectionInfoFlags::RELAYED), "{i:?}");
        assert!(i.address_remote.ip().is_loopback(), "{i:?}");
        let detail = p.sockets.get_detailed_connection_status(h).unwrap();
        assert!(
            detail.contains("route ice (in use): ready, ping"),
            "{detail}"
        );
        assert!(detail.contains("penalty 20 ms"), "{detail}");
    }
}

#[test]
fn a_dead_ice_route_falls_back_to_the_relay_and_nothing_is_lost() {
    let sig = Signaling::start(Config::default(), false);
    let cut = Arc::new(AtomicBool::new(false));
    let a = routes_peer(&sig, Duration::ZERO, cut.clone());
    let b = routes_peer(&sig, Duration::ZERO, cut.clone());
    let (ha, hb) = connect(&a, &b, &[], &[]);
    let mut t = Traffic::new();
    let ends = [(&a.sockets, ha), (&b.sockets, hb)];
    assert!(
        t.run(ends, Duration::from_secs(15), || {
            route(&a, ha) == RouteKind::DirectLocal && route(&b, hb) == RouteKind::DirectLocal
        }),
        "ICE never carried"
    );
    // The direct route goes dark both ways.
    cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    assert!(
        t.run(ends, Duration::from_secs(10), || {
            route(&a, ha) == RouteKind::Relayed && route(&b, hb) == RouteKind::Relayed
        }),
        "no fallback to the relay: {}",
        a.sockets.get_detailed_connection_status(ha).unwrap()
    );
    let fell_back = cut_at.elapsed();
    t.run(ends, Duration::from_millis(300), || false);
    t.drain(ends);
    for (p, h) in [(&a, ha), (&b, hb)] {
        assert_eq!(info(p, h).state, ConnectionState::Connected);
    }
    eprintln!(
        "fell back to the relay {fell_back:?} after the cut; {:?} messages each way",
        t.sent
    );
}

#[test]
fn when_ice_fails_the_relay_carries_the_connection() {
    let sig = Signaling::start(Config::default(), false);
    let a = routes_peer(&sig, Duration::ZERO, Arc::new(AtomicBool::new(false)));
    let b = routes_peer(&sig, Duration::ZERO, Arc::new(AtomicBool::new(false)));
    // Relay candidates only, and no TURN server: ICE has nothing to try.
    let (ha, hb) = connect(&a, &b, &[ice_enable(1)], &[ice_enable(1)]);
    assert_talking(&a, ha, &b, hb, 100);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let detail = a.sockets.get_detailed_connection_status(ha).unwrap();
        if detail.contains("route ice: failed") {
            assert!(detail.contains("route relay (in use)"), "{detail}");
            break;
        }
        assert!(Instant::now() < end, "ICE never failed: {detail}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(route(&a, ha), RouteKind::Relayed);
    assert_talking(&a, ha, &b, hb, 100);
}
