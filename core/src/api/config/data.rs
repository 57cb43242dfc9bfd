//! A value's data, type and scope, and the table of every value's default, range and scope
//! ([`info`]).

use super::ConfigValue;
use std::any::Any;
use std::fmt;
use std::sync::Arc;

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
    pub(super) fn as_number(&self) -> Option<f64> {
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
pub(super) const MAX_MTU: i32 = 65_000;
/// Smallest value of `MTU_PacketSize`.
pub(super) const MIN_MTU: i32 = 576;
/// Default `MTU_PacketSize`.
pub(super) const DEFAULT_MTU: i32 = 1452;
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
        V::UnprovenHandshakesMax => (
            ConfigScope::ListenSocket,
            int(crate::proto::DEFAULT_COOKIE_THRESHOLD as i32),
            (Some(0.0), Some(100_000.0)),
            true,
        ),
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
