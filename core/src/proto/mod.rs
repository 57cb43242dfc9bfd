//! The sans-IO protocol: an [`Endpoint`] of [`Connection`]s that turns datagrams, timer
//! expiries and application commands into datagrams to send, timers to set and events.
//!
//! Nothing here performs IO, reads a clock or draws OS randomness: time is passed in as an
//! `Instant`, and randomness comes from a seed. This makes every behaviour reproducible in
//! virtual time (`punchline::sim`, with the `test-support` feature).
//!
//! The submodules are private to the crate; what a user of the protocol names is re-exported here. The
//! rendezvous messages, which the signaling server and the ICE layer speak too, are the one
//! public submodule.

pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod codec;
pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod conns;
pub(crate) mod crypto;
pub(crate) mod endpoint;
pub(crate) mod packet;
pub(crate) mod pmtud;
pub(crate) mod ranges;
pub(crate) mod recovery;
pub(crate) mod recv;
pub mod rendezvous;
pub(crate) mod send;
pub(crate) mod types;

/// Decoders and buffers inside the protocol, for fuzzing and hostile-input tests. Only with
/// the `test-support` feature; no promise of stability.
#[cfg(feature = "test-support")]
pub mod internals {
    pub use super::codec::{decode_frames, AckRange, Frame, Segment};
    pub use super::packet::{ClientHello, Control, ServerHello, ShortHeader};
    pub use super::recv::Reassembly;
}

pub use admission::{HELLO_FRESHNESS, MAX_SEEN_HELLOS, UNPROVEN_VERIFY_RATE};
pub use config::{ConnectionConfig, Credentials, EndpointConfig, DEFAULT_COOKIE_THRESHOLD};
pub use connection::{
    Connection, Event, P2pInfo, PathStatus, Side, Stats, AMPLIFICATION_FACTOR,
    MAX_SEND_MESSAGE_SIZE,
};
pub use conns::{ConnGuard, ConnId, ConnRef};
pub use endpoint::{Endpoint, EndpointStats, P2pRequest, SignalOutcome, Transmit};
pub use pmtud::BASE_MTU;
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
