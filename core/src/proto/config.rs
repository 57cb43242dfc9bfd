//! Settings the protocol reads: per-connection tunables (the reference API's config values that
//! apply to a connection) and the endpoint's credentials.

use punchline_identity::{CertStore, Certificate, Identity, KeyPair};
use std::time::Duration;

/// Per-connection settings. Every field mirrors a config value of the reference API; the API
/// layer resolves inheritance (global -> interface -> listen socket -> connection) into one of
/// these when a connection is created.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// `TimeoutInitial`: give up connecting after this long. Default 10 s.
    pub timeout_initial: Duration,
    /// `TimeoutConnected`: end a connection after this long without hearing from the peer.
    /// Default 10 s. Keepalives go out after a quarter of it (at most every 5 s) of silence.
    pub timeout_connected: Duration,
    /// `NagleTime`: how long a small message waits for others to share its packet. Default
    /// 5 ms; zero sends at once at the cost of more, smaller packets.
    pub nagle_time: Duration,
    /// `MTU_PacketSize`: the largest UDP payload sent. Default 1452 (a 1500-byte IPv6
    /// path). Path MTU discovery starts at [`BASE_MTU`](crate::proto::BASE_MTU) (1200) and
    /// probes up to it, so a path that carries less costs lost probes, not lost data.
    pub mtu_packet_size: usize,
    /// `SendBufferSize`: bytes queued or unacknowledged before sends fail with
    /// `LimitExceeded`. Default 512 KiB.
    pub send_buffer_size: usize,
    /// `RecvBufferSize`: bytes of received messages buffered for the application before
    /// packets are dropped. Default 1 MiB.
    pub recv_buffer_size: usize,
    /// `RecvBufferMessages`: messages buffered before packets are dropped. Default 1000.
    pub recv_buffer_messages: usize,
    /// `RecvMaxMessageSize`: a larger incoming message closes the connection. Default 512 KiB.
    pub recv_max_message_size: usize,
    /// `RecvMaxSegmentsPerPacket`: a packet with more message segments is dropped. Default 256.
    pub recv_max_segments_per_packet: usize,
    /// `SendRateMin` in bytes/s: the pacing rate never drops below this, even under loss.
    /// Default 64 KiB/s; setting min = max fixes the rate as the reference library does.
    pub send_rate_min: u64,
    /// `SendRateMax` in bytes/s: congestion control never paces faster. Default 1 GiB/s.
    pub send_rate_max: u64,
    /// `Unencrypted`: 0 never, 1 allowed but prefer encryption, 2 allowed and preferred,
    /// 3 required. Data goes unencrypted only when both peers allow it and one prefers it.
    /// Default 0. The handshake is always authenticated.
    pub unencrypted: u8,
    /// `IP_AllowWithoutAuth`: 0 refuses peers that prove no identity, 1 allows them (with a
    /// warning), 2 allows them silently. Default 0.
    pub allow_without_auth: u8,
    /// `IPLocalHost_AllowWithoutAuth`: the same for loopback peers; the larger value wins.
    /// Default 0.
    pub localhost_allow_without_auth: u8,
    /// Identity the peer must prove (for connections to a known peer); `None` accepts any.
    pub expected_peer: Option<Identity>,
    /// Packets sealed under one key before the sender moves to the next generation. Default
    /// [`KEY_UPDATE_PACKETS`](crate::proto::crypto::KEY_UPDATE_PACKETS), well inside
    /// AES-GCM's limit; lower only to test key updates.
    pub key_update_packets: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            timeout_initial: Duration::from_secs(10),
            timeout_connected: Duration::from_secs(10),
            nagle_time: Duration::from_millis(5),
            mtu_packet_size: 1452,
            send_buffer_size: 512 * 1024,
            recv_buffer_size: 1024 * 1024,
            recv_buffer_messages: 1000,
            recv_max_message_size: 512 * 1024,
            recv_max_segments_per_packet: 256,
            send_rate_min: 64 * 1024,
            send_rate_max: 1 << 30,
            unencrypted: 0,
            allow_without_auth: 0,
            localhost_allow_without_auth: 0,
            expected_peer: None,
            key_update_packets: crate::proto::crypto::KEY_UPDATE_PACKETS,
        }
    }
}

