//! The endpoint: one UDP socket's worth of connections. It routes datagrams, answers client
//! hellos (with cookies under load and rejections that never exceed what was received), and
//! replies "no connection" at a bounded rate.

use super::auth;
use super::config::{ConnectionConfig, EndpointConfig};
use super::connection::{Connection, Event, Incoming};
use super::crypto::{CookieKey, COOKIE_LEN};
use super::packet::{self, ClientHello, Control, ServerHello, ShortHeader, PROTOCOL_VERSION};
use super::types::{ConnectionState, EndReason};
use super::Error;
use bytes::BytesMut;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection's handle: its local connection id, unique within the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

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
/// Datagrams of stateless replies (retries, rejections) held before more are dropped: room
/// for a full receive batch of hellos (a batch can carry well over a thousand with GRO).
const MAX_QUEUED_REPLIES: usize = 4096;

/// Routes datagrams to connections and creates them.
#[derive(Debug)]
pub struct Endpoint {
    config: Arc<EndpointConfig>,
    credentials: Arc<super::config::Credentials>,
    rng: ChaCha20Rng,
    connections: FxHashMap<u32, Connection>,
    by_hello: HashMap<(SocketAddr, u32), u32>,
    /// Outgoing connections by (server address, server's id for it), once the server
    /// answered: where a "no connection" reply is routed without a scan.
    by_server: HashMap<(SocketAddr, u32), u32>,
    /// Address tokens servers gave us, by server address.
    tokens: HashMap<SocketAddr, Vec<u8>>,
    cookie_key: CookieKey,
    start: Instant,
    unix_at_start: u64,
    replies: VecDeque<(SocketAddr, Vec<u8>)>,
    no_conn_tokens: f64,
    no_conn_last: Instant,
    events: VecDeque<(ConnId, Event)>,
    stats: EndpointStats,
    /// Connections that may have something to send, in the order they became so.
    dirty: VecDeque<u32>,
    dirty_set: FxHashSet<u32>,
    /// Connection deadlines; an entry is current only if it matches `scheduled`.
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    scheduled: FxHashMap<u32, Instant>,
    /// Connections in Connecting (handshakes pending).
    connecting: HashSet<u32>,
    /// Where received data packets are copied to be decrypted in place.
    rx_arena: BytesMut,
}

/// Bytes of receive arena allocated at a time.
const RX_ARENA: usize = 64 * 1024;

impl Endpoint {
    /// An endpoint. `seed` feeds every random choice (connection ids, ephemeral keys,
    /// cookies); `now` and `unix_now` (seconds since 1970) anchor its clocks, so that
    /// certificate validity is judged against `unix_now + (t - now)` at any later `t`.
    pub fn new(config: EndpointConfig, seed: u64, now: Instant, unix_now: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let credentials = Arc::new(config.credentials.clone());
        Self {
            no_conn_tokens: f64::from(config.no_connection_replies_per_sec),
            config: Arc::new(config),
            credentials,
            rng,
            connections: FxHashMap::default(),
            by_hello: HashMap::new(),
            by_server: HashMap::new(),
            tokens: HashMap::new(),
            cookie_key: CookieKey::new(secret),
            start: now,
            unix_at_start: unix_now,
            replies: VecDeque::new(),
            no_conn_last: now,
            events: VecDeque::new(),
            stats: EndpointStats::default(),
            dirty: VecDeque::new(),
            dirty_set: FxHashSet::default(),
            timers: BinaryHeap::new(),
            scheduled: FxHashMap::default(),
            connecting: HashSet::new(),
            rx_arena: BytesMut::new(),
        }
    }

    /// Notes that connection `id` may have something to send and its deadline may have moved.
    fn touch(&mut self, id: u32) {
        if self.dirty_set.insert(id) {
            self.dirty.push_back(id);
        }
    }

