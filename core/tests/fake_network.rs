//! The fake network config values, end to end through the API, on both transports of a
//! socket pair (UDP sockets, here on a virtual world's network, and in-process buffers).
//! Each test is a virtual world of its own: its global values apply to it alone, so the
//! tests run side by side, in virtual time (lag costs no waiting; the same seed, the same
//! run).

use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::ConfigTarget;
use punchline::{ConnectionHandle, Message, SendFlags, Sockets, VirtualWorld};
use std::time::{Duration, Instant};

/// A world with global fake values set on it.
struct Fake {
    world: VirtualWorld,
    sockets: Sockets,
    /// When the world began, for the send times messages carry.
    start: Instant,
}

impl Fake {
    fn set(values: &[(ConfigValue, ConfigData)]) -> Fake {
        let world = VirtualWorld::new(11).unwrap();
        let sockets = world.sockets().unwrap();
        for (v, d) in values {
            sockets
                .set_config_value(*v, ConfigTarget::Global, Some(d.clone()))
                .unwrap();
        }
        Fake {
            start: world.now(),
            world,
            sockets,
        }
    }
}

impl Fake {
    /// Sets more values (after, say, creating pairs on a clean network).
    fn apply(&self, values: &[(ConfigValue, ConfigData)]) {
        for (v, d) in values {
            self.sockets
                .set_config_value(*v, ConfigTarget::Global, Some(d.clone()))
                .unwrap();
        }
    }
}

impl Fake {
    /// Message `i` of `len` bytes (at least 12), carrying its number and when it was sent.
    fn numbered(&self, i: u32, len: usize) -> Vec<u8> {
        let mut m = vec![(i % 251) as u8; len.max(12)];
        m[..4].copy_from_slice(&i.to_be_bytes());
        let t = (self.world.now() - self.start).as_nanos() as u64;
        m[4..12].copy_from_slice(&t.to_be_bytes());
        m
    }

    /// How long a message took from send to receipt.
    fn delay(&self, m: &Message) -> Duration {
        let sent = u64::from_be_bytes(m.payload[4..12].try_into().unwrap());
        (m.received_at - self.start).saturating_sub(Duration::from_nanos(sent))
    }

    /// Receives on `h` until `n` messages came or `limit` of virtual time passed.
    fn receive_n(&self, h: ConnectionHandle, n: usize, limit: Duration) -> Vec<Message> {
        let mut got = Vec::new();
        self.world.run_until(self.world.now() + limit, || {
            got.extend(
                self.sockets
                    .receive_messages_on_connection(h, 1000)
                    .unwrap(),
            );
            got.len() >= n
        });
        got
    }

    /// Sends `n` numbered messages of `len` bytes, 1 ms apart, each in its own packet.
    fn send_spaced(&self, h: ConnectionHandle, n: u32, len: usize, flags: SendFlags) {
        for i in 0..n {
            self.sockets
                .send_message_to_connection(h, self.numbered(i, len), flags)
                .unwrap();
            self.world.run_for(Duration::from_millis(1));
        }
    }
}

/// Both kinds of socket pair: (over loopback UDP?, name).
const TRANSPORTS: [(bool, &str); 2] = [(true, "UDP (the world's network)"), (false, "in-process")];

fn number(m: &Message) -> u32 {
    u32::from_be_bytes(m.payload[..4].try_into().unwrap())
}

/// Reliable messages all arrive, once and in order.
fn assert_reliable_in_order(got: &[Message], n: usize, what: &str) {
    assert_eq!(got.len(), n, "{what}: every reliable message arrives once");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(number(m) as usize, i, "{what}: in order");
    }
}

/// A connected socket pair over the given transport.
fn pair(s: &Sockets, net: bool, name: &str) -> (ConnectionHandle, ConnectionHandle) {
    s.create_socket_pair(net, None, None)
        .unwrap_or_else(|e| panic!("{name}: pair: {e}"))
}

