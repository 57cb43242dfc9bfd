//! Debug output (the reference API's `SetDebugOutputFunction`): punchline reports what it
//! does to a function the application sets, filtered by a detail level and, per subsystem,
//! by the `LogLevel_*` config values (global scope); `PacketTraceMaxBytes` traces every
//! datagram sent and received. With no function set, nothing is formatted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, RwLock};

/// How much detail (the reference API's `ESteamNetworkingSocketsDebugOutputType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DebugOutputType {
    /// Nothing.
    None = 0,
    /// Something is wrong in punchline itself.
    Bug = 1,
    /// A failure.
    Error = 2,
    /// Important events: connections made and ended.
    Important = 3,
    /// Something odd but handled.
    Warning = 4,
    /// Ordinary events.
    Msg = 5,
    /// More detail.
    Verbose = 6,
    /// Per-packet and per-message detail.
    Debug = 7,
    /// Everything.
    Everything = 8,
}

impl DebugOutputType {
    /// The level a number stands for (as the `LogLevel_*` config values hold them).
    pub fn from_i32(n: i32) -> Self {
        match n {
            i32::MIN..=0 => Self::None,
            1 => Self::Bug,
            2 => Self::Error,
            3 => Self::Important,
            4 => Self::Warning,
            5 => Self::Msg,
            6 => Self::Verbose,
            7 => Self::Debug,
            _ => Self::Everything,
        }
    }
}

/// What receives debug output: the detail of the line, and the line.
pub type DebugOutputFn = Arc<dyn Fn(DebugOutputType, &str) + Send + Sync>;

/// A part of punchline with its own `LogLevel_*` config value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subsystem {
    /// Acks and round-trip times (`LogLevel_AckRTT`).
    AckRtt = 0,
    /// Packet decoding (`LogLevel_PacketDecode`).
    PacketDecode = 1,
    /// Messages sent and received (`LogLevel_Message`).
    Message = 2,
    /// Lost and out-of-order packets (`LogLevel_PacketGaps`).
    PacketGaps = 3,
    /// P2P rendezvous signals (`LogLevel_P2PRendezvous`).
    P2pRendezvous = 4,
    /// Relay pings (`LogLevel_SDRRelayPings`).
    SdrRelayPings = 5,
}

static OUTPUT: RwLock<Option<DebugOutputFn>> = RwLock::new(None);
static DETAIL: AtomicI32 = AtomicI32::new(0);
static LEVELS: [AtomicI32; 6] = [const { AtomicI32::new(4) }; 6];
static PACKET_TRACE: AtomicI32 = AtomicI32::new(-1);

/// Sends output of `detail` and coarser to `f` (`None`, or a detail of `None`, stops it).
pub fn set_output(detail: DebugOutputType, f: Option<DebugOutputFn>) {
    let on = f.is_some();
    *OUTPUT.write().unwrap_or_else(|e| e.into_inner()) = f;
    DETAIL.store(if on { detail as i32 } else { 0 }, Ordering::Relaxed);
}

/// Subsystems, in the order of their levels.
pub(crate) const SUBSYSTEMS: [Subsystem; 6] = [
    Subsystem::AckRtt,
    Subsystem::PacketDecode,
    Subsystem::Message,
    Subsystem::PacketGaps,
    Subsystem::P2pRendezvous,
    Subsystem::SdrRelayPings,
];

/// Sets `subsystem`'s level (its `LogLevel_*` config value).
pub(crate) fn set_level(subsystem: Subsystem, level: i32) {
    LEVELS[subsystem as usize].store(level, Ordering::Relaxed);
}

/// Sets the packet trace's byte limit (`PacketTraceMaxBytes`; negative: off).
pub(crate) fn set_packet_trace(max_bytes: i32) {
    PACKET_TRACE.store(max_bytes, Ordering::Relaxed);
}

/// True when output of `level` (from `subsystem`, if any) would be shown.
pub(crate) fn enabled(level: DebugOutputType, subsystem: Option<Subsystem>) -> bool {
    let l = level as i32;
    l <= DETAIL.load(Ordering::Relaxed)
        && subsystem.is_none_or(|s| l <= LEVELS[s as usize].load(Ordering::Relaxed))
}

/// Shows the line `line()` makes, if `level` (from `subsystem`) is wanted.
pub(crate) fn emit(
    level: DebugOutputType,
    subsystem: Option<Subsystem>,
    line: impl FnOnce() -> String,
) {
    if !enabled(level, subsystem) {
        return;
    }
    let f = OUTPUT.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(f) = f {
        f(level, &line());
    }
}

/// True when datagrams are traced (cheap: check before walking a batch).
pub(crate) fn tracing_packets() -> bool {
    PACKET_TRACE.load(Ordering::Relaxed) >= 0
        && DETAIL.load(Ordering::Relaxed) >= DebugOutputType::Msg as i32
}

/// Traces a datagram (`PacketTraceMaxBytes` ≥ 0): direction, peer, length and up to that
/// many bytes in hex.
pub(crate) fn trace_packet(sent: bool, peer: SocketAddr, data: &[u8]) {
    let max = PACKET_TRACE.load(Ordering::Relaxed);
    if !tracing_packets() {
        return;
    }
    emit(DebugOutputType::Msg, None, || {
        let shown = &data[..data.len().min(max as usize)];
        let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
        let dir = if sent { "sent" } else { "received" };
        format!(
            "packet {dir} {} bytes {} {peer}: {hex}",
            data.len(),
            if sent { "to" } else { "from" }
        )
    });
}
