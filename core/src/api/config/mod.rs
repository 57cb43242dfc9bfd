//! Configuration values: the reference API's tunables, their types, defaults, valid ranges and
//! the scopes they may be set at, plus the inheritance rules that turn them into the settings
//! of one connection.
//!
//! A value can be set on four kinds of object, from least to most specific: the global
//! defaults, a sockets interface, a listen socket and a connection (see [`ConfigScope`]). Each
//! object keeps the values explicitly set on it in a [`ConfigStore`]. Reading a value walks from
//! the object being asked towards the global level and takes the first explicit setting, or the
//! built-in default when nothing is set anywhere ([`resolve`]). When a connection is created the
//! API layer resolves every connection setting once and hands the result to the protocol
//! ([`apply_to_connection`]).
//!
//! Numeric ids and names are those of the reference API, so code written against it can be
//! ported by id or by name. Values that only make sense for Valve's relay network (SDR), for
//! ICE/STUN/TURN peer-to-peer transport or for Steam itself are listed so that they can be set
//! and read back, but they have no effect on plain UDP connections; [`ConfigInfo::applies_to_ip`]
//! tells them apart.

mod data;
mod store;
#[cfg(test)]
mod tests;

pub use data::*;
pub use store::*;

use std::fmt;

/// One configuration value, with the numeric id the reference API gives it.
///
/// The defaults quoted here are this library's; [`info`] is the authoritative table.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigValue {
    /// Percentage (0-100, float) of outgoing packets silently thrown away, to test how an
    /// application copes with loss. Default 0; anything above it costs throughput and latency.
    FakePacketLossSend = 2,
    /// Percentage (0-100, float) of incoming packets thrown away before processing. Default 0.
    FakePacketLossRecv = 3,
    /// Milliseconds every outgoing packet is held back, simulating a long path. Default 0; it
    /// adds directly to the round trip.
    FakePacketLagSend = 4,
    /// Milliseconds every incoming packet is held back before processing. Default 0.
    FakePacketLagRecv = 5,
    /// Percentage (0-100, float) of outgoing packets given an extra delay of
    /// [`FakePacketReorderTime`](Self::FakePacketReorderTime), so that later packets overtake
    /// them. Applied after fake lag and jitter. Default 0.
    FakePacketReorderSend = 6,
    /// Percentage (0-100, float) of incoming packets delayed so that they arrive out of order.
    /// Default 0.
    FakePacketReorderRecv = 7,
    /// Extra delay in milliseconds given to packets picked for reordering, in both directions.
    /// Default 15; a longer delay reorders across more packets but also adds latency.
    FakePacketReorderTime = 8,
    /// Bytes of messages queued and not yet sent before sending fails with "limit exceeded",
    /// as the reference counts them (bytes sent and awaiting acknowledgement are the
    /// congestion window's to limit). Default 512 KiB. A bigger buffer absorbs bursts but
    /// lets a slow link build up more delay and memory.
    SendBufferSize = 9,
    /// Lower bound of the pacing rate, bytes per second; congestion control never goes below
    /// it. Default 64 KiB/s. Setting it equal to [`SendRateMax`](Self::SendRateMax) fixes the
    /// rate; a high floor can overrun a thin link.
    SendRateMin = 10,
    /// Upper bound of the pacing rate, bytes per second. Default 1 GiB/s (effectively
    /// unlimited); lower it to leave bandwidth for other traffic.
    SendRateMax = 11,
    /// Microseconds a small message waits for others to share its packet. Default 5000 (5 ms).
    /// Zero sends at once: lower latency, more and smaller packets.
    NagleTime = 12,
    /// Log detail for round-trip time measurements (0 none … 8 everything). Default 4
    /// (warnings); more detail costs formatting time.
    LogLevelAckRtt = 13,
    /// Log detail for packets sent and received (0-8). Default 4 (warnings).
    LogLevelPacketDecode = 14,
    /// Log detail for each message sent and received (0-8). Default 4 (warnings).
    LogLevelMessage = 15,
    /// Log detail for packets found missing (0-8). Default 4 (warnings).
    LogLevelPacketGaps = 16,
    /// Log detail for peer-to-peer rendezvous signals (0-8). Default 4 (warnings). P2P only.
    LogLevelP2pRendezvous = 17,
    /// Log detail for pings to relays (0-8). Default 4 (warnings). Relay network only.
    LogLevelSdrRelayPings = 18,
    /// Relay network: after this many failed first pings to a relay port, try another port.
    /// Default 0 (never); low values help with routers that drop the first packet but may
    /// abandon good ports. (Spelled `ConsecutitivePingTimeoutsFailInitial` by the reference.)
    SdrClientConsecutivePingTimeoutsFailInitial = 19,
    /// Relay network: after this many consecutive failed pings on a port that used to work,
    /// try another port. Default 4.
    SdrClientConsecutivePingTimeoutsFail = 20,
    /// Relay network: pings sent before a ping estimate is trusted. Default 10; more pings
    /// give a steadier estimate but take longer.
    SdrClientMinPingsBeforePingAccurate = 21,
    /// Relay network: 1 sends all relay traffic from one local port instead of one port per
    /// relay. Default 0; one socket is cheaper but some NATs handle it badly.
    SdrClientSingleSocket = 22,
    /// Whether peers that prove no identity are accepted: 0 refuses them, 1 allows them with a
    /// warning, 2 allows them silently. Default 0. Anything else gives up authentication and
    /// is for development only.
    IpAllowWithoutAuth = 23,
    /// Milliseconds to keep trying to establish a connection before giving up. Default 10000;
    /// shorter fails faster on dead hosts but gives slow or lossy paths less chance.
    TimeoutInitial = 24,
    /// Milliseconds without hearing from the peer before an established connection is ended.
    /// Default 10000; shorter notices dead peers sooner but drops connections during brief
    /// outages.
    TimeoutConnected = 25,
    /// Percentage (0-100, float) of outgoing packets sent twice. Default 0.
    FakePacketDupSend = 26,
    /// Percentage (0-100, float) of incoming packets processed twice. Default 0.
    FakePacketDupRecv = 27,
    /// A duplicated packet is delayed by a random time up to this many milliseconds. Default 10.
    FakePacketDupTimeMax = 28,
    /// Relay network: only use relays of this cluster code (for example `"iad"`). Default
    /// empty: any cluster.
    SdrClientForceRelayCluster = 29,
    /// Relay network: a development ticket for connecting to a server without the game
    /// coordinator. Default empty.
    SdrClientDevTicket = 30,
    /// Relay network: comma-separated relay addresses that replace the configured list, for
    /// debugging. Default empty.
    SdrClientForceProxyAddr = 31,
    /// Largest UDP payload sent, in bytes (576-65000). Default 1452 (the reference's is
    /// 1300). A connection starts at 1200 bytes and discovers the path's limit up to this
    /// (DPLPMTUD, RFC 8899: padded probes, a fall back on a black hole); at or below 1200 it
    /// sends this size from the start.
    MtuPacketSize = 32,
    /// Read-only: the largest message that fits in one packet without being split, derived
    /// from [`MtuPacketSize`](Self::MtuPacketSize) (1423 at the default; packets may be smaller while path MTU discovery runs, and a larger message is split); see [`mtu_data_size`].
    MtuDataSize = 33,
    /// Whether data may travel unencrypted: 0 never, 1 allowed but encryption preferred,
    /// 2 allowed and preferred, 3 required. Default 0. Data is only sent in the clear when
    /// both peers allow it and one prefers it; the handshake stays authenticated. Development
    /// only: it trades away confidentiality and integrity for a little CPU.
    Unencrypted = 34,
    /// Relay network: pretend pings to clusters, as `"sto=32,iad=100"`. Default empty.
    SdrClientFakeClusterPing = 36,
    /// 1 enables symmetric connect mode: when both peers connect to each other at once, the two
    /// attempts are merged into a single connection. Default 0. Set it on both sides and on
    /// the listen socket, or not at all. Peer-to-peer connections only.
    SymmetricConnect = 37,
    /// Local virtual port of a connection, for connection types addressed by virtual port;
    /// only matters when matching symmetric connections. Default -1 (same as the remote
    /// port). Not used by plain UDP connections.
    LocalVirtualPort = 38,
    /// Steam only: use both wifi bands for one connection (0 no, 1 yes, 2 simulate). Default 0.
    DualWifiEnable = 39,
    /// 64-bit application data attached to a connection. Default -1. Set it at a wider scope
    /// to give new connections a starting value before any event about them is reported; once
    /// a connection exists, changing the wider setting no longer affects it.
    ConnectionUserData = 40,
    /// Dump every UDP packet, like a packet sniffer, with up to this many payload bytes.
    /// Default -1 (off); 0 logs headers only. Costly; for debugging.
    PacketTraceMaxBytes = 41,
    /// Fake bandwidth limit on sending, in bytes per second, applied as a token bucket.
    /// Default 0 (no limit).
    FakeRateLimitSendRate = 42,
    /// Size in bytes of the fake send limit's bucket: how much may leave in one burst.
    /// Default 16384; a very small bucket is unrealistically strict.
    FakeRateLimitSendBurst = 43,
    /// Fake bandwidth limit on receiving, in bytes per second. Default 0 (no limit).
    FakeRateLimitRecvRate = 44,
    /// Size in bytes of the fake receive limit's bucket. Default 16384.
    FakeRateLimitRecvBurst = 45,
    /// Steam only: report connection diagnostics through the platform's UI. Default 0, as
    /// there is no such UI here.
    EnableDiagnosticsUi = 46,
    /// Bytes of received messages waiting for the application before further packets are
    /// dropped. Default 1 MiB. Protects memory against a flooding peer; it should exceed
    /// [`RecvMaxMessageSize`](Self::RecvMaxMessageSize). A connection keeps at most half of
    /// its own value in flight (it stands for the peer's, which is not advertised), so on
    /// long fast paths raise it on both ends: 512 KiB in flight is about 10 MB/s at 50 ms.
    RecvBufferSize = 47,
    /// Number of received messages waiting for the application before further packets are
    /// dropped. Default 1000; guards against floods of tiny messages.
    RecvBufferMessages = 48,
    /// Largest message accepted from the peer, in bytes; a bigger one closes the connection.
    /// Default 512 KiB. Larger limits allow bigger messages but let a peer tie up more memory.
    RecvMaxMessageSize = 49,
    /// Most message segments decoded from one packet; a packet with more is dropped. Default
    /// 256. A low value shields against packets stuffed with tiny segments but requires the
    /// sender to coalesce little.
    RecvMaxSegmentsPerPacket = 50,
    /// Microseconds a packet that arrived after a small gap in sequence numbers is held back,
    /// hoping the missing one turns up, before the gap is treated as loss. Default 1000;
    /// 0 disables the correction, longer windows delay delivery after real losses.
    OutOfOrderCorrectionWindowMicroseconds = 51,
    /// Like [`IpAllowWithoutAuth`](Self::IpAllowWithoutAuth) but only for loopback peers; the
    /// more permissive of the two applies. Default 0.
    IpLocalHostAllowWithoutAuth = 52,
    /// Mean, in milliseconds (float), of the random extra delay added to outgoing packets.
    /// Jitter never reorders packets by itself, but it bunches them up. Default 0 (off).
    FakePacketJitterSendAvg = 53,
    /// Cap in milliseconds on the random send jitter. Default 0.
    FakePacketJitterSendMax = 54,
    /// Percentage (0-100, float) of outgoing packets that get random jitter. Default 0.
    FakePacketJitterSendPct = 55,
    /// Mean, in milliseconds (float), of the random delay added to incoming packets. Default 0.
    FakePacketJitterRecvAvg = 56,
    /// Cap in milliseconds on the random receive jitter. Default 0.
    FakePacketJitterRecvMax = 57,
    /// Percentage (0-100, float) of incoming packets that get random jitter. Default 0.
    FakePacketJitterRecvPct = 58,
    /// Whether each packet carries the time since the previous one, letting the receiver
    /// measure jitter precisely: 0 off, 1 on, -1 (default) the connection type's choice, which
    /// is off for plain UDP. Costs a few bytes per packet.
    SendTimeSincePreviousPacket = 59,
    /// Relay network: only probe this many of the nearest points of presence. Default 16.
    SdrClientLimitPingProbesToNearestN = 60,
    /// P2P: comma-separated STUN servers used to learn public addresses for NAT traversal.
    /// Default empty, which disables NAT piercing through STUN.
    P2pStunServerList = 103,
    /// P2P: bit mask of the ICE candidate kinds shared with the peer (0 none, 1 TURN relay,
    /// 2 private addresses, 4 public addresses); -1 (default) uses the library's choice.
    /// Sharing more finds more routes but reveals more addresses.
    P2pTransportIceEnable = 104,
    /// P2P: penalty, in milliseconds of ping, added to the score of ICE routes when choosing a
    /// route (`transport::Routes`: score = measured ping + penalty, lowest wins). Default 0.
    P2pTransportIcePenalty = 105,
    /// P2P: penalty, in milliseconds of ping, added to the score of routes through the relay
    /// network (the signaling server's relay). Default 20: a relay costs its operator
    /// bandwidth and carries datagrams over TCP, so a direct route is preferred unless it is
    /// more than 20 ms slower. 0 lets the ping alone decide.
    P2pTransportSdrPenalty = 106,
    /// P2P: comma-separated TURN servers. Default empty (no TURN relaying).
    P2pTurnServerList = 107,
    /// P2P: comma-separated user names, one per TURN server. Default empty.
    P2pTurnUserList = 108,
    /// P2P: comma-separated passwords, one per TURN server. Default empty.
    P2pTurnPassList = 109,
    /// P2P: which ICE implementation to use: 0 (default) the library's choice, 1 native,
    /// 2 WebRTC.
    P2pTransportIceImplementation = 110,
    /// Called whenever a connection changes state. Default none. Set it before creating the
    /// connection or listen socket (or globally): events are delivered to whatever handler is
    /// in effect when they happen, possibly on another thread.
    CallbackConnectionStatusChanged = 201,
    /// Called when this endpoint's authentication status (certificate) changes. Default none.
    CallbackAuthStatusChanged = 202,
    /// Called when access to the relay network changes. Default none. Relay network only.
    CallbackRelayNetworkStatusChanged = 203,
    /// Called when a peer asks to open a messages session. Default none. Peer-to-peer only.
    CallbackMessagesSessionRequest = 204,
    /// Called when a messages session fails to connect or breaks. Default none. Peer-to-peer
    /// only.
    CallbackMessagesSessionFailed = 205,
    /// Called to create the signaling channel for a locally started peer-to-peer connection.
    /// Default none.
    CallbackCreateConnectionSignaling = 206,
    /// Called when a fake-IP allocation completes. Default none. Steam only.
    CallbackFakeIpResult = 207,
    /// Experimental: the ECN bits put on outgoing UDP packets (0-3); -1 (default) leaves the
    /// socket's setting alone. An explicit 0 still counts as setting the field.
    Ecn = 999,
    /// punchline's own, not in the reference: connections in Connecting (handshakes from
    /// unproven addresses among them) a listen socket allows before it asks new clients to
    /// prove their address first (a stateless retry with a cookie, costing them a second
    /// round trip). Below it a first contact takes one round trip, and until the client's
    /// address is proven the server sends it at most three times the bytes it received.
    /// Default 0: always the cookie. Above 0 the application sees incoming connections from
    /// addresses not yet proven (they may be spoofed, and their hellos replayed: a hello has
    /// no proof of freshness) and the server checks the signature of every unproven hello;
    /// 64 suits a server that wants the round trip saved. Listen-socket scope (or above).
    UnprovenHandshakesMax = 10_001,
}

