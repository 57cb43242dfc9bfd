//! [`Sockets`]: connections by IP address over UDP (or in-process buffers), driven by a
//! service thread, usable from any thread and from tokio code.

use super::config::{
    self, apply_to_connection, resolve, CallbackFn, ConfigData, ConfigError, ConfigScope,
    ConfigStore, ConfigValue, GetResult,
};
use super::fakeip::{
    get_ipv4_fake_ip_type, FakeIpProvider, FakeIpResult, FakeIpType, MAX_FAKE_PORTS,
};
use super::p2p::{Signaling, SignalingRecvContext};
use super::relay::{self, PingLocation, PopId, PopPinger, RelayNetwork, RelayNetworkStatus};
use super::types::{
    Availability, ConfigTarget, ConnectionInfo, ConnectionStatusChanged, Message, OutMessage,
    QuickStatus, SocketsConfig, StatusEvents,
};
use super::{ConnectionHandle, ListenSocketHandle, PollGroupHandle};
use crate::debug::{DebugOutputType, Subsystem};
use crate::netcond::Impairment;
use crate::proto::endpoint::SignalOutcome;
use crate::proto::{
    ConnId, ConnectionConfig, ConnectionInfoFlags, ConnectionState, Credentials, EndReason,
    Endpoint, EndpointConfig, Error, Event, SendFlags,
};
use crate::runtime::{drive, Driven, FakeConditions, Inbox, Io, Outbox, Service, Wake};
use crate::transport::{
    self, is_path_addr, path_addr, Path, PathConfig, PathNote, PathParams, PathSink, RouteInfo,
    RouteKind, Transport,
};
use bytes::Bytes;
use punchline_identity::{Identity, KeyPair};
use rand_core::{OsRng, RngCore};
use rustc_hash::FxHashMap;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify};

/// Config values set at global scope: shared by every [`Sockets`] in the process.
static GLOBAL: LazyLock<Mutex<ConfigStore>> = LazyLock::new(|| Mutex::new(ConfigStore::default()));

/// The fake network conditions from the global config values, read by every driver.
static FAKE: RwLock<FakeConditions> = RwLock::new(FakeConditions::NONE);

fn update_fake_conditions(global: &ConfigStore) {
    let chain = [global];
    let pct = |v| resolve(v, &chain).0.as_f32().unwrap_or(0.0);
    let int = |v| resolve(v, &chain).0.as_i32().unwrap_or(0).max(0) as u64;
    let ms = |v| Duration::from_millis(int(v));
    let ms_f = |v| Duration::from_secs_f64(f64::from(pct(v)).max(0.0) / 1000.0);
    use ConfigValue as V;
    let direction =
        |[loss, lag, reorder, dup, j_avg, j_max, j_pct, rate, burst]: [V; 9]| Impairment {
            loss_pct: pct(loss),
            lag: ms(lag),
            jitter_pct: pct(j_pct),
            jitter_avg: ms_f(j_avg),
            jitter_max: ms(j_max),
            reorder_pct: pct(reorder),
            reorder_time: ms(V::FakePacketReorderTime),
            dup_pct: pct(dup),
            dup_time_max: ms(V::FakePacketDupTimeMax),
            rate: int(rate),
            burst: int(burst),
        };
    let mut fake = FakeConditions {
        send: direction([
            V::FakePacketLossSend,
            V::FakePacketLagSend,
            V::FakePacketReorderSend,
            V::FakePacketDupSend,
            V::FakePacketJitterSendAvg,
            V::FakePacketJitterSendMax,
            V::FakePacketJitterSendPct,
            V::FakeRateLimitSendRate,
            V::FakeRateLimitSendBurst,
        ]),
        recv: direction([
            V::FakePacketLossRecv,
            V::FakePacketLagRecv,
            V::FakePacketReorderRecv,
            V::FakePacketDupRecv,
            V::FakePacketJitterRecvAvg,
            V::FakePacketJitterRecvMax,
            V::FakePacketJitterRecvPct,
            V::FakeRateLimitRecvRate,
            V::FakeRateLimitRecvBurst,
        ]),
    };
    // The shared times and the burst mean nothing on their own: a direction with nothing
    // else set stays clean, so datagrams skip the conditioner.
    for d in [&mut fake.send, &mut fake.recv] {
        let idle = Impairment {
            reorder_time: d.reorder_time,
            dup_time_max: d.dup_time_max,
            burst: d.burst,
            jitter_max: d.jitter_max,
            ..Impairment::NONE
        };
        if *d == idle {
            *d = Impairment::NONE;
        }
    }
    *FAKE.write().unwrap_or_else(|e| e.into_inner()) = fake;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type EpId = u32;

#[derive(Debug)]
struct EpState {
    endpoint: Endpoint,
    nudge: Arc<Notify>,
    local_addr: SocketAddr,
    listen: Option<ListenSocketHandle>,
    loopback_buffers: bool,
    auto_accept: bool,
    /// Stop the driver once no connection is left.
    closing: bool,
    /// The socket, shared with the driver, for sends made on the caller's thread.
    io: Option<Arc<Io>>,
    /// When the driver last planned to wake.
    next_wake: Option<Instant>,
    /// Reused buffer for sends on the caller's thread.
    scratch: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default)]
struct RateSample {
    at: Option<Instant>,
    packets_out: u64,
    bytes_out: u64,
    packets_in: u64,
    bytes_in: u64,
}

#[derive(Debug)]
struct ConnEntry {
    ep: EpId,
    id: ConnId,
    user_data: i64,
    name: String,
    poll_group: Option<PollGroupHandle>,
    listen: Option<ListenSocketHandle>,
    config: ConfigStore,
    sample: RateSample,
}

#[derive(Debug)]
struct ListenEntry {
    ep: EpId,
    config: ConfigStore,
    /// The virtual port of a P2P listen socket.
    vport: Option<u16>,
}

/// A P2P connect request the application is deciding on.
#[derive(Debug, Default)]
struct Undecided {
    /// Status changes held back (as old states).
    deferred: Vec<ConnectionState>,
    /// The application closed it: refused, with this reason and text.
    refusal: Option<(EndReason, String)>,
}

/// A P2P connection's transport path.
#[derive(Debug)]
struct PathEntry {
    path: Arc<dyn Path>,
    addr: SocketAddr,
    notes: Arc<Mutex<VecDeque<PathNote>>>,
}

struct State {
    endpoints: FxHashMap<EpId, EpState>,
    conns: FxHashMap<ConnectionHandle, ConnEntry>,
    by_proto: FxHashMap<(EpId, ConnId), ConnectionHandle>,
    listens: HashMap<ListenSocketHandle, ListenEntry>,
    groups: HashMap<PollGroupHandle, Vec<ConnectionHandle>>,
    interface: ConfigStore,
    /// Events for `run_callbacks`: a status change or a FakeIP result, and its callback.
    callbacks: VecDeque<(Box<dyn std::any::Any + Send>, CallbackFn)>,
    /// The shared endpoint for outgoing connections, per address family (true: IPv6).
    client_endpoints: HashMap<bool, EpId>,
    subscribers: Vec<mpsc::UnboundedSender<ConnectionStatusChanged>>,
    next_handle: u32,
    credentials: Credentials,
    /// The endpoint P2P connections use (created when first needed).
    p2p_endpoint: Option<EpId>,
    /// The signaling `connect_p2p` uses.
    signaling: Option<Arc<dyn Signaling>>,
    /// Where the P2P socket binds (`None`: every interface).
    p2p_bind: Option<SocketAddr>,
    /// The transport P2P connections find their paths with (`None`: direct UDP).
    p2p_transport: Option<Arc<dyn Transport>>,
    /// Paths of P2P connections, by their id on the P2P endpoint.
    paths: HashMap<ConnId, PathEntry>,
    /// Where received path datagrams go (to the P2P endpoint's driver).
    path_tx: Option<mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    /// Paths numbered so far (for their stand-in addresses).
    paths_made: u32,
    /// The paths again, by stand-in address, for the driver.
    path_table: PathTable,
    /// The service runtime, where transports run their tasks.
    runtime: tokio::runtime::Handle,
    /// Where global fake IPs come from (the signaling client).
    fake_ip_provider: Option<Arc<dyn FakeIpProvider>>,
    /// Our fake IP and ports, once allocated; whether a request is under way.
    fake_ip: Option<(Ipv4Addr, Vec<u16>)>,
    fake_ip_pending: bool,
    /// Fake IPs known to stand for identities.
    fake_ip_identities: HashMap<Ipv4Addr, Identity>,
    /// Connections made to a fake IP and port, with that address.
    fake_remotes: HashMap<ConnectionHandle, SocketAddrV4>,
    /// P2P connect requests the application is deciding on: their status changes wait here,
    /// reported once accepted, dropped if not.
    undecided: HashMap<ConnectionHandle, Undecided>,
    /// Signaling for particular P2P connections (custom signaling, or accepted requests), by
    /// their id on the P2P endpoint (it outlives the handle: a close is signaled after).
    conn_signaling: HashMap<ConnId, Arc<dyn Signaling>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("endpoints", &self.endpoints.len())
            .field("connections", &self.conns.len())
            .finish()
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when datagrams were handled (messages or status changes may be waiting).
    activity: std::sync::Condvar,
    /// Buffers for threads that read the sockets themselves while waiting.
    spin_inbox: Mutex<Inbox>,
    /// Values the layers above share per `Sockets` (the Messages interface fake UDP ports
    /// share, while any lives), held weakly and by type, so this layer knows none of them.
    extensions: Mutex<Vec<std::sync::Weak<dyn std::any::Any + Send + Sync>>>,
    /// The relay network, once one is set.
    relay_net: Mutex<Option<Arc<RelayNetwork>>>,
}

/// Transport paths by their stand-in addresses, for the driver's sends (apart from the
/// state, so that sending takes no lock the API holds).
type PathTable = Arc<RwLock<HashMap<SocketAddr, Arc<dyn Path>>>>;

/// The ISteamNetworkingSockets analog: listen sockets, connections, messages, poll groups.
///
/// Cheap to clone (clones share one instance) and safe to use from many threads at once. No
/// call blocks on network IO: a service thread does the sending, receiving and timers, and
/// status changes are queued for [`run_callbacks`](Self::run_callbacks) or read as a stream
/// with [`status_events`](Self::status_events).
#[derive(Debug, Clone)]
pub struct Sockets {
    shared: Arc<Shared>,
    service: Arc<Service>,
}

impl Sockets {
    /// A `Sockets` with a fresh random identity key.
    pub fn new() -> std::io::Result<Self> {
        Self::with_config(SocketsConfig::default())
    }

