//! Connection states, end reasons, send flags and connection-info flags, with the numeric values
//! of the reference API.

use std::fmt;

/// The state of a connection, with the reference API's numeric values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ConnectionState {
    /// No connection (an invalid handle, or one already released).
    None = 0,
    /// Handshaking, or (server side) waiting for the application to accept.
    Connecting = 1,
    /// Looking for a route through a back channel (P2P only).
    FindingRoute = 2,
    /// Connected: messages flow both ways.
    Connected = 3,
    /// The peer closed the connection; the handle must still be closed locally.
    ClosedByPeer = 4,
    /// A problem (such as a timeout) ended the connection; the handle must still be closed.
    ProblemDetectedLocally = 5,
    /// Closed locally; waiting for the peer to see the close.
    FinWait = -1,
    /// Closed locally; still flushing reliable data before telling the peer.
    Linger = -2,
    /// Completely inactive, about to be destroyed.
    Dead = -3,
}

impl ConnectionState {
    /// The numeric value of the reference API.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// True for the states in which the application has closed the connection.
    pub fn is_closed_locally(self) -> bool {
        matches!(self, Self::FinWait | Self::Linger | Self::Dead)
    }
}

/// Why a connection ended: a numeric code whose range tells the source (1xxx application,
/// 2xxx application exception, 3xxx local problem, 4xxx remote problem, 5xxx other).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndReason(pub u32);

impl EndReason {
    /// Invalid / not ended.
    pub const INVALID: Self = Self(0);
    /// Application normal close (start of the 1xxx range).
    pub const APP_GENERIC: Self = Self(1000);
    /// Last application normal code.
    pub const APP_MAX: Self = Self(1999);
    /// Application exceptional close (start of the 2xxx range).
    pub const APP_EXCEPTION_GENERIC: Self = Self(2000);
    /// Last application exception code.
    pub const APP_EXCEPTION_MAX: Self = Self(2999);
    /// Local host is offline.
    pub const LOCAL_OFFLINE_MODE: Self = Self(3001);
    /// Trouble reaching many relays.
    pub const LOCAL_MANY_RELAY_CONNECTIVITY: Self = Self(3002);
    /// A hosted server cannot reach its relay.
    pub const LOCAL_HOSTED_SERVER_PRIMARY_RELAY: Self = Self(3003);
    /// Network configuration unavailable.
    pub const LOCAL_NETWORK_CONFIG: Self = Self(3004);
    /// Not allowed to do this.
    pub const LOCAL_RIGHTS: Self = Self(3005);
    /// No public address for ICE.
    pub const LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES: Self = Self(3006);
    /// Remote host timed out while our own connectivity looks fine.
    pub const REMOTE_TIMEOUT: Self = Self(4001);
    /// The peer's crypto handshake was invalid (bad signature, bad key, encryption mismatch).
    pub const REMOTE_BAD_CRYPT: Self = Self(4002);
    /// The peer's certificate or identity could not be accepted.
    pub const REMOTE_BAD_CERT: Self = Self(4003);
    /// The peer speaks another protocol version.
    pub const REMOTE_BAD_PROTOCOL_VERSION: Self = Self(4006);
    /// ICE found no public addresses of the peer.
    pub const REMOTE_P2P_ICE_NO_PUBLIC_ADDRESSES: Self = Self(4007);
    /// Some other failure; the debug text says more.
    pub const MISC_GENERIC: Self = Self(5001);
    /// Most likely a bug.
    pub const MISC_INTERNAL_ERROR: Self = Self(5002);
    /// The connection timed out.
    pub const MISC_TIMEOUT: Self = Self(5003);
    /// No relay session to the client.
    pub const MISC_NO_RELAY_SESSIONS_TO_CLIENT: Self = Self(5006);
    /// P2P rendezvous failed.
    pub const MISC_P2P_RENDEZVOUS: Self = Self(5008);
    /// NAT punching failed.
    pub const MISC_P2P_NAT_FIREWALL: Self = Self(5009);
    /// The peer has no record of this connection.
    pub const MISC_PEER_SENT_NO_CONNECTION: Self = Self(5010);

    /// True for codes an application may pass to `close` (1000..=2999).
    pub fn is_application(self) -> bool {
        (1000..=2999).contains(&self.0)
    }

    /// The reason as the side that hears it from its peer reports it. The peer's own
    /// "no public address to offer" (3006) is, for us, "the peer gave us no address" (4007),
    /// as the reference defines the two; every other code stays as the peer gave it.
    pub fn as_heard_from_peer(self) -> Self {
        match self {
            Self::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES => Self::REMOTE_P2P_ICE_NO_PUBLIC_ADDRESSES,
            other => other,
        }
    }
}

