//! A deterministic virtual-time network for protocol tests (outside `proto`, which never
//! reads a clock; this harness reads it once, to have an `Instant` to start from).
//! Endpoints exchange datagrams through a link with seeded loss, delay, jitter, reordering,
//! duplication and an MTU cap; each direction between two addresses is a [`Conditioner`]
//! of its own, the model the driver's fake network conditions use. Time jumps straight to
//! the next event. Stepping is bounded, so a livelock fails the test instead of hanging it.

use crate::netcond::Conditioner;
pub use crate::netcond::Impairment;
use crate::proto::{
    ConnId, ConnectionConfig, ConnectionState, Endpoint, EndpointConfig, Event, Side,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The link a new [`Sim`] starts with: 10 ms each way and nothing else; a reordered
/// datagram (once `reorder_pct` is set) is held back 15 ms.
pub const DEFAULT_LINK: Impairment = Impairment {
    lag: Duration::from_millis(10),
    reorder_time: Duration::from_millis(15),
    ..Impairment::NONE
};

/// The largest datagram a new [`Sim`] carries.
pub const DEFAULT_MTU: usize = 1500;

/// A datagram on the wire, offered to [`Sim::filter`] before the link sees it.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Sender.
    pub from: SocketAddr,
    /// Receiver.
    pub to: SocketAddr,
    /// Contents (a filter may change them).
    pub data: Vec<u8>,
}

/// A filter: return `false` to drop the packet; it may also change it.
pub type Filter = Box<dyn FnMut(&mut Packet) -> bool>;

/// One endpoint in the simulation.
#[derive(Debug)]
pub struct Node {
    /// Its address.
    pub addr: SocketAddr,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Every event it produced, in order.
    pub events: Vec<(ConnId, Event)>,
    /// Accept incoming connections as soon as they appear.
    pub auto_accept: bool,
}

/// The simulated network.
pub struct Sim {
    /// Current virtual time.
    pub now: Instant,
    /// The endpoints.
    pub nodes: Vec<Node>,
    /// What the link does to every datagram, in each direction; a change applies to the
    /// datagrams sent after it.
    pub link: Impairment,
    /// Datagrams larger than this are dropped.
    pub mtu: usize,
    /// Sees (and may change or drop) every datagram before the link.
    pub filter: Option<Filter>,
    /// Datagrams sent to addresses with no node: (to, bytes).
    pub unrouted: Vec<(SocketAddr, usize)>,
    /// Datagrams handed to the link so far.
    pub datagrams: u64,
    rng: ChaCha8Rng,
    /// One conditioner per direction (sender, receiver), made on first use.
    wire: BTreeMap<(SocketAddr, SocketAddr), Conditioner<Packet>>,
    steps: u64,
    /// Most steps before the simulation declares a livelock.
    pub max_steps: u64,
    /// Checks, each time datagrams reach a node, what a thread that feeds them in (and does
    /// not send) relies on: when [`Endpoint::next_due`] says the driver need not run yet,
    /// the endpoint has nothing to send, and its next deadline is no earlier than that
    /// answer or the wake-up planned before. On by default.
    pub check_next_due: bool,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("nodes", &self.nodes.len())
            .field("steps", &self.steps)
            .finish()
    }
}

/// The Unix time the simulation's clock starts at (2026-01-01).
pub const SIM_UNIX_START: u64 = 1_767_225_600;

/// See [`Sim::check_next_due`]: `planned` is the endpoint's plan before it was fed.
fn check_next_due(e: &mut Endpoint, now: Instant, planned: Option<Instant>) {
    let due = e.next_due(now);
    if due.is_some_and(|d| d <= now) {
        return; // the feeding thread wakes the driver
    }
    let mut buf = Vec::new();
    let sent = e.poll_transmit(now, &mut buf);
    assert!(
        sent.is_none(),
        "next_due said {:?} from now, but a datagram was ready",
        due.map(|d| d - now)
    );
    let wake = [planned, due].into_iter().flatten().min();
    if let Some(actual) = e.poll_timeout() {
        assert!(
            wake.is_some_and(|w| w <= actual),
            "the endpoint's next deadline ({:?} from now) falls before next_due's {:?} and \
             the plan {:?}",
            actual - now,
            due.map(|d| d - now),
            planned.map(|p| p - now)
        );
    }
}

impl Sim {
    /// An empty network; `seed` drives the link and every endpoint.
    pub fn new(seed: u64) -> Self {
        Self {
            now: Instant::now(),
            nodes: Vec::new(),
            link: DEFAULT_LINK,
            mtu: DEFAULT_MTU,
            filter: None,
            unrouted: Vec::new(),
            datagrams: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            wire: BTreeMap::new(),
            steps: 0,
            max_steps: 5_000_000,
            check_next_due: true,
        }
    }

    /// A client (node 0) and a listening server (node 1) that auto-accepts.
    pub fn pair(seed: u64, client: EndpointConfig, mut server: EndpointConfig) -> Self {
        let mut sim = Self::new(seed);
        server.listen = true;
        sim.add_node("10.0.0.1:1000".parse().expect("valid"), client);
        let s = sim.add_node("10.0.0.2:2000".parse().expect("valid"), server);
        sim.nodes[s].auto_accept = true;
        sim
    }