    /// Records connection `id`'s next deadline.
    fn reschedule(&mut self, id: u32) {
        match self.connections.get(&id).and_then(Connection::poll_timeout) {
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
        let c = self
            .connections
            .get_mut(&id.0)
            .ok_or_else(|| Error::InvalidParam(format!("no connection {}", id.0)))?;
        let r = c.accept(now, secret);
        self.drain_events(id.0);
        self.touch(id.0);
        r
    }

    /// The connection with this handle.
    pub fn connection(&self, id: ConnId) -> Option<&Connection> {
        self.connections.get(&id.0)
    }

    /// The connection with this handle, for commands. Afterwards drain `poll_transmit` (the
    /// connection is marked as possibly having something to send) and `poll_event` (commands
    /// such as `close` queue state changes).
    pub fn connection_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        if self.connections.contains_key(&id.0) {
            self.touch(id.0);
        }
        self.connections.get_mut(&id.0)
    }

    /// Handles of every live connection.
    pub fn connection_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.connections.keys().map(|k| ConnId(*k))
    }

    /// Forgets a connection at once (its handle becomes invalid).
    pub fn remove(&mut self, id: ConnId) -> Option<Connection> {
        let c = self.connections.remove(&id.0)?;
        let key = (c.remote_addr(), c.remote_id());
        if c.side() == super::Side::Server {
            self.by_hello.remove(&key);
        } else if self.by_server.get(&key) == Some(&id.0) {
            self.by_server.remove(&key);
        }
        self.scheduled.remove(&id.0);
        self.connecting.remove(&id.0);
        Some(c)
    }

    /// Takes in one datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let Some(&kind) = datagram.first() else {
            self.stats.malformed += 1;
            return;
        };
        match kind {
            packet::DATA | packet::DATA_PLAIN => match ShortHeader::decode(datagram) {
                Ok(h) => match self.connections.get_mut(&h.dst_id) {
                    Some(c) => {
                        // Copy into the receive arena: one allocation per ~50 packets, and
                        // the packet is decrypted where it lies.
                        if self.rx_arena.capacity() - self.rx_arena.len() < datagram.len() {
                            self.rx_arena = BytesMut::with_capacity(RX_ARENA.max(datagram.len()));
                        }
                        self.rx_arena.extend_from_slice(datagram);
                        c.handle_packet(now, from, self.rx_arena.split());
                        if c.wants_address_token() {
                            let expiry = now.saturating_duration_since(self.start).as_millis()
                                as u64
                                + TOKEN_LIFETIME.as_millis() as u64;
                            c.give_address_token(self.cookie_key.make_token(from, expiry).to_vec());
                        } else if let Some(t) = c.take_address_token() {
                            if self.tokens.len() >= MAX_TOKENS && !self.tokens.contains_key(&from) {
                                // Full: forget an arbitrary one (a later handshake to that
                                // server only costs a cookie round trip).
                                let old = self.tokens.keys().next().copied();
                                old.map(|k| self.tokens.remove(&k));
                            }
                            self.tokens.insert(from, t);
                        }
                        self.drain_events(h.dst_id);
                        self.touch(h.dst_id);
                    }
                    None => self.reply_no_connection(now, from, h.dst_id, datagram.len()),
                },
                Err(_) => self.stats.malformed += 1,
            },
            _ if datagram.len() < 2 => self.stats.malformed += 1,
            packet::CLIENT_HELLO => self.handle_client_hello(now, from, datagram),
            _ if datagram[1] != PROTOCOL_VERSION => self.stats.malformed += 1,
            packet::SERVER_HELLO => match ServerHello::decode(datagram) {
                Ok(h) => {
                    let unix = self.unix(now);
                    let id = h.client_id;
                    if let Some(c) = self.connections.get_mut(&id) {
                        c.handle_server_hello(now, from, datagram, h, unix);
                        if c.state() == ConnectionState::Connected {
                            self.by_server.insert((c.remote_addr(), c.remote_id()), id);
                        }
                        self.touch(id);
                    }
                    self.drain_events(id);
                }
                Err(_) => self.stats.malformed += 1,
            },
            packet::RETRY | packet::REJECT | packet::NO_CONNECTION => {
                match Control::decode(datagram) {
                    Ok(Control::Retry { client_id, cookie }) => {
                        if let Some(c) = self.connections.get_mut(&client_id) {
                            c.handle_retry(from, cookie);
                            self.touch(client_id);
                        }
                    }
                    Ok(Control::Reject {
                        client_id,
                        reason,
                        debug,
                    }) => {
                        if let Some(c) = self.connections.get_mut(&client_id) {
                            c.handle_reject(from, reason, debug);
                            self.drain_events(client_id);
                            self.touch(client_id);
                        }
                    }
                    Ok(Control::NoConnection { conn_id }) => {
                        let key = (from, conn_id);
                        let id = self
                            .by_hello
                            .get(&key)
                            .or(self.by_server.get(&key))
                            .copied();
                        if let Some(id) = id {
                            if let Some(c) = self.connections.get_mut(&id) {
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
        if !self.config.listen {
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
            if let Some(c) = self.connections.get_mut(&id) {
                c.handle_repeated_client_hello(datagram);
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
        if pending >= self.config.cookie_threshold && !proven {
            let expiry = now_ms + COOKIE_LIFETIME.as_millis() as u64;
            let cookie = self.cookie_key.make(from, hello.client_id, expiry);
            debug_assert_eq!(cookie.len(), COOKIE_LEN);
            self.stats.retries_sent += 1;
            self.queue_reply(
                from,
                Control::Retry {
                    client_id: hello.client_id,
                    cookie: cookie.to_vec(),
                }
                .encode(),
            );
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
        let id = self.fresh_id();
        let client_id = hello.client_id;
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
        let dt = now
            .saturating_duration_since(self.no_conn_last)
            .as_secs_f64();
        self.no_conn_last = now;
        self.no_conn_tokens = (self.no_conn_tokens + dt * rate).min(rate.max(1.0));
        let reply = Control::NoConnection { conn_id }.encode();
        if self.no_conn_tokens < 1.0 || reply.len() > received {
            self.stats.unanswered += 1;
            return;
        }
        self.no_conn_tokens -= 1.0;
        self.stats.no_connection_sent += 1;
        self.queue_reply(to, reply);
    }

    fn drain_events(&mut self, id: u32) {
        if let Some(c) = self.connections.get_mut(&id) {
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
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.scheduled.get(&id) != Some(&t) {
                continue; // superseded by a later deadline
            }
            self.scheduled.remove(&id);
            if let Some(c) = self.connections.get_mut(&id) {
                c.handle_timeout(now);
            }
            self.drain_events(id);
            self.touch(id);
        }
    }

    /// The earliest time `handle_timeout` must be called (after draining `poll_transmit`,
    /// which brings every deadline up to date). It may be early, never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Appends the next datagram to `buf`; it is the last `len` bytes of `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((to, bytes)) = self.replies.pop_front() {
            buf.extend_from_slice(&bytes);
            return Some(Transmit {
                destination: to,
                len: bytes.len(),
            });
        }
        let start = buf.len();
        while let Some(&id) = self.dirty.front() {
            let Some(c) = self.connections.get_mut(&id) else {
                self.dirty.pop_front();
                self.dirty_set.remove(&id);
                continue;
            };
            if c.poll_transmit(now, buf) {
                let t = Transmit {
                    destination: c.remote_addr(),
                    len: buf.len() - start,
                };
                self.drain_events(id);
                return Some(t);
            }
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
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<(ConnId, Event)> {
        self.events.pop_front()
    }
}

fn c_is_dead(c: Option<&Connection>) -> bool {
    c.is_some_and(|c| c.state() == ConnectionState::Dead)
}