impl fmt::Debug for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::INVALID => "Invalid",
            Self::APP_GENERIC => "App_Generic",
            Self::APP_EXCEPTION_GENERIC => "AppException_Generic",
            Self::REMOTE_TIMEOUT => "Remote_Timeout",
            Self::REMOTE_BAD_CRYPT => "Remote_BadCrypt",
            Self::REMOTE_BAD_CERT => "Remote_BadCert",
            Self::REMOTE_BAD_PROTOCOL_VERSION => "Remote_BadProtocolVersion",
            Self::MISC_GENERIC => "Misc_Generic",
            Self::MISC_INTERNAL_ERROR => "Misc_InternalError",
            Self::MISC_TIMEOUT => "Misc_Timeout",
            Self::MISC_PEER_SENT_NO_CONNECTION => "Misc_PeerSentNoConnection",
            _ => return write!(f, "EndReason({})", self.0),
        };
        write!(f, "{name}({})", self.0)
    }
}

/// Send flags (bit values of the reference API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SendFlags(pub u32);

impl SendFlags {
    /// Unreliable (no bits set).
    pub const UNRELIABLE: Self = Self(0);
    /// Bypass Nagle: send this and everything queued now.
    pub const NO_NAGLE: Self = Self(1);
    /// Unreliable, no Nagle.
    pub const UNRELIABLE_NO_NAGLE: Self = Self(1);
    /// Drop the message (result `Ignored`) if it cannot go out very soon.
    pub const NO_DELAY: Self = Self(4);
    /// Unreliable, no delay, no Nagle.
    pub const UNRELIABLE_NO_DELAY: Self = Self(5);
    /// Reliable: ordered, exactly once.
    pub const RELIABLE: Self = Self(8);
    /// Reliable, no Nagle.
    pub const RELIABLE_NO_NAGLE: Self = Self(9);
    /// Do the send work on the calling thread.
    pub const USE_CURRENT_THREAD: Self = Self(16);
    /// Messages API: restart a broken session automatically.
    pub const AUTO_RESTART_BROKEN_SESSION: Self = Self(32);

    /// True when every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// True for a reliable send.
    pub fn is_reliable(self) -> bool {
        self.contains(Self::RELIABLE)
    }
}

impl std::ops::BitOr for SendFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Connection-info flags (bit values of the reference API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConnectionInfoFlags(pub u32);

impl ConnectionInfoFlags {
    /// The peer's identity is not authenticated.
    pub const UNAUTHENTICATED: Self = Self(1);
    /// Data goes over the wire unencrypted.
    pub const UNENCRYPTED: Self = Self(2);
    /// In-process loopback buffers.
    pub const LOOPBACK_BUFFERS: Self = Self(4);
    /// A fast path (loopback or LAN).
    pub const FAST: Self = Self(8);
    /// Relayed (TURN or relay server).
    pub const RELAYED: Self = Self(16);
    /// Dual-wifi multipath.
    pub const DUAL_WIFI: Self = Self(32);

    /// True when every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for ConnectionInfoFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ConnectionInfoFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// The address that stands for a transport's path number `n` inside an endpoint: in the
/// discard-only prefix `100::/64` (RFC 6666), which no real packet uses (the runtime drops
/// datagrams from it on real sockets).
pub(crate) fn path_addr(n: u32) -> std::net::SocketAddr {
    let ip = std::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, (n >> 16) as u16, n as u16);
    std::net::SocketAddr::new(ip.into(), 1)
}

/// True for an address made by [`path_addr`].
pub(crate) fn is_path_addr(addr: &std::net::SocketAddr) -> bool {
    match addr {
        std::net::SocketAddr::V6(v6) => v6.ip().segments()[..4] == [0x100, 0, 0, 0],
        std::net::SocketAddr::V4(_) => false,
    }
}

/// A token bucket: filled at a rate, holding at most a burst; starts full. The rate and burst
/// are given on each call, so a changed setting applies at once.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl TokenBucket {
    /// Refills for the time since the last call (full on the first), then takes `n` tokens
    /// if that many are there.
    pub(crate) fn take(&mut self, now: std::time::Instant, rate: f64, burst: f64, n: f64) -> bool {
        self.tokens = match self.last {
            Some(t) => {
                (self.tokens + now.saturating_duration_since(t).as_secs_f64() * rate).min(burst)
            }
            None => burst,
        };
        self.last = Some(now);
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// Holds at most `burst` from now on (a smaller burst applies to what is held).
    pub(crate) fn clamp(&mut self, burst: f64) {
        self.tokens = self.tokens.min(burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_values_match_the_reference_api() {
        let states = [
            (ConnectionState::None, 0),
            (ConnectionState::Connecting, 1),
            (ConnectionState::FindingRoute, 2),
            (ConnectionState::Connected, 3),
            (ConnectionState::ClosedByPeer, 4),
            (ConnectionState::ProblemDetectedLocally, 5),
            (ConnectionState::FinWait, -1),
            (ConnectionState::Linger, -2),
            (ConnectionState::Dead, -3),
        ];
        for (s, v) in states {
            assert_eq!(s.as_i32(), v);
        }
        assert_eq!(EndReason::REMOTE_BAD_CERT.0, 4003);
        assert_eq!(EndReason::MISC_TIMEOUT.0, 5003);
        assert_eq!(EndReason::MISC_PEER_SENT_NO_CONNECTION.0, 5010);
        assert_eq!(SendFlags::RELIABLE_NO_NAGLE.0, 9);
        assert_eq!(ConnectionInfoFlags::RELAYED.0, 16);
    }
}
