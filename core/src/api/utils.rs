//! The ISteamNetworkingUtils calls that need no relay network: a local timestamp, debug
//! output, and iteration over the config values. (Config values themselves are set and read
//! through [`Sockets`](super::Sockets).)

use super::config::{info, resolve, ConfigData, ConfigStore, ConfigValue};
pub use crate::debug::{DebugOutputFn, DebugOutputType, Subsystem};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// The first timestamp is at least this far from zero, so that "no time" (0) and small
/// differences never look alike (as the reference API promises: 30 days).
const TIMESTAMP_ORIGIN: Duration = Duration::from_secs(30 * 24 * 3600);

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Microseconds on a monotonic clock private to this process; the first value is at least
/// 30 days' worth, and the clock never goes back.
pub fn get_local_timestamp() -> i64 {
    let since = START.elapsed() + TIMESTAMP_ORIGIN;
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// Each subsystem's `LogLevel_*` value.
fn level_value(s: Subsystem) -> ConfigValue {
    match s {
        Subsystem::AckRtt => ConfigValue::LogLevelAckRtt,
        Subsystem::PacketDecode => ConfigValue::LogLevelPacketDecode,
        Subsystem::Message => ConfigValue::LogLevelMessage,
        Subsystem::PacketGaps => ConfigValue::LogLevelPacketGaps,
        Subsystem::P2pRendezvous => ConfigValue::LogLevelP2pRendezvous,
        Subsystem::SdrRelayPings => ConfigValue::LogLevelSdrRelayPings,
    }
}

/// True for a value [`apply_debug_config`] reads.
pub(crate) fn is_debug_value(v: ConfigValue) -> bool {
    v == ConfigValue::PacketTraceMaxBytes
        || crate::debug::SUBSYSTEMS
            .iter()
            .any(|s| level_value(*s) == v)
}

/// Gives the debug output the per-subsystem levels and the packet trace of the global
/// config values.
pub(crate) fn apply_debug_config(global: &ConfigStore) {
    let chain = [global];
    for s in crate::debug::SUBSYSTEMS {
        let level = resolve(level_value(s), &chain).0.as_i32().unwrap_or(4);
        crate::debug::set_level(s, level);
    }
    let trace = resolve(ConfigValue::PacketTraceMaxBytes, &chain)
        .0
        .as_i32()
        .unwrap_or(-1);
    crate::debug::set_packet_trace(trace);
}

/// Sends punchline's debug output of `detail` and coarser to `f`, process-wide (as the
/// reference API's `SetDebugOutputFunction`). Each subsystem's `LogLevel_*` config value
/// (global scope) narrows its own output further; `PacketTraceMaxBytes` ≥ 0 adds a line
/// per datagram at `Msg`. `None` stops the output.
pub fn set_debug_output_function(detail: DebugOutputType, f: Option<DebugOutputFn>) {
    crate::debug::set_output(detail, f);
}

/// The config value after `current` (the first with `None`) that can be set through the
/// generic calls: every value except callbacks; with `enumerate_dev_vars` false,
/// experimental ones are skipped too. `None` after the last.
pub fn iterate_generic_editable_config_values(
    current: Option<ConfigValue>,
    enumerate_dev_vars: bool,
) -> Option<ConfigValue> {
    let start = match current {
        None => 0,
        Some(c) => ConfigValue::ALL.iter().position(|v| *v == c)? + 1,
    };
    ConfigValue::ALL[start..].iter().copied().find(|v| {
        !matches!(info(*v).default, ConfigData::Ptr(_))
            && (enumerate_dev_vars || *v != ConfigValue::Ecn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_start_at_30_days_and_never_go_back() {
        let a = get_local_timestamp();
        assert!(a >= 30 * 24 * 3600 * 1_000_000);
        let b = get_local_timestamp();
        assert!(b >= a);
    }

    #[test]
    fn iteration_visits_every_generic_value_once_in_id_order() {
        let mut seen = Vec::new();
        let mut cur = None;
        while let Some(v) = iterate_generic_editable_config_values(cur, true) {
            seen.push(v);
            cur = Some(v);
        }
        assert!(seen.windows(2).all(|w| (w[0] as i32) < (w[1] as i32)));
        assert!(seen.contains(&ConfigValue::SendRateMax));
        assert!(seen.contains(&ConfigValue::Ecn));
        assert!(!seen.contains(&ConfigValue::CallbackConnectionStatusChanged));
        let callbacks = ConfigValue::ALL
            .iter()
            .filter(|v| matches!(info(**v).default, ConfigData::Ptr(_)))
            .count();
        assert_eq!(seen.len() + callbacks, ConfigValue::ALL.len());
        let mut cur = None;
        while let Some(v) = iterate_generic_editable_config_values(cur, false) {
            assert_ne!(v, ConfigValue::Ecn);
            cur = Some(v);
        }
    }
}
