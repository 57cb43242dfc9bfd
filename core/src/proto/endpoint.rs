//! The endpoint: one UDP socket's worth of connections. It routes datagrams, answers client
//! hellos (with cookies under load and rejections that never exceed what was received), and
//! replies "no connection" at a bounded rate.

use super::admission::{Admission, Refused};
use super::auth;
use super::codec::DecodeError;
use super::config::{ConnectionConfig, EndpointConfig};
use super::connection::{Connection, Event, Incoming, P2pInfo};
use super::conns::{ConnId, ConnRef, Conns};
use super::crypto::{CookieKey, COOKIE_LEN};
use super::packet::{self, ClientHello, Control, ServerHello, ShortHeader, PROTOCOL_VERSION};
use super::rendezvous::{Body, Message, Session, DIRECT};
use super::types::TokenBucket;
use super::types::{ConnectionState, EndReason};
use super::Error;
use bytes::BytesMut;
use punchline_identity::Identity;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// Bytes appended to the end of the caller's buffer.
    pub len: usize,
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams that could not be decoded or had no use.
    pub malformed: u64,
    /// Client hellos refused.
    pub rejected: u64,
    /// Retry (cookie) packets sent.
    pub retries_sent: u64,
    /// Unproven hellos answered with a cookie because their timestamp was not fresh (the
    /// client's clock is off, or the hello is an old copy).
    pub stale_hellos: u64,
    /// Unproven hellos answered with a cookie because their key was seen before (a copy).
    pub replayed_hellos: u64,
    /// Unproven hellos answered with a cookie because the budget of signature checks (or
    /// the memory of seen keys) was spent.
    pub busy_hellos: u64,
    /// "No connection" replies sent.
    pub no_connection_sent: u64,
    /// Datagrams for unknown connections not answered (rate limit).
    pub unanswered: u64,
}

/// How long a cookie stays valid.
const COOKIE_LIFETIME: Duration = Duration::from_secs(10);
/// How long an address token (given to connected clients for their next handshakes) stays
/// valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Address tokens a client endpoint keeps (one per server address).
const MAX_TOKENS: usize = 1024;
/// How long the close of a P2P connection that never connected is sent again, at most
/// (the peer may be gone).
const SESSION_LINGER: Duration = Duration::from_secs(20);
/// Datagrams of stateless replies (retries, rejections) held before more are dropped: room
/// for a full receive batch of hellos (a batch can carry well over a thousand with GRO).
const MAX_QUEUED_REPLIES: usize = 4096;

/// Routes datagrams to connections and creates them.
#[derive(Debug)]
pub struct Endpoint {
    config: Arc<EndpointConfig>,
    credentials: Arc<super::config::Credentials>,
    rng: ChaCha20Rng,
    connections: Conns,
    /// Scratch for the ids `pick_up_touched` takes (kept for its capacity).
    touched: Vec<u32>,
    /// A connection was removed since [`take_removed`](Self::take_removed) last looked.
    removed: bool,
    by_hello: HashMap<(SocketAddr, u32), u32>,
    /// Outgoing connections by (server address, server's id for it), once the server
    /// answered: where a "no connection" reply is routed without a scan.
    by_server: HashMap<(SocketAddr, u32), u32>,
    /// Address tokens servers gave us, by server address.
    tokens: HashMap<SocketAddr, Vec<u8>>,
    cookie_key: CookieKey,
    /// Which unproven hellos may hold state.
    admission: Admission,
    start: Instant,
    unix_at_start: u64,
    replies: VecDeque<(SocketAddr, Vec<u8>)>,
    /// "No connection" replies.
    no_conn_budget: TokenBucket,
    events: VecDeque<(ConnId, Event)>,
    stats: EndpointStats,
    /// Connections that may have something to send, in the order they became so.
    dirty: VecDeque<u32>,
    dirty_set: FxHashSet<u32>,
    /// Connections touched since [`next_due`](Self::next_due) last looked (or the dirty
    /// list last emptied), possibly more than once each.
    fed: Vec<u32>,
    /// Connection deadlines; an entry is current only if it matches `scheduled`.
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    scheduled: FxHashMap<u32, Instant>,
    /// Connections in Connecting (handshakes pending).
    connecting: HashSet<u32>,
    /// Where received data packets are copied to be decrypted in place.
    rx_arena: BytesMut,
    /// P2P rendezvous sessions by id, with the connection each serves.
    sessions: HashMap<u64, (u32, Session)>,
    /// Sessions whose connection ended before connecting, and when the peer was told: kept
    /// until the close is acknowledged, or for [`SESSION_LINGER`] at most.
    closing_sessions: HashMap<u64, Instant>,
    /// Where peers can reach this endpoint, for rendezvous messages.
    p2p_candidates: Vec<SocketAddr>,
    /// The transport P2P connections ask for (`DIRECT`: none plugged in).
    p2p_transport: u8,
    /// Connections whose transport path should start now.
    path_starts: VecDeque<u32>,
    /// Signals from peers' paths, for ours.
    path_signals: VecDeque<(u32, Vec<u8>)>,
}

/// A peer's request, through the rendezvous, to connect: the application decides
/// ([`Endpoint::accept_p2p_request`] or [`Endpoint::reject_p2p_request`]; ignoring it is
/// doing neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pRequest {
    /// Who asks.
    pub from: Identity,
    /// The virtual port it asks for.
    pub to_vport: u16,
    /// Its own virtual port.
    pub from_vport: u16,
    /// Symmetric connect mode.
    pub symmetric: bool,
    /// The transport it asks for.
    pub transport: u8,
    message: Message,
}