fn inversions(got: &[Message]) -> usize {
    got.windows(2)
        .filter(|w| number(&w[0]) > number(&w[1]))
        .count()
}

/// On both transports: connect on a clean network (handshakes under loss are the loss
/// matrix's job), set `lag_ms` of lag and `loss_pct` of loss with the given pair of values,
/// and check `n` reliable messages all arrive in order, the ping shows the lag both ways and
/// losses are seen.
fn lag_and_loss_apply(lag: ConfigValue, lag_ms: i32, loss: ConfigValue, loss_pct: f32, n: u32) {
    let f = Fake::set(&[]);
    let s = &f.sockets;
    for (net, name) in TRANSPORTS {
        let (a, b) = pair(s, net, name);
        f.apply(&[
            (lag, ConfigData::Int32(lag_ms)),
            (loss, ConfigData::Float(loss_pct)),
        ]);
        for i in 0..n {
            s.send_message_to_connection(a, f.numbered(i, 1000), SendFlags::RELIABLE)
                .unwrap();
        }
        let got = f.receive_n(b, n as usize, Duration::from_secs(60));
        assert_reliable_in_order(&got, n as usize, name);
        let q = s.get_quick_connection_status(a).unwrap();
        assert!(
            q.ping_ms >= 2 * lag_ms,
            "{name}: {lag_ms} ms each way, ping {}",
            q.ping_ms
        );
        let text = s.get_detailed_connection_status(a).unwrap();
        assert!(!text.contains("lost 0,"), "{name}: losses are seen: {text}");
        assert!(q.connection_quality_remote < 1.0, "{name}: losses are seen");
        f.apply(&[(lag, ConfigData::Int32(0)), (loss, ConfigData::Float(0.0))]);
    }
}

#[test]
fn send_side_lag_and_loss_apply_on_both_transports() {
    // 200 packets at 20% loss: some are certainly lost (the chance of none is 1e-19).
    lag_and_loss_apply(
        ConfigValue::FakePacketLagSend,
        40,
        ConfigValue::FakePacketLossSend,
        20.0,
        200,
    );
}

#[test]
fn receive_side_lag_and_loss_apply_on_both_transports() {
    lag_and_loss_apply(
        ConfigValue::FakePacketLagRecv,
        30,
        ConfigValue::FakePacketLossRecv,
        20.0,
        200,
    );
}

#[test]
fn duplicated_packets_never_duplicate_messages() {
    use ConfigValue as V;
    let f = Fake::set(&[
        (V::FakePacketDupSend, ConfigData::Float(50.0)),
        (V::FakePacketDupRecv, ConfigData::Float(50.0)),
        (V::FakePacketDupTimeMax, ConfigData::Int32(20)),
    ]);
    let s = &f.sockets;
    for (net, name) in TRANSPORTS {
        let (a, b) = pair(s, net, name);
        for i in 0..100 {
            s.send_message_to_connection(a, f.numbered(i, 200), SendFlags::RELIABLE_NO_NAGLE)
                .unwrap();
            s.send_message_to_connection(
                a,
                f.numbered(1000 + i, 200),
                SendFlags::UNRELIABLE_NO_NAGLE,
            )
            .unwrap();
        }
        let got = f.receive_n(b, 200, Duration::from_secs(30));
        // Give the late copies (up to 20 ms behind) time to arrive, and be dropped.
        f.world.run_for(Duration::from_millis(100));
        let mut all = got;
        all.extend(s.receive_messages_on_connection(b, 1000).unwrap());
        let mut numbers: Vec<u32> = all.iter().map(number).collect();
        numbers.sort_unstable();
        let expected: Vec<u32> = (0..100).chain(1000..1100).collect();
        assert_eq!(numbers, expected, "{name}: each message exactly once");
        let text = s.get_detailed_connection_status(b).unwrap();
        assert!(
            !text.contains(" 0 replays"),
            "{name}: copies dropped: {text}"
        );
    }
}

