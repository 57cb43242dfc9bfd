//! [`Sockets`]: connections by IP address over UDP (or in-process buffers), driven by a
//! service thread, usable from any thread and from tokio code.
//!
//! Locks, always taken in this order: the `State` (registry, config, P2P, callbacks), one
//! endpoint (`link::EpLink`), one connection (its cell in the endpoint), then leaf locks
//! (the world's global values and fake conditions, a link's wake plan, the path table). Sending, receiving
//! and lane calls lock only their connection (`link::HotConn`); a datagram or timer
//! locks only its endpoint (and the connections it touches), and the `State` only when the
//! endpoint has news for it. No lock is held while a datagram goes to the socket.

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
#[cfg(feature = "virtual-time")]
use crate::runtime::VirtualRuntime;
use crate::runtime::{
    drive, Clock, Driven, FakeConditions, Inbox, Io, Outbox, Runtime, Service, Wake,
};
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

mod activity;
mod config_values;
mod driver;
use driver::EpDriver;
mod fakeip;
mod link;
mod messaging;
mod p2p;
mod pairs;
mod registry;
mod relay_net;
mod status;
mod world;
#[cfg(feature = "virtual-time")]
pub use world::VirtualWorld;
use world::World;

/// The fake network conditions the global config values in `global` ask for.
fn fake_conditions(global: &ConfigStore) -> FakeConditions {
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
    fake
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type EpId = u32;

#[derive(Debug)]
struct EpState {
    /// What other threads need to send on the endpoint and wake its driver.
    link: Arc<link::EpLink>,
    local_addr: SocketAddr,
    listen: Option<ListenSocketHandle>,
    loopback_buffers: bool,
    auto_accept: bool,
}

impl EpState {
    /// Locks the protocol endpoint (with the state lock held: that order always).
    fn ep(&self) -> MutexGuard<'_, Endpoint> {
        self.link.endpoint()
    }

    /// Runs `f` on connection `id` with the endpoint locked; `None` if there is none.
    fn with_conn_mut<R>(
        &self,
        id: ConnId,
        f: impl FnOnce(&mut crate::proto::Connection) -> R,
    ) -> Option<R> {
        let mut e = self.ep();
        let mut c = e.connection_mut(id)?;
        Some(f(&mut c))
    }

    /// Stops the driver once no connection is left.
    fn close_when_empty(&self) {
        self.link
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
    }
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
    /// The data path's view of it (its cell, its endpoint's link, its user data).
    hot: Arc<link::HotConn>,
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
    /// Endpoints, connections, listen sockets, poll groups and their handles.
    reg: registry::Registry,
    interface: ConfigStore,
    /// Events for `run_callbacks`: a status change or a FakeIP result, and its callback.
    callbacks: VecDeque<(Box<dyn std::any::Any + Send>, CallbackFn)>,
    subscribers: Vec<mpsc::UnboundedSender<ConnectionStatusChanged>>,
    credentials: Credentials,
    /// The world this `Sockets` is in: its clock, global config values, randomness.
    world: Arc<World>,
    /// The service runtime, where transports run their tasks.
    runtime: tokio::runtime::Handle,
    /// FakeIP: the provider, our fake IP, the addresses known to stand for identities.
    fake: fakeip::FakeIpState,
    /// P2P: signaling, the transport, the P2P endpoint, its paths and undecided requests.
    p2p: p2p::P2pState,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("endpoints", &self.reg.endpoints.len())
            .field("connections", &self.reg.conns.len())
            .finish()
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The world this `Sockets` is in (as `State` has it, without taking its lock).
    world: Arc<World>,
    /// The connections by handle, for sends and reads that bypass `state`.
    hot: link::HotTable,
    /// Wakes threads waiting for activity (datagrams handled: messages or status changes
    /// may be waiting).
    activity: activity::Activity,
    /// Values the layers above share per `Sockets` (the Messages interface fake UDP ports
    /// share, while any lives), held weakly and by type, so this layer knows none of them.
    extensions: Mutex<Vec<std::sync::Weak<dyn std::any::Any + Send + Sync>>>,
    /// The relay network, once one is set.
    relay_net: Mutex<Option<Arc<RelayNetwork>>>,
    /// The application dropped its last `Sockets`: the drivers stop (their runtime may be a
    /// virtual world's, which outlives it).
    stopped: std::sync::atomic::AtomicBool,
}

