//! ICE for punchline's P2P connections: one [webrtc-ice](webrtc_ice) agent per connection
//! finds a path through NATs, with STUN for public addresses and TURN for relaying, and
//! carries the connection's packets on the pair it selects.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let sockets = punchline::Sockets::new()?;
//! sockets.set_p2p_transport(punchline_ice::IceTransport::new().into_arc());
//! # Ok(()) }
//! ```
//!
//! The config values `P2P_STUN_ServerList`, `P2P_TURN_ServerList` / `UserList` /
//! `PassList` and `P2P_Transport_ICE_Enable` (relay, private and public bits) decide which
//! candidates are gathered and shared. The side that asked to connect is the controlling
//! agent. Credentials and candidates travel through the connection's rendezvous session
//! (see [`signal`]), trickled as they are gathered; when a path dies, either side restarts
//! ICE with fresh credentials and the other follows.
//!
//! End reasons: 3006 when this side has no candidate to offer (ICE disabled, or relay only
//! and the TURN allocation failed, with the server's answer), 4007 when the peer had none,
//! 5009 when no candidate pair answered.

#![forbid(unsafe_code)]

pub mod signal;

use punchline::proto::rendezvous::MAX_TRANSPORT_SIGNAL;
use punchline::proto::EndReason;
use punchline::transport::{
    Path, PathConfig, PathParams, PathSink, RouteInfo, RouteKind, Transport, ICE_PRIVATE,
    ICE_PUBLIC, ICE_RELAY,
};
use signal::Signal;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::agent::Agent;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::candidate::{Candidate, CandidateType};
use webrtc_ice::mdns::MulticastDnsMode;
use webrtc_ice::network_type::NetworkType;
use webrtc_ice::state::ConnectionState as IceState;
use webrtc_ice::url::{SchemeType, Url};
use webrtc_util::Conn;

/// The wire id of ICE in rendezvous messages.
pub const WIRE_ID: u8 = 1;

/// How long without hearing from the peer before a pair counts as disconnected.
const DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(2);
/// How much longer before it has failed (and, connected, ICE restarts). While checking,
/// the two together bound how long a punch may take.
const FAILED_TIMEOUT: Duration = Duration::from_secs(5);
/// How long checks run before a relayed pair may be nominated (webrtc-ice's default is 2 s).
/// The agent never trades a nominated pair for a better one, so nominating the relay early
/// loses the direct path for good: on links that lose 10% of packets each way, checks of the
/// direct pair (four lossy crossings each) often fail for two seconds, and the relay won about
/// half the namespace runs. Costs a connection that only the relay can carry up to two more
/// seconds.
const RELAY_ACCEPTANCE_WAIT: Duration = Duration::from_secs(4);
/// How often the agent checks its candidate pairs (and, once one answered, nominates the
/// best that did). webrtc-ice's default is 200 ms, which with its acceptance waits (0.5 s
/// for server-reflexive pairs, 1 s for peer-reflexive ones, the pairs a NAT gives) made a
/// connection through any NAT take about a second. At 50 ms, and with no waits for direct
/// pairs (aggressive nomination: the first tick after a direct pair answers nominates the
/// best one that did), it takes a few round trips.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Binding requests a candidate pair gets before it counts as failed for good: enough for
/// 5 s of checks at [`CHECK_INTERVAL`]. webrtc-ice's default (7 at 200 ms) gave a pair 1.6 s:
/// on links that lose 10% each way, behind a port-restricted NAT whose hole the peer's first
/// checks open, a direct pair that would work ran out of requests before it answered, and
/// the relay won after `RELAY_ACCEPTANCE_WAIT` (one namespace run in fifteen). 5 s keeps a
/// pair trying past that wait, for 100 small STUN requests per dead pair.
const MAX_BINDING_REQUESTS: u16 = 100;
/// How long a TURN server may take to answer the allocation that tells why gathering found
/// no relayed candidate. Well inside the peer's `DISCONNECTED_TIMEOUT + FAILED_TIMEOUT`, so
/// our reason reaches the peer before it gives up on its own.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Datagrams queued for sending on one path.
const SEND_QUEUE: usize = 1024;
/// Peer signals queued for one path.
const SIGNAL_QUEUE: usize = 256;
/// Most remote candidates taken from one peer.
const MAX_REMOTE_CANDIDATES: usize = 64;
/// How long signals wait for others to share a rendezvous message.
const BUNDLE_WAIT: Duration = Duration::from_millis(20);
/// How often the candidate-pair list in the detailed status is refreshed.
const STATS_EVERY: Duration = Duration::from_secs(1);

