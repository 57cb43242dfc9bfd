//! Transports: how a P2P connection's datagrams find their way to the peer when a plain UDP
//! socket cannot (NAT traversal with ICE, relays). The core knows nothing of any particular
//! one; a [`Transport`] is plugged in with
//! [`Sockets::set_p2p_transport`](crate::api::Sockets::set_p2p_transport) and makes one
//! [`Path`] per connection.
//!
//! A path works beside the connection: its signals (credentials, candidates, restarts) travel
//! to the peer's path in the connection's rendezvous session, reliably and in order; once it
//! has a route it says [`PathSink::ready`], and the connection's packets go through
//! [`Path::send`] and come back through [`PathSink::deliver`]. Inside the endpoint the path
//! stands for an address in the discard-only prefix `100::/64` (RFC 6666), which no real
//! packet uses, so the protocol engine is the same for every route.

use crate::proto::EndReason;
use punchline_identity::Identity;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

pub mod select;
pub use select::Routes;

pub use crate::proto::rendezvous::DIRECT;

/// Kernel buffer asked for each way on every UDP socket the library (and its transports)
/// open: room for a congestion window's burst, where the OS default (about 200 KiB on
/// Linux) overflows and drops what a peer sent within its rate. The kernel caps it at
/// `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer on `socket` (best effort:
/// the kernel may give less).
pub fn size_socket_buffers(socket: socket2::SockRef<'_>) {
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
}

/// Makes paths for P2P connections.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Its id in rendezvous messages (not [`DIRECT`]); both peers must have it.
    fn wire_id(&self) -> u8;

    /// Starts a path for a new connection. It must not block: work goes to tasks on
    /// `params.runtime`.
    fn start_path(&self, params: PathParams, sink: PathSink) -> Arc<dyn Path>;

    /// Its penalty in route selection ([`Routes`]), in milliseconds added to a route's
    /// ping: the config value that applies to it (`P2P_Transport_ICE_Penalty`,
    /// `P2P_Transport_SDR_Penalty`). None by default.
    fn penalty(&self, config: &PathConfig) -> i32 {
        let _ = config;
        0
    }

    /// A short name for logs and the detailed status ("ice", "relay").
    fn name(&self) -> &'static str {
        "transport"
    }
}

/// One connection's path.
pub trait Path: Send + Sync + std::fmt::Debug {
    /// A signal from the peer's side of the path.
    fn handle_signal(&self, signal: &[u8]);
    /// Sends one datagram on the current route, or drops it when there is none (or no room).
    fn send(&self, datagram: &[u8]);
    /// The route in use and the ones considered.
    fn route(&self) -> RouteInfo;
    /// Releases everything the path holds (sockets, tasks). Idempotent.
    fn close(&self);
}

/// What a path is started with.
#[derive(Debug, Clone)]
pub struct PathParams {
    /// This side's identity.
    pub local: Identity,
    /// The peer.
    pub peer: Identity,
    /// The rendezvous session id (the same on both sides).
    pub session: u64,
    /// True on the side that asked to connect: it decides (ICE's controlling agent).
    pub controlling: bool,
    /// The connection's transport settings.
    pub config: PathConfig,
    /// Where to run tasks.
    pub runtime: tokio::runtime::Handle,
}

/// The P2P config values in force for a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathConfig {
    /// `P2P_STUN_ServerList`, split at commas.
    pub stun_servers: Vec<String>,
    /// `P2P_TURN_ServerList` / `UserList` / `PassList`, matched up by position.
    pub turn_servers: Vec<TurnServer>,
    /// `P2P_Transport_ICE_Enable`: a mask of [`ICE_RELAY`], [`ICE_PRIVATE`] and
    /// [`ICE_PUBLIC`] (-1, the default, is resolved before this: all of them).
    pub ice_enable: i32,
    /// `P2P_Transport_ICE_Penalty`, in milliseconds.
    pub ice_penalty: i32,
    /// `P2P_Transport_ICE_Implementation`.
    pub ice_implementation: i32,
    /// `P2P_Transport_SDR_Penalty` (for the relay), in milliseconds.
    pub sdr_penalty: i32,
}

