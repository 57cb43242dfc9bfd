//! The embedded TURN server (RFC 8656 over UDP, on `stun-rs`), its short-lived credentials,
//! and the limits a relay open to the internet needs.
//!
//! Credentials follow the TURN REST API convention (as coturn's `use-auth-secret`): the user
//! name is `<unix expiry>:<user>` and the password is `base64(HMAC-SHA1(secret, user name))`,
//! so the signaling server hands out credentials that the TURN server checks without a user
//! table, and they stop working at the expiry. When the signaling server holds the server's
//! [`TurnSessions`], `<user>` is `<session>:<identity>` and the credentials also stop working
//! when that login ends, which releases every allocation made with them.
//!
//! What it refuses, by default:
//! - relaying to loopback, unspecified, private (RFC 1918, RFC 4193), link-local,
//!   shared-address (100.64.0.0/10), multicast, broadcast and reserved peers, unless the
//!   operator allows their ranges ([`TurnConfig::allow_peers`]);
//! - more than [`TurnConfig::user_quota`] allocations for one user, and more than
//!   [`TurnConfig::total_quota`] in all;
//! - more than [`TurnConfig::max_bps`] bytes a second through one allocation, each way;
//! - more than [`RATE_PER_SOURCE`] requests a second from one source (an IPv4 address or an
//!   IPv6 /64), in a table of fixed size.
//!
//! An unauthenticated request costs no memory that lasts: its nonce is a timestamp and a MAC
//! of it and the asker's address, checked again when it comes back.

use crate::limit::{Bucket, RateTable};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine as _;
pub use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MessageIntegrity, Nonce, Realm, UnknownAttributes, UserName,
    XorMappedAddress,
};
use stun_rs::attributes::turn::{
    ChannelNumber, Data, EvenPort, LifeTime, RequestedAddressFamily, RequestedTrasport,
    ReservationToken, XorPeerAddress, XorRelayedAddress,
};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, DATA, REFRESH, SEND};
use stun_rs::{
    AddressFamily, Algorithm, AlgorithmId, DecoderContextBuilder, HMACKey, MessageClass,
    MessageDecoderBuilder, MessageEncoderBuilder, StunAttribute, StunMessage, StunMessageBuilder,
};
use tokio::net::UdpSocket;

/// The realm the embedded TURN server uses.
pub const REALM: &str = "punchline";
/// An allocation's lifetime when the client asks for none or for less.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// The longest lifetime granted.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a permission lasts without a refresh (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts without a refresh (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// How long a nonce is good for; an older one gets 438 (Stale Nonce) and a fresh one.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(600);
/// How long a port reserved by EVEN-PORT waits for its Allocate (RFC 8656 §7.2).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Permissions (peer addresses) one allocation may hold.
pub const MAX_PERMISSIONS: usize = 64;
/// Channels one allocation may bind.
pub const MAX_CHANNELS: usize = 64;
/// Requests answered per second from one source, with bursts of twice this: enough for many
/// players behind one carrier-grade NAT address gathering candidates at once.
pub const RATE_PER_SOURCE: u32 = 100;
/// Slots of the per-source rate table (fixed memory, whatever the number of sources).
const RATE_SLOTS: usize = 8192;
/// 401 and 438 challenges sent per second in all (burst twice this): a login's client needs
/// one per allocation.
const CHALLENGES_PER_SEC: f64 = 5000.0;
/// The smallest request answered before its credentials are checked: an Allocate with
/// REQUESTED-TRANSPORT alone. Smaller ones would make the 60-byte challenge more than 2.14
/// times their size.
const MIN_CHALLENGED: usize = 28;
/// The largest datagram relayed either way; a larger one is dropped, not cut.
pub const MAX_RELAYED: usize = 4096;
/// Room for the ChannelData header or the Data indication's header and attributes.
const HEADROOM: usize = 64;
/// Bytes of MAC in a nonce: with the 4 of the time, 12 characters of base64. The MAC binds a
/// nonce to the asker's address and time; it guards no secret (the password does), and
/// forging one only saves the forger the round trip that fetches a real one.
const NONCE_MAC: usize = 5;

/// How the TURN server runs and what it allows.
#[derive(Clone)]
pub struct TurnConfig {
    /// The UDP address it serves on.
    pub listen: SocketAddr,
    /// The address peers see relayed traffic come from (for an unspecified `listen`, a real
    /// address of this host).
    pub relay_ip: IpAddr,
    /// The TURN REST secret credentials are checked against.
    pub secret: Vec<u8>,
    /// Peer ranges allowed although the default refuses them (loopback for a lab, a LAN
    /// for a LAN party). Nothing by default.
    pub allow_peers: Vec<IpNet>,
    /// Allocations one user may hold at once (one per P2P connection per TURN server).
    pub user_quota: usize,
    /// Allocations in all (each holds a UDP socket: mind the descriptor limit).
    pub total_quota: usize,
    /// Allocations from one source (an IPv4 address or an IPv6 /64), whatever the users:
    /// identities cost nothing to make, addresses do.
    pub source_quota: usize,
    /// Bytes a second one allocation relays each way (0: no limit); over it, datagrams are
    /// dropped.
    pub max_bps: u32,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("listen", &self.listen)
            .field("relay_ip", &self.relay_ip)
            .field("allow_peers", &self.allow_peers)
            .field("user_quota", &self.user_quota)
            .field("total_quota", &self.total_quota)
            .field("source_quota", &self.source_quota)
            .field("max_bps", &self.max_bps)
            .finish_non_exhaustive()
    }
}

impl TurnConfig {
    /// Default user quota: a full-mesh lobby of 64 players, one allocation per peer.
    pub const USER_QUOTA: usize = 64;
    /// Default total quota.
    pub const TOTAL_QUOTA: usize = 2048;
    /// Default quota per source: a carrier-grade NAT address's players with room, and an
    /// eighth of the total, so that eight addresses are needed to fill it.
    pub const SOURCE_QUOTA: usize = 256;
    /// Default byte rate per allocation and direction (8 Mbit/s: a game's traffic with room).
    pub const MAX_BPS: u32 = 1_000_000;

    /// Serves on `listen`, relaying from `relay_ip`, checking credentials against `secret`,
    /// with the default limits and no peer range allowed beyond the default.
    pub fn new(listen: SocketAddr, relay_ip: IpAddr, secret: Vec<u8>) -> TurnConfig {
        TurnConfig {
            listen,
            relay_ip,
            secret,
            allow_peers: Vec::new(),
            user_quota: Self::USER_QUOTA,
            total_quota: Self::TOTAL_QUOTA,
            source_quota: Self::SOURCE_QUOTA,
            max_bps: Self::MAX_BPS,
        }
    }

    /// Also allows peers in `net`.
    pub fn allow_peer(mut self, net: IpNet) -> TurnConfig {
        self.allow_peers.push(net);
        self
    }

    /// Whether traffic may be relayed to `ip` (by range: see [`TurnServer`] for this
    /// host's own addresses).
    pub fn peer_allowed(&self, ip: IpAddr) -> bool {
        self.operator_allows(ip) || !refused_by_default(ip)
    }

