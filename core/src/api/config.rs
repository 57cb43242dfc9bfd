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

use crate::proto::ConnectionConfig;
use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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
    /// Bytes of messages that may be queued or awaiting acknowledgement before sending fails
    /// with "limit exceeded". Default 512 KiB. A bigger buffer absorbs bursts but lets a slow
    /// link build up more delay and memory.
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
    /// Largest UDP payload sent, in bytes (576-65000). Default 1300. Larger packets carry less
    /// header overhead but risk IP fragmentation and loss on paths with a smaller MTU.
    MtuPacketSize = 32,
    /// Read-only: the largest message that fits in one packet without being split, derived
    /// from [`MtuPacketSize`](Self::MtuPacketSize) (1271 at the default); see [`mtu_data_size`].
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
    /// [`RecvMaxMessageSize`](Self::RecvMaxMessageSize).
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
        }
    }
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a configuration value's data, with the reference API's numbering.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigDataType {
    /// A 32-bit signed integer.
    Int32 = 1,
    /// A 64-bit signed integer.
    Int64 = 2,
    /// A 32-bit float.
    Float = 3,
    /// A string.
    String = 4,
    /// A callback (a function pointer in the reference API).
    Ptr = 5,
}

impl ConfigDataType {
    /// The data type with the reference API's number `n`, if any.
    pub fn from_i32(n: i32) -> Option<Self> {
        match n {
            1 => Some(Self::Int32),
            2 => Some(Self::Int64),
            3 => Some(Self::Float),
            4 => Some(Self::String),
            5 => Some(Self::Ptr),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigDataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::Float => "float",
            Self::String => "string",
            Self::Ptr => "callback",
        })
    }
}

/// The kind of object a configuration value is set on, with the reference API's numbering.
///
/// Scopes are ordered from least specific (`Global`) to most specific (`Connection`): a
/// setting at a more specific scope overrides the ones at less specific scopes.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigScope {
    /// The process-wide defaults.
    Global = 1,
    /// One sockets interface, and everything created through it.
    SocketsInterface = 2,
    /// One listen socket, and the connections it accepts.
    ListenSocket = 3,
    /// One connection.
    Connection = 4,
}

impl ConfigScope {
    /// The scope with the reference API's number `n`, if any.
    pub fn from_i32(n: i32) -> Option<Self> {
        match n {
            1 => Some(Self::Global),
            2 => Some(Self::SocketsInterface),
            3 => Some(Self::ListenSocket),
            4 => Some(Self::Connection),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Global => "global",
            Self::SocketsInterface => "sockets interface",
            Self::ListenSocket => "listen socket",
            Self::Connection => "connection",
        })
    }
}

/// A callback stored as a configuration value.
///
/// The argument is the event being reported; the API layer that invokes the callback passes its
/// own event type and the callback downcasts it with [`Any::downcast_ref`]. Two `CallbackFn`s
/// are equal when they share the same allocation.
#[derive(Clone)]
pub struct CallbackFn(pub Arc<DynCallback>);

/// The function type behind a [`CallbackFn`]: called with the event, as [`Any`].
pub type DynCallback = dyn Fn(&dyn Any) + Send + Sync;

impl CallbackFn {
    /// Wraps a closure.
    pub fn new(f: impl Fn(&dyn Any) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Invokes the callback with `arg`.
    pub fn call(&self, arg: &dyn Any) {
        (self.0)(arg)
    }
}

impl fmt::Debug for CallbackFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallbackFn(..)")
    }
}

impl PartialEq for CallbackFn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The data of one configuration value.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigData {
    /// A 32-bit integer.
    Int32(i32),
    /// A 64-bit integer.
    Int64(i64),
    /// A float.
    Float(f32),
    /// A string.
    String(String),
    /// A callback, or `None` for no callback.
    Ptr(Option<CallbackFn>),
}

impl ConfigData {
    /// The type of this data.
    pub fn data_type(&self) -> ConfigDataType {
        match self {
            Self::Int32(_) => ConfigDataType::Int32,
            Self::Int64(_) => ConfigDataType::Int64,
            Self::Float(_) => ConfigDataType::Float,
            Self::String(_) => ConfigDataType::String,
            Self::Ptr(_) => ConfigDataType::Ptr,
        }
    }

    /// The integer, if this is `Int32`.
    pub fn as_i32(&self) -> Option<i32> {
        match self {
            Self::Int32(x) => Some(*x),
            _ => None,
        }
    }

    /// The integer, if this is `Int64` (or `Int32`, widened).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int64(x) => Some(*x),
            Self::Int32(x) => Some(i64::from(*x)),
            _ => None,
        }
    }

    /// The number, if this is `Float`.
    pub fn as_f32(&self) -> Option<f32> {
        match self {
            Self::Float(x) => Some(*x),
            _ => None,
        }
    }

    /// The string, if this is `String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The callback, if this is `Ptr` holding one.
    pub fn as_callback(&self) -> Option<&CallbackFn> {
        match self {
            Self::Ptr(cb) => cb.as_ref(),
            _ => None,
        }
    }

    /// The value as a number for range checks; `None` for strings and callbacks.
    fn as_number(&self) -> Option<f64> {
        match self {
            Self::Int32(x) => Some(f64::from(*x)),
            // Precision loss above 2^53 does not matter for range checks.
            Self::Int64(x) => Some(*x as f64),
            Self::Float(x) => Some(f64::from(*x)),
            Self::String(_) | Self::Ptr(_) => None,
        }
    }
}