type IpFilter = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The ICE transport: plug it into a `Sockets` with
/// [`set_p2p_transport`](punchline::Sockets::set_p2p_transport).
#[derive(Clone, Default)]
pub struct IceTransport {
    ip_filter: Option<IpFilter>,
}

impl std::fmt::Debug for IceTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceTransport")
            .field("ip_filter", &self.ip_filter.is_some())
            .finish()
    }
}

impl IceTransport {
    /// ICE over every interface address the candidate filters allow.
    pub fn new() -> Self {
        Self::default()
    }

    /// ICE over loopback addresses only: for peers on one host (tests, demos), so that no
    /// packet leaves it.
    pub fn loopback_only() -> Self {
        Self::default().with_ip_filter(|ip| ip.is_loopback())
    }

    /// Gathers host candidates only on the local addresses `filter` accepts.
    pub fn with_ip_filter(
        mut self,
        filter: impl Fn(IpAddr) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.ip_filter = Some(Arc::new(filter));
        self
    }

    /// Shared, as [`set_p2p_transport`](punchline::Sockets::set_p2p_transport) takes it.
    pub fn into_arc(self) -> Arc<dyn Transport> {
        Arc::new(self)
    }
}

impl Transport for IceTransport {
    fn wire_id(&self) -> u8 {
        WIRE_ID
    }

    fn penalty(&self, config: &PathConfig) -> i32 {
        config.ice_penalty
    }

    fn name(&self) -> &'static str {
        "ice"
    }

    fn start_path(&self, params: PathParams, sink: PathSink) -> Arc<dyn Path> {
        let (signals_tx, signals_rx) = mpsc::channel(SIGNAL_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(SEND_QUEUE);
        let (close_tx, close_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared::default());
        let path = Arc::new(IcePath {
            signals: signals_tx,
            out: out_tx,
            close: close_tx,
            shared: shared.clone(),
        });
        let runtime = params.runtime.clone();
        let filter = self.ip_filter.clone();
        runtime.spawn(async move {
            let mut close = close_rx;
            let run = run(
                params,
                sink.clone(),
                filter,
                shared.clone(),
                signals_rx,
                out_rx,
            );
            tokio::select! {
                () = run => {}
                _ = close.wait_for(|c| *c) => {}
            }
            let agent = shared
                .agent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(agent) = agent {
                let _ = agent.close().await;
            }
            shared.set_route(RouteInfo::default());
        });
        path
    }
}

/// What the path's task shares with the handle.
#[derive(Default)]
struct Shared {
    agent: Mutex<Option<Arc<Agent>>>,
    route: Mutex<RouteInfo>,
}

impl Shared {
    fn set_route(&self, r: RouteInfo) {
        *self.route.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }
}

/// One connection's ICE path.
struct IcePath {
    signals: mpsc::Sender<Vec<u8>>,
    out: mpsc::Sender<Vec<u8>>,
    close: tokio::sync::watch::Sender<bool>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IcePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcePath")
            .field("route", &self.route().kind)
            .finish()
    }
}

impl Path for IcePath {
    fn handle_signal(&self, signal: &[u8]) {
        let _ = self.signals.try_send(signal.to_vec());
    }

    fn send(&self, datagram: &[u8]) {
        let _ = self.out.try_send(datagram.to_vec());
    }