    /// Adds an endpoint at `addr`; returns its index.
    pub fn add_node(&mut self, addr: SocketAddr, config: EndpointConfig) -> usize {
        let seed = self.rng.next_u64();
        let endpoint = Endpoint::new(config, seed, self.now, SIM_UNIX_START);
        self.nodes.push(Node {
            addr,
            endpoint,
            events: Vec::new(),
            auto_accept: false,
        });
        self.nodes.len() - 1
    }

    /// Node `from` connects to node `to`.
    pub fn connect(&mut self, from: usize, to: usize, config: ConnectionConfig) -> ConnId {
        let addr = self.nodes[to].addr;
        let now = self.now;
        let id = self.nodes[from].endpoint.connect(now, addr, config);
        self.collect_events();
        id
    }

    /// Puts a datagram on the wire from `from` to `to` (bypassing the filter, not the link).
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.onto_link(Packet { from, to, data });
    }

    fn send_through_link(&mut self, mut p: Packet) {
        self.datagrams += 1;
        if let Some(f) = &mut self.filter {
            if !f(&mut p) {
                return;
            }
        }
        if p.data.len() <= self.mtu {
            self.onto_link(p);
        }
    }

    fn onto_link(&mut self, p: Packet) {
        if !self.nodes.iter().any(|n| n.addr == p.to) {
            self.unrouted.push((p.to, p.data.len()));
            return;
        }
        let (link, now, len) = (self.link, self.now, p.data.len());
        let rng = &mut self.rng;
        let wire = self
            .wire
            .entry((p.from, p.to))
            .or_insert_with(|| Conditioner::new(link, rng.next_u64()));
        if *wire.impairment() != link {
            wire.set(link);
        }
        wire.push(now, p, len);
    }

    fn flush_transmits(&mut self) {
        let mut buf = Vec::with_capacity(2048);
        for i in 0..self.nodes.len() {
            loop {
                buf.clear();
                let Some(t) = self.nodes[i].endpoint.poll_transmit(self.now, &mut buf) else {
                    break;
                };
                let p = Packet {
                    from: self.nodes[i].addr,
                    to: t.destination,
                    data: buf[..t.len].to_vec(),
                };
                self.send_through_link(p);
            }
        }
        self.collect_events();
    }

    fn collect_events(&mut self) {
        let now = self.now;
        for n in &mut self.nodes {
            while let Some((id, e)) = n.endpoint.poll_event() {
                if n.auto_accept
                    && e == (Event::StateChanged {
                        old: ConnectionState::None,
                        new: ConnectionState::Connecting,
                    })
                    && n.endpoint
                        .connection(id)
                        .is_some_and(|c| c.side() == Side::Server)
                {
                    // Accepting a connection that just appeared cannot fail.
                    let _ = n.endpoint.accept(now, id);
                }
                n.events.push((id, e));
            }
        }
    }

    /// Advances to the next thing that happens. Returns `false` when nothing is left to do.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        if self.steps > self.max_steps {
            for n in &self.nodes {
                for id in n.endpoint.connection_ids() {
                    if let Some(c) = n.endpoint.connection(id) {
                        eprintln!("{}: {}", n.addr, c.debug_timers(self.now));
                    }
                }
            }
        }
        assert!(
            self.steps <= self.max_steps,
            "livelock: {} simulation steps without finishing",
            self.max_steps
        );
        self.flush_transmits();
        let next_wire = self.wire.values().filter_map(Conditioner::next_due).min();
        let next_timer = self
            .nodes
            .iter()
            .filter_map(|n| n.endpoint.poll_timeout())
            .min();
        let Some(next) = [next_wire, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        let now = self.now;
        let planned: Vec<Option<Instant>> = self
            .nodes
            .iter()
            .map(|n| n.endpoint.poll_timeout())
            .collect();
        let mut fed = vec![false; self.nodes.len()];
        for wire in self.wire.values_mut() {
            while let Some(p) = wire.pop_due(now) {
                if let Some(i) = self.nodes.iter().position(|n| n.addr == p.to) {
                    self.nodes[i].endpoint.handle_datagram(now, p.from, &p.data);
                    fed[i] = true;
                }
            }
        }
        if self.check_next_due {
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if fed[i] && planned[i].is_none_or(|p| p > now) {
                    check_next_due(&mut n.endpoint, now, planned[i]);
                }
            }
        }
        for n in &mut self.nodes {
            n.endpoint.handle_timeout(self.now);
        }
        self.collect_events();
        self.flush_transmits();
        true
    }

    /// Steps until `done` holds or `limit` of virtual time passes; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end || !self.step() {
                return done(self);
            }
        }
    }

    /// Steps for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            if !self.step() {
                break;
            }
            if self.now > end {
                break;
            }
        }
    }

    /// The state of connection `id` at node `node` (`None` once it is forgotten).
    pub fn state(&self, node: usize, id: ConnId) -> ConnectionState {
        self.nodes[node]
            .endpoint
            .connection(id)
            .map_or(ConnectionState::None, |c| c.state())
    }

    /// The first connection node `node` ever had, if any (the server's accepted connection).
    pub fn first_conn(&self, node: usize) -> Option<ConnId> {
        self.nodes[node].events.first().map(|(id, _)| *id)
    }
}