/// What a rendezvous signal led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalOutcome {
    /// Taken in by an existing session (or merged into a symmetric connection).
    Handled,
    /// A new connect request, for the application to decide on.
    Request(P2pRequest),
    /// Not for us, or for no session we know.
    Ignored,
}

/// Signals from peers' paths held for ours (they are handed on after every signal taken in).
const MAX_PATH_SIGNALS: usize = 256;

/// Bytes of receive arena allocated at a time.
const RX_ARENA: usize = 64 * 1024;

impl Endpoint {
    /// An endpoint whose random choices follow from a 64-bit `seed`: for simulations and
    /// tests, which replay a run from its seed. A real endpoint takes 256 bits of the OS's
    /// randomness ([`with_seed`](Self::with_seed)).
    pub fn new(config: EndpointConfig, seed: u64, now: Instant, unix_now: u64) -> Self {
        let mut wide = [0u8; 32];
        ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut wide);
        Self::with_seed(config, wide, now, unix_now)
    }

    /// An endpoint. `seed` feeds every random choice (connection ids, ephemeral keys,
    /// cookies), so it must be secret and unpredictable: 256 bits from the OS. `now` and
    /// `unix_now` (seconds since 1970) anchor its clocks, so that certificate validity is
    /// judged against `unix_now + (t - now)` at any later `t`.
    pub fn with_seed(config: EndpointConfig, seed: [u8; 32], now: Instant, unix_now: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let credentials = Arc::new(config.credentials.clone());
        Self {
            config: Arc::new(config),
            credentials,
            rng,
            connections: Conns::default(),
            touched: Vec::new(),
            removed: false,
            by_hello: HashMap::new(),
            by_server: HashMap::new(),
            tokens: HashMap::new(),
            cookie_key: CookieKey::new(secret),
            admission: Admission::default(),
            start: now,
            unix_at_start: unix_now,
            replies: VecDeque::new(),
            no_conn_budget: TokenBucket::default(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
            dirty: VecDeque::new(),
            dirty_set: FxHashSet::default(),
            fed: Vec::new(),
            timers: BinaryHeap::new(),
            scheduled: FxHashMap::default(),
            connecting: HashSet::new(),
            rx_arena: BytesMut::new(),
            sessions: HashMap::new(),
            closing_sessions: HashMap::new(),
            p2p_candidates: Vec::new(),
            p2p_transport: DIRECT,
            path_starts: VecDeque::new(),
            path_signals: VecDeque::new(),
        }
    }

    /// Notes that connection `id` may have something to send and its deadline may have moved.
    fn touch(&mut self, id: u32) {
        if self.dirty_set.insert(id) {
            self.dirty.push_back(id);
        }
        if self.fed.last() != Some(&id) {
            self.fed.push(id);
            // Repeats are cheap to keep (a connection fed twice in a row is kept once), but
            // with nobody asking `next_due` they must not pile up: past twice the dirty
            // connections, the list is cut to one entry per connection.
            if self.fed.len() > 2 * self.dirty.len() + 16 {
                self.fed.sort_unstable();
                self.fed.dedup();
            }
        }
    }

    /// Records connection `id`'s next deadline.
    fn reschedule(&mut self, id: u32) {
        match self.connections.get(&id).and_then(|c| c.poll_timeout()) {
            Some(t) => {
                if self.scheduled.insert(id, t) != Some(t) {
                    self.timers.push(Reverse((t, id)));
                }
            }
            None => {
                self.scheduled.remove(&id);
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Starts or stops accepting client hellos.
    pub fn set_listen(&mut self, listen: bool) {
        Arc::make_mut(&mut self.config).listen = listen;
    }

    /// Changes how many unproven handshakes may hold state before new clients are asked
    /// for a cookie ([`EndpointConfig::cookie_threshold`]).
    pub fn set_cookie_threshold(&mut self, threshold: usize) {
        Arc::make_mut(&mut self.config).cookie_threshold = threshold;
    }

    /// Changes the settings given to connections accepted from now on.
    pub fn set_incoming(&mut self, incoming: ConnectionConfig) {
        Arc::make_mut(&mut self.config).incoming = incoming;
    }

    /// Counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.start).as_secs()
    }

    fn fresh_id(&mut self) -> u32 {
        loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.connections.contains_key(&id) {
                return id;
            }
        }
    }

    fn secret(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    /// Starts a connection to `remote`.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        config: ConnectionConfig,
    ) -> ConnId {
        let id = self.fresh_id();
        let secret = self.secret();
        let token = self.tokens.get(&remote).cloned().unwrap_or_default();
        let c = Connection::new_client(
            now,
            self.unix(now),
            id,
            remote,
            config,
            self.credentials.clone(),
            secret,
            token,
        );
        self.connections.insert(id, c);
        self.drain_events(id);
        self.touch(id);
        ConnId(id)
    }

    /// Accepts a connection that is waiting in Connecting (server side).
    pub fn accept(&mut self, now: Instant, id: ConnId) -> Result<(), Error> {
        let secret = self.secret();
        let mut c = self
            .connections
            .get_mut(&id.0)
            .ok_or_else(|| Error::InvalidParam(format!("no connection {}", id.0)))?;
        let r = c.accept(now, secret);
        // A P2P connect request accepted: tell the peer where to send its hello.
        let session = (r.is_ok() && c.awaits_hello())
            .then(|| c.p2p().map(|p| (p.session, p.transport)))
            .flatten();
        drop(c);
        if let Some((session, transport)) = session {
            self.accept_session(now, id.0, session, transport);
        }
        self.drain_events(id.0);
        self.touch(id.0);
        r
    }

    // ----- P2P ---------------------------------------------------------------------------

    /// Where peers can reach this endpoint; sent to them in rendezvous messages.
    pub fn set_p2p_candidates(&mut self, candidates: Vec<SocketAddr>) {
        self.p2p_candidates = candidates;
    }

    /// The transport new P2P connections ask for, and accept when asked (by its wire id;
    /// [`DIRECT`] for none).
    pub fn set_p2p_transport(&mut self, wire_id: u8) {
        self.p2p_transport = wire_id;
    }

    /// Answers the peer of session `session`, whose connection we accept: with our accept,
    /// or, when it asked for a transport we do not use, with a close (no address leaves).
    fn accept_session(&mut self, now: Instant, id: u32, session: u64, transport: u8) {
        match self.transport_mismatch(transport) {
            Some(why) => {
                if let Some(mut c) = self.connections.get_mut(&id) {
                    c.path_failed(EndReason::MISC_P2P_RENDEZVOUS, &why);
                }
            }
            None => self.send_accept(now, id, session, transport),
        }
    }

    /// Tells the peer of session `session` that we accept, with our candidates and the
    /// transport; a transport path starts here.
    fn send_accept(&mut self, now: Instant, id: u32, session: u64, transport: u8) {
        let candidates = self.direct_candidates(transport);
        if let Some((_, s)) = self.sessions.get_mut(&session) {
            // An accept is the first message of its side: no backlog.
            let _ = s.send(
                now,
                Body::ConnectAccept {
                    transport,
                    candidates,
                },
            );
            if transport != DIRECT {
                self.path_starts.push_back(id);
            }
        }
    }

    /// The next connection whose transport path should start: the peer accepted our
    /// request, or we accepted the peer's. Its path's signals go to
    /// [`send_path_signal`](Self::send_path_signal).
    pub fn poll_path_start(&mut self) -> Option<ConnId> {
        // A connection that ended meanwhile (the peer's close came with its accept) needs
        // no path: starting one would gather and send for nothing.
        while let Some(id) = self.path_starts.pop_front() {
            let alive = self.connections.get(&id).is_some_and(|c| {
                matches!(
                    c.state(),
                    ConnectionState::Connecting | ConnectionState::FindingRoute
                )
            });
            if alive {
                return Some(ConnId(id));
            }
        }
        None
    }

    /// The next signal from a peer's path for one of ours.
    pub fn poll_path_signal(&mut self) -> Option<(ConnId, Vec<u8>)> {
        self.path_signals.pop_front().map(|(id, s)| (ConnId(id), s))
    }

    /// Sends a signal of our path for connection `id` to the peer's, through the rendezvous.
    /// False when the session is gone or too far behind.
    pub fn send_path_signal(&mut self, now: Instant, id: ConnId, signal: Vec<u8>) -> bool {
        let Some(session) = self
            .connections
            .get(&id.0)
            .and_then(|c| c.p2p().map(|p| p.session))
        else {
            return false;
        };
        match self.sessions.get_mut(&session) {
            Some((owner, s)) if *owner == id.0 => {
                s.send(now, Body::Transport { data: signal }).is_ok()
            }
            _ => false,
        }
    }

    /// The path of connection `id` has a route, known inside the endpoint as `addr`: a
    /// client sends its hello there.
    pub fn path_ready(&mut self, id: ConnId, addr: SocketAddr) {
        if let Some(mut c) = self.connections.get_mut(&id.0) {
            tracing::debug!(conn = id.0, %addr, state = ?c.state(), "path ready");
            c.set_route(addr);
        }
        self.drain_events(id.0);
        self.touch(id.0);
    }

    /// The path of connection `id` failed: the connection ends with `reason`.
    pub fn path_failed(&mut self, id: ConnId, reason: EndReason, debug: &str) {
        if let Some(mut c) = self.connections.get_mut(&id.0) {
            c.path_failed(reason, debug);
        }
        self.drain_events(id.0);
        self.touch(id.0);
    }

    /// Starts a P2P connection to `peer` through the rendezvous: its signals come out of
    /// [`poll_signal`](Self::poll_signal); the hello goes out once the peer accepts and says
    /// where it is.
    pub fn connect_p2p(
        &mut self,
        now: Instant,
        peer: Identity,
        local_vport: u16,
        remote_vport: u16,
        symmetric: bool,
        config: ConnectionConfig,
    ) -> ConnId {
        let id = self.fresh_id();
        let session = self.rng.next_u64();
        let secret = self.secret();
        let info = P2pInfo {
            peer: peer.clone(),
            session,
            local_vport,
            remote_vport,
            symmetric,
            transport: self.p2p_transport,
        };
        let c = Connection::new_p2p_client(
            now,
            self.unix(now),
            id,
            config,
            self.credentials.clone(),
            secret,
            info,
        );
        self.connections.insert(id, c);
        let mut s = Session::new(session, self.credentials.identity(), peer);
        // A fresh session holds one message at most: no backlog.
        let _ = s.send(
            now,
            Body::ConnectRequest {
                from_vport: local_vport,
                to_vport: remote_vport,
                symmetric,
                transport: self.p2p_transport,
                candidates: self.direct_candidates(self.p2p_transport),
            },
        );
        self.sessions.insert(session, (id, s));
        self.drain_events(id);
        self.touch(id);
        ConnId(id)
    }

    /// Takes in a rendezvous signal from the signaling channel.
    pub fn handle_signal(
        &mut self,
        now: Instant,
        signal: &[u8],
    ) -> Result<SignalOutcome, DecodeError> {
        self.handle_signal_from(now, signal, None)
    }

    /// [`handle_signal`](Self::handle_signal) for a signal whose sender the channel vouches
    /// for (a signaling server stamps the sender it authenticated): one whose own `from`
    /// names anyone else is ignored.
    pub fn handle_signal_from(
        &mut self,
        now: Instant,
        signal: &[u8],
        sender: Option<&Identity>,
    ) -> Result<SignalOutcome, DecodeError> {
        let m = Message::decode(signal)?;
        let local = self.credentials.identity();
        if m.to != local || sender.is_some_and(|s| *s != m.from) {
            return Ok(SignalOutcome::Ignored);
        }
        if let Some((id, s)) = self.sessions.get_mut(&m.session) {
            if s.peer != m.from {
                return Ok(SignalOutcome::Ignored);
            }
            let id = *id;
            for body in s.handle(m) {
                self.on_session_body(id, body);
            }
            self.drain_events(id);
            self.touch(id);
            return Ok(SignalOutcome::Handled);
        }
        let Body::ConnectRequest {
            from_vport,
            to_vport,
            symmetric,
            transport,
            ..
        } = m.body
        else {
            return Ok(SignalOutcome::Ignored); // for a session that is gone
        };
        if symmetric {
            // Both sides connecting to each other: one session survives, the one started by
            // the smaller identity (in its encoding), on both sides.
            let own = self.connections.iter().find_map(|(id, c)| {
                c.p2p()
                    .filter(|p| {
                        p.symmetric
                            && p.peer == m.from
                            && p.local_vport == to_vport
                            && p.remote_vport == from_vport
                    })
                    .filter(|_| c.awaits_route())
                    .map(|p| (id, p.session))
            });
            if let Some((id, own_session)) = own {
                if identity_order(&local, &m.from) == std::cmp::Ordering::Less {
                    return Ok(SignalOutcome::Ignored); // ours wins; the peer will merge
                }
                self.sessions.remove(&own_session);
                let mut s = Session::new(m.session, local, m.from.clone());
                let session = m.session;
                let _ = s.handle(m);
                self.sessions.insert(session, (id, s));
                let transport = self.chosen_transport(transport);
                if let Some(mut c) = self.connections.get_mut(&id) {
                    c.merge_into_peer_session(session, transport);
                }
                self.accept_session(now, id, session, transport);
                self.drain_events(id);
                self.touch(id);
                return Ok(SignalOutcome::Handled);
            }
        }
        Ok(SignalOutcome::Request(P2pRequest {
            from: m.from.clone(),
            to_vport,
            from_vport,
            symmetric,
            transport,
            message: m,
        }))
    }

    /// Our addresses for the rendezvous: none when a transport finds the path (it shares
    /// only what its settings allow), or when we have one at all.
    fn direct_candidates(&self, transport: u8) -> Vec<SocketAddr> {
        if transport == DIRECT && self.p2p_transport == DIRECT {
            self.p2p_candidates.clone()
        } else {
            Vec::new()
        }
    }

    /// The transport a connection a peer asked for with `asked` uses: direct when we have
    /// none (we answer with our addresses; a peer that wanted a transport then gives up);
    /// else what was asked, which must be ours ([`transport_mismatch`](Self::transport_mismatch)).
    /// A peer with a transport (whose settings may forbid sharing addresses) never falls
    /// back to direct UDP.
    fn chosen_transport(&self, asked: u8) -> u8 {
        if self.p2p_transport == DIRECT {
            DIRECT
        } else {
            asked
        }
    }

    /// Why a connection using `transport` cannot go on here, if it cannot: we have a
    /// transport, and the peer asked for another (or for none).
    fn transport_mismatch(&self, transport: u8) -> Option<String> {
        (self.p2p_transport != DIRECT && transport != self.p2p_transport).then(|| {
            format!(
                "the peer asked for P2P transport {transport}; we use {} (P2P transports \
                 must match)",
                self.p2p_transport
            )
        })
    }

    fn on_session_body(&mut self, id: u32, body: Body) {
        let ipv4 = self.p2p_ipv4();
        let Some(mut c) = self.connections.get_mut(&id) else {
            return;
        };
        match body {
            Body::ConnectAccept {
                transport,
                candidates: _,
            } if transport != DIRECT => {
                if c.awaits_route() {
                    if transport == self.p2p_transport {
                        c.finding_route(transport);
                        self.path_starts.push_back(id);
                    } else {
                        c.path_failed(
                            EndReason::MISC_P2P_RENDEZVOUS,
                            &format!("the peer chose transport {transport}, which we lack"),
                        );
                    }
                }
            }
            Body::ConnectAccept { .. } if c.p2p().is_some_and(|p| p.transport != DIRECT) => {
                // We asked for a transport (whose settings may forbid sharing addresses):
                // direct UDP is no substitute.
                if c.awaits_route() {
                    c.path_failed(
                        EndReason::MISC_P2P_RENDEZVOUS,
                        "the peer answered with direct UDP, not our P2P transport (P2P transports must match)",
                    );
                }
            }
            Body::ConnectAccept { candidates, .. } => {
                if c.awaits_route() {
                    // Direct UDP: the first candidate of our address family. (ICE tries them
                    // all; see the ice crate.)
                    match candidates.iter().find(|a| a.is_ipv4() == ipv4) {
                        Some(addr) => c.set_route(*addr),
                        None => c.closed_by_signal(
                            EndReason::MISC_P2P_RENDEZVOUS.0,
                            "the peer gave no address we can reach".into(),
                        ),
                    }
                }
            }
            Body::Close { reason, debug } => {
                c.closed_by_signal(EndReason(reason).as_heard_from_peer().0, debug)
            }
            Body::Transport { data } => {
                if self.path_signals.len() < MAX_PATH_SIGNALS {
                    self.path_signals.push_back((id, data));
                }
            }
            Body::ConnectRequest { .. } | Body::Ack => {}
        }
    }

    fn p2p_ipv4(&self) -> bool {
        self.p2p_candidates.first().is_none_or(SocketAddr::is_ipv4)
    }

    /// Accepts a peer's connect request: a connection appears in Connecting, for the
    /// application to accept like any other (then the peer is told where to send its hello).
    pub fn accept_p2p_request(
        &mut self,
        now: Instant,
        request: P2pRequest,
        local_vport: u16,
        config: ConnectionConfig,
    ) -> ConnId {
        let id = self.fresh_id();
        let session = request.message.session;
        let info = P2pInfo {
            peer: request.from.clone(),
            session,
            local_vport,
            remote_vport: request.from_vport,
            symmetric: request.symmetric,
            transport: self.chosen_transport(request.transport),
        };
        let c = Connection::new_p2p_server(now, id, config, self.credentials.clone(), info);
        self.connections.insert(id, c);
        let mut s = Session::new(session, self.credentials.identity(), request.from);
        let _ = s.handle(request.message);
        self.sessions.insert(session, (id, s));
        self.drain_events(id);
        self.touch(id);
        ConnId(id)
    }

    /// Drops a connection made by [`accept_p2p_request`](Self::accept_p2p_request) that the
    /// application did not want, with its session, without a word to the peer.
    pub fn forget_p2p_request(&mut self, id: ConnId) {
        let session = self
            .connections
            .get(&id.0)
            .and_then(|c| c.p2p().map(|p| p.session));
        if let Some(s) = session {
            if self.sessions.get(&s).is_some_and(|(c, _)| *c == id.0) {
                self.sessions.remove(&s);
            }
        }
        self.remove(id);
    }

    /// Refuses a peer's connect request: returns the signal to send back (nothing is kept).
    pub fn reject_p2p_request(
        &self,
        request: &P2pRequest,
        reason: EndReason,
        debug: &str,
    ) -> Vec<u8> {
        Message {
            session: request.message.session,
            seq: 1,
            ack: request.message.seq,
            from: self.credentials.identity(),
            to: request.from.clone(),
            body: Body::Close {
                reason: reason.0,
                debug: debug.to_string(),
            },
        }
        .encode()
    }

    /// The next rendezvous signal to send by `now`: (for which connection, to whom, bytes).
    pub fn poll_signal(&mut self, now: Instant) -> Option<(ConnId, Identity, Vec<u8>)> {
        let mut done = Vec::new();
        let mut out = None;
        for (sid, (id, s)) in &mut self.sessions {
            let c = self.connections.get(id);
            let state = c.as_ref().map_or(ConnectionState::Dead, |c| c.state());
            let ended = !matches!(
                state,
                ConnectionState::Connecting
                    | ConnectionState::FindingRoute
                    | ConnectionState::Connected
            );
            if ended && !self.closing_sessions.contains_key(sid) {
                // Ended before it connected (or the peer may still be waiting): say so.
                self.closing_sessions.insert(*sid, now);
                if state != ConnectionState::ClosedByPeer {
                    let (reason, debug) = c
                        .as_ref()
                        .map_or((EndReason::APP_GENERIC.0, String::new()), |c| {
                            (c.end_reason().0, c.end_debug().to_string())
                        });
                    let _ = s.send(now, Body::Close { reason, debug });
                }
            }
            if out.is_none() {
                if let Some(m) = s.poll_transmit(now) {
                    out = Some((ConnId(*id), s.peer.clone(), m.encode()));
                }
            }
            let given_up = self
                .closing_sessions
                .get(sid)
                .is_some_and(|t| now.saturating_duration_since(*t) > SESSION_LINGER);
            // A transport's path may need the session again (an ICE restart): it lasts as
            // long as the connection.
            let direct = c
                .as_ref()
                .and_then(|c| c.p2p())
                .is_none_or(|p| p.transport == DIRECT);
            drop(c);
            let connected = state == ConnectionState::Connected && direct;
            if given_up || (s.all_acked() && (ended || connected)) {
                done.push(*sid);
            }
        }
        for sid in done {
            self.sessions.remove(&sid);
            self.closing_sessions.remove(&sid);
        }
        out
    }

    /// When [`poll_signal`](Self::poll_signal) next has something to send again.
    pub fn poll_signal_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|(_, s)| s.poll_timeout())
            .min()
    }

    /// The connection with this handle, locked for reading.
    pub fn connection(&self, id: ConnId) -> Option<impl Deref<Target = Connection> + '_> {
        self.connections.get(&id.0)
    }

    /// The connection with this handle, locked for commands. Afterwards drain
    /// `poll_transmit` (the connection is marked as possibly having something to send) and
    /// `poll_event` (commands such as `close` queue state changes).
    pub fn connection_mut(
        &mut self,
        id: ConnId,
    ) -> Option<impl DerefMut<Target = Connection> + '_> {
        if self.connections.contains_key(&id.0) {
            self.touch(id.0);
        }
        self.connections.get_mut(&id.0)
    }

    /// The connection with this handle, held apart from the endpoint: for commands from
    /// threads that should not wait for the endpoint (see [`ConnRef`]).
    pub fn share(&self, id: ConnId) -> Option<ConnRef> {
        self.connections.share(id.0)
    }

    /// Handles of every live connection.
    pub fn connection_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.connections.keys().map(|k| ConnId(*k))
    }

    /// Forgets a connection at once (its handle becomes invalid). False if there was none.
    pub fn remove(&mut self, id: ConnId) -> bool {
        let Some((key, side)) = self
            .connections
            .get(&id.0)
            .map(|c| ((c.remote_addr(), c.remote_id()), c.side()))
        else {
            return false;
        };
        self.connections.remove(&id.0);
        self.removed = true;
        if side == super::Side::Server {
            self.by_hello.remove(&key);
        } else if self.by_server.get(&key) == Some(&id.0) {
            self.by_server.remove(&key);
        }
        self.scheduled.remove(&id.0);
        self.connecting.remove(&id.0);
        true
    }

    /// Notes the connections commanded through a [`ConnRef`] since the last look.
    fn pick_up_touched(&mut self) {
        let mut ids = std::mem::take(&mut self.touched);
        self.connections.take_touched(&mut ids);
        for &id in &ids {
            self.touch(id);
        }
        self.touched = ids;
    }

    /// Takes in one datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let Some(&kind) = datagram.first() else {
            self.stats.malformed += 1;
            return;
        };
        match kind {
            packet::DATA | packet::DATA_PHASE1 | packet::DATA_PLAIN => {
                match ShortHeader::decode(datagram) {
                    Ok(h) => {
                        let Some(mut c) = self.connections.get_mut(&h.dst_id) else {
                            self.reply_no_connection(now, from, h.dst_id, datagram.len());
                            return;
                        };
                        {
                            // Copy into the receive arena: one allocation per ~50 packets, and
                            // the packet is decrypted where it lies.
                            if self.rx_arena.capacity() - self.rx_arena.len() < datagram.len() {
                                self.rx_arena =
                                    BytesMut::with_capacity(RX_ARENA.max(datagram.len()));
                            }
                            self.rx_arena.extend_from_slice(datagram);
                            c.handle_packet(now, from, h, self.rx_arena.split());
                            if c.wants_address_token() {
                                let expiry = now.saturating_duration_since(self.start).as_millis()
                                    as u64
                                    + TOKEN_LIFETIME.as_millis() as u64;
                                c.give_address_token(
                                    self.cookie_key.make_token(from, expiry).to_vec(),
                                );
                            } else if let Some(t) = c.take_address_token() {
                                if self.tokens.len() >= MAX_TOKENS
                                    && !self.tokens.contains_key(&from)
                                {
                                    // Full: forget an arbitrary one (a later handshake to that
                                    // server only costs a cookie round trip).
                                    let old = self.tokens.keys().next().copied();
                                    old.map(|k| self.tokens.remove(&k));
                                }
                                self.tokens.insert(from, t);
                            }
                        }
                        drop(c);
                        self.drain_events(h.dst_id);
                        self.touch(h.dst_id);
                    }
                    Err(_) => self.stats.malformed += 1,
                }
            }
            _ if datagram.len() < 2 => self.stats.malformed += 1,
            packet::CLIENT_HELLO => self.handle_client_hello(now, from, datagram),
            _ if datagram[1] != PROTOCOL_VERSION => self.stats.malformed += 1,
            packet::SERVER_HELLO => match ServerHello::decode(datagram) {
                Ok(h) => {
                    let unix = self.unix(now);
                    let id = h.client_id;
                    if let Some(mut c) = self.connections.get_mut(&id) {
                        c.handle_server_hello(now, from, datagram, h, unix);
                        if c.state() == ConnectionState::Connected {
                            self.by_server.insert((c.remote_addr(), c.remote_id()), id);
                        }
                    }
                    self.touch(id);
                    self.drain_events(id);
                }
                Err(_) => self.stats.malformed += 1,
            },
            packet::RETRY | packet::REJECT | packet::NO_CONNECTION => {
                match Control::decode(datagram) {
                    Ok(Control::Retry { client_id, cookie }) => {
                        if let Some(mut c) = self.connections.get_mut(&client_id) {
                            c.handle_retry(from, cookie);
                        }
                        self.touch(client_id);
                    }
                    Ok(Control::Reject {
                        client_id,
                        reason,
                        debug,
                    }) => {
                        if let Some(mut c) = self.connections.get_mut(&client_id) {
                            c.handle_reject(from, reason, debug);
                        }
                        self.drain_events(client_id);
                        self.touch(client_id);
                    }
                    Ok(Control::NoConnection { conn_id }) => {
                        let key = (from, conn_id);
                        let id = self
                            .by_hello
                            .get(&key)
                            .or(self.by_server.get(&key))
                            .copied();
                        if let Some(id) = id {
                            if let Some(mut c) = self.connections.get_mut(&id) {
                                c.handle_no_connection(now, from);
                            }
                            self.drain_events(id);
                            self.touch(id);
                        }
                    }
                    Err(_) => self.stats.malformed += 1,
                }
            }
            _ => self.stats.malformed += 1,
        }
    }

    fn handle_client_hello(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if !self.config.listen && self.sessions.is_empty() {
            self.stats.malformed += 1;
            return;
        }
        let reject = |client_id: u32, reason: EndReason, debug: String| Control::Reject {
            client_id,
            reason: reason.0,
            debug,
        };
        if datagram.len() < packet::MIN_CLIENT_HELLO {
            self.stats.malformed += 1;
            return;
        }
        if datagram[1] != PROTOCOL_VERSION {
            let client_id = datagram
                .get(2..6)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            self.stats.rejected += 1;
            let r = reject(
                client_id,
                EndReason::REMOTE_BAD_PROTOCOL_VERSION,
                format!(
                    "server speaks protocol version {PROTOCOL_VERSION}, client sent {}",
                    datagram[1]
                ),
            );
            self.queue_reply(from, r.encode());
            return;
        }
        let hello = match ClientHello::decode(datagram) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(%from, error = %e, "malformed client hello");
                self.stats.malformed += 1;
                return;
            }
        };
        if let Some(&id) = self.by_hello.get(&(from, hello.client_id)) {
            let known = self
                .connections
                .get_mut(&id)
                .map(|mut c| c.handle_repeated_client_hello(datagram))
                .is_some();
            if known {
                self.touch(id);
                return;
            }
        }
        let pending = self.connecting.len();
        let now_ms = self.ms(now);
        // Proof that the client receives at its address: a cookie from our Retry, or an
        // address token from an earlier connection. Without one, no state is kept for it.
        let proven = self
            .cookie_key
            .check(&hello.cookie, from, hello.client_id, now_ms)
            || self.cookie_key.check_token(&hello.cookie, from, now_ms);
        let admitted = proven
            || (pending < self.config.cookie_threshold && {
                let unix_now = self.unix(now);
                match self
                    .admission
                    .admit(now, unix_now, hello.sent_at, &hello.ephemeral)
                {
                    Ok(()) => true,
                    Err(why) => {
                        match why {
                            Refused::Stale => self.stats.stale_hellos += 1,
                            Refused::Replayed => self.stats.replayed_hellos += 1,
                            Refused::Busy => self.stats.busy_hellos += 1,
                        }
                        false
                    }
                }
            });
        if !admitted {
            self.send_retry(now_ms, from, hello.client_id);
            return;
        }
        let verdict = if !hello.verify() {
            Err(auth::Refusal {
                reason: EndReason::REMOTE_BAD_CRYPT,
                debug: "client hello signature does not verify".into(),
            })
        } else {
            auth::check_peer(
                &self.credentials,
                &self.config.incoming,
                &hello.creds,
                from,
                self.unix(now),
            )
            .and_then(|peer| {
                let unenc = auth::negotiate_encryption(
                    hello.unencrypted,
                    self.config.incoming.unencrypted,
                )?;
                Ok((peer, unenc))
            })
        };
        let (peer, unencrypted) = match verdict {
            Ok(v) => v,
            Err(r) => {
                tracing::debug!(%from, reason = ?r.reason, debug = %r.debug, "refusing client");
                self.stats.rejected += 1;
                let pkt = reject(hello.client_id, r.reason, r.debug).encode();
                self.queue_reply(from, pkt);
                return;
            }
        };
        let client_id = hello.client_id;
        // A P2P connection accepted through the rendezvous, waiting for this peer's hello?
        let awaiting = self.sessions.values().map(|(id, _)| *id).find(|id| {
            self.connections.get(id).is_some_and(|c| {
                c.awaits_hello() && c.p2p().is_some_and(|p| p.peer == peer.identity)
            })
        });
        if let Some(id) = awaiting {
            if !proven && !super::types::is_path_addr(&from) {
                // A P2P session takes the first hello of its peer, wherever it comes from:
                // over plain UDP, a copy that arrived first from elsewhere would take the
                // session over. There the address is proven first (a transport's path is
                // authenticated by the transport).
                self.send_retry(now_ms, from, client_id);
                return;
            }
            self.admission.remember(now, &hello.ephemeral);
            let secret = self.secret();
            let incoming = Incoming {
                hello,
                bytes: datagram.to_vec(),
                peer,
                unencrypted,
            };
            if let Some(mut c) = self.connections.get_mut(&id) {
                let _ = c.adopt_hello(now, from, incoming, secret);
            }
            self.by_hello.insert((from, client_id), id);
            self.drain_events(id);
            self.touch(id);
            return;
        }
        if !self.config.listen {
            self.stats.malformed += 1;
            return;
        }
        self.admission.remember(now, &hello.ephemeral);
        let id = self.fresh_id();
        let c = Connection::new_server(
            now,
            id,
            from,
            self.config.incoming.clone(),
            self.credentials.clone(),
            Incoming {
                hello,
                bytes: datagram.to_vec(),
                peer,
                unencrypted,
            },
        );
        self.connections.insert(id, c);
        self.by_hello.insert((from, client_id), id);
        self.drain_events(id);
        self.touch(id);
    }

    /// Answers a hello with a cookie; the client proves its address by sending it back.
    fn send_retry(&mut self, now_ms: u64, to: SocketAddr, client_id: u32) {
        let expiry = now_ms + COOKIE_LIFETIME.as_millis() as u64;
        let cookie = self.cookie_key.make(to, client_id, expiry);
        debug_assert_eq!(cookie.len(), COOKIE_LEN);
        self.stats.retries_sent += 1;
        self.queue_reply(
            to,
            Control::Retry {
                client_id,
                cookie: cookie.to_vec(),
            }
            .encode(),
        );
    }

    /// Milliseconds on this endpoint's clock (for cookies and tokens).
    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64
    }

    fn queue_reply(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        if self.replies.len() < MAX_QUEUED_REPLIES {
            self.replies.push_back((to, bytes));
        }
    }

    fn reply_no_connection(&mut self, now: Instant, to: SocketAddr, conn_id: u32, received: usize) {
        let rate = f64::from(self.config.no_connection_replies_per_sec);
        let reply = Control::NoConnection { conn_id }.encode();
        // A burst of a second's worth (none at a rate of 0).
        if reply.len() > received || !self.no_conn_budget.take(now, rate, rate, 1.0) {
            self.stats.unanswered += 1;
            return;
        }
        self.stats.no_connection_sent += 1;
        self.queue_reply(to, reply);
    }

    fn drain_events(&mut self, id: u32) {
        if let Some(mut c) = self.connections.get_mut(&id) {
            while let Some(e) = c.poll_event() {
                let Event::StateChanged { new, .. } = e;
                if new == ConnectionState::Connecting {
                    self.connecting.insert(id);
                } else {
                    self.connecting.remove(&id);
                }
                self.events.push_back((ConnId(id), e));
            }
        }
    }

    /// Processes the timers that expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pick_up_touched();
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.scheduled.get(&id) != Some(&t) {
                continue; // superseded by a later deadline
            }
            self.scheduled.remove(&id);
            if let Some(mut c) = self.connections.get_mut(&id) {
                c.handle_timeout(now);
            }
            self.drain_events(id);
            self.touch(id);
        }
    }

    /// The earliest time `handle_timeout` must be called (after draining `poll_transmit`,
    /// which brings every deadline up to date). It may be early, never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        [timer, self.poll_signal_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the driver must next run for what was fed in since this was last asked: `now`
    /// when a datagram may be ready to go (a reply, or a connection with something to send)
    /// or a connection ended (the driver has it to forget, or its peer to tell), else the
    /// earliest deadline of the connections fed (`None`: none). A thread that fed datagrams
    /// in need not wake the driver unless this falls before the wake-up it planned (the
    /// plan, [`poll_timeout`](Self::poll_timeout), does not count those connections' new
    /// deadlines until `poll_transmit` has run). Looks only at the connections fed since
    /// the last call: the caller acts on each answer.
    pub fn next_due(&mut self, now: Instant) -> Option<Instant> {
        self.pick_up_touched();
        let fed = std::mem::take(&mut self.fed);
        let mut due = (!self.replies.is_empty()).then_some(now);
        for id in &fed {
            if due.is_some_and(|d| d <= now) {
                break;
            }
            let Some(c) = self.connections.get(id) else {
                continue;
            };
            let ended = !matches!(
                c.state(),
                ConnectionState::Connecting
                    | ConnectionState::FindingRoute
                    | ConnectionState::Connected
            );
            let t = if ended || c.transmit_due(now) {
                Some(now)
            } else {
                c.poll_timeout()
            };
            if let Some(t) = t {
                due = Some(due.map_or(t, |d| d.min(t)));
            }
        }
        self.fed = fed;
        self.fed.clear();
        [due, self.poll_signal_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Appends the next datagram to `buf`; it is the last `len` bytes of `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.pick_up_touched();
        if let Some((to, bytes)) = self.replies.pop_front() {
            buf.extend_from_slice(&bytes);
            return Some(Transmit {
                destination: to,
                len: bytes.len(),
            });
        }
        let start = buf.len();
        while let Some(&id) = self.dirty.front() {
            let Some(mut c) = self.connections.get_mut(&id) else {
                self.dirty.pop_front();
                self.dirty_set.remove(&id);
                continue;
            };
            if c.poll_transmit(now, buf) {
                let t = Transmit {
                    destination: c.remote_addr(),
                    len: buf.len() - start,
                };
                drop(c);
                self.drain_events(id);
                return Some(t);
            }
            drop(c);
            self.dirty.pop_front();
            self.dirty_set.remove(&id);
            self.drain_events(id);
            // A Dead connection with nothing left to send is forgotten.
            if c_is_dead(self.connections.get(&id)) {
                self.remove(ConnId(id));
            } else {
                self.reschedule(id);
            }
        }
        // Every connection fed is seen to: `next_due` has none left to look at.
        self.fed.clear();
        None
    }

    /// Whether a connection was removed since the last call (for the layer above to let go
    /// of what it kept for it).
    pub fn take_removed(&mut self) -> bool {
        std::mem::take(&mut self.removed)
    }

    /// True when the layer above has something to take: an event, a transport path to
    /// start, or a signal for one.
    pub fn has_news(&self) -> bool {
        !self.events.is_empty() || !self.path_starts.is_empty() || !self.path_signals.is_empty()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<(ConnId, Event)> {
        self.events.pop_front()
    }
}

fn c_is_dead(c: Option<impl Deref<Target = Connection>>) -> bool {
    c.is_some_and(|c| c.state() == ConnectionState::Dead)
}

/// The order symmetric connect breaks ties by: identities compared in their encoding.
fn identity_order(a: &Identity, b: &Identity) -> std::cmp::Ordering {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    a.encode(&mut x);
    b.encode(&mut y);
    x.cmp(&y)
}