impl From<i32> for ConfigData {
    fn from(x: i32) -> Self {
        Self::Int32(x)
    }
}

impl From<i64> for ConfigData {
    fn from(x: i64) -> Self {
        Self::Int64(x)
    }
}

impl From<f32> for ConfigData {
    fn from(x: f32) -> Self {
        Self::Float(x)
    }
}

impl From<&str> for ConfigData {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

impl From<String> for ConfigData {
    fn from(s: String) -> Self {
        Self::String(s)
    }
}

impl From<CallbackFn> for ConfigData {
    fn from(cb: CallbackFn) -> Self {
        Self::Ptr(Some(cb))
    }
}

/// Everything known about one configuration value.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigInfo {
    /// The value described.
    pub value: ConfigValue,
    /// Its reference API name (see [`ConfigValue::name`]).
    pub name: &'static str,
    /// The type of its data.
    pub data_type: ConfigDataType,
    /// The most specific scope it may be set at; it may also be set at any less specific one.
    pub scope: ConfigScope,
    /// The value used when it is set nowhere.
    pub default: ConfigData,
    /// Smallest accepted number, if bounded below.
    pub min: Option<f64>,
    /// Largest accepted number, if bounded above.
    pub max: Option<f64>,
    /// Whether it can only be read.
    pub read_only: bool,
    /// Whether it has any effect on plain UDP connections (false for values that only concern
    /// the relay network, peer-to-peer transport or Steam).
    pub applies_to_ip: bool,
}

/// Largest value of `MTU_PacketSize`.
const MAX_MTU: i32 = 65_000;
/// Smallest value of `MTU_PacketSize`.
const MIN_MTU: i32 = 576;
/// Default `MTU_PacketSize`.
const DEFAULT_MTU: i32 = 1300;
/// Upper bound of the buffer-size values (256 MiB).
const MAX_BUFFER: f64 = 268_435_456.0;
/// Largest message size the wire format can describe (64 MiB; `proto::codec`'s cap).
const MAX_MESSAGE: f64 = 67_108_864.0;
/// Largest 32-bit integer, as a bound.
const I32_MAX: f64 = i32::MAX as f64;

/// The largest message that fits in one packet of `mtu_packet_size` bytes without being split:
/// the packet size minus the short header (9 bytes), the authentication tag (16) and the
/// smallest message segment header (4). Never negative.
pub fn mtu_data_size(mtu_packet_size: i32) -> i32 {
    const HEADER: i32 = 9;
    const TAG: i32 = 16;
    const SEGMENT_HEADER: i32 = 4;
    mtu_packet_size
        .saturating_sub(HEADER + TAG + SEGMENT_HEADER)
        .max(0)
}