    /// Whether a range the operator allowed holds `ip`.
    fn operator_allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow_peers.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Ranges no relay should reach unless its operator allows them: this host, its networks,
/// and addresses that are not one host on the internet (IANA's special-purpose registries).
const REFUSED: &[&str] = &[
    "0.0.0.0/8",       // "this network", unspecified included
    "10.0.0.0/8",      // private (RFC 1918)
    "100.64.0.0/10",   // shared address space (carrier-grade NAT)
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, the cloud metadata service among them
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation
    "192.168.0.0/16",  // private
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation
    "203.0.113.0/24",  // documentation
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, and the limited broadcast 255.255.255.255
    "::/96",           // unspecified, loopback, IPv4-compatible
    "64:ff9b:1::/48",  // local-use NAT64
    "100::/64",        // discard-only
    "2001::/32",       // Teredo (the client's address is hidden in it)
    "2001:db8::/32",   // documentation
    "fc00::/7",        // unique local (RFC 4193)
    "fe80::/10",       // link-local
    "fec0::/10",       // site-local (deprecated)
    "ff00::/8",        // multicast
];

fn refused_nets() -> &'static [IpNet] {
    static NETS: std::sync::LazyLock<Vec<IpNet>> = std::sync::LazyLock::new(|| {
        REFUSED
            .iter()
            .map(|n| n.parse().expect("a valid range"))
            .collect()
    });
    &NETS
}

/// The IPv4 address inside a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = a.octets();
    let s = a.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

/// Whether the default refuses `ip` as a peer (in any of its IPv6 disguises too).
fn refused_by_default(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    if refused_nets().iter().any(|n| n.contains(&ip)) {
        return true;
    }
    match ip {
        IpAddr::V6(a) => embedded_v4(a).is_some_and(|v4| refused_by_default(IpAddr::V4(v4))),
        IpAddr::V4(_) => false,
    }
}

/// A socket address with an IPv4-mapped IPv6 address as the IPv4 one.
fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

/// A TURN user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// `<unix expiry>:<user>`.
    pub username: String,
    /// The password for it.
    pub password: String,
    /// When they stop working (seconds since 1970).
    pub expires: u64,
}

impl std::fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn password(secret: &[u8], username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    B64.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
}

/// Credentials for `user`, valid for `ttl` from now, under `secret`.
pub fn credentials(secret: &[u8], user: &str, ttl: Duration) -> TurnCredentials {
    let expires = unix_now().saturating_add(ttl.as_secs());
    let username = format!("{expires}:{user}");
    TurnCredentials {
        password: password(secret, &username),
        username,
        expires,
    }
}

/// The logins whose credentials work, shared by the TURN server and the signaling server
/// that hands the credentials out. Once a signaling server holds it (see
/// [`TurnServer::sessions`]), only credentials of a login still going work.
#[derive(Clone)]
pub struct TurnSessions {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TurnSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnSessions")
            .field("live", &self.shared.state().sessions.len())
            .finish()
    }
}

impl TurnSessions {
    /// The TURN server's counters, for the signaling server's `/metrics`.
    pub fn metrics_text(&self) -> String {
        let allocations = self.shared.state().allocations.len();
        self.shared.metrics.text(allocations)
    }

    /// Opens a session for `identity`; its credentials work until it is dropped.
    pub fn open(&self, identity: &str) -> TurnSession {
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        self.shared
            .state()
            .sessions
            .insert(id, identity.to_string());
        TurnSession {
            shared: self.shared.clone(),
            id,
            user: format!("{id:x}:{identity}"),
        }
    }
}

/// One login's right to the TURN server: credentials made for [`TurnSession::user`] work
/// while it lives. Dropping it (at logout) releases every allocation made with them.
pub struct TurnSession {
    shared: Arc<Shared>,
    id: u64,
    user: String,
}

impl std::fmt::Debug for TurnSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnSession")
            .field("user", &self.user)
            .finish()
    }
}

impl TurnSession {
    /// The user part of its credentials: `<session>:<identity>`.
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Drop for TurnSession {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        st.sessions.remove(&self.id);
        let ended: Vec<SocketAddr> = st
            .allocations
            .iter()
            .filter(|(_, a)| a.session == Some(self.id))
            .map(|(k, _)| *k)
            .collect();
        for k in &ended {
            st.remove(k);
        }
        let id = self.id;
        st.drop_reservations(|r| r.session == Some(id));
        if !ended.is_empty() {
            tracing::debug!(user = %self.user, allocations = ended.len(), "login ended: TURN allocations released");
        }
    }
}

/// What the TURN server has done, for operators and tests.
#[derive(Debug, Default)]
pub struct TurnMetrics {
    /// Allocations made.
    pub allocations: AtomicU64,
    /// Requests refused for a peer the server does not relay to.
    pub forbidden_peers: AtomicU64,
    /// Allocations refused for a quota.
    pub over_quota: AtomicU64,
    /// Requests left unanswered for their source's rate.
    pub rate_limited: AtomicU64,
    /// Datagrams dropped for an allocation's byte rate.
    pub over_bps: AtomicU64,
}

impl TurnMetrics {
    /// The counters in Prometheus' text format, with `allocations` now.
    pub fn text(&self, allocations: usize) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE punchline_turn_allocations gauge\n\
             punchline_turn_allocations {allocations}\n\
             # TYPE punchline_turn_allocations_total counter\n\
             punchline_turn_allocations_total {}\n\
             # TYPE punchline_turn_forbidden_peers_total counter\n\
             punchline_turn_forbidden_peers_total {}\n\
             # TYPE punchline_turn_over_quota_total counter\n\
             punchline_turn_over_quota_total {}\n\
             # TYPE punchline_turn_rate_limited_total counter\n\
             punchline_turn_rate_limited_total {}\n\
             # TYPE punchline_turn_over_bps_total counter\n\
             punchline_turn_over_bps_total {}\n",
            g(&self.allocations),
            g(&self.forbidden_peers),
            g(&self.over_quota),
            g(&self.rate_limited),
            g(&self.over_bps),
        )
    }
}

