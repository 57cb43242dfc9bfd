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
mod types;
pub mod utils;

pub use crate::proto::{ConnectionInfoFlags, ConnectionState, EndReason, Error, SendFlags};
pub use messages::{Messages, MessagesEvent};
pub use p2p::{Signaling, SignalingRecvContext};
pub use sockets::Sockets;
#[cfg(feature = "virtual-time")]
pub use sockets::VirtualWorld;
pub use types::{
    Availability, ConfigTarget, ConnectionHandle, ConnectionInfo, ConnectionStatusChanged,
    ListenSocketHandle, Message, OutMessage, PollGroupHandle, QuickStatus, SocketsConfig,
    StatusEvents,
};