/// Held by every clone of one `Sockets`: the last one dropped stops its drivers.
#[derive(Debug)]
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        for e in lock(&self.0.state).reg.endpoints.values() {
            e.link.nudge.notify_one();
        }
    }
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
///
/// A `Sockets` made by a [`VirtualWorld`] runs in virtual time instead, on the world's
/// in-memory network.
#[derive(Debug, Clone)]
pub struct Sockets {
    shared: Arc<Shared>,
    /// Its clock, tasks and sockets (owned here: the drivers hold `shared`, not this).
    rt: Runtime,
    _owner: Arc<Owner>,
}

impl Sockets {
    /// A `Sockets` with a fresh random identity key.
    pub fn new() -> std::io::Result<Self> {
        Self::with_config(SocketsConfig::default())
    }

    /// A `Sockets` with the given identity and trust.
    pub fn with_config(cfg: SocketsConfig) -> std::io::Result<Self> {
        let rt = Runtime::Service(Arc::new(Service::start()?));
        Self::in_world(cfg, rt, World::process())
    }

    /// A `Sockets` on runtime `rt`, in `world`.
    fn in_world(cfg: SocketsConfig, rt: Runtime, world: Arc<World>) -> std::io::Result<Self> {
        let key = cfg
            .key
            .unwrap_or_else(|| KeyPair::generate(&mut world.rng()));
        let credentials = Credentials {
            identity: cfg.identity,
            key: Some(key),
            cert: cfg.cert,
            trusted: cfg.trusted,
            app_id: cfg.app_id,
        };
        let paths = PathTable::default();
        let state = State {
            reg: registry::Registry::new(paths.clone(), world.clone()),
            interface: ConfigStore::default(),
            callbacks: VecDeque::new(),
            subscribers: Vec::new(),
            credentials,
            p2p: p2p::P2pState {
                bind: cfg.p2p_bind,
                path_table: paths,
                ..p2p::P2pState::default()
            },
            runtime: rt.handle().clone(),
            world: world.clone(),
            fake: fakeip::FakeIpState::default(),
        };
        let shared = Arc::new(Shared {
            hot: state.reg.hot.clone(),
            state: Mutex::new(state),
            activity: activity::Activity::new(world.wake.clone())?,
            world,
            extensions: Mutex::new(Vec::new()),
            relay_net: Mutex::new(None),
            stopped: Default::default(),
        });
        Ok(Self {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
            rt,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// The time now on this instance's clock: the system's, or its virtual world's. The
    /// times it reports (a message's `received_at`, say) are on this clock.
    pub fn now(&self) -> Instant {
        self.shared.world.clock.now()
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
        let cookie_threshold =
            resolve_int(&st, &store, ConfigValue::UnprovenHandshakesMax).max(0) as usize;
        let handle = ListenSocketHandle(st.reg.fresh_handle());
        let credentials = st.credentials.clone();
        let ep = st.reg.add_endpoint(
            EndpointConfig {
                credentials,
                listen: true,
                incoming,
                cookie_threshold,
                ..EndpointConfig::default()
            },
            io.local_addr().map_err(io_err)?,
            Some(handle),
        );
        st.reg.listens.insert(
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
        let existing = self.state().reg.client_endpoints.get(&v6).copied();
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
                let ep = st.reg.add_endpoint(
                    EndpointConfig {
                        credentials,
                        ..EndpointConfig::default()
                    },
                    io.local_addr().map_err(io_err)?,
                    None,
                );
                st.reg.client_endpoints.insert(v6, ep);
                drop(st);
                self.spawn_driver(ep, io);
                ep
            }
        };
        let mut st = self.state();
        let cfg = st.connection_config(&[&store]);
        let e = st.reg.endpoints.get_mut(&ep).ok_or(Error::InvalidState)?;
        let id = e.ep().connect(self.now(), addr, cfg);
        e.link.nudge.notify_one();
        let h = st
            .add_connection(ep, id, None, store)
            .ok_or(Error::NoConnection)?;
        st.pump(ep);
        Ok(h)
    }

    fn bind(&self, addr: SocketAddr) -> Result<Io, Error> {
        self.rt
            .bind_udp(addr)
            .map_err(|e| Error::InvalidParam(format!("cannot bind {addr}: {e}")))
    }

    fn spawn_driver(&self, ep: EpId, io: Io) {
        self.spawn_driver_with(ep, io, None);
    }

    fn spawn_driver_with(&self, ep: EpId, io: Io, side: Option<crate::runtime::SideInput>) {
        let io = Arc::new(io);
        let st = self.state();
        let Some(link) = st.reg.endpoints.get(&ep).map(|e| e.link.clone()) else {
            return;
        };
        drop(st);
        let _ = link.io.set(io.clone());
        self.shared.activity.watch(ep, &io, &link);
        let nudge = link.nudge.clone();
        let owner = EpDriver {
            shared: self.shared.clone(),
            ep,
            link,
        };
        let seed = self.shared.world.seed();
        self.rt.handle().spawn(drive(owner, io, nudge, side, seed));
    }

    /// Accepts a connection waiting in Connecting.
    pub fn accept_connection(&self, h: ConnectionHandle) -> Result<(), Error> {
        let mut st = self.state();
        let (ep, id) = st.reg.locate(h)?;
        let e = st.reg.endpoints.get_mut(&ep).ok_or(Error::NoConnection)?;
        if let Some(c) = e.ep().connection(id) {
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
        let r = e.ep().accept(self.now(), id);
        e.link.nudge.notify_one();
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
        let Some(entry) = st.reg.remove_connection(h) else {
            return false;
        };
        st.fake.remotes.remove(&h);
        // Keep the connection's signaling until its close has been signaled.
        let reason = match reason {
            0 => EndReason::APP_GENERIC,
            r if EndReason(r).is_application() => EndReason(r),
            _ => EndReason::APP_EXCEPTION_GENERIC,
        };
        if let Some(u) = st.p2p.undecided.get_mut(&h) {
            // A refused P2P request: the rendezvous answers with this reason once the
            // application has decided; until then the driver must not see the connection
            // end (it would tell the peer a reason of its own).
            u.refusal = Some((reason, debug.to_string()));
            return true;
        }
        if let Some(e) = st.reg.endpoints.get_mut(&entry.ep) {
            if let Some(mut c) = e.ep().connection_mut(entry.id) {
                c.close(self.now(), reason, debug, linger);
            }
            e.link.nudge.notify_one();
        }
        st.pump(entry.ep);
        true
    }

    /// Stops listening; connections accepted through it are closed at once.
    pub fn close_listen_socket(&self, h: ListenSocketHandle) -> bool {
        let mut st = self.state();
        let Some(l) = st.reg.listens.remove(&h) else {
            return false;
        };
        // Stop taking hellos first, so no connection appears after the list below is made.
        // (The P2P endpoint is shared: it stays.)
        if let (None, Some(e)) = (l.vport, st.reg.endpoints.get_mut(&l.ep)) {
            e.ep().set_listen(false);
            e.close_when_empty();
            // Hellos a waiting thread let in before, not yet heard of here, are filed now,
            // so the list below has them.
            st.pump(l.ep);
        }
        let accepted: Vec<ConnectionHandle> = st
            .reg
            .conns
            .iter()
            .filter(|(_, c)| c.listen == Some(h))
            .map(|(h, _)| *h)
            .collect();
        drop(st);
        for c in accepted {
            self.close_connection(c, 0, "listen socket closed", false);
        }
        if let Some(e) = self.state().reg.endpoints.get(&l.ep) {
            e.link.nudge.notify_one();
        }
        true
    }

    /// The address a listen socket is bound to (with the real port when 0 was asked for).
    pub fn get_listen_socket_address(&self, h: ListenSocketHandle) -> Result<SocketAddr, Error> {
        let st = self.state();
        let l = st
            .reg
            .listens
            .get(&h)
            .ok_or_else(|| bad_handle("listen socket", h.0))?;
        Ok(st.reg.endpoints[&l.ep].local_addr)
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

/// An integer config value as it applies to a new connection with options `store`.
fn resolve_int(st: &State, store: &ConfigStore, value: ConfigValue) -> i32 {
    let global = lock(&st.world.config);
    resolve(value, &[store, &st.interface, &global])
        .0
        .as_i32()
        .unwrap_or(0)
}

/// Where peers can reach a P2P socket bound to `local`: the address itself; or, bound to
/// every interface, each interface's address of its family (loopback last, as it only
/// reaches peers on this host). In a virtual world (`virtual_net`), whose network is one
/// host, the loopback address alone.
fn p2p_candidates(local: SocketAddr, virtual_net: bool) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    if virtual_net {
        let ip: IpAddr = if local.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        };
        return vec![SocketAddr::new(ip, local.port())];
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
