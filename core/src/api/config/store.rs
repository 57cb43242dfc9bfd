//! The values set on one object ([`ConfigStore`]), how a read walks the scopes
//! ([`resolve`]), and the settings a connection gets from them ([`apply_to_connection`]).

use super::data::{DEFAULT_MTU, MAX_MTU, MIN_MTU};
use super::{info, mtu_data_size, ConfigData, ConfigDataType, ConfigScope, ConfigValue};
use crate::proto::ConnectionConfig;
use std::collections::HashMap;
use std::time::Duration;

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
pub(super) fn to_usize(x: i32, floor: u32) -> usize {
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
pub(super) fn mode(x: i32, max: u8) -> u8 {
    u8::try_from(x.clamp(0, i32::from(max))).unwrap_or(0)
}
