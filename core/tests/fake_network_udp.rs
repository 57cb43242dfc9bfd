//! The fake network conditions on real loopback UDP in real time, with a sender thread and
//! a receiver thread: the one suite that runs them through the kernel's sockets and the
//! service threads (`fake_network` and `loss_matrix` run in virtual worlds). The values are
//! the process's, so this binary holds this one test.

mod common;

use common::udp_pair;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::ConfigTarget;
use punchline::{Error, SendFlags};
use std::time::{Duration, Instant};

#[test]
fn loss_and_lag_on_real_udp_across_threads() {
    const N: u32 = 300;
    const LAG_MS: i32 = 20;
    let (client, c, server, s) = udp_pair(&[]);
    let fake = [
        (ConfigValue::FakePacketLossSend, ConfigData::Float(10.0)),
        (ConfigValue::FakePacketLagSend, ConfigData::Int32(LAG_MS)),
    ];
    for (v, d) in &fake {
        client
            .set_config_value(*v, ConfigTarget::Global, Some(d.clone()))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let sender = {
        let client = client.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                let mut m = vec![(i % 251) as u8; 1000];
                m[..4].copy_from_slice(&i.to_be_bytes());
                loop {
                    match client.send_message_to_connection(c, m.clone(), SendFlags::RELIABLE) {
                        Ok(_) => break,
                        Err(Error::LimitExceeded) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(2))
                        }
                        Err(e) => panic!("send {i}: {e}"),
                    }
                }
            }
        })
    };
    let mut next = 0;
    while next < N {
        assert!(Instant::now() < deadline, "{next} of {N} arrived in time");
        for m in server.receive_messages_on_connection(s, 100).unwrap() {
            let n = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            assert_eq!(n, next, "in order, once each");
            assert!(
                m.payload[4..].iter().all(|&b| b == (n % 251) as u8),
                "intact"
            );
            next += 1;
        }
        server.wait_for_activity(Duration::from_millis(10));
    }
    sender.join().unwrap();
    let q = client.get_quick_connection_status(c).unwrap();
    assert!(q.ping_ms >= 2 * LAG_MS - 1, "ping {} ms", q.ping_ms);
    assert!(q.connection_quality_remote < 1.0, "losses are seen");
    for (v, _) in &fake {
        client
            .set_config_value(*v, ConfigTarget::Global, None)
            .unwrap();
    }
}