/// A running TURN server.
pub struct TurnServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TurnServer {
    /// Serves TURN as `config` says, on the current tokio runtime.
    pub async fn start(config: TurnConfig) -> std::io::Result<TurnServer> {
        let socket = Arc::new(
            Sock::new(std::net::UdpSocket::bind(config.listen)?)
                .ok_or_else(|| std::io::Error::other("cannot register the TURN socket"))?,
        );
        let addr = socket.rx.local_addr()?;
        // Relay sockets in the relay address's own family (never dual-stack, so peers
        // arrive as plain IPv4 or IPv6 addresses).
        let bind_ip = match (config.listen.ip().is_unspecified(), config.relay_ip) {
            (false, ip) => ip,
            (true, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (true, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        // This host's addresses, as peers reach them.
        let mut own = vec![canonical(config.relay_ip)];
        if !config.listen.ip().is_unspecified() {
            own.push(canonical(config.listen.ip()));
        }
        let rate = f64::from(RATE_PER_SOURCE);
        let mut nonce_key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce_key);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                allocations: HashMap::new(),
                reservations: HashMap::new(),
                per_user: HashMap::new(),
                sessions: HashMap::new(),
                require_session: false,
                limits: RateTable::new(RATE_SLOTS, rate, 2.0 * rate),
                per_source: HashMap::new(),
                relay_ports: std::collections::HashSet::new(),
                challenges: Bucket::new(CHALLENGES_PER_SEC, 2.0 * CHALLENGES_PER_SEC),
            }),
            nonce_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &nonce_key),
            next_session: AtomicU64::new(1),
            socket: socket.clone(),
            addr,
            bind_ip,
            own,
            config,
            metrics: TurnMetrics::default(),
        });
        let tasks = vec![
            tokio::spawn(serve(shared.clone())),
            tokio::spawn(sweep(Arc::downgrade(&shared))),
        ];
        Ok(TurnServer {
            shared,
            addr,
            tasks,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The session table for the signaling server that hands out this server's
    /// credentials. From this call on, only credentials of a live session work.
    pub fn sessions(&self) -> TurnSessions {
        self.shared.state().require_session = true;
        TurnSessions {
            shared: self.shared.clone(),
        }
    }

    /// What it has done so far.
    pub fn metrics(&self) -> &TurnMetrics {
        &self.shared.metrics
    }

    /// Allocations now.
    pub fn allocations(&self) -> usize {
        self.shared.state().allocations.len()
    }

    /// Credentials for `user`, valid for `ttl` (REST style: they work while sessions are
    /// not required).
    pub fn credentials(&self, user: &str, ttl: Duration) -> TurnCredentials {
        credentials(&self.shared.config.secret, user, ttl)
    }

    /// Ends every allocation and reservation now (their clients must allocate again), for
    /// example after the secret changed. Returns how many allocations there were.
    pub async fn drop_allocations(&self) -> usize {
        let mut st = self.shared.state();
        let keys: Vec<SocketAddr> = st.allocations.keys().copied().collect();
        for k in &keys {
            st.remove(k);
        }
        st.drop_reservations(|_| true);
        keys.len()
    }

    /// For the fuzz target: handles `datagram` from `from` as if received at `now` (`unix`
    /// on the wall clock), and says what would be sent: the answer to `from`, or the length
    /// of what is relayed.
    #[doc(hidden)]
    pub fn handle_for_fuzzing(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        unix: u64,
    ) -> Fed {
        match handle(&self.shared, datagram, from, now, unix) {
            Out::Nothing => Fed::Nothing,
            Out::Reply(b) => Fed::Reply(b),
            Out::Relay { data, .. } => Fed::Relayed(match data {
                Payload::Range(a, b) => b - a,
                Payload::Owned(v) => v.len(),
            }),
        }
    }

    /// For the fuzz target: the nonce `from` would get at `unix`.
    #[doc(hidden)]
    pub fn nonce_for_fuzzing(&self, from: SocketAddr, unix: u64) -> String {
        nonce(&self.shared, from, unix)
    }

    /// Stops serving and drops every allocation.
    pub async fn stop(self) {
        drop(self);
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let mut st = self.shared.state();
        let keys: Vec<SocketAddr> = st.allocations.keys().copied().collect();
        for k in &keys {
            st.remove(k);
        }
        st.drop_reservations(|_| true);
    }
}

/// What [`TurnServer::handle_for_fuzzing`] saw come of a datagram.
#[doc(hidden)]
#[derive(Debug)]
pub enum Fed {
    /// Nothing sent.
    Nothing,
    /// This answer, to the sender.
    Reply(Vec<u8>),
    /// So many bytes relayed to a peer.
    Relayed(usize),
}

/// What the listener and the relay tasks share.
struct Shared {
    state: Mutex<State>,
    nonce_key: ring::hmac::Key,
    next_session: AtomicU64,
    socket: Arc<Sock>,
    addr: SocketAddr,
    bind_ip: IpAddr,
    /// This host's addresses: peers there are only other allocations' relay ports.
    own: Vec<IpAddr>,
    config: TurnConfig,
    metrics: TurnMetrics,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a datagram may go to `peer` now. On this host's own addresses only another
    /// allocation's relay port is a peer (two clients of this server relaying to each
    /// other): nothing else listening here (DNS, a database, this server's own STUN and
    /// TURN ports) is reachable through the relay, whatever a firewall trusts from `lo`,
    /// unless the operator allowed the range.
    /// The TURN port itself is never a peer: no allocation is made through another.
    fn reachable(&self, st: &State, peer: SocketAddr) -> bool {
        let ip = canonical(peer.ip());
        if !self.own.contains(&ip) {
            return true;
        }
        peer.port() != self.addr.port()
            && (self.config.operator_allows(ip) || st.relay_ports.contains(&peer.port()))
    }
}

struct State {
    /// By the client's address (the 5-tuple, on one UDP socket).
    allocations: HashMap<SocketAddr, Allocation>,
    /// Ports reserved by EVEN-PORT, by token.
    reservations: HashMap<[u8; 8], Reservation>,
    /// Allocations and reservations per user.
    per_user: HashMap<String, usize>,
    /// Live sessions: their identity.
    sessions: HashMap<u64, String>,
    /// Whether credentials must name a live session.
    require_session: bool,
    limits: RateTable,
    /// Allocations and reservations per source ([`crate::limit::source_key`]).
    per_source: HashMap<IpAddr, usize>,
    /// The ports of live allocations' relay sockets.
    relay_ports: std::collections::HashSet<u16>,
    /// 401 and 438 answers, from everyone together: a flood spoofed from many sources
    /// reflects at most this much.
    challenges: Bucket,
}

impl State {
    fn remove(&mut self, client: &SocketAddr) {
        if let Some(a) = self.allocations.remove(client) {
            self.relay_ports.remove(&a.relay_addr.port());
            self.release(&a.user, a.source);
        }
    }

    /// One allocation or reservation fewer for `user` and `source`.
    fn release(&mut self, user: &str, source: IpAddr) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// One allocation or reservation more for `user` and `source`.
    fn hold(&mut self, user: &str, source: IpAddr) {
        *self.per_user.entry(user.to_string()).or_default() += 1;
        *self.per_source.entry(source).or_default() += 1;
    }

    /// The session a credentials' `<session>:<identity>` names, when it is live and its
    /// identity.
    fn live_session<'a>(&self, user: &'a str) -> Option<(u64, &'a str)> {
        let (id, who) = user.split_once(':')?;
        let id = u64::from_str_radix(id, 16).ok()?;
        (self.sessions.get(&id).map(String::as_str) == Some(who)).then_some((id, who))
    }

    /// Relay ports held: allocations and reservations.
    fn held(&self) -> usize {
        self.allocations.len() + self.reservations.len()
    }

    /// Ends the reservations `ended` says.
    fn drop_reservations(&mut self, ended: impl Fn(&Reservation) -> bool) {
        let gone: Vec<[u8; 8]> = self
            .reservations
            .iter()
            .filter(|(_, r)| ended(r))
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            if let Some(r) = self.reservations.remove(&t) {
                self.release(&r.user, r.source);
            }
        }
    }
}

/// A relay port held for a later Allocate with its token (RFC 8656 §7.2).
struct Reservation {
    socket: std::net::UdpSocket,
    user: String,
    source: IpAddr,
    session: Option<u64>,
    expires: Instant,
}

struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