    fn route(&self) -> RouteInfo {
        self.shared
            .route
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn close(&self) {
        let _ = self.close.send(true);
    }
}

/// True for addresses that only reach a private network (or this host).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The networks of this host's interfaces, as (address, mask); `None` when they cannot be
/// read.
fn local_networks() -> Option<Vec<(IpAddr, IpAddr)>> {
    let ifaces = webrtc_util::ifaces::ifaces().ok()?;
    Some(
        ifaces
            .into_iter()
            .filter_map(|i| Some((i.addr?.ip(), i.mask?.ip())))
            .collect(),
    )
}

/// Whether `a` and `b` are on the network of mask `mask`.
fn same_network(a: IpAddr, b: IpAddr, mask: IpAddr) -> bool {
    match (a, b, mask) {
        (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(m)) => {
            let m = u32::from(m);
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(m)) => {
            let m = u128::from(m);
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

/// Whether a peer's host candidate at `ip` is worth checking: a public address, or a private
/// one on a network of this host (`networks`; all are kept when those are unknown). A private
/// address elsewhere is the peer's own LAN, which no packet of ours reaches; checking it is
/// wasted, and worse, from a relayed candidate the TURN server refuses the permission while
/// the agent's checks, made one after another, wait for each refusal (seconds once the
/// refusals meet loss).
fn host_reachable(ip: IpAddr, networks: Option<&[(IpAddr, IpAddr)]>) -> bool {
    match networks {
        Some(nets) if is_private(ip) => nets.iter().any(|&(a, m)| same_network(a, ip, m)),
        _ => true,
    }
}

/// Parses a STUN or TURN server from the config list (`stun:host:port`, `turn:host:port`, or
/// a bare `host:port`).
fn server_url(s: &str, scheme: &str) -> Result<Url, String> {
    let full = if s.contains(':') && (s.starts_with("stun") || s.starts_with("turn")) {
        s.to_string()
    } else {
        format!("{scheme}:{s}")
    };
    Url::parse_url(&full).map_err(|e| format!("bad {scheme} server {s:?}: {e}"))
}

/// The agent's settings for a connection's config, or why there can be no agent.
fn agent_config(config: &PathConfig, filter: Option<IpFilter>) -> Result<AgentConfig, String> {
    let mask = config.ice_enable;
    if mask & (ICE_RELAY | ICE_PRIVATE | ICE_PUBLIC) == 0 {
        return Err("ICE is disabled (P2P_Transport_ICE_Enable = 0)".into());
    }
    let mut urls = Vec::new();
    let mut types = Vec::new();
    if mask & (ICE_PRIVATE | ICE_PUBLIC) != 0 {
        types.push(CandidateType::Host);
    }
    if mask & ICE_PUBLIC != 0 && !config.stun_servers.is_empty() {
        types.push(CandidateType::ServerReflexive);
        for s in &config.stun_servers {
            urls.push(server_url(s, "stun")?);
        }
    }
    if mask & ICE_RELAY != 0 && !config.turn_servers.is_empty() {
        types.push(CandidateType::Relay);
        for t in &config.turn_servers {
            let mut u = server_url(&t.url, "turn")?;
            if u.scheme != SchemeType::Turn {
                return Err(format!("{} is not a turn: server", t.url));
            }
            if t.user.is_empty() || t.pass.is_empty() {
                return Err(format!(
                    "TURN server {} has no user name or password (P2P_TURN_UserList, P2P_TURN_PassList)",
                    t.url
                ));
            }
            u.username = t.user.clone();
            u.password = t.pass.clone();
            urls.push(u);
        }
    }
    if types.is_empty() {
        return Err("ICE allows only relayed candidates, and no TURN server is set".into());
    }
    let host_private = mask & ICE_PRIVATE != 0;
    let host_public = mask & ICE_PUBLIC != 0;
    let ip_filter = move |ip: IpAddr| {
        let kind_ok = if is_private(ip) {
            host_private
        } else {
            host_public
        };
        kind_ok && filter.as_ref().is_none_or(|f| f(ip))
    };
    Ok(AgentConfig {
        urls,
        candidate_types: types,
        network_types: vec![NetworkType::Udp4, NetworkType::Udp6],
        multicast_dns_mode: MulticastDnsMode::Disabled,
        include_loopback: true,
        ip_filter: Arc::new(Some(Box::new(ip_filter))),
        disconnected_timeout: Some(DISCONNECTED_TIMEOUT),
        failed_timeout: Some(FAILED_TIMEOUT),
        check_interval: CHECK_INTERVAL,
        host_acceptance_min_wait: Some(Duration::ZERO),
        srflx_acceptance_min_wait: Some(Duration::ZERO),
        prflx_acceptance_min_wait: Some(Duration::ZERO),
        relay_acceptance_min_wait: Some(RELAY_ACCEPTANCE_WAIT),
        max_binding_requests: Some(MAX_BINDING_REQUESTS),
        ..AgentConfig::default()
    })
}

/// What the agent's callbacks report to the path's task.
enum AgentEvent {
    Candidate(String),
    GatheringDone,
    State(IceState),
    PairChanged,
}

/// Where the path stands.
struct Run {
    params: PathParams,
    sink: PathSink,
    agent: Arc<Agent>,
    shared: Arc<Shared>,
    /// ICE generation: 0, then one more at each restart.
    generation: u32,
    /// Local candidates shared in this generation.
    local_count: u32,
    local_done: bool,
    /// The peer's credentials and candidates for this generation.
    remote_creds: Option<(String, String)>,
    remote_count: usize,
    /// This host's networks, which a peer's private host candidates must be on.
    networks: Option<Vec<(IpAddr, IpAddr)>>,
    started: bool,
    connected_once: bool,
    /// Signals waiting to go in one message, and when they go.
    bundle: Vec<u8>,
    flush_at: Option<tokio::time::Instant>,
}

async fn run(
    params: PathParams,
    sink: PathSink,
    filter: Option<IpFilter>,
    shared: Arc<Shared>,
    mut signals: mpsc::Receiver<Vec<u8>>,
    mut out: mpsc::Receiver<Vec<u8>>,
) {
    let config = match agent_config(&params.config, filter) {
        Ok(c) => c,
        Err(why) => {
            sink.failed(EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES, why);
            return;
        }
    };
    let agent = match Agent::new(config).await {
        Ok(a) => Arc::new(a),
        Err(e) => {
            sink.failed(
                EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES,
                format!("ICE agent: {e}"),
            );
            return;
        }
    };
    *shared.agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(agent.clone());
    let (ev_tx, mut events) = mpsc::channel::<AgentEvent>(64);
    hook(&agent, ev_tx);
    let mut r = Run {
        params,
        sink,
        agent,
        shared,
        generation: 0,
        local_count: 0,
        local_done: false,
        remote_creds: None,
        remote_count: 0,
        networks: local_networks(),
        started: false,
        connected_once: false,
        bundle: Vec::new(),
        flush_at: None,
    };
    if let Err(e) = r.begin_generation().await {
        r.sink.failed(
            EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES,
            format!("ICE gathering: {e}"),
        );
        return;
    }
    let (conn_tx, mut conn_rx) = mpsc::channel::<Arc<dyn Conn + Send + Sync>>(1);
    // Dropping this cancels a pending dial or accept.
    let mut _cancel: Option<mpsc::Sender<()>> = None;
    let mut conn: Option<Arc<dyn Conn + Send + Sync>> = None;
    let mut stats = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            s = signals.recv() => match s {
                Some(s) => {
                    if let Some(cancel) = r.on_signal(&s, &conn_tx).await {
                        _cancel = Some(cancel);
                    }
                }
                None => return,
            },
            e = events.recv() => match e {
                Some(e) => {
                    if r.on_event(e).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            Some(c) = conn_rx.recv() => {
                tracing::debug!(controlling = r.params.controlling, "ICE connected");
                r.connected_once = true;
                r.refresh_route().await;
                r.sink.ready();
                let sink = r.sink.clone();
                let rx = c.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok(n) = rx.recv(&mut buf).await {
                        let ok = sink.deliver(&buf[..n]);
                        tracing::trace!(len = n, ok, "ICE recv");
                    }
                });
                conn = Some(c);
            }
            // Until ICE connects, datagrams wait in the queue (the peer may be connected
            // already and answering our first packets).
            Some(d) = out.recv(), if conn.is_some() => {
                if let Some(c) = &conn {
                    if let Err(e) = c.send(&d).await {
                        tracing::trace!(len = d.len(), error = %e, "ICE send failed");
                    }
                }
            }
            _ = stats.tick() => r.refresh_route().await,
            () = sleep_until(r.flush_at), if r.flush_at.is_some() => r.flush(),
        }
    }
}

/// Waits until `at` (forever for `None`).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Gives a gathered candidate's socket the buffers the library's own sockets have
/// (webrtc-ice opens its host and server-reflexive sockets with the OS default, which a
/// window's burst overflows). A relayed candidate's socket (to the TURN server) is the TURN
/// client's, out of reach; the TURN server's relay sockets are sized on its side.
fn size_buffers(c: &(dyn Candidate + Send + Sync)) {
    if let Some(sock) = c
        .get_conn()
        .and_then(|conn| conn.as_any().downcast_ref::<tokio::net::UdpSocket>())
    {
        punchline::transport::size_socket_buffers(socket2::SockRef::from(sock));
    }
}

/// Routes the agent's callbacks into `tx`.
fn hook(agent: &Agent, tx: mpsc::Sender<AgentEvent>) {
    let t = tx.clone();
    agent.on_candidate(Box::new(
        move |c: Option<Arc<dyn Candidate + Send + Sync>>| {
            let t = t.clone();
            Box::pin(async move {
                let e = match c {
                    Some(c) => {
                        size_buffers(&*c);
                        AgentEvent::Candidate(c.marshal())
                    }
                    None => AgentEvent::GatheringDone,
                };
                let _ = t.send(e).await;
            })
        },
    ));
    let t = tx.clone();
    agent.on_connection_state_change(Box::new(move |s| {
        let t = t.clone();
        Box::pin(async move {
            let _ = t.send(AgentEvent::State(s)).await;
        })
    }));
    agent.on_selected_candidate_pair_change(Box::new(move |_, _| {
        let t = tx.clone();
        Box::pin(async move {
            let _ = t.send(AgentEvent::PairChanged).await;
        })
    }));
}

impl Run {
    /// Gathers for the current generation and tells the peer our credentials.
    async fn begin_generation(&mut self) -> Result<(), webrtc_ice::Error> {
        self.local_count = 0;
        self.local_done = false;
        let (ufrag, pwd) = self.agent.get_local_user_credentials().await;
        self.signal(Signal::Credentials {
            generation: self.generation,
            ufrag,
            pwd,
        });
        self.agent.gather_candidates()
    }

    /// Queues a signal for the peer: signals made within [`BUNDLE_WAIT`] of each other go
    /// in one rendezvous message (signaling servers limit message rates).
    fn signal(&mut self, s: Signal) {
        tracing::trace!(controlling = self.params.controlling, signal = ?s, "ICE signal out");
        let line = s.encode();
        if !self.bundle.is_empty() && self.bundle.len() + 1 + line.len() > MAX_TRANSPORT_SIGNAL {
            self.flush();
        }
        if !self.bundle.is_empty() {
            self.bundle.push(b'\n');
        }
        self.bundle.extend_from_slice(&line);
        self.flush_at
            .get_or_insert_with(|| tokio::time::Instant::now() + BUNDLE_WAIT);
    }

    /// Sends the queued signals.
    fn flush(&mut self) {
        self.flush_at = None;
        if !self.bundle.is_empty() {
            self.sink.signal(std::mem::take(&mut self.bundle));
        }
    }

    /// Takes in a message of signals from the peer's path; returns the cancel handle of a
    /// dial or accept it started.
    async fn on_signal(
        &mut self,
        bytes: &[u8],
        conn_tx: &mpsc::Sender<Arc<dyn Conn + Send + Sync>>,
    ) -> Option<mpsc::Sender<()>> {
        let mut cancel = None;
        for line in bytes.split(|b| *b == b'\n') {
            match Signal::decode(line) {
                Ok(s) => {
                    tracing::trace!(controlling = self.params.controlling, signal = ?s, "ICE signal in");
                    if let Some(c) = self.on_one(s, conn_tx).await {
                        cancel = Some(c);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "bad ICE signal"),
            }
        }
        cancel
    }

    async fn on_one(
        &mut self,
        s: Signal,
        conn_tx: &mpsc::Sender<Arc<dyn Conn + Send + Sync>>,
    ) -> Option<mpsc::Sender<()>> {
        if s.generation() < self.generation {
            return None; // from before a restart
        }
        if s.generation() > self.generation {
            // The peer restarted ICE: so do we.
            if self.restart(s.generation()).await.is_err() {
                return None;
            }
        }
        match s {
            Signal::Credentials { ufrag, pwd, .. } => {
                if self.remote_creds.is_some() {
                    return None;
                }
                self.remote_creds = Some((ufrag.clone(), pwd.clone()));
                if self.started {
                    let _ = self.agent.set_remote_credentials(ufrag, pwd).await;
                    return None;
                }
                self.started = true;
                let (cancel, cancel_rx) = mpsc::channel(1);
                let agent = self.agent.clone();
                let controlling = self.params.controlling;
                let tx = conn_tx.clone();
                tokio::spawn(async move {
                    let conn: Result<Arc<dyn Conn + Send + Sync>, _> = if controlling {
                        agent.dial(cancel_rx, ufrag, pwd).await.map(|c| c as _)
                    } else {
                        agent.accept(cancel_rx, ufrag, pwd).await.map(|c| c as _)
                    };
                    if let Ok(c) = conn {
                        let _ = tx.send(c).await;
                    }
                });
                Some(cancel)
            }
            Signal::Candidate { candidate, .. } => {
                if self.remote_count >= MAX_REMOTE_CANDIDATES {
                    return None;
                }
                match unmarshal_candidate(&candidate) {
                    Ok(c)
                        if c.candidate_type() == CandidateType::Host
                            && c.address()
                                .parse::<IpAddr>()
                                .is_ok_and(|ip| !host_reachable(ip, self.networks.as_deref())) =>
                    {
                        tracing::debug!(
                            candidate,
                            "peer's private host candidate is off our networks: not checked"
                        );
                    }
                    Ok(c) => {
                        let c: Arc<dyn Candidate + Send + Sync> = Arc::new(c);
                        if self.agent.add_remote_candidate(&c).is_ok() {
                            self.remote_count += 1;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "bad remote candidate"),
                }
                None
            }
            Signal::EndOfCandidates { count, .. } => {
                if count == 0 && !self.connected_once {
                    self.sink.failed(
                        EndReason::REMOTE_P2P_ICE_NO_PUBLIC_ADDRESSES,
                        "the peer gathered no ICE candidates it may share",
                    );
                }
                None
            }
        }
    }

    /// Starts ICE generation `generation` with fresh credentials.
    async fn restart(&mut self, generation: u32) -> Result<(), webrtc_ice::Error> {
        tracing::debug!(generation, "ICE restart");
        self.agent.restart(String::new(), String::new()).await?;
        self.generation = generation;
        self.remote_creds = None;
        self.remote_count = 0;
        self.begin_generation().await
    }

    async fn on_event(&mut self, e: AgentEvent) -> Result<(), ()> {
        match e {
            AgentEvent::Candidate(c) => {
                self.local_count += 1;
                self.signal(Signal::Candidate {
                    generation: self.generation,
                    candidate: c,
                });
            }
            AgentEvent::GatheringDone => {
                if self.local_done {
                    return Ok(());
                }
                self.local_done = true;
                if self.local_count == 0 && !self.connected_once {
                    // This side has no way forward. It reports so before the peer can hear
                    // anything of it: told first, the peer would give up and close, and its
                    // close could arrive before our own reason (the connection would end
                    // "closed by peer" with the peer's view of our problem). The close that
                    // the failure sends tells the peer.
                    let why = self.why_no_candidates().await;
                    self.sink
                        .failed(EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES, why);
                    return Err(());
                }
                self.signal(Signal::EndOfCandidates {
                    generation: self.generation,
                    count: self.local_count,
                });
                self.flush();
            }
            AgentEvent::State(IceState::Failed) => {
                if self.connected_once {
                    // The path died: look for a new one (the peer follows our credentials).
                    let next = self.generation + 1;
                    if self.restart(next).await.is_err() {
                        tracing::debug!("ICE restart refused");
                    }
                } else {
                    let debug = format!(
                        "NAT punch failed: no ICE candidate pair answered \
                         ({} local, {} remote candidates)",
                        self.local_count, self.remote_count
                    );
                    self.sink.failed(EndReason::MISC_P2P_NAT_FIREWALL, debug);
                    return Err(());
                }
            }
            AgentEvent::State(s) => {
                tracing::debug!(controlling = self.params.controlling, state = %s, "ICE state");
            }
            AgentEvent::PairChanged => self.refresh_route().await,
        }
        Ok(())
    }

    /// Why gathering found nothing to share, as specifically as we can tell.
    async fn why_no_candidates(&self) -> String {
        let c = &self.params.config;
        let relay_only = c.ice_enable & (ICE_PRIVATE | ICE_PUBLIC) == 0;
        if relay_only {
            // Every server at once: the peer waits for our answer meanwhile, so the whole
            // probe takes at most PROBE_TIMEOUT.
            let probes: Vec<_> = c
                .turn_servers
                .iter()
                .map(|t| {
                    let t = t.clone();
                    tokio::spawn(async move {
                        match probe_turn(&t.url, &t.user, &t.pass).await {
                            Ok(()) => format!("{}: allocation works now", t.url),
                            Err(e) => format!("{}: {e}", t.url),
                        }
                    })
                })
                .collect();
            let mut reasons = Vec::new();
            for p in probes {
                reasons.push(p.await.unwrap_or_else(|e| format!("probe failed: {e}")));
            }
            return format!(
                "no relayed candidate: TURN allocation failed ({})",
                reasons.join("; ")
            );
        }
        "no ICE candidate to share: no interface address allowed by \
         P2P_Transport_ICE_Enable, and no STUN or TURN result"
            .into()
    }

    /// Re-reads the selected pair and the pair list.
    async fn refresh_route(&self) {
        let mut info = RouteInfo::default();
        if let Some(p) = self.agent.get_selected_candidate_pair() {
            let (l, r) = (&p.local, &p.remote);
            info.kind = route_kind(l.as_ref(), r.as_ref());
            info.remote = Some(r.addr());
        }
        let locals = self.agent.get_local_candidates_stats().await;
        let remotes = self.agent.get_remote_candidates_stats().await;
        let name = |list: &[webrtc_ice::agent::agent_stats::CandidateStats], id: &str| {
            list.iter().find(|c| c.id == id).map_or_else(
                || id.to_string(),
                |c| format!("{} {}:{}", c.candidate_type, c.ip, c.port),
            )
        };
        for p in self.agent.get_candidate_pairs_stats().await {
            info.pairs.push(format!(
                "pair {} <-> {}: {:?}{}",
                name(&locals, &p.local_candidate_id),
                name(&remotes, &p.remote_candidate_id),
                p.state,
                if p.nominated { ", nominated" } else { "" }
            ));
        }
        self.shared.set_route(info);
    }
}

/// The kind of route a selected pair makes.
fn route_kind(local: &dyn Candidate, remote: &dyn Candidate) -> RouteKind {
    let relayed = |c: &dyn Candidate| c.candidate_type() == CandidateType::Relay;
    if relayed(local) || relayed(remote) {
        return RouteKind::Relayed;
    }
    let private = |c: &dyn Candidate| is_private(c.addr().ip());
    if private(local) && private(remote) {
        RouteKind::DirectLocal
    } else {
        RouteKind::DirectPublic
    }
}

/// Tries an allocation on a TURN server, to say why relay gathering failed.
async fn probe_turn(url: &str, user: &str, pass: &str) -> Result<(), String> {
    let u = server_url(url, "turn")?;
    let server = format!("{}:{}", u.host, u.port);
    let sock = tokio::net::UdpSocket::bind(if u.host.contains(':') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })
    .await
    .map_err(|e| e.to_string())?;
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: server.clone(),
        username: user.to_string(),
        password: pass.to_string(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(sock),
        vnet: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    client.listen().await.map_err(|e| e.to_string())?;
    let r = match tokio::time::timeout(PROBE_TIMEOUT, client.allocate()).await {
        Ok(Ok(relay)) => {
            let _ = relay.close().await;
            Ok(())
        }
        // The likely cause first: the peer hears the text cut short.
        Ok(Err(e)) => Err(format!(
            "refused, wrong user name or password? (the server's answer: {e})"
        )),
        Err(_) => Err(format!("no answer from {server}")),
    };
    let _ = client.close().await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_host_candidates_count_only_on_our_networks() {
        let nets = [
            (ip("127.0.0.1"), ip("255.0.0.0")),
            (ip("10.1.0.2"), ip("255.255.255.0")),
            (ip("fe80::1"), ip("ffff:ffff:ffff:ffff::")),
        ];
        let ok = |s| host_reachable(ip(s), Some(&nets));
        // On one of our networks.
        assert!(ok("10.1.0.77"));
        assert!(ok("127.0.0.9"));
        assert!(ok("fe80::abcd"));
        // Someone else's LAN.
        assert!(!ok("10.2.0.77"));
        assert!(!ok("192.168.1.5"));
        assert!(!ok("fd00::5"));
        // Public addresses are always checked; so is everything when our networks are
        // unknown.
        assert!(ok("203.0.113.9"));
        assert!(ok("2001:db8::1"));
        assert!(host_reachable(ip("10.2.0.77"), None));
        // Families do not mix.
        assert!(!same_network(ip("10.1.0.2"), ip("::1"), ip("255.0.0.0")));
    }
}