#[test]
fn reorder_lets_later_packets_overtake_and_reliable_order_holds() {
    use ConfigValue as V;
    let f = Fake::set(&[
        (V::FakePacketReorderSend, ConfigData::Float(30.0)),
        (V::FakePacketReorderTime, ConfigData::Int32(20)),
    ]);
    let s = &f.sockets;
    for (net, name) in TRANSPORTS {
        let (a, b) = pair(s, net, name);
        // Unreliable messages come out as their packets arrive: reordering shows.
        f.send_spaced(a, 200, 100, SendFlags::UNRELIABLE_NO_NAGLE);
        let got = f.receive_n(b, 200, Duration::from_secs(10));
        assert!(
            got.len() >= 190,
            "{name}: reorder never drops ({})",
            got.len()
        );
        assert!(inversions(&got) > 5, "{name}: some packets overtaken");
        // Reliable ones are put back in order.
        f.send_spaced(a, 200, 100, SendFlags::RELIABLE_NO_NAGLE);
        let got = f.receive_n(b, 200, Duration::from_secs(30));
        assert_reliable_in_order(&got, 200, name);
    }
}

#[test]
fn jitter_delays_and_clumps_but_never_reorders() {
    use ConfigValue as V;
    let f = Fake::set(&[
        (V::FakePacketJitterSendAvg, ConfigData::Float(8.0)),
        (V::FakePacketJitterSendMax, ConfigData::Int32(40)),
        (V::FakePacketJitterSendPct, ConfigData::Float(30.0)),
    ]);
    let s = &f.sockets;
    for (net, name) in TRANSPORTS {
        let (a, b) = pair(s, net, name);
        f.send_spaced(a, 200, 100, SendFlags::UNRELIABLE_NO_NAGLE);
        let got = f.receive_n(b, 200, Duration::from_secs(10));
        assert_eq!(got.len(), 200, "{name}: jitter never drops");
        assert_eq!(inversions(&got), 0, "{name}: jitter alone never reorders");
        let delayed = got
            .iter()
            .filter(|m| f.delay(m) > Duration::from_millis(3))
            .count();
        assert!(delayed >= 20, "{name}: only {delayed} of 200 held back");
        let worst = got.iter().map(|m| f.delay(m)).max().unwrap();
        assert!(
            worst < Duration::from_secs(1),
            "{name}: worst delay {worst:?}"
        );
    }
}

#[test]
fn the_rate_limit_is_a_token_bucket() {
    use ConfigValue as V;
    const RATE: i32 = 100_000;
    const BURST: i32 = 16_384;
    let f = Fake::set(&[
        (V::FakeRateLimitSendRate, ConfigData::Int32(RATE)),
        (V::FakeRateLimitSendBurst, ConfigData::Int32(BURST)),
    ]);
    let s = &f.sockets;
    for (net, name) in TRANSPORTS {
        let (a, b) = pair(s, net, name);
        let total = 300_000;
        let start = f.world.now();
        for i in 0..(total / 1000) as u32 {
            s.send_message_to_connection(a, f.numbered(i, 1000), SendFlags::RELIABLE)
                .unwrap();
        }
        let got = f.receive_n(b, total / 1000, Duration::from_secs(60));
        assert_reliable_in_order(&got, total / 1000, name);
        // No more than the bucket allows can have passed: rate x time + burst. (A bound on
        // the limiter, not on our speed: a slow machine only makes it easier to meet.)
        let elapsed = (f.world.now() - start).as_secs_f64();
        let allowed = f64::from(RATE) * elapsed + f64::from(BURST);
        assert!(
            (total as f64) <= allowed,
            "{name}: {total} bytes in {elapsed:.2} s through a {RATE} B/s bucket"
        );
        let text = s.get_detailed_connection_status(a).unwrap();
        assert!(
            !text.contains("lost 0,"),
            "{name}: the limiter drops: {text}"
        );
    }
}
