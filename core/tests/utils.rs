//! The Utils calls: debug output with its detail level, per-subsystem `LogLevel_*` values and
//! `PacketTraceMaxBytes` packet tracing, over a real loopback connection. (Debug output is
//! process-wide: this file is its own test binary, with one test.)

mod common;

use common::udp_pair;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::utils::{set_debug_output_function, DebugOutputType};
use punchline::api::ConfigTarget;
use punchline::{SendFlags, Sockets};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn debug_output_follows_detail_subsystem_levels_and_packet_trace() {
    let lines: Arc<Mutex<Vec<(DebugOutputType, String)>>> = Arc::default();
    let sink = lines.clone();
    set_debug_output_function(
        DebugOutputType::Everything,
        Some(Arc::new(move |level, line: &str| {
            sink.lock().unwrap().push((level, line.to_string()));
        })),
    );
    let server = Sockets::new().unwrap();
    let global = |v, d| {
        server
            .set_config_value(v, ConfigTarget::Global, Some(d))
            .unwrap()
    };
    global(ConfigValue::PacketTraceMaxBytes, ConfigData::Int32(16));
    let (client, c, _server, _s) = udp_pair(&[]);
    client
        .send_message_to_connection(c, b"quiet".to_vec(), SendFlags::RELIABLE)
        .unwrap();
    // LogLevel_Message at 8 lets per-message lines through.
    global(ConfigValue::LogLevelMessage, ConfigData::Int32(8));
    client
        .send_message_to_connection(c, b"loud".to_vec(), SendFlags::RELIABLE)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    set_debug_output_function(DebugOutputType::None, None);
    global(ConfigValue::PacketTraceMaxBytes, ConfigData::Int32(-1));
    let seen = lines.lock().unwrap().clone();
    let count = |needle: &str| seen.iter().filter(|(_, l)| l.contains(needle)).count();
    assert!(count("-> Connected") >= 2, "{seen:#?}");
    assert!(seen
        .iter()
        .any(|(lvl, l)| *lvl == DebugOutputType::Important && l.contains("-> Connected")));
    // Packets both ways, at most 16 bytes (32 hex digits) shown.
    let packets: Vec<&String> = seen
        .iter()
        .filter(|(_, l)| l.starts_with("packet "))
        .map(|(_, l)| l)
        .collect();
    assert!(packets.iter().any(|l| l.starts_with("packet sent")));
    assert!(packets.iter().any(|l| l.starts_with("packet received")));
    for l in &packets {
        let hex = l.rsplit(": ").next().unwrap();
        assert!(hex.len() <= 32, "{l}");
    }
    // One per-message line: the second message, after the level went up.
    assert_eq!(count("queued on lane 0, 4 bytes"), 1, "{seen:#?}");
    assert_eq!(count("queued on lane 0, 5 bytes"), 0);
    // Nothing after the output was switched off.
    let before = lines.lock().unwrap().len();
    client
        .send_message_to_connection(c, b"silent".to_vec(), SendFlags::RELIABLE)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(lines.lock().unwrap().len(), before);
}