struct Allocation {
    /// The user name it was made with; later requests must use the same.
    username: String,
    /// Who it counts against.
    user: String,
    source: IpAddr,
    session: Option<u64>,
    /// The Allocate transaction, to answer its retransmissions alike.
    tid: [u8; 12],
    /// The token of the port it reserved (EVEN-PORT with R), for those retransmissions.
    reservation: Option<[u8; 8]>,
    relay: Arc<Sock>,
    relay_addr: SocketAddr,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    by_peer: HashMap<SocketAddr, u16>,
    to_peer: ByteRate,
    to_client: ByteRate,
    task: tokio::task::JoinHandle<()>,
}

/// An allocation's byte rate one way: `None` when unlimited.
struct ByteRate(Option<Bucket>);

impl ByteRate {
    fn new(bps: u32) -> ByteRate {
        // A burst of a second's worth, and never less than one datagram of the largest size.
        let burst = f64::from(bps).max(MAX_RELAYED as f64);
        ByteRate((bps > 0).then(|| Bucket::new(f64::from(bps), burst)))
    }

    /// Takes `n` bytes' worth; false when over the rate.
    fn take(&mut self, n: usize, now: Instant) -> bool {
        self.0.as_mut().is_none_or(|b| b.take_n_at(n as f64, now))
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Allocation {
    fn permitted(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions
            .get(&canonical(peer))
            .is_some_and(|t| *t > now)
    }
}

/// The listener: requests, indications and channel data from clients.
async fn serve(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_RELAYED + HEADROOM];
    loop {
        let (n, from) = match shared.socket.rx.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::trace!(error = %e, "TURN receive error");
                tokio::time::sleep(Duration::from_millis(1)).await; // never a busy loop
                continue;
            }
        };
        if n == buf.len() {
            continue; // cut short: larger than anything relayed
        }
        let out = handle(&shared, &buf[..n], from, Instant::now(), unix_now());
        match out {
            Out::Nothing => {}
            // Sends never wait (see `Sock`).
            Out::Reply(bytes) => {
                let _ = shared.socket.tx.send_to(&bytes, from);
            }
            Out::Relay { socket, peer, data } => {
                let bytes = match &data {
                    Payload::Range(a, b) => &buf[*a..*b],
                    Payload::Owned(v) => v.as_slice(),
                };
                let _ = socket.tx.send_to(bytes, peer);
            }
        }
    }
}

/// Traffic from peers to one allocation's relay address, passed to its client.
async fn relay_loop(shared: std::sync::Weak<Shared>, relay: Arc<Sock>, client: SocketAddr) {
    let mut buf = vec![0u8; MAX_RELAYED + HEADROOM];
    loop {
        let Ok((n, peer)) = relay.rx.recv_from(&mut buf[HEADROOM..]).await else {
            tokio::time::sleep(Duration::from_millis(1)).await; // never a busy loop
            continue;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if HEADROOM + n == buf.len() {
            continue; // cut short
        }
        let frame = {
            let mut st = shared.state();
            let Some(a) = st.allocations.get_mut(&client) else {
                return;
            };
            let now = Instant::now();
            if !a.permitted(peer.ip(), now) {
                continue; // no permission: dropped, as RFC 8656 §10.3 says
            }
            if !a.to_client.take(n, now) {
                shared.metrics.over_bps.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match a.by_peer.get(&peer) {
                Some(&ch) => {
                    let len = n as u16;
                    buf[HEADROOM - 4..HEADROOM - 2].copy_from_slice(&ch.to_be_bytes());
                    buf[HEADROOM - 2..HEADROOM].copy_from_slice(&len.to_be_bytes());
                    Frame::InPlace(HEADROOM - 4)
                }
                None => {
                    let msg = StunMessageBuilder::new(DATA, MessageClass::Indication)
                        .with_attribute(XorPeerAddress::from(peer))
                        .with_attribute(Data::new(&buf[HEADROOM..HEADROOM + n]))
                        .build();
                    match encode_within(&msg, n + HEADROOM) {
                        Some(b) => Frame::Owned(b),
                        None => continue,
                    }
                }
            }
        };
        let bytes = match &frame {
            Frame::InPlace(start) => &buf[*start..HEADROOM + n],
            Frame::Owned(b) => b.as_slice(),
        };
        let _ = shared.socket.tx.send_to(bytes, client);
    }
}

enum Frame {
    InPlace(usize),
    Owned(Vec<u8>),
}

/// Ends allocations, permissions and channels whose time is up, once a second.
async fn sweep(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut st = shared.state();
        let ended: Vec<SocketAddr> = st
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in &ended {
            st.remove(k);
        }
        st.drop_reservations(|r| r.expires <= now);
        for a in st.allocations.values_mut() {
            a.permissions.retain(|_, t| *t > now);
            a.channels.retain(|_, c| c.expires > now);
            let Allocation {
                channels, by_peer, ..
            } = a;
            by_peer.retain(|_, ch| channels.contains_key(ch));
        }
    }
}

/// What to do with a datagram.
enum Out {
    Nothing,
    Reply(Vec<u8>),
    /// Send `data` to `peer` from `socket`.
    Relay {
        socket: Arc<Sock>,
        peer: SocketAddr,
        data: Payload,
    },
}

/// What is relayed: a part of the datagram received, or bytes of its own.
enum Payload {
    Range(usize, usize),
    Owned(Vec<u8>),
}

/// A channel number a client may bind: RFC 8656 §12 narrowed it to 0x4000-0x4FFF, but
/// RFC 5766 clients (coturn's among them) still pick from all of 0x4000-0x7FFF, which no
/// other message can start with either.
fn is_channel(n: u16) -> bool {
    (0x4000..=0x7fff).contains(&n)
}

fn handle(shared: &Arc<Shared>, datagram: &[u8], from: SocketAddr, now: Instant, unix: u64) -> Out {
    let Some(&first) = datagram.first() else {
        return Out::Nothing;
    };
    if (0x40..0x80).contains(&first) {
        return channel_data(shared, datagram, from, now);
    }
    let msg = match MessageDecoderBuilder::default().build().decode(datagram) {
        Ok((msg, _)) => msg,
        Err(_) => return Out::Nothing,
    };
    match msg.class() {
        MessageClass::Indication if msg.method() == SEND => {
            send_indication(shared, &msg, from, now)
        }
        MessageClass::Request => {
            let allowed = shared.state().limits.allow_at(from.ip(), now);
            if !allowed {
                shared.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Out::Nothing;
            }
            let reply = if msg.method() == BINDING {
                crate::stun::respond(datagram, from, 0, &[shared.addr]).map(|r| r.bytes)
            } else {
                request(shared, &msg, datagram, from, now, unix)
            };
            reply.map_or(Out::Nothing, Out::Reply)
        }
        _ => Out::Nothing,
    }
}

fn channel_data(shared: &Shared, datagram: &[u8], from: SocketAddr, now: Instant) -> Out {
    if datagram.len() < 4 {
        return Out::Nothing;
    }
    let ch = u16::from_be_bytes([datagram[0], datagram[1]]);
    let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if 4 + len > datagram.len() {
        return Out::Nothing;
    }
    let mut st = shared.state();
    let peer = st
        .allocations
        .get(&from)
        .and_then(|a| a.channels.get(&ch))
        .filter(|c| c.expires > now)
        .map(|c| c.peer);
    match peer {
        Some(peer) => to_peer(shared, &mut st, from, peer, Payload::Range(4, 4 + len), now),
        None => Out::Nothing,
    }
}

fn send_indication(shared: &Shared, msg: &StunMessage, from: SocketAddr, now: Instant) -> Out {
    let (Some(peer), Some(data)) = (peer_address(msg), msg.get::<Data>()) else {
        return Out::Nothing;
    };
    let Ok(data) = data.as_data() else {
        return Out::Nothing;
    };
    let data = Payload::Owned(data.as_bytes().to_vec());
    to_peer(shared, &mut shared.state(), from, peer, data, now)
}

/// Relays `data` from the client at `from` to `peer`, if its allocation may.
fn to_peer(
    shared: &Shared,
    st: &mut State,
    from: SocketAddr,
    peer: SocketAddr,
    data: Payload,
    now: Instant,
) -> Out {
    if !shared.reachable(st, peer) {
        shared
            .metrics
            .forbidden_peers
            .fetch_add(1, Ordering::Relaxed);
        return Out::Nothing;
    }
    let Some(a) = st.allocations.get_mut(&from) else {
        return Out::Nothing;
    };
    if !a.permitted(peer.ip(), now) {
        return Out::Nothing;
    }
    let len = match &data {
        Payload::Range(a, b) => b - a,
        Payload::Owned(v) => v.len(),
    };
    if !a.to_peer.take(len, now) {
        shared.metrics.over_bps.fetch_add(1, Ordering::Relaxed);
        return Out::Nothing;
    }
    Out::Relay {
        socket: a.relay.clone(),
        peer,
        data,
    }
}

/// The XOR-PEER-ADDRESS, an IPv4-mapped one as the IPv4 address it is.
fn peer_address(msg: &StunMessage) -> Option<SocketAddr> {
    msg.get::<XorPeerAddress>()
        .and_then(|a| a.as_xor_peer_address().ok())
        .map(|a| canonical_addr(*a.socket_address()))
}

/// Who a request is from, once its credentials checked out.
struct Authed {
    key: HMACKey,
    username: String,
    user: String,
    session: Option<u64>,
    msg: StunMessage,
}

/// The nonce for `from` at `unix`: the time and a MAC of it and the address.
fn nonce(shared: &Shared, from: SocketAddr, unix: u64) -> String {
    let ts = (unix as u32).to_be_bytes();
    let mut raw = [0u8; 4 + NONCE_MAC];
    raw[..4].copy_from_slice(&ts);
    raw[4..].copy_from_slice(&nonce_mac(shared, from, ts));
    URL_SAFE_NO_PAD.encode(raw)
}

fn nonce_mac(shared: &Shared, from: SocketAddr, ts: [u8; 4]) -> [u8; NONCE_MAC] {
    let mut ctx = ring::hmac::Context::with_key(&shared.nonce_key);
    ctx.update(&ts);
    match from.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&from.port().to_be_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; NONCE_MAC];
    out.copy_from_slice(&tag.as_ref()[..NONCE_MAC]);
    out
}