/// `P2P_Transport_ICE_Enable` bit: relayed candidates (TURN).
pub const ICE_RELAY: i32 = 1;
/// `P2P_Transport_ICE_Enable` bit: private host addresses (RFC 1918, link-local, loopback).
pub const ICE_PRIVATE: i32 = 2;
/// `P2P_Transport_ICE_Enable` bit: public addresses (server-reflexive, public host).
pub const ICE_PUBLIC: i32 = 4;

/// One TURN server and its credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// `turn:host:port` (as in the config value).
    pub url: String,
    /// User name.
    pub user: String,
    /// Password.
    pub pass: String,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("url", &self.url)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl PathConfig {
    /// Builds the server lists and candidate filter from the config values' strings and
    /// `ice_enable`; the penalties and the implementation are left at 0 for the caller.
    pub fn from_values(stun: &str, turn: &str, users: &str, passes: &str, ice_enable: i32) -> Self {
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        let users: Vec<&str> = users.split(',').map(str::trim).collect();
        let passes: Vec<&str> = passes.split(',').map(str::trim).collect();
        let turn_servers = turn
            .split(',')
            .map(str::trim)
            .enumerate()
            .filter(|(_, u)| !u.is_empty())
            .map(|(i, url)| TurnServer {
                url: url.to_string(),
                user: users.get(i).copied().unwrap_or_default().to_string(),
                pass: passes.get(i).copied().unwrap_or_default().to_string(),
            })
            .collect();
        Self {
            stun_servers: list(stun),
            turn_servers,
            ice_enable: if ice_enable < 0 {
                ICE_RELAY | ICE_PRIVATE | ICE_PUBLIC
            } else {
                ice_enable
            },
            ice_penalty: 0,
            ice_implementation: 0,
            sdr_penalty: 0,
        }
    }
}

/// What kind of route carries a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteKind {
    /// None yet (or none any more).
    #[default]
    None,
    /// Direct, between private (LAN, loopback) addresses.
    DirectLocal,
    /// Direct, with a public address on at least one end (possibly through NATs).
    DirectPublic,
    /// Through a relay (a TURN server).
    Relayed,
}

/// A path's route, for connection info and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteInfo {
    /// The kind of the route in use.
    pub kind: RouteKind,
    /// The peer's address on it, where it is not hidden.
    pub remote: Option<SocketAddr>,
    /// Lines for the detailed status: one per candidate pair considered (or per route of
    /// [`Routes`], with its own lines indented under it).
    pub pairs: Vec<String>,
    /// Times the route in use changed (route selection across transports: [`Routes`]).
    pub switches: u32,
}

/// Control messages from a path to its connection.
#[derive(Debug)]
pub(crate) enum PathNote {
    Signal(Vec<u8>),
    Ready,
    Failed(EndReason, String),
}

/// Most control messages queued from one path (signals, readiness, failure).
const MAX_NOTES: usize = 256;
/// Most received datagrams queued from all paths of an endpoint before more are dropped.
pub(crate) const PATH_INBOX: usize = 2048;

/// How a path talks to its connection. Cheap to clone; every call is non-blocking.
#[derive(Debug, Clone)]
pub struct PathSink {
    addr: SocketAddr,
    datagrams: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    notes: Arc<Mutex<VecDeque<PathNote>>>,
    /// Set when a note is queued, so the driver looks at the notes only then.
    noted: Arc<AtomicBool>,
    nudge: Arc<Notify>,
    /// Set for one route of a [`Routes`] path: its notes go to the route selector.
    route: Option<RouteTag>,
}

/// Which route of a [`Routes`] path a sink serves.
#[derive(Debug, Clone)]
struct RouteTag {
    index: usize,
    shared: std::sync::Weak<select::Shared>,
}