/// The table: type, scope, default, range and applicability of every value.
pub fn info(v: ConfigValue) -> ConfigInfo {
    use ConfigScope::{Connection as Conn, Global};
    use ConfigValue as V;

    let int = ConfigData::Int32;
    let float = ConfigData::Float;
    let string = || ConfigData::String(String::new());
    let no_callback = || ConfigData::Ptr(None);
    let percent = (Some(0.0), Some(100.0));
    let millis = (Some(0.0), Some(5000.0));
    let log_level = (Some(0.0), Some(8.0));
    let flag = (Some(0.0), Some(1.0));
    let non_negative = (Some(0.0), Some(I32_MAX));
    let unbounded = (None, None);

    // (scope, default, (min, max), applies to plain UDP connections)
    let (scope, default, (min, max), applies_to_ip) = match v {
        V::FakePacketLossSend | V::FakePacketLossRecv => (Global, float(0.0), percent, true),
        V::FakePacketLagSend | V::FakePacketLagRecv => (Global, int(0), millis, true),
        V::FakePacketReorderSend | V::FakePacketReorderRecv => (Global, float(0.0), percent, true),
        V::FakePacketReorderTime => (Global, int(15), millis, true),
        V::SendBufferSize => (Conn, int(524_288), (Some(0.0), Some(MAX_BUFFER)), true),
        V::SendRateMin => (Conn, int(65_536), (Some(1024.0), Some(I32_MAX)), true),
        V::SendRateMax => (Conn, int(1 << 30), (Some(1024.0), Some(I32_MAX)), true),
        V::NagleTime => (Conn, int(5000), (Some(0.0), Some(20_000.0)), true),
        V::LogLevelAckRtt
        | V::LogLevelPacketDecode
        | V::LogLevelMessage
        | V::LogLevelPacketGaps => (Global, int(4), log_level, true),
        V::LogLevelP2pRendezvous | V::LogLevelSdrRelayPings => (Global, int(4), log_level, false),
        V::SdrClientConsecutivePingTimeoutsFailInitial => {
            (Global, int(0), (Some(0.0), Some(1000.0)), false)
        }
        V::SdrClientConsecutivePingTimeoutsFail => {
            (Global, int(4), (Some(0.0), Some(1000.0)), false)
        }
        V::SdrClientMinPingsBeforePingAccurate => {
            (Global, int(10), (Some(0.0), Some(100.0)), false)
        }
        V::SdrClientSingleSocket => (Global, int(0), flag, false),
        V::IpAllowWithoutAuth => (Conn, int(0), (Some(0.0), Some(2.0)), true),
        V::TimeoutInitial | V::TimeoutConnected => (Conn, int(10_000), non_negative, true),
        V::FakePacketDupSend | V::FakePacketDupRecv => (Global, float(0.0), percent, true),
        V::FakePacketDupTimeMax => (Global, int(10), millis, true),
        V::SdrClientForceRelayCluster | V::SdrClientDevTicket | V::SdrClientForceProxyAddr => {
            (Global, string(), unbounded, false)
        }
        V::MtuPacketSize => (
            Conn,
            int(DEFAULT_MTU),
            (Some(f64::from(MIN_MTU)), Some(f64::from(MAX_MTU))),
            true,
        ),
        V::MtuDataSize => (Conn, int(mtu_data_size(DEFAULT_MTU)), unbounded, true),
        V::Unencrypted => (Conn, int(0), (Some(0.0), Some(3.0)), true),
        V::SdrClientFakeClusterPing => (Global, string(), unbounded, false),
        V::SymmetricConnect => (Conn, int(0), flag, false),
        V::LocalVirtualPort => (Conn, int(-1), (Some(-1.0), Some(65_535.0)), false),
        V::DualWifiEnable => (Conn, int(0), (Some(0.0), Some(2.0)), false),
        V::ConnectionUserData => (Conn, ConfigData::Int64(-1), unbounded, true),
        V::PacketTraceMaxBytes => (Global, int(-1), (Some(-1.0), Some(I32_MAX)), true),
        V::FakeRateLimitSendRate | V::FakeRateLimitRecvRate => (Global, int(0), non_negative, true),
        V::FakeRateLimitSendBurst | V::FakeRateLimitRecvBurst => {
            (Global, int(16_384), non_negative, true)
        }
        V::EnableDiagnosticsUi => (Conn, int(0), flag, false),
        V::RecvBufferSize => (Conn, int(1_048_576), (Some(0.0), Some(MAX_BUFFER)), true),
        V::RecvBufferMessages => (Conn, int(1000), (Some(0.0), Some(MAX_BUFFER)), true),
        V::RecvMaxMessageSize => (Conn, int(524_288), (Some(1024.0), Some(MAX_MESSAGE)), true),
        V::RecvMaxSegmentsPerPacket => (Conn, int(256), (Some(1.0), Some(1000.0)), true),
        V::OutOfOrderCorrectionWindowMicroseconds => {
            (Conn, int(1000), (Some(0.0), Some(1_000_000.0)), true)
        }
        V::IpLocalHostAllowWithoutAuth => (Conn, int(0), (Some(0.0), Some(2.0)), true),
        V::FakePacketJitterSendAvg | V::FakePacketJitterRecvAvg => {
            (Global, float(0.0), millis, true)
        }
        V::FakePacketJitterSendMax | V::FakePacketJitterRecvMax => (Global, int(0), millis, true),
        V::FakePacketJitterSendPct | V::FakePacketJitterRecvPct => {
            (Global, float(0.0), percent, true)
        }
        V::SendTimeSincePreviousPacket => (Conn, int(-1), (Some(-1.0), Some(1.0)), true),
        V::SdrClientLimitPingProbesToNearestN => (Global, int(16), non_negative, false),
        V::P2pStunServerList => (Conn, string(), unbounded, false),
        V::P2pTransportIceEnable => (Conn, int(-1), (Some(-1.0), Some(I32_MAX)), false),
        V::P2pTransportIcePenalty => (Conn, int(0), non_negative, false),
        V::P2pTransportSdrPenalty => (Conn, int(20), non_negative, false),
        V::P2pTurnServerList | V::P2pTurnUserList | V::P2pTurnPassList => {
            (Conn, string(), unbounded, false)
        }
        V::P2pTransportIceImplementation => (Conn, int(0), (Some(0.0), Some(2.0)), false),
        V::CallbackConnectionStatusChanged => (Conn, no_callback(), unbounded, true),
        V::CallbackAuthStatusChanged => (Global, no_callback(), unbounded, true),
        V::CallbackRelayNetworkStatusChanged
        | V::CallbackMessagesSessionRequest
        | V::CallbackMessagesSessionFailed
        | V::CallbackCreateConnectionSignaling
        | V::CallbackFakeIpResult => (Global, no_callback(), unbounded, false),
        V::Ecn => (Conn, int(-1), (Some(-1.0), Some(3.0)), true),
    };

    ConfigInfo {
        value: v,
        name: v.name(),
        data_type: default.data_type(),
        scope,
        default,
        min,
        max,
        read_only: v == V::MtuDataSize,
        applies_to_ip,
    }
}