    /// A `Sockets` with the given identity and trust.
    pub fn with_config(cfg: SocketsConfig) -> std::io::Result<Self> {
        let key = cfg.key.unwrap_or_else(|| KeyPair::generate(&mut OsRng));
        let credentials = Credentials {
            identity: cfg.identity,
            key: Some(key),
            cert: cfg.cert,
            trusted: cfg.trusted,
            app_id: cfg.app_id,
        };
        let service = Arc::new(Service::start()?);
        let state = State {
            endpoints: FxHashMap::default(),
            conns: FxHashMap::default(),
            by_proto: FxHashMap::default(),
            listens: HashMap::new(),
            groups: HashMap::new(),
            interface: ConfigStore::default(),
            callbacks: VecDeque::new(),
            client_endpoints: HashMap::new(),
            subscribers: Vec::new(),
            next_handle: 1,
            credentials,
            p2p_endpoint: None,
            signaling: None,
            p2p_bind: cfg.p2p_bind,
            p2p_transport: None,
            paths: HashMap::new(),
            path_tx: None,
            paths_made: 0,
            path_table: PathTable::default(),
            runtime: service.handle().clone(),
            fake_ip_provider: None,
            fake_ip: None,
            fake_ip_pending: false,
            fake_ip_identities: HashMap::new(),
            fake_remotes: HashMap::new(),
            conn_signaling: HashMap::new(),
            undecided: HashMap::new(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                activity: std::sync::Condvar::new(),
                spin_inbox: Mutex::new(Inbox::new(4)),
                extensions: Mutex::new(Vec::new()),
                relay_net: Mutex::new(None),
            }),
            service,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    // ----- listen / connect ------------------------------------------------------------------

    /// Listens for connections on `local` (port required; an unspecified IPv6 address listens
    /// dual-stack). `options` apply before any packet is handled.
    pub fn create_listen_socket_ip(
        &self,
        local: SocketAddr,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ListenSocketHandle, Error> {
        let store = options_store(options, ConfigScope::ListenSocket)?;
        let io = self.bind(local)?;
        let mut st = self.state();
        let incoming = st.connection_config(&[&store]);
        let handle = ListenSocketHandle(st.fresh_handle());
        let credentials = st.credentials.clone();
        let ep = st.add_endpoint(
            EndpointConfig {
                credentials,
                listen: true,
                incoming,
                ..EndpointConfig::default()
            },
            io.local_addr().map_err(io_err)?,
            Some(handle),
        );
        st.listens.insert(
            handle,
            ListenEntry {
                ep,
                config: store,
                vport: None,
            },
        );
        drop(st);
        self.spawn_driver(ep, io);
        Ok(handle)
    }

    // ----- P2P -----------------------------------------------------------------------------

    /// Sets the signaling [`connect_p2p`](Self::connect_p2p) sends rendezvous messages
    /// through (the seeds' `CreateConnectionSignaling` callback). Signals from peers come back
    /// through [`received_p2p_custom_signal`](Self::received_p2p_custom_signal).
    pub fn set_signaling(&self, signaling: Arc<dyn Signaling>) {
        self.state().signaling = Some(signaling);
    }

    /// Sets the transport P2P connections find their paths with (ICE: see the
    /// `punchline-ice` crate). Without one, peers send to the first address the other
    /// gives in the rendezvous: enough on one host or a LAN, not through NATs. Both peers
    /// need the same transport: a peer with a transport never falls back to direct UDP
    /// (nor sends its addresses in the rendezvous), so a request for another transport, or
    /// for none, is answered with a close once accepted. A peer without one answers with
    /// direct UDP, which a peer that asked for a transport refuses.
    pub fn set_p2p_transport(&self, transport: Arc<dyn Transport>) {
        let mut st = self.state();
        let id = transport.wire_id();
        st.p2p_transport = Some(transport);
        if let Some(e) = st.p2p_endpoint.and_then(|ep| st.endpoints.get_mut(&ep)) {
            e.endpoint.set_p2p_transport(id);
        }
    }

    /// Listens for P2P connections on virtual port `vport` (peers name it in `connect_p2p`).
    pub fn create_listen_socket_p2p(
        &self,
        vport: u16,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ListenSocketHandle, Error> {
        let store = options_store(options, ConfigScope::ListenSocket)?;
        let ep = self.p2p_endpoint()?;
        let mut st = self.state();
        if st.listens.values().any(|l| l.vport == Some(vport)) {
            return Err(Error::InvalidParam(format!(
                "virtual port {vport} is already listened on"
            )));
        }
        let handle = ListenSocketHandle(st.fresh_handle());
        st.listens.insert(
            handle,
            ListenEntry {
                ep,
                config: store,
                vport: Some(vport),
            },
        );
        Ok(handle)
    }

    /// Connects to the peer with identity `peer` on its virtual port `vport`, through the
    /// signaling set with [`set_signaling`](Self::set_signaling). The connection is in
    /// Connecting until the peer answers, FindingRoute while the path and handshake are
    /// made, then Connected. With `SymmetricConnect` set in `options` and a matching incoming
    /// connection already waiting, that one is accepted and returned instead.
    pub fn connect_p2p(
        &self,
        peer: &Identity,
        vport: u16,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ConnectionHandle, Error> {
        let signaling = self
            .state()
            .signaling
            .clone()
            .ok_or_else(|| Error::InvalidParam("no signaling set (set_signaling)".into()))?;
        self.connect_p2p_custom_signaling(signaling, peer, vport, options)
    }

    /// Like [`connect_p2p`](Self::connect_p2p), with this connection's signals sent through
    /// `signaling`.
    pub fn connect_p2p_custom_signaling(
        &self,
        signaling: Arc<dyn Signaling>,
        peer: &Identity,
        vport: u16,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ConnectionHandle, Error> {
        if peer.is_invalid() {
            return Err(Error::InvalidParam("invalid peer identity".into()));
        }
        let store = options_store(options, ConfigScope::Connection)?;
        let ep = self.p2p_endpoint()?;
        let mut st = self.state();
        let symmetric = resolve_int(&st, &store, ConfigValue::SymmetricConnect) != 0;
        let local_vport = match resolve_int(&st, &store, ConfigValue::LocalVirtualPort) {
            v if (0..=i32::from(u16::MAX)).contains(&v) => v as u16,
            _ => vport,
        };
        if symmetric {
            // A matching incoming connection already waiting is accepted instead.
            let waiting = st.conns.iter().find_map(|(h, c)| {
                let conn = st.endpoints.get(&c.ep)?.endpoint.connection(c.id)?;
                let p = conn.p2p()?;
                (c.ep == ep
                    && p.symmetric
                    && &p.peer == peer
                    && p.local_vport == local_vport
                    && conn.state() == ConnectionState::Connecting
                    && conn.side() == crate::proto::Side::Server)
                    .then_some(*h)
            });
            if let Some(h) = waiting {
                drop(st);
                self.accept_connection(h)?;
                return Ok(h);
            }
        }
        let cfg = st.connection_config(&[&store]);
        let e = st.endpoints.get_mut(&ep).ok_or(Error::InvalidState)?;
        let id = e.endpoint.connect_p2p(
            Instant::now(),
            peer.clone(),
            local_vport,
            vport,
            symmetric,
            cfg,
        );
        e.nudge.notify_one();
        let h = st.add_connection(ep, id, None, store);
        st.conn_signaling.insert(id, signaling);
        st.pump(ep);
        Ok(h)
    }

    /// Hands punchline a rendezvous signal that arrived from a peer. Connect requests go to
    /// `ctx` to decide on. Returns false for a signal that is malformed or not for us.
    pub fn received_p2p_custom_signal(
        &self,
        signal: &[u8],
        ctx: &mut dyn SignalingRecvContext,
    ) -> bool {
        self.received_signal(signal, None, ctx)
    }

    /// [`received_p2p_custom_signal`](Self::received_p2p_custom_signal) for a signal whose
    /// sender the signaling channel authenticated (a signaling server stamps it): a signal
    /// that claims to come from anyone else is dropped.
    pub fn received_p2p_custom_signal_from(
        &self,
        signal: &[u8],
        sender: &Identity,
        ctx: &mut dyn SignalingRecvContext,
    ) -> bool {
        self.received_signal(signal, Some(sender), ctx)
    }

    fn received_signal(
        &self,
        signal: &[u8],
        sender: Option<&Identity>,
        ctx: &mut dyn SignalingRecvContext,
    ) -> bool {
        let Ok(ep) = self.p2p_endpoint() else {
            return false;
        };
        let now = Instant::now();
        let mut st = self.state();
        // What the paths said comes first: a path that failed before this signal arrived
        // decides how its connection ends, whatever the peer says now (its close counts only
        // while this side still had a way forward).
        st.service_paths(ep);
        let Some(e) = st.endpoints.get_mut(&ep) else {
            return false;
        };
        let outcome = match e.endpoint.handle_signal_from(now, signal, sender) {
            Ok(o) => o,
            Err(err) => {
                tracing::debug!(error = %err, "malformed rendezvous signal");
                crate::debug::emit(
                    DebugOutputType::Warning,
                    Some(Subsystem::P2pRendezvous),
                    || {
                        format!(
                            "malformed rendezvous signal of {} bytes: {err}",
                            signal.len()
                        )
                    },
                );
                return false;
            }
        };
        crate::debug::emit(
            DebugOutputType::Verbose,
            Some(Subsystem::P2pRendezvous),
            || format!("rendezvous signal of {} bytes: {outcome:?}", signal.len()),
        );
        e.nudge.notify_one();
        let request = match outcome {
            SignalOutcome::Handled => {
                st.pump(ep);
                return true;
            }
            SignalOutcome::Ignored => return false,
            SignalOutcome::Request(r) => r,
        };
        // The connection exists while the application decides (it may close it to refuse).
        let listen = st
            .listens
            .iter()
            .find(|(_, l)| l.vport == Some(request.to_vport))
            .map(|(h, _)| *h);
        let store = ConfigStore::default();
        let cfg = match listen.and_then(|l| st.listens.get(&l)) {
            Some(l) => st.connection_config(&[&l.config]),
            None => st.connection_config(&[]),
        };
        let peer = request.from.clone();
        let vport = request.to_vport;
        let e = st.endpoints.get_mut(&ep).expect("checked above");
        let id = e
            .endpoint
            .accept_p2p_request(now, request.clone(), vport, cfg);
        let h = st.add_connection(ep, id, listen, store);
        // Nobody hears of it until the application has decided.
        st.undecided.insert(h, Undecided::default());
        drop(st);
        let answer = ctx.on_connect_request(h, &peer, vport);
        let mut st = self.state();
        let Undecided { deferred, refusal } = st.undecided.remove(&h).unwrap_or_default();
        match answer {
            Some(signaling) if st.conns.contains_key(&h) => {
                st.conn_signaling.insert(id, signaling);
                for old in deferred {
                    st.report(h, old);
                }
                st.pump(ep);
            }
            _ => {
                if let Some(entry) = st.conns.remove(&h) {
                    st.forget(h, &entry);
                }
                if let Some(e) = st.endpoints.get_mut(&ep) {
                    e.endpoint.forget_p2p_request(id);
                    if let Some((reason, debug)) = refusal {
                        let signal = e.endpoint.reject_p2p_request(&request, reason, &debug);
                        drop(st);
                        ctx.send_rejection_signal(&peer, &signal);
                    }
                }
            }
        }
        true
    }

    // ----- FakeIP ------------------------------------------------------------------------

    /// Sets where global fake IPs come from (the signaling client does this).
    pub fn set_fake_ip_provider(&self, provider: Arc<dyn FakeIpProvider>) {
        self.state().fake_ip_provider = Some(provider);
    }

    /// Starts allocating a fake IP with `num_ports` ports (1 to 4) for this identity: global
    /// from the signaling server when one is set, else local to this process. The result goes
    /// to the `Callback_FakeIPResult` callback (see [`run_callbacks`](Self::run_callbacks))
    /// and to [`get_fake_ip`](Self::get_fake_ip). False when a request is under way already or
    /// `num_ports` is out of range.
    pub fn begin_async_request_fake_ip(&self, num_ports: usize) -> bool {
        if !(1..=MAX_FAKE_PORTS).contains(&num_ports) {
            return false;
        }
        let mut st = self.state();
        if st.fake_ip_pending {
            return false;
        }
        st.fake_ip_pending = true;
        if let Some(p) = st.fake_ip_provider.clone() {
            drop(st);
            p.request_fake_ip(num_ports);
            return true;
        }
        drop(st);
        let result = allocate_local_fake_ip(num_ports);
        self.complete_fake_ip_request(result);
        true
    }

    /// Our fake IP and its ports, once allocated.
    pub fn get_fake_ip(&self) -> Option<(Ipv4Addr, Vec<u16>)> {
        self.state().fake_ip.clone()
    }

    /// The identity a fake IP stands for, when known: ours, one the signaling server told us
    /// about, or one asked for before (this call asks the server in the background when it
    /// does not know; ask again later).
    pub fn get_real_identity_for_fake_ip(&self, ip: Ipv4Addr) -> Option<Identity> {
        let st = self.state();
        if st.fake_ip.as_ref().is_some_and(|(own, _)| *own == ip) {
            return Some(st.credentials.identity());
        }
        if let Some(id) = st.fake_ip_identities.get(&ip) {
            return Some(id.clone());
        }
        if get_ipv4_fake_ip_type(ip) == FakeIpType::LocalIpv4 {
            return lock(&LOCAL_FAKE_OWNERS).get(&ip).cloned();
        }
        if let Some(p) = st.fake_ip_provider.clone() {
            if get_ipv4_fake_ip_type(ip) == FakeIpType::GlobalIpv4 {
                drop(st);
                p.resolve_fake_ip(ip);
            }
        }
        None
    }

    /// Listens for P2P connections to our fake IP at its port number `fake_port_index`
    /// (peers connect with `connect_by_ip_address(fake_ip:port)`). Needs the fake IP
    /// allocated ([`begin_async_request_fake_ip`](Self::begin_async_request_fake_ip)); the
    /// fake port is the virtual port, so it shares their numbers.
    pub fn create_listen_socket_p2p_fake_ip(
        &self,
        fake_port_index: usize,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ListenSocketHandle, Error> {
        let (_, port) = self.fake_port(fake_port_index)?;
        self.create_listen_socket_p2p(port, options)
    }

    /// The live `T` the layers above share on this `Sockets`, or a new one from `make`
    /// (kept weakly: it lives as long as its users hold it).
    pub(crate) fn shared_extension<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> Result<Arc<T>, Error>,
    ) -> Result<Arc<T>, Error> {
        let mut slots = lock(&self.shared.extensions);
        slots.retain(|w| w.strong_count() > 0);
        if let Some(t) = slots
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find_map(|a| a.downcast::<T>().ok())
        {
            return Ok(t);
        }
        let t = make()?;
        let erased: Arc<dyn std::any::Any + Send + Sync> = t.clone();
        slots.push(Arc::downgrade(&erased));
        Ok(t)
    }

    /// Our fake IP and its port number `index`.
    pub(super) fn fake_port(&self, index: usize) -> Result<(Ipv4Addr, u16), Error> {
        let (ip, ports) = self.get_fake_ip().ok_or_else(|| {
            Error::InvalidParam("no fake IP yet: call begin_async_request_fake_ip first".into())
        })?;
        let port = *ports.get(index).ok_or_else(|| {
            Error::InvalidParam(format!(
                "fake port index {index}: the fake IP has {} ports",
                ports.len()
            ))
        })?;
        Ok((ip, port))
    }

    /// The fake IP `identity` holds, when known.
    pub(crate) fn fake_ip_of(&self, identity: &Identity) -> Option<Ipv4Addr> {
        let st = self.state();
        if &st.credentials.identity() == identity {
            return st.fake_ip.as_ref().map(|(ip, _)| *ip);
        }
        let known = st
            .fake_ip_identities
            .iter()
            .find(|(_, id)| *id == identity)
            .map(|(ip, _)| *ip);
        drop(st);
        known.or_else(|| {
            lock(&LOCAL_FAKE_OWNERS)
                .iter()
                .find(|(_, id)| *id == identity)
                .map(|(ip, _)| *ip)
        })
    }

    /// The peer's fake address on a connection: the fake IP and port it was made to (by
    /// `connect_by_ip_address` with a fake IP); for other P2P connections, the peer's fake
    /// IP when known, with port 0 (the peer connects from no particular fake port). `None`
    /// otherwise.
    pub fn get_remote_fake_ip_for_connection(&self, h: ConnectionHandle) -> Option<SocketAddrV4> {
        let peer = {
            let st = self.state();
            if let Some(a) = st.fake_remotes.get(&h) {
                return Some(*a);
            }
            let entry = st.conns.get(&h)?;
            let e = st.endpoints.get(&entry.ep)?;
            e.endpoint.connection(entry.id)?.p2p()?.peer.clone()
        };
        self.fake_ip_of(&peer).map(|ip| SocketAddrV4::new(ip, 0))
    }

    /// `connect_by_ip_address` to a fake IP: a P2P connection to the identity holding it, on
    /// the virtual port of the fake port.
    fn connect_fake_ip(
        &self,
        addr: SocketAddrV4,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ConnectionHandle, Error> {
        let identity = self
            .get_real_identity_for_fake_ip(*addr.ip())
            .ok_or(Error::InvalidState)?;
        let h = self.connect_p2p(&identity, addr.port(), options)?;
        self.state().fake_remotes.insert(h, addr);
        Ok(h)
    }

    /// Completes a fake-IP request (the provider calls this with the server's answer).
    pub fn complete_fake_ip_request(&self, result: Result<(Ipv4Addr, Vec<u16>), String>) {
        let mut st = self.state();
        st.fake_ip_pending = false;
        let identity = st.credentials.identity();
        let event = match result {
            Ok((ip, ports)) => {
                st.fake_ip = Some((ip, ports.clone()));
                if get_ipv4_fake_ip_type(ip) == FakeIpType::LocalIpv4 {
                    // Other `Sockets` of this process may look it up.
                    lock(&LOCAL_FAKE_OWNERS).insert(ip, identity.clone());
                }
                FakeIpResult {
                    result: Ok(()),
                    identity,
                    ip,
                    ports,
                }
            }
            Err(why) => FakeIpResult {
                result: Err(why),
                identity,
                ip: Ipv4Addr::UNSPECIFIED,
                ports: Vec::new(),
            },
        };
        st.queue_callback(Box::new(event), ConfigValue::CallbackFakeIpResult);
    }

    /// Queues `event` for [`run_callbacks`](Self::run_callbacks), for the callback set in
    /// `value` (interface or global scope), if any.
    pub(crate) fn queue_callback(&self, event: Box<dyn std::any::Any + Send>, value: ConfigValue) {
        self.state().queue_callback(event, value);
    }

    /// Records that `ip` stands for `identity` (or for nobody) (the provider calls this).
    pub fn learn_fake_ip(&self, ip: Ipv4Addr, identity: Option<Identity>) {
        let mut st = self.state();
        match identity {
            Some(id) => {
                if st.fake_ip_identities.len() >= 4096 {
                    st.fake_ip_identities.clear();
                }
                st.fake_ip_identities.insert(ip, id);
            }
            None => {
                st.fake_ip_identities.remove(&ip);
            }
        }
    }

    /// The endpoint (and socket) P2P connections use, created when first needed.
    fn p2p_endpoint(&self) -> Result<EpId, Error> {
        if let Some(ep) = self.state().p2p_endpoint {
            return Ok(ep);
        }
        let bind = self
            .state()
            .p2p_bind
            .unwrap_or((Ipv4Addr::UNSPECIFIED, 0).into());
        let io = self.bind(bind)?;
        let local = io.local_addr().map_err(io_err)?;
        let mut st = self.state();
        if let Some(ep) = st.p2p_endpoint {
            return Ok(ep); // another thread made it meanwhile
        }
        let credentials = st.credentials.clone();
        let ep = st.add_endpoint(
            EndpointConfig {
                credentials,
                ..EndpointConfig::default()
            },
            local,
            None,
        );
        let candidates = p2p_candidates(local);
        let wire_id = st
            .p2p_transport
            .as_ref()
            .map_or(transport::DIRECT, |t| t.wire_id());
        if let Some(e) = st.endpoints.get_mut(&ep) {
            e.endpoint.set_p2p_candidates(candidates);
            e.endpoint.set_p2p_transport(wire_id);
        }
        st.p2p_endpoint = Some(ep);
        let (tx, rx) = mpsc::channel(transport::PATH_INBOX);
        st.path_tx = Some(tx);
        drop(st);
        self.spawn_driver_with(ep, io, Some(rx));
        Ok(ep)
    }

    /// Connects to a listen socket at `addr`. The connection starts in Connecting;
    /// `options` apply before the first packet is sent. A fake IP (see
    /// [`begin_async_request_fake_ip`](Self::begin_async_request_fake_ip)) stands for the
    /// identity holding it: the connection is P2P, to that identity's
    /// [`create_listen_socket_p2p_fake_ip`](Self::create_listen_socket_p2p_fake_ip) at that
    /// port. While the identity is not known yet this fails with `InvalidState` and asks the
    /// signaling server; try again shortly.
    pub fn connect_by_ip_address(
        &self,
        addr: SocketAddr,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ConnectionHandle, Error> {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(Error::InvalidParam(format!("cannot connect to {addr}")));
        }
        if let SocketAddr::V4(v4) = addr {
            if get_ipv4_fake_ip_type(*v4.ip()) != FakeIpType::NotFake {
                // A fake IP stands for an identity: a P2P connection, found by the
                // identity. Unknown yet: the lookup has been asked for; try again.
                return self.connect_fake_ip(v4, options);
            }
        }
        let store = options_store(options, ConfigScope::Connection)?;
        // All outgoing connections of one address family share one socket.
        let v6 = addr.is_ipv6();
        let existing = self.state().client_endpoints.get(&v6).copied();
        let ep = match existing {
            Some(ep) => ep,
            None => {
                let bind: SocketAddr = match addr.ip() {
                    IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let io = self.bind(bind)?;
                let mut st = self.state();
                let credentials = st.credentials.clone();
                let ep = st.add_endpoint(
                    EndpointConfig {
                        credentials,
                        ..EndpointConfig::default()
                    },
                    io.local_addr().map_err(io_err)?,
                    None,
                );
                st.client_endpoints.insert(v6, ep);
                drop(st);
                self.spawn_driver(ep, io);
                ep
            }
        };
        let mut st = self.state();
        let cfg = st.connection_config(&[&store]);
        let e = st.endpoints.get_mut(&ep).ok_or(Error::InvalidState)?;
        let id = e.endpoint.connect(Instant::now(), addr, cfg);
        e.nudge.notify_one();
        let h = st.add_connection(ep, id, None, store);
        st.pump(ep);
        Ok(h)
    }

    fn bind(&self, addr: SocketAddr) -> Result<Io, Error> {
        let _guard = self.service.handle().enter();
        Io::bind_udp(addr).map_err(|e| Error::InvalidParam(format!("cannot bind {addr}: {e}")))
    }

    fn spawn_driver(&self, ep: EpId, io: Io) {
        self.spawn_driver_with(ep, io, None);
    }

    fn spawn_driver_with(&self, ep: EpId, io: Io, side: Option<crate::runtime::SideInput>) {
        let io = Arc::new(io);
        let mut st = self.state();
        let paths = st.path_table.clone();
        let nudge = match st.endpoints.get_mut(&ep) {
            Some(e) => {
                e.io = Some(io.clone());
                e.nudge.clone()
            }
            None => return,
        };
        drop(st);
        let owner = EpDriver {
            shared: self.shared.clone(),
            ep,
            paths,
        };
        self.service.handle().spawn(drive(owner, io, nudge, side));
    }

    /// Accepts a connection waiting in Connecting.
    pub fn accept_connection(&self, h: ConnectionHandle) -> Result<(), Error> {
        let mut st = self.state();
        let (ep, id) = st.locate(h)?;
        let e = st.endpoints.get_mut(&ep).ok_or(Error::NoConnection)?;
        if let Some(c) = e.endpoint.connection(id) {
            if c.p2p().is_some() && c.state() != ConnectionState::Connecting {
                // Accepted already (symmetric connect does it implicitly).
                return Err(Error::DuplicateRequest);
            }
            if c.side() == crate::proto::Side::Client {
                return Err(Error::InvalidParam(
                    "only incoming connections are accepted".into(),
                ));
            }
        }
        let r = e.endpoint.accept(Instant::now(), id);
        e.nudge.notify_one();
        st.pump(ep);
        r
    }

    /// Closes a connection and releases its handle. `reason` is an application code
    /// (1000..=2999; 0 means 1000); with `linger`, queued reliable data is delivered first.
    pub fn close_connection(
        &self,
        h: ConnectionHandle,
        reason: u32,
        debug: &str,
        linger: bool,
    ) -> bool {
        let mut st = self.state();
        let Some(entry) = st.conns.remove(&h) else {
            return false;
        };
        st.forget(h, &entry);
        st.fake_remotes.remove(&h);
        // Keep the connection's signaling until its close has been signaled.
        let reason = match reason {
            0 => EndReason::APP_GENERIC,
            r if EndReason(r).is_application() => EndReason(r),
            _ => EndReason::APP_EXCEPTION_GENERIC,
        };
        if let Some(u) = st.undecided.get_mut(&h) {
            // A refused P2P request: the rendezvous answers with this reason once the
            // application has decided; until then the driver must not see the connection
            // end (it would tell the peer a reason of its own).
            u.refusal = Some((reason, debug.to_string()));
            return true;
        }
        if let Some(e) = st.endpoints.get_mut(&entry.ep) {
            if let Some(c) = e.endpoint.connection_mut(entry.id) {
                c.close(Instant::now(), reason, debug, linger);
            }
            e.nudge.notify_one();
        }
        st.pump(entry.ep);
        true
    }

    /// Stops listening; connections accepted through it are closed at once.
    pub fn close_listen_socket(&self, h: ListenSocketHandle) -> bool {
        let mut st = self.state();
        let Some(l) = st.listens.remove(&h) else {
            return false;
        };
        // Stop taking hellos first, so no connection appears after the list below is made.
        // (The P2P endpoint is shared: it stays.)
        if let (None, Some(e)) = (l.vport, st.endpoints.get_mut(&l.ep)) {
            e.endpoint.set_listen(false);
            e.closing = true;
        }
        let accepted: Vec<ConnectionHandle> = st
            .conns
            .iter()
            .filter(|(_, c)| c.listen == Some(h))
            .map(|(h, _)| *h)
            .collect();
        drop(st);
        for c in accepted {
            self.close_connection(c, 0, "listen socket closed", false);
        }
        if let Some(e) = self.state().endpoints.get(&l.ep) {
            e.nudge.notify_one();
        }
        true
    }

    /// The address a listen socket is bound to (with the real port when 0 was asked for).
    pub fn get_listen_socket_address(&self, h: ListenSocketHandle) -> Result<SocketAddr, Error> {
        let st = self.state();
        let l = st
            .listens
            .get(&h)
            .ok_or_else(|| bad_handle("listen socket", h.0))?;
        Ok(st.endpoints[&l.ep].local_addr)
    }

    // ----- relay network (Utils) ------------------------------------------------------------

    /// Sets the relay network: its POPs and how to ping them (the signaling crate's
    /// `PopPinger`). Status changes go to the `Callback_RelayNetworkStatusChanged` callback
    /// through [`run_callbacks`](Self::run_callbacks), as a [`RelayNetworkStatus`].
    pub fn set_relay_network(&self, pinger: Arc<dyn PopPinger>) {
        let weak = Arc::downgrade(&self.shared);
        let runtime = self.state().runtime.clone();
        let net = RelayNetwork::new(
            pinger,
            runtime,
            Box::new(move |status| {
                if let Some(shared) = weak.upgrade() {
                    lock(&shared.state).queue_callback(
                        Box::new(status),
                        ConfigValue::CallbackRelayNetworkStatusChanged,
                    );
                    shared.activity.notify_all();
                }
            }),
        );
        *lock(&self.shared.relay_net) = Some(net);
    }

    fn relay_net(&self) -> Option<Arc<RelayNetwork>> {
        lock(&self.shared.relay_net).clone()
    }

    /// Starts measuring pings to every POP, or retries after a failure
    /// (`InitRelayNetworkAccess`). Without a relay network set it does nothing.
    pub fn init_relay_network_access(&self) {
        if let Some(net) = self.relay_net() {
            net.measure();
        }
    }

    /// The relay network's status (`GetRelayNetworkStatus`): `CannotTry` without one.
    pub fn get_relay_network_status(&self) -> RelayNetworkStatus {
        match self.relay_net() {
            Some(net) => net.status(),
            None => RelayNetworkStatus {
                available: Availability::CannotTry,
                ping_measurement_in_progress: false,
                available_network_config: Availability::CannotTry,
                available_any_relay: Availability::CannotTry,
                debug_message: "no relay network set".into(),
            },
        }
    }

    /// How many POPs the relay network has (`GetPOPCount`).
    pub fn get_pop_count(&self) -> usize {
        self.get_pop_list().len()
    }

    /// The relay network's POPs (`GetPOPList`).
    pub fn get_pop_list(&self) -> Vec<PopId> {
        self.relay_net().map(|n| n.pops()).unwrap_or_default()
    }

    /// The measured round trip to `pop` in milliseconds, or [`relay::PING_FAILED`] /
    /// [`relay::PING_UNKNOWN`] (`GetDirectPingToPOP`).
    pub fn get_direct_ping_to_pop(&self, pop: PopId) -> i32 {
        self.relay_net()
            .map_or(relay::PING_UNKNOWN, |n| n.ping_to(pop))
    }

    /// The best relayed route to the data center at `pop`: its ping and the POP it goes
    /// through (`GetPingToDataCenter`). A POP is reached directly, so through itself.
    pub fn get_ping_to_data_center(&self, pop: PopId) -> (i32, PopId) {
        (self.get_direct_ping_to_pop(pop), pop)
    }

    /// This host's ping location and the age of its data (`GetLocalPingLocation`); `None`
    /// until some POP answered. Asking also refreshes data older than five minutes.
    pub fn get_local_ping_location(&self) -> Option<(PingLocation, Duration)> {
        let net = self.relay_net()?;
        net.refresh_if_stale();
        net.local_location()
    }

    /// The estimated round trip from this host to `location` (`EstimatePingTimeFromLocalHost`);
    /// [`relay::PING_UNKNOWN`] before this host's pings are measured.
    pub fn estimate_ping_time_from_local_host(&self, location: &PingLocation) -> i32 {
        match self.get_local_ping_location() {
            Some((local, _)) => relay::estimate_ping_time_between_two_locations(&local, location),
            None => relay::PING_UNKNOWN,
        }
    }

    /// True when ping data no older than `max_age` is there; otherwise starts measuring and
    /// answers false (`CheckPingDataUpToDate`).
    pub fn check_ping_data_up_to_date(&self, max_age: Duration) -> bool {
        self.relay_net()
            .is_some_and(|n| n.check_up_to_date(max_age))
    }

    // ----- messages ----------------------------------------------------------------------

    /// Sends a message; returns its message number.
    pub fn send_message_to_connection(
        &self,
        h: ConnectionHandle,
        data: impl Into<Bytes>,
        flags: SendFlags,
    ) -> Result<u64, Error> {
        let mut st = self.state();
        st.send(h, data.into(), flags, 0)
    }

    /// Sends a batch; payloads are shared, not copied. One result per message.
    pub fn send_messages(&self, messages: Vec<OutMessage>) -> Vec<Result<u64, Error>> {
        let mut st = self.state();
        messages
            .into_iter()
            .map(|m| st.send(m.connection, m.payload, m.flags, m.lane))
            .collect()
    }

    /// Sets up a connection's outgoing lanes (the reference API's
    /// `ConfigureConnectionLanes`): one priority and one weight per lane. A lane is served
    /// only when every lane of a lower priority number is empty; lanes of equal priority
    /// share the bandwidth in proportion to their weights (an idle lane saves no credit).
    /// Messages keep their order within a lane; across lanes they go (and arrive) in the
    /// order they are sent. Lanes may be added later, not removed. Messages choose their
    /// lane with [`OutMessage::lane`]; `send_message_to_connection` uses lane 0.
    pub fn configure_connection_lanes(
        &self,
        h: ConnectionHandle,
        priorities: &[i32],
        weights: &[u16],
    ) -> Result<(), Error> {
        let mut st = self.state();
        let (ep, id) = st.locate(h)?;
        let e = st.endpoints.get_mut(&ep).ok_or(Error::NoConnection)?;
        e.endpoint
            .connection_mut(id)
            .ok_or(Error::NoConnection)?
            .configure_lanes(priorities, weights)
    }

    /// Sends everything queued on a connection without waiting for Nagle.
    pub fn flush_messages_on_connection(&self, h: ConnectionHandle) -> Result<(), Error> {
        let mut st = self.state();
        let (ep, id) = st.locate(h)?;
        let e = st.endpoints.get_mut(&ep).ok_or(Error::NoConnection)?;
        let r = e
            .endpoint
            .connection_mut(id)
            .ok_or(Error::NoConnection)?
            .flush();
        e.nudge.notify_one();
        r
    }

    /// Takes up to `max` messages received on a connection.
    pub fn receive_messages_on_connection(
        &self,
        h: ConnectionHandle,
        max: usize,
    ) -> Result<Vec<Message>, Error> {
        let mut st = self.state();
        st.locate(h)?;
        let mut out = Vec::new();
        while out.len() < max {
            match st.take_message(h) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        Ok(out)
    }

    // ----- poll groups -------------------------------------------------------------------

    /// A new, empty poll group.
    pub fn create_poll_group(&self) -> PollGroupHandle {
        let mut st = self.state();
        let g = PollGroupHandle(st.fresh_handle());
        st.groups.insert(g, Vec::new());
        g
    }

    /// Destroys a poll group; its connections stay open, in no group.
    pub fn destroy_poll_group(&self, g: PollGroupHandle) -> bool {
        let mut st = self.state();
        let Some(members) = st.groups.remove(&g) else {
            return false;
        };
        for h in members {
            if let Some(c) = st.conns.get_mut(&h) {
                c.poll_group = None;
            }
        }
        true
    }

    /// Puts a connection in a poll group (or in none, with [`PollGroupHandle::INVALID`]).
    pub fn set_connection_poll_group(
        &self,
        h: ConnectionHandle,
        g: PollGroupHandle,
    ) -> Result<(), Error> {
        let mut st = self.state();
        if g != PollGroupHandle::INVALID && !st.groups.contains_key(&g) {
            return Err(bad_handle("poll group", g.0));
        }
        let old = st
            .conns
            .get(&h)
            .ok_or_else(|| bad_handle("connection", h.0))?
            .poll_group;
        if let Some(old) = old {
            if let Some(m) = st.groups.get_mut(&old) {
                m.retain(|x| *x != h);
            }
        }
        let new = (g != PollGroupHandle::INVALID).then_some(g);
        if let Some(g) = new {
            st.groups.get_mut(&g).expect("checked").push(h);
        }
        st.conns.get_mut(&h).expect("checked").poll_group = new;
        Ok(())
    }

    /// Takes up to `max` messages from the connections of a poll group, in arrival order.
    pub fn receive_messages_on_poll_group(
        &self,
        g: PollGroupHandle,
        max: usize,
    ) -> Result<Vec<Message>, Error> {
        let mut st = self.state();
        let members = st
            .groups
            .get(&g)
            .ok_or_else(|| bad_handle("poll group", g.0))?
            .clone();
        let mut out = Vec::new();
        while out.len() < max {
            // The member whose next message arrived first.
            let next = members
                .iter()
                .filter_map(|h| st.peek_time(*h).map(|t| (t, *h)))
                .min();
            match next.and_then(|(_, h)| st.take_message(h)) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        Ok(out)
    }

    // ----- info --------------------------------------------------------------------------

    /// Identity, address, state, end reason and flags of a connection.
    pub fn get_connection_info(&self, h: ConnectionHandle) -> Result<ConnectionInfo, Error> {
        self.state().info(h)
    }

    /// Real-time status: ping, quality, rates, queues.
    pub fn get_quick_connection_status(&self, h: ConnectionHandle) -> Result<QuickStatus, Error> {
        let mut st = self.state();
        let (ep, id) = st.locate(h)?;
        let now = Instant::now();
        let c = st.endpoints[&ep]
            .endpoint
            .connection(id)
            .ok_or(Error::NoConnection)?;
        let path = c.path_status(now);
        let stats = c.stats().clone();
        let state = c.state();
        let entry = st.conns.get_mut(&h).expect("located");
        let s = &mut entry.sample;
        let (since, elapsed) = match s.at {
            Some(at) => (
                *s,
                now.saturating_duration_since(at).as_secs_f32().max(0.001),
            ),
            None => (RateSample::default(), 1.0),
        };
        let rate = |now: u64, then: u64| (now.saturating_sub(then)) as f32 / elapsed;
        let status = QuickStatus {
            state,
            ping_ms: path.rtt.as_millis() as i32,
            connection_quality_local: path.received_fraction,
            connection_quality_remote: path.delivered_fraction,
            out_packets_per_sec: rate(stats.packets_sent, since.packets_out),
            out_bytes_per_sec: rate(stats.bytes_sent, since.bytes_out),
            in_packets_per_sec: rate(stats.packets_received, since.packets_in),
            in_bytes_per_sec: rate(stats.bytes_received, since.bytes_in),
            send_rate_bytes_per_sec: path.send_rate as i64,
            pending_unreliable: path.pending_unreliable as i64,
            pending_reliable: path.pending_reliable as i64,
            sent_unacked_reliable: path.sent_unacked_reliable as i64,
            queue_time_usec: path.queue_time.as_micros() as i64,
        };
        if s.at
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
        {
            *s = RateSample {
                at: Some(now),
                packets_out: stats.packets_sent,
                bytes_out: stats.bytes_sent,
                packets_in: stats.packets_received,
                bytes_in: stats.bytes_received,
            };
        }
        Ok(status)
    }

    /// A multi-line text report of a connection, for humans.
    pub fn get_detailed_connection_status(&self, h: ConnectionHandle) -> Result<String, Error> {
        let info = self.get_connection_info(h)?;
        let q = self.get_quick_connection_status(h)?;
        let st = self.state();
        let (ep, id) = st.locate(h)?;
        let c = st.endpoints[&ep]
            .endpoint
            .connection(id)
            .ok_or(Error::NoConnection)?;
        let s = c.stats();
        let p = c.path_status(Instant::now());
        let mut route = String::new();
        if st.p2p_endpoint == Some(ep) && st.paths.contains_key(&id) {
            let r = st.route_info(id);
            route = format!("\nroute: {:?}", r.kind);
            if let Some(a) = r.remote {
                route.push_str(&format!(" to {a}"));
            }
            if r.switches > 0 {
                route.push_str(&format!(" (switched routes {} times)", r.switches));
            }
            for line in &r.pairs {
                route.push_str("\n  ");
                route.push_str(line);
            }
        }
        Ok(format!(
            "{desc}\n\
             state: {state:?}  end: {end:?} {debug:?}\n\
             peer: {peer}  flags: {flags:?}\n\
             ping: {ping} ms  quality local {ql:.3} remote {qr:.3}\n\
             rates: out {op:.0} pkt/s {ob:.0} B/s, in {ip:.0} pkt/s {ib:.0} B/s, send rate {sr} B/s\n\
             window: {cw} B, in flight {inf} B\n\
             queues: reliable {pr} B, unreliable {pu} B, unacked {ua} B, oldest {qt} us\n\
             totals: sent {ps} pkts / {bs} B, received {pr2} pkts / {br} B, lost {lost}, \
             retransmitted {rt} segments, {sp} spurious losses\n\
             dropped: {df} failed decryption, {rd} replays, {mf} malformed, {rb} receive-buffer\n\
             messages: {ms} sent, {mr} received{route}",
            desc = info.description,
            state = info.state,
            end = info.end_reason,
            debug = info.end_debug,
            peer = info.identity_remote,
            flags = info.flags,
            ping = q.ping_ms,
            ql = q.connection_quality_local,
            qr = q.connection_quality_remote,
            op = q.out_packets_per_sec,
            ob = q.out_bytes_per_sec,
            ip = q.in_packets_per_sec,
            ib = q.in_bytes_per_sec,
            sr = q.send_rate_bytes_per_sec,
            cw = p.congestion_window,
            inf = p.bytes_in_flight,
            pr = q.pending_reliable,
            pu = q.pending_unreliable,
            ua = q.sent_unacked_reliable,
            qt = q.queue_time_usec,
            ps = s.packets_sent,
            bs = s.bytes_sent,
            pr2 = s.packets_received,
            br = s.bytes_received,
            lost = s.packets_lost,
            rt = s.segments_retransmitted,
            sp = s.spurious_losses,
            df = s.decrypt_failures,
            rd = s.replays_dropped,
            mf = s.malformed,
            rb = s.recv_buffer_drops,
            ms = s.messages_sent,
            mr = s.messages_received,
        ))
    }

    /// Sets a connection's user data (returned in messages and info).
    pub fn set_connection_user_data(&self, h: ConnectionHandle, data: i64) -> bool {
        match self.state().conns.get_mut(&h) {
            Some(c) => {
                c.user_data = data;
                true
            }
            None => false,
        }
    }

    /// A connection's user data, or -1 for an invalid handle.
    pub fn get_connection_user_data(&self, h: ConnectionHandle) -> i64 {
        self.state().conns.get(&h).map_or(-1, |c| c.user_data)
    }

    /// Names a connection (for descriptions and logs).
    pub fn set_connection_name(&self, h: ConnectionHandle, name: &str) -> bool {
        match self.state().conns.get_mut(&h) {
            Some(c) => {
                c.name = name.chars().take(64).collect();
                true
            }
            None => false,
        }
    }

    /// A connection's name.
    pub fn get_connection_name(&self, h: ConnectionHandle) -> Option<String> {
        self.state().conns.get(&h).map(|c| c.name.clone())
    }

    /// This instance's identity.
    pub fn get_identity(&self) -> Identity {
        self.state().credentials.identity()
    }

    /// Makes sure this instance can authenticate: it always holds a key, so this reports
    /// `Current` at once.
    pub fn init_authentication(&self) -> Availability {
        self.get_authentication_status().0
    }

    /// Whether this instance can prove its identity, and a sentence saying how.
    pub fn get_authentication_status(&self) -> (Availability, String) {
        let st = self.state();
        let c = &st.credentials;
        let how = match (&c.cert, &c.key) {
            (Some(_), _) => format!("certificate for {}", c.identity()),
            (None, Some(_)) => format!("self-certifying key identity {}", c.identity()),
            (None, None) => "no key: connections are unauthenticated".to_string(),
        };
        let a = if c.key.is_some() {
            Availability::Current
        } else {
            Availability::CannotTry
        };
        (a, how)
    }

    // ----- socket pairs ------------------------------------------------------------------

    /// Two connections joined to each other, for tests and in-process use. With
    /// `use_network_loopback` they talk over real loopback UDP (encrypted, subject to the
    /// fake network conditions); otherwise over in-process buffers. Each side takes the given
    /// identity (or "localhost"). Returns once both are connected: the handshake is local, so
    /// this takes well under a millisecond (unless fake network conditions are in force; it
    /// then waits up to `TimeoutInitial`).
    pub fn create_socket_pair(
        &self,
        use_network_loopback: bool,
        identity1: Option<Identity>,
        identity2: Option<Identity>,
    ) -> Result<(ConnectionHandle, ConnectionHandle), Error> {
        let (io1, io2) = if use_network_loopback {
            let lo: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
            (self.bind(lo)?, self.bind(lo)?)
        } else {
            let n = OsRng.next_u32() as u16 | 1;
            Io::pipe_pair(
                (Ipv4Addr::new(127, 0, 0, 1), n).into(),
                (Ipv4Addr::new(127, 0, 0, 2), n).into(),
            )
        };
        let addr1 = io1.local_addr().map_err(io_err)?;
        let addr2 = io2.local_addr().map_err(io_err)?;
        let mut st = self.state();
        let mut cfg = st.connection_config(&[]);
        cfg.allow_without_auth = 2;
        let creds = |id: Option<Identity>, key: &Credentials| Credentials {
            identity: Some(id.unwrap_or_else(Identity::localhost)),
            key: key.key.clone(),
            ..Credentials::default()
        };
        let c1 = creds(identity1, &st.credentials);
        let c2 = creds(identity2, &st.credentials);
        // Side 2 listens and accepts on its own; side 1 connects to it.
        let ep2 = st.add_endpoint(
            EndpointConfig {
                credentials: c2,
                listen: true,
                incoming: cfg.clone(),
                ..EndpointConfig::default()
            },
            addr2,
            None,
        );
        let ep1 = st.add_endpoint(
            EndpointConfig {
                credentials: c1,
                ..EndpointConfig::default()
            },
            addr1,
            None,
        );
        for ep in [ep1, ep2] {
            let e = st.endpoints.get_mut(&ep).expect("just added");
            e.loopback_buffers = !use_network_loopback;
        }
        // Side 1 lives as long as its connection; side 2 from when it has accepted one.
        st.endpoints.get_mut(&ep1).expect("just added").closing = true;
        st.endpoints.get_mut(&ep2).expect("just added").auto_accept = true;
        let timeout_initial = cfg.timeout_initial;
        let id1 = st
            .endpoints
            .get_mut(&ep1)
            .expect("just added")
            .endpoint
            .connect(Instant::now(), addr2, cfg);
        let h1 = st.add_connection(ep1, id1, None, ConfigStore::default());
        st.pump(ep1);
        drop(st);
        self.spawn_driver(ep1, io1);
        self.spawn_driver(ep2, io2);
        // Wait for the local handshake: quick, unless fake loss and lag are in force; then up
        // to the usual time allowed for connecting.
        let deadline = Instant::now() + timeout_initial;
        loop {
            {
                let st = self.state();
                let h2 = st.conns.iter().find(|(_, c)| c.ep == ep2).map(|(h, _)| *h);
                let connected = |h: ConnectionHandle| {
                    st.info(h)
                        .is_ok_and(|i| i.state == ConnectionState::Connected)
                };
                if let Some(h2) = h2 {
                    if connected(h1) && connected(h2) {
                        return Ok((h1, h2));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(Error::InvalidState);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Blocks the calling thread until datagrams arrive for this instance (so messages or
    /// status changes may be waiting) or `timeout` passes. For threads that would otherwise
    /// poll in a loop; tokio code can use [`status_events`](Self::status_events) instead.
    pub fn wait_for_activity(&self, timeout: Duration) {
        let st = self.state();
        let _ = self.shared.activity.wait_timeout(st, timeout);
    }

    /// Like [`wait_for_activity`](Self::wait_for_activity), but first reads the sockets on
    /// this thread for up to `spin` (busy, burning this core): a reply on a fast path often
    /// arrives within microseconds, and handling it here saves a thread wake-up (about half
    /// of a loopback round trip). For latency-critical loops with little traffic, such as a
    /// game client's network thread; a busy server should use `wait_for_activity`.
    pub fn wait_for_activity_spinning(&self, timeout: Duration, spin: Duration) {
        let faking = !FAKE.read().unwrap_or_else(|e| e.into_inner()).is_clean();
        // Fake receive loss and lag live in the service thread's path: no shortcut then.
        let inbox = if faking {
            None
        } else {
            self.shared.spin_inbox.try_lock().ok()
        };
        if let Some(mut inbox) = inbox {
            let ios: Vec<(EpId, Arc<Io>)> = self
                .state()
                .endpoints
                .iter()
                .filter_map(|(ep, e)| e.io.clone().map(|io| (*ep, io)))
                .collect();
            let spin_until = Instant::now() + spin.min(timeout);
            loop {
                for (ep, io) in &ios {
                    if io.try_recv_batch(&mut inbox) {
                        EpDriver {
                            shared: self.shared.clone(),
                            ep: *ep,
                            paths: PathTable::default(),
                        }
                        .on_datagrams(Instant::now(), &inbox);
                        // The service thread sends what these call for and re-arms timers.
                        if let Some(e) = self.state().endpoints.get(ep) {
                            e.nudge.notify_one();
                        }
                        return;
                    }
                }
                if Instant::now() >= spin_until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        self.wait_for_activity(timeout);
    }

    // ----- events ------------------------------------------------------------------------

    /// Delivers queued status changes to the callbacks set through
    /// `Callback_ConnectionStatusChanged`, on the calling thread.
    pub fn run_callbacks(&self) {
        loop {
            let next = self.state().callbacks.pop_front();
            let Some((event, cb)) = next else {
                return;
            };
            (cb.0)(&*event);
        }
    }

    /// Every status change from now on, as an async stream.
    pub fn status_events(&self) -> StatusEvents {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().subscribers.push(tx);
        StatusEvents::new(rx)
    }

    // ----- config values ------------------------------------------------------------------

    /// Sets (or with `None` clears) a config value at a scope. Connection values set on a
    /// live connection, or above it, take effect at once.
    pub fn set_config_value(
        &self,
        value: ConfigValue,
        target: ConfigTarget,
        data: Option<ConfigData>,
    ) -> Result<(), ConfigError> {
        config::check_scope(value, target.scope())?;
        let mut st = self.state();
        match target {
            ConfigTarget::Global => {
                let mut global = lock(&GLOBAL);
                global.set(value, data)?;
                update_fake_conditions(&global);
                super::utils::apply_debug_config(&global);
            }
            ConfigTarget::Interface => st.interface.set(value, data)?,
            ConfigTarget::ListenSocket(h) => {
                st.listens
                    .get_mut(&h)
                    .ok_or(ConfigError::BadScopeObject)?
                    .config
                    .set(value, data)?;
            }
            ConfigTarget::Connection(h) => {
                let c = st.conns.get_mut(&h).ok_or(ConfigError::BadScopeObject)?;
                c.config.set(value, data)?;
                if value == ConfigValue::ConnectionUserData {
                    if let Some(d) = c.config.get(value).and_then(ConfigData::as_i64) {
                        c.user_data = d;
                    }
                }
            }
        }
        st.reapply_config();
        Ok(())
    }

    /// Reads a config value as it applies at a scope: `Ok` when set there, `OkInherited`
    /// when it comes from a wider scope or the default.
    pub fn get_config_value(
        &self,
        value: ConfigValue,
        target: ConfigTarget,
    ) -> Result<(ConfigData, GetResult), ConfigError> {
        let st = self.state();
        let global = lock(&GLOBAL);
        let chain: Vec<&ConfigStore> = match target {
            ConfigTarget::Global => vec![&global],
            ConfigTarget::Interface => vec![&st.interface, &global],
            ConfigTarget::ListenSocket(h) => {
                let l = st.listens.get(&h).ok_or(ConfigError::BadScopeObject)?;
                vec![&l.config, &st.interface, &global]
            }
            ConfigTarget::Connection(h) => {
                let c = st.conns.get(&h).ok_or(ConfigError::BadScopeObject)?;
                let mut v = vec![&c.config];
                if let Some(l) = c.listen.and_then(|l| st.listens.get(&l)) {
                    v.push(&l.config);
                }
                v.push(&st.interface);
                v.push(&global);
                v
            }
        };
        if let ConfigTarget::Connection(h) = target {
            if value == ConfigValue::ConnectionUserData {
                let c = &st.conns[&h];
                return Ok((ConfigData::Int64(c.user_data), GetResult::Ok));
            }
        }
        Ok(resolve(value, &chain))
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::InvalidParam(format!("socket error: {e}"))
}

fn bad_handle(what: &str, h: u32) -> Error {
    Error::InvalidParam(format!("no {what} with handle {h}"))
}

fn options_store(
    options: &[(ConfigValue, ConfigData)],
    scope: ConfigScope,
) -> Result<ConfigStore, Error> {
    let mut store = ConfigStore::default();
    for (v, d) in options {
        config::check_scope(*v, scope)
            .and_then(|()| store.set(*v, Some(d.clone())))
            .map_err(|e| Error::InvalidParam(e.to_string()))?;
    }
    Ok(store)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl EpState {
    /// Sends what is ready on the calling thread instead of waking the service thread (the
    /// latency of a hand-off saved). Returns false when the service thread must do it: fake
    /// network conditions in force, no socket yet, or the socket buffer full.
    fn send_now(&mut self, now: Instant) -> bool {
        let Some(io) = self.io.clone() else {
            return false;
        };
        if !FAKE.read().unwrap_or_else(|e| e.into_inner()).is_clean() {
            return false;
        }
        let mut sent_all = true;
        loop {
            self.scratch.clear();
            let Some(t) = self.endpoint.poll_transmit(now, &mut self.scratch) else {
                break;
            };
            // A datagram the socket will not take now is lost like one dropped on the way;
            // the protocol recovers it.
            sent_all &= io.try_send_now(&self.scratch, t.destination).is_ok();
        }
        // Wake the service thread only if a timer now falls before its planned wake-up.
        let wake_needed = match (self.endpoint.poll_timeout(), self.next_wake) {
            (Some(t), Some(planned)) => t < planned,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if wake_needed || !sent_all {
            self.nudge.notify_one();
        }
        true
    }
}

impl State {
    fn fresh_handle(&mut self) -> u32 {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }

    fn add_endpoint(
        &mut self,
        config: EndpointConfig,
        local_addr: SocketAddr,
        listen: Option<ListenSocketHandle>,
    ) -> EpId {
        let id = self.fresh_handle();
        // 256 bits: the seed makes the ephemeral key-exchange secrets and the cookie key.
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let endpoint = Endpoint::with_seed(config, seed, Instant::now(), unix_now());
        self.endpoints.insert(
            id,
            EpState {
                endpoint,
                nudge: Arc::new(Notify::new()),
                local_addr,
                listen,
                loopback_buffers: false,
                auto_accept: false,
                closing: false,
                io: None,
                next_wake: None,
                scratch: Vec::new(),
            },
        );
        id
    }

    fn add_connection(
        &mut self,
        ep: EpId,
        id: ConnId,
        listen: Option<ListenSocketHandle>,
        config: ConfigStore,
    ) -> ConnectionHandle {
        let h = ConnectionHandle(self.fresh_handle());
        let user_data = self
            .conn_value(&config, listen, ConfigValue::ConnectionUserData)
            .as_i64()
            .unwrap_or(-1);
        self.conns.insert(
            h,
            ConnEntry {
                ep,
                id,
                user_data,
                name: String::new(),
                poll_group: None,
                listen,
                config,
                sample: RateSample::default(),
            },
        );
        self.by_proto.insert((ep, id), h);
        h
    }

    /// Drops a released handle from the lookup tables.
    fn forget(&mut self, h: ConnectionHandle, entry: &ConnEntry) {
        self.by_proto.remove(&(entry.ep, entry.id));
        if let Some(g) = entry.poll_group {
            if let Some(m) = self.groups.get_mut(&g) {
                m.retain(|x| *x != h);
            }
        }
    }

    /// The protocol settings for a connection whose own values are `own` (most specific
    /// first), above which the interface and global values apply.
    fn connection_config(&self, own: &[&ConfigStore]) -> ConnectionConfig {
        let global = lock(&GLOBAL);
        let mut chain: Vec<&ConfigStore> = own.to_vec();
        chain.push(&self.interface);
        chain.push(&global);
        let mut cfg = ConnectionConfig::default();
        apply_to_connection(&chain, &mut cfg);
        cfg
    }

    /// Re-resolves settings of every live connection and listen socket after a change.
    fn reapply_config(&mut self) {
        let listen_cfgs: Vec<(EpId, ConnectionConfig)> = self
            .listens
            .values()
            .map(|l| (l.ep, self.connection_config(&[&l.config])))
            .collect();
        for (ep, cfg) in listen_cfgs {
            if let Some(e) = self.endpoints.get_mut(&ep) {
                e.endpoint.set_incoming(cfg);
            }
        }
        let conn_cfgs: Vec<(EpId, ConnId, ConnectionConfig)> = self
            .conns
            .values()
            .map(|c| {
                let mut own = vec![&c.config];
                if let Some(l) = c.listen.and_then(|l| self.listens.get(&l)) {
                    own.push(&l.config);
                }
                (c.ep, c.id, self.connection_config(&own))
            })
            .collect();
        for (ep, id, cfg) in conn_cfgs {
            if let Some(c) = self
                .endpoints
                .get_mut(&ep)
                .and_then(|e| e.endpoint.connection_mut(id))
            {
                let mut cfg = cfg;
                cfg.expected_peer = c.config().expected_peer.clone();
                cfg.allow_without_auth = cfg.allow_without_auth.max(c.config().allow_without_auth);
                c.set_config(cfg);
            }
        }
        for e in self.endpoints.values() {
            e.nudge.notify_one();
        }
    }

    fn locate(&self, h: ConnectionHandle) -> Result<(EpId, ConnId), Error> {
        let c = self
            .conns
            .get(&h)
            .ok_or_else(|| bad_handle("connection", h.0))?;
        Ok((c.ep, c.id))
    }

    fn send(
        &mut self,
        h: ConnectionHandle,
        data: Bytes,
        flags: SendFlags,
        lane: u16,
    ) -> Result<u64, Error> {
        let (ep, id) = self.locate(h)?;
        let e = self.endpoints.get_mut(&ep).ok_or(Error::NoConnection)?;
        let c = e.endpoint.connection_mut(id).ok_or(Error::NoConnection)?;
        let now = Instant::now();
        let len = data.len();
        let n = c.send_message_on_lane(now, data, flags, lane)?;
        crate::debug::emit(DebugOutputType::Debug, Some(Subsystem::Message), || {
            format!(
                "#{}: message {n} queued on lane {lane}, {len} bytes, {flags:?}",
                h.0
            )
        });
        let urgent =
            flags.contains(SendFlags::NO_NAGLE) || flags.contains(SendFlags::USE_CURRENT_THREAD);
        if urgent && e.send_now(now) {
            return Ok(n);
        }
        e.nudge.notify_one();
        Ok(n)
    }

    fn peek_time(&self, h: ConnectionHandle) -> Option<Instant> {
        let (ep, id) = self.locate(h).ok()?;
        self.endpoints
            .get(&ep)?
            .endpoint
            .connection(id)?
            .peek_received()
            .map(|m| m.received_at)
    }

    fn take_message(&mut self, h: ConnectionHandle) -> Option<Message> {
        let entry = self.conns.get(&h)?;
        let (ep, id, user_data) = (entry.ep, entry.id, entry.user_data);
        let e = self.endpoints.get_mut(&ep)?;
        let c = e.endpoint.connection_mut(id)?;
        let m = c.receive()?;
        // Reading frees receive buffer: the peer may be waiting to send more.
        e.nudge.notify_one();
        Some(Message {
            payload: m.payload,
            connection: h,
            message_number: m.msg_num,
            flags: if m.reliable {
                SendFlags::RELIABLE
            } else {
                SendFlags::UNRELIABLE
            },
            channel: 0,
            user_data,
            peer_identity: c
                .peer_identity()
                .cloned()
                .unwrap_or_else(|| Identity::ip(c.remote_addr())),
            received_at: m.received_at,
        })
    }

    fn info(&self, h: ConnectionHandle) -> Result<ConnectionInfo, Error> {
        let entry = self
            .conns
            .get(&h)
            .ok_or_else(|| bad_handle("connection", h.0))?;
        let e = self.endpoints.get(&entry.ep).ok_or(Error::NoConnection)?;
        let c = e.endpoint.connection(entry.id).ok_or(Error::NoConnection)?;
        let mut flags = c.info_flags();
        if e.loopback_buffers {
            flags |= ConnectionInfoFlags::LOOPBACK_BUFFERS | ConnectionInfoFlags::FAST;
        }
        let mut remote = c.remote_addr();
        let mut route = RouteKind::None;
        let on_path = self.p2p_endpoint == Some(entry.ep) && self.paths.contains_key(&entry.id);
        if is_path_addr(&remote) || on_path {
            // A transport's path: its own route, not the stand-in address.
            let r = self.route_info(entry.id);
            route = r.kind;
            remote = r
                .remote
                .unwrap_or_else(|| SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)));
            match r.kind {
                RouteKind::Relayed => flags |= ConnectionInfoFlags::RELAYED,
                RouteKind::DirectLocal => flags |= ConnectionInfoFlags::FAST,
                _ => {}
            }
        }
        let name = if entry.name.is_empty() {
            String::new()
        } else {
            format!(" '{}'", entry.name)
        };
        Ok(ConnectionInfo {
            identity_remote: c
                .peer_identity()
                .or(c.p2p().map(|p| &p.peer))
                .cloned()
                .unwrap_or_else(|| Identity::ip(remote)),
            user_data: entry.user_data,
            listen_socket: entry.listen,
            address_remote: remote,
            state: c.state(),
            end_reason: c.end_reason(),
            end_debug: c.end_debug().to_string(),
            description: format!("#{}{name} {remote}", h.0),
            flags,
            route,
        })
    }

    /// Queues `event` for the callback set in `value` (interface or global scope), if any.
    fn queue_callback(&mut self, event: Box<dyn std::any::Any + Send>, value: ConfigValue) {
        let global = lock(&GLOBAL);
        let cb = resolve(value, &[&self.interface, &global])
            .0
            .as_callback()
            .cloned();
        drop(global);
        if let Some(cb) = cb {
            self.callbacks.push_back((event, cb));
        }
    }

    /// The route of a P2P connection's transport path.
    fn route_info(&self, id: ConnId) -> RouteInfo {
        self.paths
            .get(&id)
            .map(|p| p.path.route())
            .unwrap_or_default()
    }

    /// Moves things between the P2P endpoint and its connections' transport paths: what
    /// the paths said (signals, readiness, failure), paths to start, signals from the peers'
    /// paths; and closes the paths of connections that are gone.
    fn service_paths(&mut self, ep: EpId) {
        if self.p2p_endpoint != Some(ep) || !self.endpoints.contains_key(&ep) {
            return;
        }
        let now = Instant::now();
        let Some(e) = self.endpoints.get_mut(&ep) else {
            return;
        };
        // Paths start first, so what a path says as it starts (a failure at once, say) is
        // heard in this same call, before any signal the caller hands on next.
        let starts: Vec<ConnId> = std::iter::from_fn(|| e.endpoint.poll_path_start()).collect();
        for id in starts {
            if let Err(why) = self.start_path(ep, id) {
                tracing::debug!(conn = id.0, why, "no transport path started");
            }
        }
        let Some(e) = self.endpoints.get_mut(&ep) else {
            return;
        };
        for (id, p) in &self.paths {
            let notes: Vec<PathNote> = lock(&p.notes).drain(..).collect();
            for n in notes {
                match n {
                    PathNote::Signal(data) => {
                        if !e.endpoint.send_path_signal(now, *id, data) {
                            tracing::debug!(conn = id.0, "path signal not sent");
                        }
                    }
                    PathNote::Ready => e.endpoint.path_ready(*id, p.addr),
                    PathNote::Failed(reason, debug) => e.endpoint.path_failed(*id, reason, &debug),
                }
            }
        }
        while let Some((id, signal)) = e.endpoint.poll_path_signal() {
            if let Some(p) = self.paths.get(&id) {
                p.path.handle_signal(&signal);
            }
        }
        let gone: Vec<ConnId> = self
            .paths
            .keys()
            .filter(|id| e.endpoint.connection(**id).is_none())
            .copied()
            .collect();
        if !gone.is_empty() {
            let mut table = self.path_table.write().unwrap_or_else(|e| e.into_inner());
            for id in gone {
                if let Some(p) = self.paths.remove(&id) {
                    table.remove(&p.addr);
                    p.path.close();
                }
            }
        }
    }

    /// Starts the transport path of P2P connection `id` on endpoint `ep`.
    fn start_path(&mut self, ep: EpId, id: ConnId) -> Result<(), &'static str> {
        let transport = self.p2p_transport.clone().ok_or("no transport set")?;
        let tx = self.path_tx.clone().ok_or("no path input")?;
        let h = self.by_proto.get(&(ep, id)).ok_or("handle released")?;
        let entry = self.conns.get(h).ok_or("handle released")?;
        let e = self.endpoints.get(&ep).ok_or("endpoint gone")?;
        let c = e.endpoint.connection(id).ok_or("connection gone")?;
        let p2p = c.p2p().ok_or("not a P2P connection")?;
        let text = |v| {
            self.conn_value(&entry.config, entry.listen, v)
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let int = |v| {
            self.conn_value(&entry.config, entry.listen, v)
                .as_i32()
                .unwrap_or(0)
        };
        let config = PathConfig {
            ice_penalty: int(ConfigValue::P2pTransportIcePenalty),
            ice_implementation: int(ConfigValue::P2pTransportIceImplementation),
            sdr_penalty: int(ConfigValue::P2pTransportSdrPenalty),
            ..PathConfig::from_values(
                &text(ConfigValue::P2pStunServerList),
                &text(ConfigValue::P2pTurnServerList),
                &text(ConfigValue::P2pTurnUserList),
                &text(ConfigValue::P2pTurnPassList),
                int(ConfigValue::P2pTransportIceEnable),
            )
        };
        let addr = path_addr(self.paths_made.wrapping_add(1));
        let notes = Arc::new(Mutex::new(VecDeque::new()));
        let sink = PathSink::new(addr, tx, notes.clone(), e.nudge.clone());
        let params = PathParams {
            local: self.credentials.identity(),
            peer: p2p.peer.clone(),
            session: p2p.session,
            controlling: c.side() == crate::proto::Side::Client,
            config,
            runtime: self.runtime.clone(),
        };
        let path = transport.start_path(params, sink);
        self.paths_made = self.paths_made.wrapping_add(1);
        self.path_table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, path.clone());
        if let Some(old) = self.paths.insert(id, PathEntry { path, addr, notes }) {
            old.path.close();
        }
        Ok(())
    }

    /// A config value as it applies to a connection with its own values `config`, accepted
    /// by `listen`.
    fn conn_value(
        &self,
        config: &ConfigStore,
        listen: Option<ListenSocketHandle>,
        value: ConfigValue,
    ) -> ConfigData {
        let global = lock(&GLOBAL);
        let mut chain = vec![config];
        if let Some(l) = listen.and_then(|l| self.listens.get(&l)) {
            chain.push(&l.config);
        }
        chain.push(&self.interface);
        chain.push(&global);
        resolve(value, &chain).0
    }

    /// Turns an endpoint's protocol events into status changes for the application.
    fn pump(&mut self, ep: EpId) {
        self.service_paths(ep);
        // Events that handling one event causes (an automatic accept) queue behind it.
        while let Some((id, Event::StateChanged { old, new })) = self
            .endpoints
            .get_mut(&ep)
            .and_then(|e| e.endpoint.poll_event())
        {
            let handle = match self.by_proto.get(&(ep, id)) {
                Some(h) => *h,
                None if old == ConnectionState::None && new == ConnectionState::Connecting => {
                    let Some(e) = self.endpoints.get(&ep) else {
                        continue;
                    };
                    if e.endpoint.connection(id).is_none() {
                        continue; // removed already (an ignored P2P request)
                    }
                    if e.auto_accept {
                        self.add_connection(ep, id, None, ConfigStore::default());
                        if let Some(e) = self.endpoints.get_mut(&ep) {
                            let _ = e.endpoint.accept(Instant::now(), id);
                            e.endpoint.set_listen(false);
                            e.closing = true;
                            e.nudge.notify_one();
                        }
                        continue;
                    }
                    let listen = e.listen;
                    self.add_connection(ep, id, listen, ConfigStore::default())
                }
                None => continue, // closed by the application: no more reports
            };
            if let Some(waiting) = self.undecided.get_mut(&handle) {
                waiting.deferred.push(old);
                continue;
            }
            self.report(handle, old);
        }
    }

    /// Tells subscribers and the status callback that `handle` left state `old`.
    fn report(&mut self, handle: ConnectionHandle, old: ConnectionState) {
        let Ok(info) = self.info(handle) else {
            return;
        };
        let level = match info.state {
            ConnectionState::Connected
            | ConnectionState::ClosedByPeer
            | ConnectionState::ProblemDetectedLocally => DebugOutputType::Important,
            _ => DebugOutputType::Msg,
        };
        crate::debug::emit(level, None, || {
            format!(
                "{} ({}): {old:?} -> {:?} {:?} {}",
                info.description, info.identity_remote, info.state, info.end_reason, info.end_debug
            )
        });
        let event = ConnectionStatusChanged {
            connection: handle,
            info,
            old_state: old,
        };
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
        if let Some(cb) = self.status_callback(handle) {
            self.callbacks.push_back((Box::new(event), cb));
        }
    }

    /// The status-change callback in effect for a connection.
    fn status_callback(&self, h: ConnectionHandle) -> Option<CallbackFn> {
        let c = self.conns.get(&h)?;
        self.conn_value(
            &c.config,
            c.listen,
            ConfigValue::CallbackConnectionStatusChanged,
        )
        .as_callback()
        .cloned()
    }
}

/// Drives one endpoint from the service thread.
struct EpDriver {
    shared: Arc<Shared>,
    ep: EpId,
    paths: PathTable,
}

impl Driven for EpDriver {
    fn divert(&self, to: SocketAddr, data: &[u8]) -> bool {
        if !is_path_addr(&to) {
            return false;
        }
        if let Some(p) = self
            .paths
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&to)
        {
            p.send(data);
        }
        true
    }

    fn fake(&self) -> FakeConditions {
        *FAKE.read().unwrap_or_else(|e| e.into_inner())
    }

    fn on_datagrams(&self, now: Instant, inbox: &Inbox) {
        let mut st = lock(&self.shared.state);
        if let Some(e) = st.endpoints.get_mut(&self.ep) {
            for (from, data) in inbox.iter() {
                e.endpoint.handle_datagram(now, from, data);
            }
        }
        st.pump(self.ep);
        drop(st);
        self.shared.activity.notify_all();
    }

    fn poll(&self, now: Instant, out: &mut Outbox) -> Wake {
        let mut st = lock(&self.shared.state);
        // What paths said (a route found, say) may have packets to send now.
        st.service_paths(self.ep);
        let Some(e) = st.endpoints.get_mut(&self.ep) else {
            return Wake::Stop;
        };
        e.endpoint.handle_timeout(now);
        out.fill(|buf| {
            e.endpoint
                .poll_transmit(now, buf)
                .map(|t| (t.destination, t.len))
        });
        let mut signals = Vec::new();
        while let Some(s) = e.endpoint.poll_signal(now) {
            signals.push(s);
        }
        let signals: Vec<(Arc<dyn Signaling>, Identity, Vec<u8>)> = signals
            .into_iter()
            .filter_map(|(id, peer, bytes)| {
                let via = st.conn_signaling.get(&id).or(st.signaling.as_ref())?;
                Some((via.clone(), peer, bytes))
            })
            .collect();
        if !signals.is_empty() {
            // Sent without the lock held: the signaling may call back into `Sockets`.
            drop(st);
            for (via, peer, bytes) in &signals {
                via.send_signal(peer, bytes);
            }
            st = lock(&self.shared.state);
        }
        let Some(e) = st.endpoints.get_mut(&self.ep) else {
            return Wake::Stop;
        };
        let done = e.closing && e.endpoint.connection_ids().next().is_none();
        let wake = e.endpoint.poll_timeout();
        e.next_wake = wake;
        st.pump(self.ep);
        if done && out.is_empty() {
            st.endpoints.remove(&self.ep);
            return Wake::Stop;
        }
        wake.map_or(Wake::Idle, Wake::At)
    }
}

/// An integer config value as it applies to a new connection with options `store`.
fn resolve_int(st: &State, store: &ConfigStore, value: ConfigValue) -> i32 {
    let global = lock(&GLOBAL);
    resolve(value, &[store, &st.interface, &global])
        .0
        .as_i32()
        .unwrap_or(0)
}

/// Where peers can reach a P2P socket bound to `local`: the address itself; or, bound to
/// every interface, each interface's address of its family (loopback last, as it only
/// reaches peers on this host).
fn p2p_candidates(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == local.is_ipv4() && !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect();
    out.truncate(crate::proto::rendezvous::MAX_CANDIDATES - 1);
    let loopback: IpAddr = if local.is_ipv4() {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv6Addr::LOCALHOST.into()
    };
    out.push(SocketAddr::new(loopback, local.port()));
    out
}

/// Who holds each process-local fake IP.
static LOCAL_FAKE_OWNERS: LazyLock<Mutex<HashMap<Ipv4Addr, Identity>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Process-local fake IPs handed out so far (169.254.0.1 up).
static LOCAL_FAKE_IPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fake IP local to this process, with `num_ports` ports.
fn allocate_local_fake_ip(num_ports: usize) -> Result<(Ipv4Addr, Vec<u16>), String> {
    let n = LOCAL_FAKE_IPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if n > 254 {
        return Err("no local fake IPs left in this process (254 at most)".into());
    }
    let ip = Ipv4Addr::new(169, 254, 0, n as u8);
    let ports = (0..num_ports as u16).map(|i| 1024 + i).collect();
    Ok((ip, ports))
}
