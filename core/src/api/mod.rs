//! The application-facing API: [`Sockets`] (the ISteamNetworkingSockets analog), [`Messages`]
//! (ISteamNetworkingMessages), handles,
//! messages, connection info and status, status-change events and the config-value system.

pub mod config;
pub mod fake_udp;
pub mod fakeip;
pub mod messages;
pub mod p2p;
pub mod relay;
mod sockets;
pub mod utils;

pub use crate::proto::{ConnectionInfoFlags, ConnectionState, EndReason, Error, SendFlags};
pub use messages::{Messages, MessagesEvent};
pub use p2p::{Signaling, SignalingRecvContext};
pub use sockets::{
    Availability, ConfigTarget, ConnectionInfo, ConnectionStatusChanged, Message, OutMessage,
    QuickStatus, Sockets, SocketsConfig, StatusEvents,
};

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