/// How a value returned by [`resolve`] was found, with the reference API's numbering.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GetResult {
    /// The value was set on the object asked about.
    Ok = 1,
    /// The value was not set on the object asked about; it was inherited from a less specific
    /// scope or is the default.
    OkInherited = 2,
}

/// Why a configuration value could not be set or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No configuration value has the given id (the reference API's `BadValue`, -1).
    #[error("no such configuration value")]
    BadValue,
    /// The value cannot be set at this scope.
    #[error("config value {value} cannot be set at {scope} scope")]
    BadScope {
        /// The value's name.
        value: &'static str,
        /// The scope asked for.
        scope: ConfigScope,
    },
    /// The object the value was to be set on or read from does not exist (a bad handle; the
    /// reference API's `BadScopeObj`).
    #[error("no such object to get or set config values on")]
    BadScopeObject,
    /// The data given is of the wrong type.
    #[error("config value {value} takes {expected} data, not {got}")]
    WrongType {
        /// The value's name.
        value: &'static str,
        /// The type the value takes.
        expected: ConfigDataType,
        /// The type given.
        got: ConfigDataType,
    },
    /// The number given is outside the value's range.
    #[error("config value {value} must be within {min}..={max}, not {given}")]
    OutOfRange {
        /// The value's name.
        value: &'static str,
        /// The number given.
        given: f64,
        /// Smallest accepted number (negative infinity when unbounded).
        min: f64,
        /// Largest accepted number (infinity when unbounded).
        max: f64,
    },
    /// The value can only be read.
    #[error("config value {0} is read-only")]
    ReadOnly(&'static str),
}

/// Checks that `v` may be set at `scope`: at its own scope or any less specific one. A
/// connection value may thus be set on a connection, a listen socket, an interface or globally;
/// a global value only globally.
pub fn check_scope(v: ConfigValue, scope: ConfigScope) -> Result<(), ConfigError> {
    if scope <= info(v).scope {
        Ok(())
    } else {
        Err(ConfigError::BadScope {
            value: v.name(),
            scope,
        })
    }
}

/// The values explicitly set on one object (the global defaults, an interface, a listen socket
/// or a connection). Values not set here are inherited; see [`resolve`].
#[derive(Default, Clone, Debug)]
pub struct ConfigStore {
    values: HashMap<ConfigValue, ConfigData>,
}

impl ConfigStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `v` to `data`, or clears it (so that it is inherited again) when `data` is `None`.
    ///
    /// The data must be of the value's type, except that `Int32` data is accepted for `Int64`
    /// and `Float` values and converted. Numbers must lie within the value's range. Read-only
    /// values are refused. Whether the value may be set at this store's scope is not checked
    /// here; see [`check_scope`].
    pub fn set(&mut self, v: ConfigValue, data: Option<ConfigData>) -> Result<(), ConfigError> {
        let info = info(v);
        if info.read_only {
            return Err(ConfigError::ReadOnly(info.name));
        }
        let Some(data) = data else {
            self.values.remove(&v);
            return Ok(());
        };
        let data = match (info.data_type, data) {
            (expected, data) if data.data_type() == expected => data,
            (ConfigDataType::Int64, ConfigData::Int32(x)) => ConfigData::Int64(i64::from(x)),
            // i32 to f32 may round above 2^24; no float value has a range that large.
            (ConfigDataType::Float, ConfigData::Int32(x)) => ConfigData::Float(x as f32),
            (expected, data) => {
                return Err(ConfigError::WrongType {
                    value: info.name,
                    expected,
                    got: data.data_type(),
                })
            }
        };
        if let Some(given) = data.as_number() {
            let min = info.min.unwrap_or(f64::NEG_INFINITY);
            let max = info.max.unwrap_or(f64::INFINITY);
            if given.is_nan() || given < min || given > max {
                return Err(ConfigError::OutOfRange {
                    value: info.name,
                    given,
                    min,
                    max,
                });
            }
        }
        self.values.insert(v, data);
        Ok(())
    }

    /// The data of `v` if it is set here.
    pub fn get(&self, v: ConfigValue) -> Option<&ConfigData> {
        self.values.get(&v)
    }

    /// The values set here, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (ConfigValue, &ConfigData)> + '_ {
        self.values.iter().map(|(v, d)| (*v, d))
    }

    /// Whether nothing is set here.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The effective data of `v` for an object whose stores, from the object itself towards the
/// global level, are `chain`.
///
/// The first store that sets `v` wins: the result is [`GetResult::Ok`] when that is `chain[0]`
/// and [`GetResult::OkInherited`] otherwise. When no store sets it, the default is returned,
/// as `OkInherited` (or as `Ok` when `chain` is empty, meaning the defaults themselves were
/// asked for). The read-only `MTU_DataSize` is derived from the effective `MTU_PacketSize`.
pub fn resolve(v: ConfigValue, chain: &[&ConfigStore]) -> (ConfigData, GetResult) {
    if v == ConfigValue::MtuDataSize {
        let (mtu, how) = resolve(ConfigValue::MtuPacketSize, chain);
        let mtu = mtu.as_i32().unwrap_or(DEFAULT_MTU);
        return (ConfigData::Int32(mtu_data_size(mtu)), how);
    }
    for (i, store) in chain.iter().enumerate() {
        if let Some(data) = store.get(v) {
            let how = if i == 0 {
                GetResult::Ok
            } else {
                GetResult::OkInherited
            };
            return (data.clone(), how);
        }
    }
    let how = if chain.is_empty() {
        GetResult::Ok
    } else {
        GetResult::OkInherited
    };
    (info(v).default, how)
}