impl PathSink {
    pub(crate) fn new(
        addr: SocketAddr,
        datagrams: mpsc::Sender<(SocketAddr, Vec<u8>)>,
        notes: Arc<Mutex<VecDeque<PathNote>>>,
        noted: Arc<AtomicBool>,
        nudge: Arc<Notify>,
    ) -> Self {
        Self {
            addr,
            datagrams,
            notes,
            noted,
            nudge,
            route: None,
        }
    }

    /// Hands on a datagram received from the peer. False when it was dropped: the
    /// endpoint's queue is full (as a socket's buffer would be), or the connection is gone.
    pub fn deliver(&self, datagram: &[u8]) -> bool {
        if let Some(r) = &self.route {
            match r.shared.upgrade() {
                Some(s) if s.route_probe(r.index, datagram) => return true,
                Some(_) => {}
                None => return false,
            }
        }
        self.datagrams
            .try_send((self.addr, datagram.to_vec()))
            .is_ok()
    }

    /// Sends a signal to the peer's side of the path (at most
    /// [`MAX_TRANSPORT_SIGNAL`](crate::proto::rendezvous::MAX_TRANSPORT_SIGNAL) bytes).
    pub fn signal(&self, data: Vec<u8>) {
        match &self.route {
            Some(r) => {
                if let Some(s) = r.shared.upgrade() {
                    s.route_signal(r.index, data);
                }
            }
            None => self.note(PathNote::Signal(data)),
        }
    }

    /// The path has a route: packets may flow (the handshake starts). A path may say it
    /// again after it found a new route (an ICE restart).
    pub fn ready(&self) {
        match &self.route {
            Some(r) => {
                if let Some(s) = r.shared.upgrade() {
                    s.route_ready(r.index);
                }
            }
            None => self.note(PathNote::Ready),
        }
    }

    /// The path cannot be made: the connection ends with `reason` (on a [`Routes`] path,
    /// only once every route failed).
    pub fn failed(&self, reason: EndReason, debug: impl Into<String>) {
        match &self.route {
            Some(r) => {
                if let Some(s) = r.shared.upgrade() {
                    s.route_failed(r.index, reason, debug.into());
                }
            }
            None => self.note(PathNote::Failed(reason, debug.into())),
        }
    }

    fn note(&self, n: PathNote) {
        let mut q = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() < MAX_NOTES || !matches!(n, PathNote::Signal(_)) {
            q.push_back(n);
        }
        drop(q);
        self.noted.store(true, Ordering::Release);
        self.nudge.notify_one();
    }
}

pub(crate) use crate::proto::types::{is_path_addr, path_addr};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_config_pairs_turn_servers_with_their_credentials() {
        let c = PathConfig::from_values(
            "stun:a:3478, stun:b:3478,",
            "turn:a:3478,turn:b:3478",
            "ua,ub",
            "pa",
            -1,
        );
        assert_eq!(c.stun_servers, vec!["stun:a:3478", "stun:b:3478"]);
        assert_eq!(c.turn_servers.len(), 2);
        assert_eq!(c.turn_servers[0].user, "ua");
        assert_eq!(c.turn_servers[0].pass, "pa");
        assert_eq!(c.turn_servers[1].user, "ub");
        assert_eq!(c.turn_servers[1].pass, "");
        assert_eq!(c.ice_enable, ICE_RELAY | ICE_PRIVATE | ICE_PUBLIC);
        assert!(!format!("{:?}", c.turn_servers[0]).contains("pa"));
    }

    #[test]
    fn path_addresses_are_in_the_discard_prefix_and_distinct() {
        let a = path_addr(1);
        let b = path_addr(0x1_0001);
        assert_ne!(a, b);
        assert!(is_path_addr(&a) && is_path_addr(&b));
        assert!(!is_path_addr(&"127.0.0.1:1".parse().unwrap()));
        assert!(!is_path_addr(&"[::1]:1".parse().unwrap()));
    }
}