impl ConfigValue {
    /// Every value, in ascending id order.
    pub const ALL: &'static [ConfigValue] = &[
        Self::FakePacketLossSend,
        Self::FakePacketLossRecv,
        Self::FakePacketLagSend,
        Self::FakePacketLagRecv,
        Self::FakePacketReorderSend,
        Self::FakePacketReorderRecv,
        Self::FakePacketReorderTime,
        Self::SendBufferSize,
        Self::SendRateMin,
        Self::SendRateMax,
        Self::NagleTime,
        Self::LogLevelAckRtt,
        Self::LogLevelPacketDecode,
        Self::LogLevelMessage,
        Self::LogLevelPacketGaps,
        Self::LogLevelP2pRendezvous,
        Self::LogLevelSdrRelayPings,
        Self::SdrClientConsecutivePingTimeoutsFailInitial,
        Self::SdrClientConsecutivePingTimeoutsFail,
        Self::SdrClientMinPingsBeforePingAccurate,
        Self::SdrClientSingleSocket,
        Self::IpAllowWithoutAuth,
        Self::TimeoutInitial,
        Self::TimeoutConnected,
        Self::FakePacketDupSend,
        Self::FakePacketDupRecv,
        Self::FakePacketDupTimeMax,
        Self::SdrClientForceRelayCluster,
        Self::SdrClientDevTicket,
        Self::SdrClientForceProxyAddr,
        Self::MtuPacketSize,
        Self::MtuDataSize,
        Self::Unencrypted,
        Self::SdrClientFakeClusterPing,
        Self::SymmetricConnect,
        Self::LocalVirtualPort,
        Self::DualWifiEnable,
        Self::ConnectionUserData,
        Self::PacketTraceMaxBytes,
        Self::FakeRateLimitSendRate,
        Self::FakeRateLimitSendBurst,
        Self::FakeRateLimitRecvRate,
        Self::FakeRateLimitRecvBurst,
        Self::EnableDiagnosticsUi,
        Self::RecvBufferSize,
        Self::RecvBufferMessages,
        Self::RecvMaxMessageSize,
        Self::RecvMaxSegmentsPerPacket,
        Self::OutOfOrderCorrectionWindowMicroseconds,
        Self::IpLocalHostAllowWithoutAuth,
        Self::FakePacketJitterSendAvg,
        Self::FakePacketJitterSendMax,
        Self::FakePacketJitterSendPct,
        Self::FakePacketJitterRecvAvg,
        Self::FakePacketJitterRecvMax,
        Self::FakePacketJitterRecvPct,
        Self::SendTimeSincePreviousPacket,
        Self::SdrClientLimitPingProbesToNearestN,
        Self::P2pStunServerList,
        Self::P2pTransportIceEnable,
        Self::P2pTransportIcePenalty,
        Self::P2pTransportSdrPenalty,
        Self::P2pTurnServerList,
        Self::P2pTurnUserList,
        Self::P2pTurnPassList,
        Self::P2pTransportIceImplementation,
        Self::CallbackConnectionStatusChanged,
        Self::CallbackAuthStatusChanged,
        Self::CallbackRelayNetworkStatusChanged,
        Self::CallbackMessagesSessionRequest,
        Self::CallbackMessagesSessionFailed,
        Self::CallbackCreateConnectionSignaling,
        Self::CallbackFakeIpResult,
        Self::Ecn,
        Self::UnprovenHandshakesMax,
    ];

    /// The value with the reference API's numeric id `id`, if there is one.
    pub fn from_id(id: i32) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.id() == id)
    }

    /// The reference API's numeric id.
    pub fn id(self) -> i32 {
        self as i32
    }

    /// The value with the reference API's name (as returned by [`name`](Self::name)), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }

    /// The reference API's name, without its `k_ESteamNetworkingConfig_` prefix, for example
    /// `"SendBufferSize"` or `"FakePacketLoss_Send"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::FakePacketLossSend => "FakePacketLoss_Send",
            Self::FakePacketLossRecv => "FakePacketLoss_Recv",
            Self::FakePacketLagSend => "FakePacketLag_Send",
            Self::FakePacketLagRecv => "FakePacketLag_Recv",
            Self::FakePacketReorderSend => "FakePacketReorder_Send",
            Self::FakePacketReorderRecv => "FakePacketReorder_Recv",
            Self::FakePacketReorderTime => "FakePacketReorder_Time",
            Self::SendBufferSize => "SendBufferSize",
            Self::SendRateMin => "SendRateMin",
            Self::SendRateMax => "SendRateMax",
            Self::NagleTime => "NagleTime",
            Self::LogLevelAckRtt => "LogLevel_AckRTT",
            Self::LogLevelPacketDecode => "LogLevel_PacketDecode",
            Self::LogLevelMessage => "LogLevel_Message",
            Self::LogLevelPacketGaps => "LogLevel_PacketGaps",
            Self::LogLevelP2pRendezvous => "LogLevel_P2PRendezvous",
            Self::LogLevelSdrRelayPings => "LogLevel_SDRRelayPings",
            Self::SdrClientConsecutivePingTimeoutsFailInitial => {
                "SDRClient_ConsecutitivePingTimeoutsFailInitial"
            }
            Self::SdrClientConsecutivePingTimeoutsFail => "SDRClient_ConsecutitivePingTimeoutsFail",
            Self::SdrClientMinPingsBeforePingAccurate => "SDRClient_MinPingsBeforePingAccurate",
            Self::SdrClientSingleSocket => "SDRClient_SingleSocket",
            Self::IpAllowWithoutAuth => "IP_AllowWithoutAuth",
            Self::TimeoutInitial => "TimeoutInitial",
            Self::TimeoutConnected => "TimeoutConnected",
            Self::FakePacketDupSend => "FakePacketDup_Send",
            Self::FakePacketDupRecv => "FakePacketDup_Recv",
            Self::FakePacketDupTimeMax => "FakePacketDup_TimeMax",
            Self::SdrClientForceRelayCluster => "SDRClient_ForceRelayCluster",
            Self::SdrClientDevTicket => "SDRClient_DevTicket",
            Self::SdrClientForceProxyAddr => "SDRClient_ForceProxyAddr",
            Self::MtuPacketSize => "MTU_PacketSize",
            Self::MtuDataSize => "MTU_DataSize",
            Self::Unencrypted => "Unencrypted",
            Self::SdrClientFakeClusterPing => "SDRClient_FakeClusterPing",
            Self::SymmetricConnect => "SymmetricConnect",
            Self::LocalVirtualPort => "LocalVirtualPort",
            Self::DualWifiEnable => "DualWifi_Enable",
            Self::ConnectionUserData => "ConnectionUserData",
            Self::PacketTraceMaxBytes => "PacketTraceMaxBytes",
            Self::FakeRateLimitSendRate => "FakeRateLimit_Send_Rate",
            Self::FakeRateLimitSendBurst => "FakeRateLimit_Send_Burst",
            Self::FakeRateLimitRecvRate => "FakeRateLimit_Recv_Rate",
            Self::FakeRateLimitRecvBurst => "FakeRateLimit_Recv_Burst",
            Self::EnableDiagnosticsUi => "EnableDiagnosticsUI",
            Self::RecvBufferSize => "RecvBufferSize",
            Self::RecvBufferMessages => "RecvBufferMessages",
            Self::RecvMaxMessageSize => "RecvMaxMessageSize",
            Self::RecvMaxSegmentsPerPacket => "RecvMaxSegmentsPerPacket",
            Self::OutOfOrderCorrectionWindowMicroseconds => {
                "OutOfOrderCorrectionWindowMicroseconds"
            }
            Self::IpLocalHostAllowWithoutAuth => "IPLocalHost_AllowWithoutAuth",
            Self::FakePacketJitterSendAvg => "FakePacketJitter_Send_Avg",
            Self::FakePacketJitterSendMax => "FakePacketJitter_Send_Max",
            Self::FakePacketJitterSendPct => "FakePacketJitter_Send_Pct",
            Self::FakePacketJitterRecvAvg => "FakePacketJitter_Recv_Avg",
            Self::FakePacketJitterRecvMax => "FakePacketJitter_Recv_Max",
            Self::FakePacketJitterRecvPct => "FakePacketJitter_Recv_Pct",
            Self::SendTimeSincePreviousPacket => "SendTimeSincePreviousPacket",
            Self::SdrClientLimitPingProbesToNearestN => "SDRClient_LimitPingProbesToNearestN",
            Self::P2pStunServerList => "P2P_STUN_ServerList",
            Self::P2pTransportIceEnable => "P2P_Transport_ICE_Enable",
            Self::P2pTransportIcePenalty => "P2P_Transport_ICE_Penalty",
            Self::P2pTransportSdrPenalty => "P2P_Transport_SDR_Penalty",
            Self::P2pTurnServerList => "P2P_TURN_ServerList",
            Self::P2pTurnUserList => "P2P_TURN_UserList",
            Self::P2pTurnPassList => "P2P_TURN_PassList",
            Self::P2pTransportIceImplementation => "P2P_Transport_ICE_Implementation",
            Self::CallbackConnectionStatusChanged => "Callback_ConnectionStatusChanged",
            Self::CallbackAuthStatusChanged => "Callback_AuthStatusChanged",
            Self::CallbackRelayNetworkStatusChanged => "Callback_RelayNetworkStatusChanged",
            Self::CallbackMessagesSessionRequest => "Callback_MessagesSessionRequest",
            Self::CallbackMessagesSessionFailed => "Callback_MessagesSessionFailed",
            Self::CallbackCreateConnectionSignaling => "Callback_CreateConnectionSignaling",
            Self::CallbackFakeIpResult => "Callback_FakeIPResult",
            Self::Ecn => "ECN",
            Self::UnprovenHandshakesMax => "Punchline_UnprovenHandshakesMax",
        }
    }
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