/// The effective integer of an `Int32` value.
fn resolve_i32(v: ConfigValue, chain: &[&ConfigStore]) -> i32 {
    let (data, _) = resolve(v, chain);
    data.as_i32()
        .or_else(|| info(v).default.as_i32())
        .unwrap_or(0)
}

/// `x` as a `usize`, negative numbers counting as `floor`.
fn to_usize(x: i32, floor: u32) -> usize {
    x.max(0).unsigned_abs().max(floor) as usize
}

/// Resolves every value the protocol uses per connection through `chain` (see [`resolve`]) and
/// writes it into `cfg`. `cfg.expected_peer` is left alone.
///
/// Out-of-range numbers (which [`ConfigStore::set`] does not let in) are clamped: timeouts to at
/// least 1 ms, the Nagle delay to at least zero, the MTU to what the protocol supports, sizes to
/// at least zero (segments per packet and the maximum rate to at least one) and the
/// authentication and encryption modes to their valid ranges.
pub fn apply_to_connection(chain: &[&ConfigStore], cfg: &mut ConnectionConfig) {
    let get = |v| resolve_i32(v, chain);
    let millis = |v| Duration::from_millis(u64::from(get(v).max(1).unsigned_abs()));
    let byte_rate = |v, floor: u32| u64::from(get(v).max(0).unsigned_abs().max(floor));

    cfg.timeout_initial = millis(ConfigValue::TimeoutInitial);
    cfg.timeout_connected = millis(ConfigValue::TimeoutConnected);
    cfg.nagle_time =
        Duration::from_micros(u64::from(get(ConfigValue::NagleTime).max(0).unsigned_abs()));
    cfg.mtu_packet_size = to_usize(get(ConfigValue::MtuPacketSize).clamp(MIN_MTU, MAX_MTU), 0);
    cfg.send_buffer_size = to_usize(get(ConfigValue::SendBufferSize), 0);
    cfg.recv_buffer_size = to_usize(get(ConfigValue::RecvBufferSize), 0);
    cfg.recv_buffer_messages = to_usize(get(ConfigValue::RecvBufferMessages), 0);
    cfg.recv_max_message_size = to_usize(get(ConfigValue::RecvMaxMessageSize), 0);
    cfg.recv_max_segments_per_packet = to_usize(get(ConfigValue::RecvMaxSegmentsPerPacket), 1);
    cfg.send_rate_min = byte_rate(ConfigValue::SendRateMin, 0);
    cfg.send_rate_max = byte_rate(ConfigValue::SendRateMax, 1);
    cfg.unencrypted = mode(get(ConfigValue::Unencrypted), 3);
    cfg.allow_without_auth = mode(get(ConfigValue::IpAllowWithoutAuth), 2);
    cfg.localhost_allow_without_auth = mode(get(ConfigValue::IpLocalHostAllowWithoutAuth), 2);
}