/// Whether `n` is a nonce this server gave `from`, and not stale at `unix`.
fn nonce_fresh(shared: &Shared, n: &str, from: SocketAddr, unix: u64) -> bool {
    let Ok(raw) = URL_SAFE_NO_PAD.decode(n) else {
        return false;
    };
    if raw.len() != 4 + NONCE_MAC {
        return false;
    }
    let ts = [raw[0], raw[1], raw[2], raw[3]];
    // A nonce only proves freshness (the password proves who asks): a plain compare will do.
    let mac_ok = raw[4..] == nonce_mac(shared, from, ts);
    let age = (unix as u32).wrapping_sub(u32::from_be_bytes(ts));
    mac_ok && u64::from(age) < NONCE_LIFETIME.as_secs()
}

/// Checks a request's long-term credentials (RFC 8489 §9.2); the error answer when they do
/// not hold.
fn authenticate(
    shared: &Shared,
    msg: &StunMessage,
    datagram: &[u8],
    from: SocketAddr,
    now: Instant,
    unix: u64,
) -> Result<Authed, Option<Vec<u8>>> {
    // A challenge (401, 438) goes to anyone, spoofed sources too: only to requests of a
    // size it does not much outgrow, and within a budget for everyone together.
    let challenge = |code: u16| {
        if datagram.len() < MIN_CHALLENGED || !shared.state().challenges.take_n_at(1.0, now) {
            shared.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let n = nonce(shared, from, unix);
        answer_error(msg, code, "", None, |b| {
            b.with_attribute(Realm::new(REALM).expect("realm"))
                .with_attribute(Nonce::new(n).expect("nonce"))
        })
    };
    if msg.get::<MessageIntegrity>().is_none() {
        return Err(challenge(401));
    }
    let text = |a: Option<&StunAttribute>| -> Option<String> {
        let a = a?;
        a.as_user_name()
            .map(|u| u.as_str().to_string())
            .or_else(|_| a.as_realm().map(|r| r.as_str().to_string()))
            .or_else(|_| a.as_nonce().map(|n| n.as_str().to_string()))
            .ok()
    };
    let (Some(username), Some(realm), Some(n)) = (
        text(msg.get::<UserName>()),
        text(msg.get::<Realm>()),
        text(msg.get::<Nonce>()),
    ) else {
        return Err(answer_error(msg, 400, "", None, |b| b));
    };
    if !nonce_fresh(shared, &n, from, unix) {
        return Err(challenge(438));
    }
    if realm != REALM {
        return Err(challenge(401));
    }
    // `<unix expiry>:<user>`, and with sessions required, `<user>` is `<session>:<identity>`.
    let Some((expiry, user)) = username.split_once(':') else {
        return Err(challenge(401));
    };
    let Ok(expiry) = expiry.parse::<u64>() else {
        return Err(challenge(401));
    };
    // Checked under the lock, answered after it (a challenge takes the lock too).
    let bound = {
        let st = shared.state();
        if st.require_session {
            // The login bounds them: credentials given at login work as long as it lasts,
            // for the allocations of connections made hours later too.
            st.live_session(user)
                .map(|(id, who)| (Some(id), who.to_string()))
                .ok_or("TURN credentials of a login that ended")
        } else if expiry < unix {
            Err("expired TURN credentials")
        } else {
            Ok((None, user.to_string()))
        }
    };
    let (session, user) = match bound {
        Ok(b) => b,
        Err(why) => {
            tracing::debug!(%from, username, why);
            return Err(challenge(401));
        }
    };
    let key = HMACKey::new_long_term(
        &username,
        REALM,
        password(&shared.config.secret, &username),
        Algorithm::from(AlgorithmId::MD5),
    )
    .map_err(|_| challenge(401))?;
    let ctx = DecoderContextBuilder::default()
        .with_key(key.clone())
        .with_validation()
        .build();
    let msg = match MessageDecoderBuilder::default()
        .with_context(ctx)
        .build()
        .decode(datagram)
    {
        Ok((m, _)) => m,
        Err(_) => {
            tracing::debug!(%from, username, "TURN request failed its integrity check");
            return Err(challenge(401));
        }
    };
    Ok(Authed {
        key,
        username,
        user,
        session,
        msg,
    })
}

/// Comprehension-required attributes this server does not know, for 420.
fn unknown_required(msg: &StunMessage) -> Vec<u16> {
    msg.attributes()
        .iter()
        .filter_map(|a| a.as_unknown().ok())
        .map(|u| u.attribute_type().as_u16())
        .filter(|t| *t < 0x8000)
        .collect()
}

fn request(
    shared: &Arc<Shared>,
    msg: &StunMessage,
    datagram: &[u8],
    from: SocketAddr,
    now: Instant,
    unix: u64,
) -> Option<Vec<u8>> {
    let method = msg.method();
    if ![ALLOCATE, REFRESH, CREATE_PERMMISSION, CHANNEL_BIND].contains(&method) {
        return None; // nothing to reflect toward a spoofed source
    }
    let unknown = unknown_required(msg);
    if !unknown.is_empty() {
        return answer_error(msg, 420, "", None, |b| {
            b.with_attribute(UnknownAttributes::from(unknown.as_slice()))
        });
    }
    let auth = match authenticate(shared, msg, datagram, from, now, unix) {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    let mut st = shared.state();
    // The login may have ended since its session was checked: nothing may outlive it.
    if auth.session.is_some_and(|s| !st.sessions.contains_key(&s)) {
        drop(st);
        return answer_error(msg, 401, "", None, |b| b);
    }
    if let Some(a) = st.allocations.get(&from) {
        if a.username != auth.username {
            return answer_error(msg, 441, "wrong credentials", Some(&auth.key), |b| b);
        }
    }
    match method {
        m if m == ALLOCATE => allocate(shared, &mut st, &auth, from, now),
        m if m == REFRESH => refresh(&mut st, &auth, from, now),
        m if m == CREATE_PERMMISSION => create_permission(shared, &mut st, &auth, from, now),
        _ => channel_bind(shared, &mut st, &auth, from, now),
    }
}

fn granted_lifetime(msg: &StunMessage) -> Option<Duration> {
    msg.get::<LifeTime>()
        .and_then(|l| l.as_life_time().ok())
        .map(|l| Duration::from_secs(u64::from(l.as_u32())))
}

fn allocate(
    shared: &Arc<Shared>,
    st: &mut State,
    auth: &Authed,
    from: SocketAddr,
    now: Instant,
) -> Option<Vec<u8>> {
    let msg = &auth.msg;
    let key = Some(&auth.key);
    if let Some(a) = st.allocations.get(&from) {
        // A retransmission of the request that made it gets the same answer.
        if a.tid == *msg.transaction_id().as_bytes() {
            let life = a.expires.saturating_duration_since(now);
            return allocate_success(msg, a.relay_addr, from, life, a.reservation, &auth.key);
        }
        return answer_error(msg, 437, "allocation mismatch", key, |b| b);
    }
    let transport = msg
        .get::<RequestedTrasport>()
        .and_then(|t| t.as_requested_trasport().ok())
        .map(|t| t.protocol());
    match transport {
        None => return answer_error(msg, 400, "no requested transport", key, |b| b),
        Some(p) if p != stun_rs::protocols::UDP => {
            return answer_error(msg, 442, "only udp", key, |b| b)
        }
        Some(_) => {}
    }
    let token = msg
        .get::<ReservationToken>()
        .and_then(|t| t.as_reservation_token().ok())
        .and_then(|t| <[u8; 8]>::try_from(t.token()).ok());
    let even = msg
        .get::<EvenPort>()
        .and_then(|e| e.as_even_port().ok())
        .map(EvenPort::reserve);
    if token.is_some() && even.is_some() {
        return answer_error(msg, 400, "even-port with a reservation token", key, |b| b);
    }
    let wanted_v6 = msg
        .get::<RequestedAddressFamily>()
        .and_then(|f| f.as_requested_address_family().ok())
        .map(|f| f.family() == AddressFamily::IPv6);
    if wanted_v6.is_some_and(|v6| v6 != shared.config.relay_ip.is_ipv6()) {
        return answer_error(msg, 440, "address family not supported", key, |b| b);
    }
    let source = crate::limit::source_key(from.ip());
    // The relay socket, and the port above it when an EVEN-PORT asks to reserve it. A
    // reserved port (from an earlier EVEN-PORT request) is already counted in the quotas.
    let (relay, reserved) = match token {
        Some(t) => match st.reservations.remove(&t) {
            Some(r) if r.user == auth.user && r.expires > now => {
                // The count moves from the reservation's source to this allocation's.
                st.release(&r.user, r.source);
                st.hold(&auth.user, source);
                (Sock::new(r.socket), None)
            }
            Some(r) => {
                st.release(&r.user, r.source);
                return answer_error(msg, 508, "no such reservation", key, |b| b);
            }
            None => return answer_error(msg, 508, "no such reservation", key, |b| b),
        },
        None => {
            if let Err(code) = quota(shared, st, &auth.user, source, even == Some(true)) {
                tracing::info!(%from, user = %auth.user, code, "TURN allocation quota reached");
                let reason = if code == 486 {
                    "allocation quota reached"
                } else {
                    "insufficient capacity"
                };
                return answer_error(msg, code, reason, key, |b| b);
            }
            st.hold(&auth.user, source);
            match bind_relay(shared.bind_ip, even) {
                Some((s, r)) => (Sock::new(s), r),
                None => (None, None),
            }
        }
    };
    let bound = relay.and_then(|r| Some((r.rx.local_addr().ok()?.port(), r)));
    let Some((port, relay)) = bound else {
        st.release(&auth.user, source);
        return answer_error(msg, 508, "no relay port", key, |b| b);
    };
    let relay = Arc::new(relay);
    let relay_addr = SocketAddr::new(shared.config.relay_ip, port);
    let life = granted_lifetime(msg)
        .unwrap_or(DEFAULT_LIFETIME)
        .clamp(DEFAULT_LIFETIME, MAX_LIFETIME);
    let task = tokio::spawn(relay_loop(Arc::downgrade(shared), relay.clone(), from));
    let reservation = reserved.map(|socket| {
        let mut t = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut t);
        st.reservations.insert(
            t,
            Reservation {
                socket,
                user: auth.user.clone(),
                source,
                session: auth.session,
                expires: now + RESERVATION_LIFETIME,
            },
        );
        st.hold(&auth.user, source);
        t
    });
    st.relay_ports.insert(port);
    st.allocations.insert(
        from,
        Allocation {
            username: auth.username.clone(),
            user: auth.user.clone(),
            source,
            session: auth.session,
            tid: *msg.transaction_id().as_bytes(),
            reservation,
            relay,
            relay_addr,
            expires: now + life,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_peer: HashMap::new(),
            to_peer: ByteRate::new(shared.config.max_bps),
            to_client: ByteRate::new(shared.config.max_bps),
            task,
        },
    );
    shared.metrics.allocations.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%from, %relay_addr, user = %auth.user, "TURN allocation");
    allocate_success(msg, relay_addr, from, life, reservation, &auth.key)
}

