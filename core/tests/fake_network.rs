//! Fake loss and lag (global config values) on a real loopback socket pair. Its own test
//! binary, because the values are process-wide.

use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::ConfigTarget;
use punchline::{SendFlags, Sockets};
use std::time::{Duration, Instant};

#[test]
fn fake_loss_and_lag_apply_to_a_loopback_pair() {
    let s = Sockets::new().unwrap();
    let set = |v, d| {
        s.set_config_value(v, ConfigTarget::Global, Some(d))
            .unwrap()
    };
    let (a, b) = s.create_socket_pair(true, None, None).unwrap();
    set(ConfigValue::FakePacketLagSend, ConfigData::Int32(40));
    set(ConfigValue::FakePacketLossSend, ConfigData::Float(20.0));
    // 200 packets' worth: at 20% loss some are certainly lost (the chance of none is 1e-19).
    for i in 0..200u32 {
        let mut m = vec![0u8; 1000];
        m[..4].copy_from_slice(&i.to_be_bytes());
        s.send_message_to_connection(a, m, SendFlags::RELIABLE)
            .unwrap();
    }
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while got.len() < 200 && Instant::now() < end {
        got.extend(s.receive_messages_on_connection(b, 1000).unwrap());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        got.len(),
        200,
        "every reliable message arrives despite 20% loss"
    );
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload[..4], (i as u32).to_be_bytes());
    }
    let q = s.get_quick_connection_status(a).unwrap();
    assert!(q.ping_ms >= 80, "40 ms each way, ping {}", q.ping_ms);
    let text = s.get_detailed_connection_status(a).unwrap();
    assert!(!text.contains("lost 0,"), "losses are seen: {text}");
    set(ConfigValue::FakePacketLagSend, ConfigData::Int32(0));
    set(ConfigValue::FakePacketLossSend, ConfigData::Float(0.0));
}