/// A small enumerated setting clamped to `0..=max`.
fn mode(x: i32, max: u8) -> u8 {
    u8::try_from(x.clamp(0, i32::from(max))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicI32, Ordering};

    /// Rows transcribed from the reference table (ids 2-34, 36-60, 103-110, 201-207, 999).
    const ROWS: usize = 74;

    #[test]
    fn ids_round_trip() {
        for &v in ConfigValue::ALL {
            assert_eq!(ConfigValue::from_id(v.id()), Some(v), "{v:?}");
            assert_eq!(ConfigValue::from_name(v.name()), Some(v), "{v:?}");
        }
        for id in [-1, 0, 1, 35, 61, 102, 111, 200, 208, 998, 1000, i32::MAX] {
            assert_eq!(ConfigValue::from_id(id), None, "{id}");
        }
    }

    #[test]
    fn all_is_complete_and_unique() {
        assert_eq!(ConfigValue::ALL.len(), ROWS);
        let ids: HashSet<i32> = ConfigValue::ALL.iter().map(|v| v.id()).collect();
        assert_eq!(ids.len(), ROWS);
        let names: HashSet<&str> = ConfigValue::ALL.iter().map(|v| v.name()).collect();
        assert_eq!(names.len(), ROWS);
        assert!(ConfigValue::ALL.windows(2).all(|w| w[0].id() < w[1].id()));
        let expected: Vec<i32> = (2..=34)
            .chain(36..=60)
            .chain(103..=110)
            .chain(201..=207)
            .chain([999])
            .collect();
        let got: Vec<i32> = ConfigValue::ALL.iter().map(|v| v.id()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn reference_ids_and_names() {
        use ConfigValue as V;
        let cases = [
            (V::FakePacketLossSend, 2, "FakePacketLoss_Send"),
            (V::SendBufferSize, 9, "SendBufferSize"),
            (V::NagleTime, 12, "NagleTime"),
            (V::IpAllowWithoutAuth, 23, "IP_AllowWithoutAuth"),
            (V::MtuPacketSize, 32, "MTU_PacketSize"),
            (V::MtuDataSize, 33, "MTU_DataSize"),
            (V::SymmetricConnect, 37, "SymmetricConnect"),
            (V::LocalVirtualPort, 38, "LocalVirtualPort"),
            (V::ConnectionUserData, 40, "ConnectionUserData"),
            (
                V::IpLocalHostAllowWithoutAuth,
                52,
                "IPLocalHost_AllowWithoutAuth",
            ),
            (V::P2pStunServerList, 103, "P2P_STUN_ServerList"),
            (
                V::P2pTransportIceImplementation,
                110,
                "P2P_Transport_ICE_Implementation",
            ),
            (
                V::CallbackConnectionStatusChanged,
                201,
                "Callback_ConnectionStatusChanged",
            ),
            (V::CallbackFakeIpResult, 207, "Callback_FakeIPResult"),
            (V::Ecn, 999, "ECN"),
        ];
        for (v, id, name) in cases {
            assert_eq!(v.id(), id);
            assert_eq!(v.name(), name);
            assert_eq!(v.to_string(), name);
        }
    }

    #[test]
    fn table_is_consistent() {
        for &v in ConfigValue::ALL {
            let i = info(v);
            assert_eq!(i.value, v);
            assert_eq!(i.name, v.name());
            assert_eq!(i.default.data_type(), i.data_type, "{v:?}");
            if let Some(n) = i.default.as_number() {
                assert!(i.min.is_none_or(|m| n >= m), "{v:?} default below min");
                assert!(i.max.is_none_or(|m| n <= m), "{v:?} default above max");
            }
            if i.data_type == ConfigDataType::Ptr {
                assert_eq!(i.default, ConfigData::Ptr(None));
            }
        }
        let read_only: Vec<_> = ConfigValue::ALL
            .iter()
            .filter(|v| info(**v).read_only)
            .collect();
        assert_eq!(read_only, [&ConfigValue::MtuDataSize]);
        assert_eq!(
            info(ConfigValue::ConnectionUserData).data_type,
            ConfigDataType::Int64
        );
        assert_eq!(
            info(ConfigValue::FakePacketLossSend).scope,
            ConfigScope::Global
        );
        assert_eq!(
            info(ConfigValue::CallbackConnectionStatusChanged).scope,
            ConfigScope::Connection
        );
        assert_eq!(
            info(ConfigValue::CallbackAuthStatusChanged).scope,
            ConfigScope::Global
        );
        assert!(!info(ConfigValue::SdrClientDevTicket).applies_to_ip);
        assert!(info(ConfigValue::SendBufferSize).applies_to_ip);
    }

    #[test]
    fn defaults_match_the_protocol() {
        let mut cfg = ConnectionConfig {
            nagle_time: Duration::ZERO,
            mtu_packet_size: 9000,
            unencrypted: 3,
            ..ConnectionConfig::default()
        };
        apply_to_connection(&[], &mut cfg);
        let d = ConnectionConfig::default();
        assert_eq!(cfg.timeout_initial, d.timeout_initial);
        assert_eq!(cfg.timeout_connected, d.timeout_connected);
        assert_eq!(cfg.nagle_time, d.nagle_time);
        assert_eq!(cfg.mtu_packet_size, d.mtu_packet_size);
        assert_eq!(cfg.send_buffer_size, d.send_buffer_size);
        assert_eq!(cfg.recv_buffer_size, d.recv_buffer_size);
        assert_eq!(cfg.recv_buffer_messages, d.recv_buffer_messages);
        assert_eq!(cfg.recv_max_message_size, d.recv_max_message_size);
        assert_eq!(
            cfg.recv_max_segments_per_packet,
            d.recv_max_segments_per_packet
        );
        assert_eq!(cfg.send_rate_min, d.send_rate_min);
        assert_eq!(cfg.send_rate_max, d.send_rate_max);
        assert_eq!(cfg.unencrypted, d.unencrypted);
        assert_eq!(cfg.allow_without_auth, d.allow_without_auth);
        assert_eq!(
            cfg.localhost_allow_without_auth,
            d.localhost_allow_without_auth
        );
    }

    #[test]
    fn set_checks_type() {
        let mut s = ConfigStore::new();
        assert_eq!(
            s.set(ConfigValue::SendBufferSize, Some("big".into())),
            Err(ConfigError::WrongType {
                value: "SendBufferSize",
                expected: ConfigDataType::Int32,
                got: ConfigDataType::String,
            })
        );
        assert!(matches!(
            s.set(ConfigValue::NagleTime, Some(ConfigData::Float(1.0))),
            Err(ConfigError::WrongType { .. })
        ));
        assert!(matches!(
            s.set(ConfigValue::NagleTime, Some(ConfigData::Int64(1))),
            Err(ConfigError::WrongType { .. })
        ));
        // Int32 is accepted for Int64 and Float values, and converted.
        s.set(ConfigValue::ConnectionUserData, Some(7.into()))
            .unwrap();
        assert_eq!(
            s.get(ConfigValue::ConnectionUserData),
            Some(&ConfigData::Int64(7))
        );
        s.set(ConfigValue::FakePacketLossSend, Some(5.into()))
            .unwrap();
        assert_eq!(
            s.get(ConfigValue::FakePacketLossSend),
            Some(&ConfigData::Float(5.0))
        );
        s.set(
            ConfigValue::P2pStunServerList,
            Some("stun.example:3478".into()),
        )
        .unwrap();
        assert_eq!(
            s.get(ConfigValue::P2pStunServerList)
                .and_then(ConfigData::as_str),
            Some("stun.example:3478")
        );
        assert_eq!(s.iter().count(), 3);
        // None clears.
        s.set(ConfigValue::ConnectionUserData, None).unwrap();
        assert_eq!(s.get(ConfigValue::ConnectionUserData), None);
        assert_eq!(s.iter().count(), 2);
    }

    #[test]
    fn set_checks_range() {
        let mut s = ConfigStore::new();
        let err = s.set(ConfigValue::Unencrypted, Some(4.into())).unwrap_err();
        assert_eq!(
            err,
            ConfigError::OutOfRange {
                value: "Unencrypted",
                given: 4.0,
                min: 0.0,
                max: 3.0,
            }
        );
        assert!(err.to_string().contains("Unencrypted"));
        assert!(s.set(ConfigValue::MtuPacketSize, Some(500.into())).is_err());
        assert!(s
            .set(ConfigValue::MtuPacketSize, Some(65_001.into()))
            .is_err());
        assert!(s
            .set(ConfigValue::FakePacketLossSend, Some(100.5f32.into()))
            .is_err());
        assert!(s
            .set(ConfigValue::FakePacketLossSend, Some(f32::NAN.into()))
            .is_err());
        assert!(s
            .set(ConfigValue::LocalVirtualPort, Some((-2).into()))
            .is_err());
        assert!(s.is_empty());
        s.set(ConfigValue::MtuPacketSize, Some(576.into())).unwrap();
        s.set(ConfigValue::LocalVirtualPort, Some((-1).into()))
            .unwrap();
        s.set(ConfigValue::ConnectionUserData, Some(i64::MIN.into()))
            .unwrap();
    }

    #[test]
    fn set_refuses_read_only() {
        let mut s = ConfigStore::new();
        let err = s
            .set(ConfigValue::MtuDataSize, Some(1000.into()))
            .unwrap_err();
        assert_eq!(err, ConfigError::ReadOnly("MTU_DataSize"));
        assert!(err.to_string().contains("MTU_DataSize"));
        assert!(s.set(ConfigValue::MtuDataSize, None).is_err());
    }

    #[test]
    fn scopes() {
        use ConfigScope::*;
        for scope in [Global, SocketsInterface, ListenSocket, Connection] {
            assert_eq!(ConfigScope::from_i32(scope as i32), Some(scope));
            check_scope(ConfigValue::SendBufferSize, scope).unwrap();
            check_scope(ConfigValue::CallbackConnectionStatusChanged, scope).unwrap();
        }
        check_scope(ConfigValue::FakePacketLossSend, Global).unwrap();
        for scope in [SocketsInterface, ListenSocket, Connection] {
            let err = check_scope(ConfigValue::FakePacketLossSend, scope).unwrap_err();
            assert_eq!(
                err,
                ConfigError::BadScope {
                    value: "FakePacketLoss_Send",
                    scope
                }
            );
            assert!(err.to_string().contains("FakePacketLoss_Send"));
            assert!(check_scope(ConfigValue::CallbackAuthStatusChanged, scope).is_err());
        }
        assert_eq!(ConfigScope::from_i32(0), None);
        assert_eq!(ConfigDataType::from_i32(5), Some(ConfigDataType::Ptr));
        assert_eq!(ConfigDataType::from_i32(6), None);
    }

    #[test]
    fn resolve_inherits() {
        let mut global = ConfigStore::new();
        let listen = ConfigStore::new();
        let mut conn = ConfigStore::new();
        let v = ConfigValue::SendBufferSize;

        // Nothing set anywhere: the default, inherited.
        assert_eq!(
            resolve(v, &[&conn, &listen, &global]),
            (ConfigData::Int32(524_288), GetResult::OkInherited)
        );
        // Asking the defaults themselves.
        assert_eq!(resolve(v, &[]), (ConfigData::Int32(524_288), GetResult::Ok));

        global.set(v, Some(1000.into())).unwrap();
        assert_eq!(
            resolve(v, &[&conn, &listen, &global]),
            (ConfigData::Int32(1000), GetResult::OkInherited)
        );
        assert_eq!(
            resolve(v, &[&global]),
            (ConfigData::Int32(1000), GetResult::Ok)
        );

        conn.set(v, Some(2000.into())).unwrap();
        assert_eq!(
            resolve(v, &[&conn, &listen, &global]),
            (ConfigData::Int32(2000), GetResult::Ok)
        );
        assert_eq!(
            resolve(v, &[&listen, &global]),
            (ConfigData::Int32(1000), GetResult::OkInherited)
        );
    }

    #[test]
    fn mtu_data_size_is_derived() {
        assert_eq!(mtu_data_size(1300), 1271);
        assert_eq!(mtu_data_size(0), 0);
        assert_eq!(
            resolve(ConfigValue::MtuDataSize, &[]),
            (ConfigData::Int32(1271), GetResult::Ok)
        );
        let mut listen = ConfigStore::new();
        listen
            .set(ConfigValue::MtuPacketSize, Some(1000.into()))
            .unwrap();
        let conn = ConfigStore::new();
        assert_eq!(
            resolve(ConfigValue::MtuDataSize, &[&conn, &listen]),
            (ConfigData::Int32(971), GetResult::OkInherited)
        );
    }

    #[test]
    fn apply_maps_units() {
        let mut global = ConfigStore::new();
        let mut conn = ConfigStore::new();
        global
            .set(ConfigValue::TimeoutInitial, Some(1500.into()))
            .unwrap();
        global
            .set(ConfigValue::NagleTime, Some(9999.into()))
            .unwrap();
        conn.set(ConfigValue::NagleTime, Some(2500.into())).unwrap();
        conn.set(ConfigValue::TimeoutConnected, Some(30_000.into()))
            .unwrap();
        conn.set(ConfigValue::MtuPacketSize, Some(1200.into()))
            .unwrap();
        conn.set(ConfigValue::SendRateMin, Some(100_000.into()))
            .unwrap();
        conn.set(ConfigValue::SendRateMax, Some(100_000.into()))
            .unwrap();
        conn.set(ConfigValue::Unencrypted, Some(2.into())).unwrap();
        conn.set(ConfigValue::IpLocalHostAllowWithoutAuth, Some(1.into()))
            .unwrap();
        conn.set(ConfigValue::RecvMaxSegmentsPerPacket, Some(2.into()))
            .unwrap();

        let mut cfg = ConnectionConfig::default();
        apply_to_connection(&[&conn, &global], &mut cfg);
        assert_eq!(cfg.nagle_time, Duration::from_micros(2500));
        assert_eq!(cfg.timeout_initial, Duration::from_millis(1500));
        assert_eq!(cfg.timeout_connected, Duration::from_secs(30));
        assert_eq!(cfg.mtu_packet_size, 1200);
        assert_eq!((cfg.send_rate_min, cfg.send_rate_max), (100_000, 100_000));
        assert_eq!(cfg.unencrypted, 2);
        assert_eq!(cfg.allow_without_auth, 0);
        assert_eq!(cfg.localhost_allow_without_auth, 1);
        assert_eq!(cfg.recv_max_segments_per_packet, 2);
        assert!(cfg.expected_peer.is_none());
    }

    #[test]
    fn apply_clamps() {
        let mut s = ConfigStore::new();
        s.set(ConfigValue::TimeoutInitial, Some(0.into())).unwrap();
        s.set(ConfigValue::NagleTime, Some(0.into())).unwrap();
        let mut cfg = ConnectionConfig::default();
        apply_to_connection(&[&s], &mut cfg);
        assert_eq!(cfg.timeout_initial, Duration::from_millis(1));
        assert_eq!(cfg.nagle_time, Duration::ZERO);
        assert_eq!(mode(-5, 3), 0);
        assert_eq!(mode(7, 2), 2);
        assert_eq!(to_usize(-5, 1), 1);
    }

    #[test]
    fn callbacks() {
        let hits = Arc::new(AtomicI32::new(0));
        let h = hits.clone();
        let cb = CallbackFn::new(move |arg| {
            if let Some(n) = arg.downcast_ref::<i32>() {
                h.fetch_add(*n, Ordering::SeqCst);
            }
        });
        let other = CallbackFn::new(|_| {});
        assert_eq!(cb, cb.clone());
        assert_ne!(cb, other);
        assert_eq!(format!("{cb:?}"), "CallbackFn(..)");

        let mut s = ConfigStore::new();
        s.set(
            ConfigValue::CallbackConnectionStatusChanged,
            Some(cb.clone().into()),
        )
        .unwrap();
        assert!(matches!(
            s.set(ConfigValue::CallbackAuthStatusChanged, Some(1.into())),
            Err(ConfigError::WrongType { .. })
        ));
        let (data, how) = resolve(ConfigValue::CallbackConnectionStatusChanged, &[&s]);
        assert_eq!(how, GetResult::Ok);
        data.as_callback().unwrap().call(&3i32);
        data.as_callback().unwrap().call(&"ignored");
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        assert_eq!(
            resolve(ConfigValue::CallbackAuthStatusChanged, &[&s]).0,
            ConfigData::Ptr(None)
        );
    }

    #[test]
    fn data_accessors() {
        assert_eq!(ConfigData::Int32(3).as_i32(), Some(3));
        assert_eq!(ConfigData::Int32(3).as_i64(), Some(3));
        assert_eq!(ConfigData::Int64(3).as_i32(), None);
        assert_eq!(ConfigData::Float(1.5).as_f32(), Some(1.5));
        assert_eq!(ConfigData::Float(1.5).as_str(), None);
        assert_eq!(ConfigData::Ptr(None).as_callback(), None);
        assert_eq!(
            ConfigData::String(String::new()).data_type(),
            ConfigDataType::String
        );
    }
}