impl ConnectionConfig {
    /// The smallest MTU the protocol works with.
    pub const MIN_MTU: usize = 576;
    /// The largest MTU.
    pub const MAX_MTU: usize = 65_000;

    /// `MTU_PacketSize` clamped to what the protocol supports.
    pub fn mtu(&self) -> usize {
        self.mtu_packet_size.clamp(Self::MIN_MTU, Self::MAX_MTU)
    }
}

/// Who this endpoint is and whom it trusts.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The identity this endpoint claims; `None` means the key's own identity, or "localhost"
    /// when there is no key.
    pub identity: Option<Identity>,
    /// The signing key; `None` makes every connection of this endpoint unauthenticated.
    pub key: Option<KeyPair>,
    /// A certificate for (identity, key) from a CA the peers trust.
    pub cert: Option<Certificate>,
    /// CAs whose certificates this endpoint trusts. When any is set, peers must present a
    /// valid certificate.
    pub trusted: CertStore,
    /// The application id certificates must allow, if any.
    pub app_id: Option<u32>,
}

impl Credentials {
    /// Credentials with a fresh random key, whose identity is that key.
    pub fn with_key(key: KeyPair) -> Self {
        Self {
            key: Some(key),
            ..Self::default()
        }
    }

    /// The identity presented to peers.
    pub fn identity(&self) -> Identity {
        match (&self.identity, &self.key) {
            (Some(id), _) => id.clone(),
            (None, Some(k)) => k.identity(),
            (None, None) => Identity::localhost(),
        }
    }
}

/// Unproven handshakes a server holds state for before it asks new clients for a cookie,
/// by default. Below it, first contact takes one round trip. An unproven hello is taken in
/// only while fresh, new and within the verification budget (see
/// [`HELLO_FRESHNESS`](crate::proto::HELLO_FRESHNESS)); its replies stay within the
/// amplification bound, and the connection reaches Connected only once the client proves
/// it holds the session keys. Until then, its remote address and identity are the client's
/// claim. 0 asks every new client for a cookie.
pub const DEFAULT_COOKIE_THRESHOLD: usize = 64;

/// Settings of an endpoint (one UDP socket).
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Local credentials.
    pub credentials: Credentials,
    /// Whether client hellos are accepted (a listen socket).
    pub listen: bool,
    /// Defaults for connections accepted through this endpoint.
    pub incoming: ConnectionConfig,
    /// Connections in Connecting before the server demands proof of address of new clients
    /// (a stateless retry with a cookie) before keeping any state for them. Below it, a first
    /// contact takes one round trip, as in QUIC: the server answers the client's padded hello
    /// at once, with at most [`AMPLIFICATION_FACTOR`](crate::proto::AMPLIFICATION_FACTOR)
    /// times the bytes it received until the address is proven. At or above it (a server
    /// under load, or under a flood of spoofed hellos) it keeps nothing until the cookie comes
    /// back, and the handshake takes two round trips. A hello with an address token from an
    /// earlier connection, or a cookie, is proven either way. Default
    /// [`DEFAULT_COOKIE_THRESHOLD`]; 0 demands the cookie of every new client.
    pub cookie_threshold: usize,
    /// Most "no connection" replies per second. Default 20.
    pub no_connection_replies_per_sec: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            credentials: Credentials::default(),
            listen: false,
            incoming: ConnectionConfig::default(),
            cookie_threshold: DEFAULT_COOKIE_THRESHOLD,
            no_connection_replies_per_sec: 20,
        }
    }
}
