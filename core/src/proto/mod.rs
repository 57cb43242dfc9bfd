//! The sans-IO protocol: an [`Endpoint`] of [`Connection`]s that turns datagrams, timer
//! expiries and application commands into datagrams to send, timers to set and events.
//!
//! Nothing here performs IO, reads a clock or draws OS randomness: time is passed in as an
//! `Instant`, and randomness comes from a seed. This makes every behaviour reproducible in
//! virtual time ([`crate::sim`]).

pub mod auth;
pub mod codec;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod endpoint;
pub mod packet;
pub mod ranges;
pub mod recovery;
pub mod recv;
pub mod rendezvous;
pub mod send;
pub mod types;

pub use config::{ConnectionConfig, Credentials, EndpointConfig};
pub use connection::{Connection, Event, PathStatus, Side, Stats, MAX_SEND_MESSAGE_SIZE};
pub use endpoint::{ConnId, Endpoint, EndpointStats, Transmit};
pub use recv::Received;
pub use types::{ConnectionInfoFlags, ConnectionState, EndReason, SendFlags};

/// Errors of application commands, mirroring the reference API's result codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument: an unknown handle, or a message that is too big.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    /// The call does not fit the connection's state.
    #[error("the connection is in the wrong state for this call")]
    InvalidState,
    /// The connection has ended.
    #[error("the connection has ended")]
    NoConnection,
    /// A no-delay message that could not go out soon was dropped.
    #[error("message dropped: it could not be sent soon (NoDelay)")]
    Ignored,
    /// The send buffer is full.
    #[error("send buffer full")]
    LimitExceeded,
    /// Already done: the connection was accepted already (symmetric connect accepts a
    /// matching incoming connection implicitly).
    #[error("already done: the connection was accepted already")]
    DuplicateRequest,
}