/// Whether `user` at `source` may hold one more relay port (two with a reservation):
/// otherwise the error code, 508 (the total or the source's share) or 486 (the user's).
fn quota(shared: &Shared, st: &State, user: &str, source: IpAddr, pair: bool) -> Result<(), u16> {
    let wanted = if pair { 2 } else { 1 };
    let c = &shared.config;
    let user_held = st.per_user.get(user).copied().unwrap_or(0);
    let source_held = st.per_source.get(&source).copied().unwrap_or(0);
    let code = if st.held() + wanted > c.total_quota || source_held + wanted > c.source_quota {
        508
    } else if user_held + wanted > c.user_quota {
        486
    } else {
        return Ok(());
    };
    shared.metrics.over_quota.fetch_add(1, Ordering::Relaxed);
    Err(code)
}

/// A UDP socket read through tokio and written without waiting: a send to a full buffer
/// drops the datagram, as a congested link would, so one stuck socket cannot stall every
/// client (and a fresh socket sends at once, before tokio has seen it writable).
struct Sock {
    rx: UdpSocket,
    tx: std::net::UdpSocket,
}

impl Sock {
    /// Also sizes its buffers as the library's own sockets are: a relay carries a
    /// client's bursts.
    fn new(s: std::net::UdpSocket) -> Option<Sock> {
        punchline::transport::size_socket_buffers(socket2::SockRef::from(&s));
        s.set_nonblocking(true).ok()?;
        let tx = s.try_clone().ok()?;
        Some(Sock {
            rx: UdpSocket::from_std(s).ok()?,
            tx,
        })
    }
}

