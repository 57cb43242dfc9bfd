//! punchline: encrypted, message-oriented connections over UDP in the model of
//! ISteamNetworkingSockets — reliable and unreliable messages, fragmentation, Nagle
//! coalescing, acks and retransmission, congestion control with pacing — with ed25519
//! identities and CA-signed certificates.
//!
//! The protocol lives in [`proto`], a sans-IO state machine driven by time and datagrams.
#![warn(missing_docs)]

pub mod api;
pub mod debug;
pub mod netcond;
pub mod proto;
pub mod runtime;
#[cfg(feature = "test-support")]
pub mod sim;
pub mod transport;

#[cfg(feature = "virtual-time")]
pub use api::VirtualWorld;
pub use api::{
    ConnectionHandle, ConnectionInfo, ConnectionStatusChanged, ListenSocketHandle, Message,
    PollGroupHandle, QuickStatus, Sockets, SocketsConfig,
};
pub use proto::{ConnectionState, EndReason, Error, SendFlags};

pub use punchline_identity as identity;
