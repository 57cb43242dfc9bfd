//! P2P signaling: how rendezvous messages reach a peer named by identity, and how an
//! application (or a signaling client) hands received ones back.
//!
//! A P2P connection starts with a rendezvous through a signaling channel, a slow, trusted
//! path to the peer (the `punchline-signaling` server, or the application's own): the
//! connect request, the answer saying where the peer can be reached, and a close when one
//! side gives up before the path is up. punchline numbers and retransmits these messages
//! until acknowledged, so the channel may lose, duplicate or reorder them. Then the handshake
//! runs over the path found, proving the peer's identity.

use super::ConnectionHandle;
use punchline_identity::Identity;
use std::sync::Arc;

/// Sends rendezvous signals to peers (the seeds' `ISteamNetworkingConnectionSignaling`, for
/// any number of connections). Called on punchline's service thread: it must not block; queue
/// the signal and return. Delivery may fail silently: signals are sent again until
/// acknowledged.
pub trait Signaling: Send + Sync + 'static {
    /// Sends `signal` to the peer with identity `peer`.
    fn send_signal(&self, peer: &Identity, signal: &[u8]);
}

/// Decides on connect requests that arrive in signals (the seeds'
/// `ISteamNetworkingSignalingRecvContext`).
pub trait SignalingRecvContext {
    /// A peer asks to connect to our virtual port `local_vport`; `connection` is the new
    /// connection's handle. Return the signaling to answer through to accept the request
    /// (the connection then appears in Connecting, to be accepted like any other), or `None`
    /// to ignore it: the peer gets no answer (so it cannot learn we are online) and times
    /// out. To refuse it actively, close `connection` with a reason and return `None`: a
    /// rejection signal goes to [`send_rejection_signal`](Self::send_rejection_signal).
    fn on_connect_request(
        &mut self,
        connection: ConnectionHandle,
        peer: &Identity,
        local_vport: u16,
    ) -> Option<Arc<dyn Signaling>>;

    /// Sends a rejection back to `peer` (only after a refusal; see `on_connect_request`).
    fn send_rejection_signal(&mut self, peer: &Identity, signal: &[u8]);
}