/// A UDP socket on `ip`; for an EVEN-PORT request an even port, and when it asks to
/// reserve the next port (RFC 8656 §7.2), that one too.
fn bind_relay(
    ip: IpAddr,
    even: Option<bool>,
) -> Option<(std::net::UdpSocket, Option<std::net::UdpSocket>)> {
    for _ in 0..32 {
        let s = std::net::UdpSocket::bind((ip, 0)).ok()?;
        let port = s.local_addr().ok()?.port();
        match even {
            None => return Some((s, None)),
            Some(_) if port % 2 != 0 => continue,
            Some(false) => return Some((s, None)),
            Some(true) => {
                let Some(next) = port.checked_add(1) else {
                    continue;
                };
                if let Ok(r) = std::net::UdpSocket::bind((ip, next)) {
                    return Some((s, Some(r)));
                }
            }
        }
    }
    None
}

fn allocate_success(
    req: &StunMessage,
    relay: SocketAddr,
    from: SocketAddr,
    life: Duration,
    reservation: Option<[u8; 8]>,
    key: &HMACKey,
) -> Option<Vec<u8>> {
    answer_success(req, key, |b| {
        let b = b
            .with_attribute(XorRelayedAddress::from(relay))
            .with_attribute(LifeTime::new(life.as_secs() as u32))
            .with_attribute(XorMappedAddress::from(from));
        match reservation {
            Some(t) => b.with_attribute(ReservationToken::from(t)),
            None => b,
        }
    })
}

fn refresh(st: &mut State, auth: &Authed, from: SocketAddr, now: Instant) -> Option<Vec<u8>> {
    let msg = &auth.msg;
    let Some(a) = st.allocations.get_mut(&from) else {
        return answer_error(msg, 437, "allocation mismatch", Some(&auth.key), |b| b);
    };
    let life = granted_lifetime(msg).unwrap_or(DEFAULT_LIFETIME);
    let life = if life.is_zero() {
        st.remove(&from);
        tracing::debug!(%from, "TURN allocation released by its client");
        Duration::ZERO
    } else {
        let life = life.clamp(DEFAULT_LIFETIME, MAX_LIFETIME);
        a.expires = now + life;
        life
    };
    answer_success(msg, &auth.key, |b| {
        b.with_attribute(LifeTime::new(life.as_secs() as u32))
    })
}

/// Checks a peer for a permission or channel: the error answer when refused.
fn check_peer(
    shared: &Shared,
    auth: &Authed,
    a: &Allocation,
    peer: SocketAddr,
) -> Result<(), Option<Vec<u8>>> {
    if peer.is_ipv4() != a.relay_addr.is_ipv4() {
        return Err(answer_error(
            &auth.msg,
            443,
            "peer address family mismatch",
            Some(&auth.key),
            |b| b,
        ));
    }
    if !shared.config.peer_allowed(peer.ip()) {
        shared
            .metrics
            .forbidden_peers
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, user = %auth.user, "TURN peer refused: not relayed to");
        return Err(answer_error(
            &auth.msg,
            403,
            "forbidden peer",
            Some(&auth.key),
            |b| b,
        ));
    }
    Ok(())
}

fn create_permission(
    shared: &Shared,
    st: &mut State,
    auth: &Authed,
    from: SocketAddr,
    now: Instant,
) -> Option<Vec<u8>> {
    let msg = &auth.msg;
    let Some(a) = st.allocations.get_mut(&from) else {
        return answer_error(msg, 437, "allocation mismatch", Some(&auth.key), |b| b);
    };
    let peers: Vec<SocketAddr> = msg
        .attributes()
        .iter()
        .filter_map(|x| x.as_xor_peer_address().ok())
        .map(|p| *p.socket_address())
        .collect();
    if peers.is_empty() {
        return answer_error(msg, 400, "no peer address", Some(&auth.key), |b| b);
    }
    // All or nothing (RFC 8656 §9.2).
    for p in &peers {
        if let Err(reply) = check_peer(shared, auth, a, *p) {
            return reply;
        }
    }
    let new = peers
        .iter()
        .filter(|p| !a.permissions.contains_key(&canonical(p.ip())))
        .map(|p| canonical(p.ip()))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if a.permissions.len() + new > MAX_PERMISSIONS {
        return answer_error(msg, 508, "too many permissions", Some(&auth.key), |b| b);
    }
    for p in &peers {
        a.permissions
            .insert(canonical(p.ip()), now + PERMISSION_LIFETIME);
    }
    answer_success(msg, &auth.key, |b| b)
}

fn channel_bind(
    shared: &Shared,
    st: &mut State,
    auth: &Authed,
    from: SocketAddr,
    now: Instant,
) -> Option<Vec<u8>> {
    let msg = &auth.msg;
    let key = Some(&auth.key);
    let number = msg
        .get::<ChannelNumber>()
        .and_then(|c| c.as_channel_number().ok())
        .map(|c| c.number());
    let (Some(number), Some(peer)) = (number.filter(|n| is_channel(*n)), peer_address(msg)) else {
        return answer_error(msg, 400, "bad channel bind", key, |b| b);
    };
    let reachable = shared.reachable(st, peer);
    let Some(a) = st.allocations.get_mut(&from) else {
        return answer_error(msg, 437, "allocation mismatch", key, |b| b);
    };
    if !reachable {
        shared
            .metrics
            .forbidden_peers
            .fetch_add(1, Ordering::Relaxed);
        return answer_error(msg, 403, "forbidden peer", key, |b| b);
    }
    if let Err(reply) = check_peer(shared, auth, a, peer) {
        return reply;
    }
    let other_peer = a.channels.get(&number).is_some_and(|c| c.peer != peer);
    let other_number = a.by_peer.get(&peer).is_some_and(|n| *n != number);
    if other_peer || other_number {
        return answer_error(msg, 400, "channel bound otherwise", key, |b| b);
    }
    if !a.channels.contains_key(&number) && a.channels.len() >= MAX_CHANNELS {
        return answer_error(msg, 508, "too many channels", key, |b| b);
    }
    let ip = canonical(peer.ip());
    if !a.permissions.contains_key(&ip) && a.permissions.len() >= MAX_PERMISSIONS {
        return answer_error(msg, 508, "too many permissions", key, |b| b);
    }
    a.channels.insert(
        number,
        Channel {
            peer,
            expires: now + CHANNEL_LIFETIME,
        },
    );
    a.by_peer.insert(peer, number);
    // A channel binding installs or refreshes the peer's permission too (RFC 8656 §12.2).
    let t = a.permissions.entry(ip).or_insert(now);
    *t = (*t).max(now + PERMISSION_LIFETIME);
    answer_success(msg, &auth.key, |b| b)
}

