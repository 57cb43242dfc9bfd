//! The api layer's public value types: handles, who a `Sockets` is, where a config value
//! goes, messages, connection info and status, and the status-event stream.

use super::config::ConfigScope;
use crate::proto::{ConnectionInfoFlags, ConnectionState, EndReason, SendFlags};
use crate::transport::RouteKind;
use bytes::Bytes;
use punchline_identity::{CertStore, Certificate, Identity, KeyPair};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::sync::mpsc;

/// A connection's handle. 0 is never a valid handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConnectionHandle(pub u32);

/// A listen socket's handle. 0 is never a valid handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ListenSocketHandle(pub u32);

/// A poll group's handle. 0 is never a valid handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PollGroupHandle(pub u32);

impl ConnectionHandle {
    /// The invalid handle.
    pub const INVALID: Self = Self(0);
}
impl ListenSocketHandle {
    /// The invalid handle.
    pub const INVALID: Self = Self(0);
}
impl PollGroupHandle {
    /// The invalid handle.
    pub const INVALID: Self = Self(0);
}

/// Who a [`Sockets`](super::Sockets) instance is.
#[derive(Debug, Clone, Default)]
pub struct SocketsConfig {
    /// The signing key; a fresh random one when `None`.
    pub key: Option<KeyPair>,
    /// The identity to claim; the key's own identity when `None`.
    pub identity: Option<Identity>,
    /// A certificate for (identity, key).
    pub cert: Option<Certificate>,
    /// Trusted CAs (when any is set, peers must present certificates).
    pub trusted: CertStore,
    /// The application id certificates must allow.
    pub app_id: Option<u32>,
    /// Where P2P connections bind their socket. `None` (the default): every interface, and
    /// peers are told this host's interface addresses (loopback last). A specific address
    /// (say `127.0.0.1:0` for tests on one host) is the only one peers are told.
    pub p2p_bind: Option<SocketAddr>,
}

/// Where a config value is read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigTarget {
    /// Process-wide defaults.
    Global,
    /// This `Sockets` instance.
    Interface,
    /// A listen socket (and the connections it accepts).
    ListenSocket(ListenSocketHandle),
    /// One connection.
    Connection(ConnectionHandle),
}

impl ConfigTarget {
    pub(super) fn scope(self) -> ConfigScope {
        match self {
            ConfigTarget::Global => ConfigScope::Global,
            ConfigTarget::Interface => ConfigScope::SocketsInterface,
            ConfigTarget::ListenSocket(_) => ConfigScope::ListenSocket,
            ConfigTarget::Connection(_) => ConfigScope::Connection,
        }
    }
}

/// Availability of a service, with the reference API's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Availability {
    /// A dependency is missing.
    CannotTry = -102,
    /// Tried and never succeeded.
    Failed = -101,
    /// Worked before, not now.
    Previously = -100,
    /// Retrying after a failure.
    Retrying = -10,
    /// Not applicable.
    Unknown = 0,
    /// Never tried.
    NeverTried = 1,
    /// Waiting on a dependency.
    Waiting = 2,
    /// Trying now.
    Attempting = 3,
    /// Available.
    Current = 100,
}

/// A received message. Dropping it releases it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The payload.
    pub payload: Bytes,
    /// The connection it came on.
    pub connection: ConnectionHandle,
    /// The sender's message number.
    pub message_number: u64,
    /// `RELIABLE` or `UNRELIABLE`.
    pub flags: SendFlags,
    /// Lane / channel (always 0 on connections).
    pub channel: i32,
    /// The connection's user data when the message was received.
    pub user_data: i64,
    /// The peer's identity.
    pub peer_identity: Identity,
    /// When the message was complete.
    pub received_at: Instant,
}

/// A message for [`Sockets::send_messages`](super::Sockets::send_messages).
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// Where to.
    pub connection: ConnectionHandle,
    /// The payload (shared, not copied).
    pub payload: Bytes,
    /// Send flags.
    pub flags: SendFlags,
    /// The lane (see [`Sockets::configure_connection_lanes`](super::Sockets::configure_connection_lanes)); 0 by default.
    pub lane: u16,
}

/// A connection's identity, address, state and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    /// The peer's identity (its address while unknown).
    pub identity_remote: Identity,
    /// User data.
    pub user_data: i64,
    /// The listen socket that accepted it, if any.
    pub listen_socket: Option<ListenSocketHandle>,
    /// The peer's address.
    pub address_remote: SocketAddr,
    /// The state.
    pub state: ConnectionState,
    /// Why it ended.
    pub end_reason: EndReason,
    /// Debug text for the end.
    pub end_debug: String,
    /// A human-readable description.
    pub description: String,
    /// Info flags.
    pub flags: ConnectionInfoFlags,
    /// What carries a P2P connection through a transport (ICE): direct or relayed.
    /// [`RouteKind::None`] for connections by IP address, whose route is the address.
    pub route: RouteKind,
}

/// A connection's state changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionStatusChanged {
    /// The connection.
    pub connection: ConnectionHandle,
    /// Its info after the change.
    pub info: ConnectionInfo,
    /// The state before.
    pub old_state: ConnectionState,
}

/// Real-time numbers of a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct QuickStatus {
    /// The state.
    pub state: ConnectionState,
    /// Smoothed round-trip time in ms.
    pub ping_ms: i32,
    /// Fraction of the peer's packets that reached us.
    pub connection_quality_local: f32,
    /// Fraction of our packets that reached the peer.
    pub connection_quality_remote: f32,
    /// Packets sent per second, recently.
    pub out_packets_per_sec: f32,
    /// Bytes sent per second, recently.
    pub out_bytes_per_sec: f32,
    /// Packets received per second, recently.
    pub in_packets_per_sec: f32,
    /// Bytes received per second, recently.
    pub in_bytes_per_sec: f32,
    /// The current pacing rate.
    pub send_rate_bytes_per_sec: i64,
    /// Unreliable bytes queued.
    pub pending_unreliable: i64,
    /// Reliable bytes queued, not yet sent.
    pub pending_reliable: i64,
    /// Reliable bytes sent, not yet acknowledged.
    pub sent_unacked_reliable: i64,
    /// How long the oldest queued message has waited, in µs.
    pub queue_time_usec: i64,
}

/// Status changes as an async stream for tokio code.
#[derive(Debug)]
pub struct StatusEvents {
    rx: mpsc::UnboundedReceiver<ConnectionStatusChanged>,
}

impl StatusEvents {
    pub(super) fn new(rx: mpsc::UnboundedReceiver<ConnectionStatusChanged>) -> StatusEvents {
        StatusEvents { rx }
    }

    /// The next status change; `None` once the `Sockets` is gone.
    pub async fn recv(&mut self) -> Option<ConnectionStatusChanged> {
        self.rx.recv().await
    }

    /// A status change if one is waiting.
    pub fn try_recv(&mut self) -> Option<ConnectionStatusChanged> {
        self.rx.try_recv().ok()
    }
}