fn encode(msg: &StunMessage) -> Option<Vec<u8>> {
    encode_within(msg, MAX_RELAYED + HEADROOM)
}

/// Encodes `msg` into a buffer of `room` bytes (a Data indication needs its payload and
/// `HEADROOM`, not the largest datagram's worth, on the per-datagram path).
fn encode_within(msg: &StunMessage, room: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; room];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut out, msg)
        .ok()?;
    out.truncate(n);
    Some(out)
}

fn answer_success(
    req: &StunMessage,
    key: &HMACKey,
    attrs: impl FnOnce(StunMessageBuilder) -> StunMessageBuilder,
) -> Option<Vec<u8>> {
    let b = StunMessageBuilder::new(req.method(), MessageClass::SuccessResponse)
        .with_transaction_id(*req.transaction_id());
    let b = attrs(b)
        .with_attribute(MessageIntegrity::new(key.clone()))
        .with_attribute(Fingerprint::default());
    encode(&b.build())
}

/// An error answer; with `key` (once the request's credentials held) it carries
/// MESSAGE-INTEGRITY, as RFC 8489 §9.2.4 asks.
fn answer_error(
    req: &StunMessage,
    code: u16,
    reason: &str,
    key: Option<&HMACKey>,
    attrs: impl FnOnce(StunMessageBuilder) -> StunMessageBuilder,
) -> Option<Vec<u8>> {
    let err = stun_rs::ErrorCode::new(code, reason).ok()?;
    let b = StunMessageBuilder::new(req.method(), MessageClass::ErrorResponse)
        .with_transaction_id(*req.transaction_id())
        .with_attribute(ErrorCode::from(err));
    let mut b = attrs(b);
    if let Some(k) = key {
        b = b
            .with_attribute(MessageIntegrity::new(k.clone()))
            .with_attribute(Fingerprint::default());
    }
    encode(&b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (tokio::runtime::Runtime, TurnServer) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let s = rt
            .block_on(TurnServer::start(TurnConfig::new(
                local,
                local.ip(),
                b"s3cret".to_vec(),
            )))
            .unwrap();
        (rt, s)
    }

    #[test]
    fn peers_refused_by_default_and_ranges_an_operator_allows() {
        let c = TurnConfig::new(
            "0.0.0.0:3479".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
            Vec::new(),
        );
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "10.0.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "2001::1",
            "100::1",
            "fec0::1",
            "192.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.1",
            "203.0.113.7",
            "2001:db8::1",
        ] {
            assert!(!c.peer_allowed(ip.parse().unwrap()), "{ip} refused");
        }
        for ip in [
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(c.peer_allowed(ip.parse().unwrap()), "{ip} allowed");
        }
        let lab = c.clone().allow_peer("127.0.0.0/8".parse().unwrap());
        assert!(lab.peer_allowed("127.0.0.1".parse().unwrap()));
        assert!(lab.peer_allowed("::ffff:127.0.0.2".parse().unwrap()));
        assert!(!lab.peer_allowed("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn nonces_hold_no_state_and_are_good_only_for_their_asker_and_a_while() {
        let (_rt, s) = server();
        let sh = &s.shared;
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let t = 1_900_000_000;
        let n = nonce(sh, a, t);
        assert_eq!(n.len(), 12);
        assert!(nonce_fresh(sh, &n, a, t));
        assert!(nonce_fresh(sh, &n, a, t + NONCE_LIFETIME.as_secs() - 1));
        assert!(
            !nonce_fresh(sh, &n, a, t + NONCE_LIFETIME.as_secs()),
            "stale"
        );
        assert!(!nonce_fresh(sh, &n, a, t - 1), "from the future");
        assert!(!nonce_fresh(sh, &n, "192.0.2.1:4001".parse().unwrap(), t));
        assert!(!nonce_fresh(sh, &n, "192.0.2.2:4000".parse().unwrap(), t));
        let mut forged = n.clone().into_bytes();
        forged[11] = if forged[11] == b'A' { b'B' } else { b'A' };
        assert!(!nonce_fresh(sh, &String::from_utf8(forged).unwrap(), a, t));
        assert!(!nonce_fresh(sh, "not base64!!", a, t));
        assert!(!nonce_fresh(sh, "", a, t));
    }

    #[test]
    fn sessions_bound_credentials_and_release_allocations_when_they_end() {
        let (_rt, s) = server();
        let sessions = s.sessions();
        let who = "ed25519:ab";
        let session = sessions.open(who);
        assert!(session.user().ends_with(":ed25519:ab"));
        let live = |user: &str| s.shared.state().live_session(user).is_some();
        assert!(live(session.user()));
        let user = session.user().to_string();
        drop(session);
        assert!(!live(&user));
        assert_eq!(s.shared.state().sessions.len(), 0);
    }

    #[test]
    fn this_hosts_addresses_are_peers_only_at_relay_ports() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A public relay address (nothing is bound on it here: no allocation is made).
        let relay: IpAddr = "198.51.100.1".parse().unwrap();
        let start = |allow: Option<&str>| {
            let mut c = TurnConfig::new("127.0.0.1:0".parse().unwrap(), relay, Vec::new());
            c.allow_peers
                .extend(allow.map(|a| a.parse::<IpNet>().unwrap()));
            rt.block_on(TurnServer::start(c)).unwrap()
        };
        let s = start(None);
        let sh = &s.shared;
        let peer = |p: &str| p.parse::<SocketAddr>().unwrap();
        let mut st = sh.state();
        assert!(
            !sh.reachable(&st, peer("198.51.100.1:53")),
            "a service on the relay address"
        );
        assert!(!sh.reachable(&st, peer("[::ffff:198.51.100.1]:53")));
        assert!(sh.reachable(&st, peer("8.8.8.8:53")));
        st.relay_ports.insert(40000);
        assert!(
            sh.reachable(&st, peer("198.51.100.1:40000")),
            "another allocation"
        );
        drop(st);
        let turn_port = s.addr().port();
        let lab = start(Some("198.51.100.0/24"));
        let st = lab.shared.state();
        assert!(
            lab.shared.reachable(&st, peer("198.51.100.1:53")),
            "the operator allowed it"
        );
        assert!(
            !s.shared.reachable(&st, SocketAddr::new(relay, turn_port)),
            "never the TURN port"
        );
    }

    #[test]
    fn channel_numbers_are_those_of_rfc_5766() {
        assert!(!is_channel(0x3fff));
        assert!(is_channel(0x4000));
        assert!(is_channel(0x7fff));
        assert!(!is_channel(0x8000));
    }
}
