//! The loss matrix: connections under the fake network conditions (the global `FakePacket*`
//! and `FakeRateLimit*` config values), each condition with a bulk transfer and a game-like
//! pattern at the same time.
//!
//! Conditions are (send rate limit, loss, one-way lag, reorder), each also with 10%
//! duplication. They are set on the sending side of every endpoint of a virtual world, so
//! each direction of each connection goes through them once. Each case is a world of its
//! own (its own global values, its own clock), so they run side by side, in virtual time:
//! each takes the processor time its traffic needs, and the same seed gives the same run.
//!
//! What must hold: every reliable message arrives exactly once, in order and intact;
//! unreliable messages are never corrupted, partial or duplicated; the connections stay up;
//! ping and quality in the status are plausible for the condition.

mod common;

use bytes::Bytes;
use common::virtual_pair;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::ConfigTarget;
use punchline::{ConnectionHandle, ConnectionState, Error, SendFlags, Sockets, VirtualWorld};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Condition {
    /// Token-bucket rate, bytes per second.
    rate: i32,
    loss_pct: f32,
    lag_ms: i32,
    reorder_pct: f32,
    reorder_ms: i32,
    dup_pct: f32,
    /// Bytes moved by the bulk transfer (sized so each case takes seconds, not minutes).
    bulk: usize,
}

const KB: i32 = 1000;

const CONDITIONS: [Condition; 4] = [
    Condition {
        rate: 128 * KB,
        loss_pct: 10.0,
        lag_ms: 50,
        reorder_pct: 2.0,
        reorder_ms: 50,
        dup_pct: 0.0,
        bulk: 256 * 1024,
    },
    Condition {
        rate: 1000 * KB,
        loss_pct: 5.0,
        lag_ms: 10,
        reorder_pct: 1.0,
        reorder_ms: 10,
        dup_pct: 0.0,
        bulk: 768 * 1024,
    },
    Condition {
        rate: 2000 * KB,
        loss_pct: 0.0,
        lag_ms: 50,
        reorder_pct: 30.0,
        reorder_ms: 40,
        dup_pct: 0.0,
        bulk: 1024 * 1024,
    },
    Condition {
        rate: 1000 * KB,
        loss_pct: 20.0,
        lag_ms: 100,
        reorder_pct: 0.0,
        reorder_ms: 0,
        dup_pct: 0.0,
        bulk: 96 * 1024,
    },
];

const HANDSHAKE_TIMEOUT_MS: i32 = 30_000;

/// Sets the condition globally for as long as it lives; back to a clean network on drop
/// (also when a check fails).
struct Applied<'a> {
    sockets: &'a Sockets,
}

/// The values a condition sets: the fake network, and a longer `TimeoutInitial` (the
/// handshake's own odds under loss are `handshake.rs`'s business; here it must not fail).
const VALUES: [ConfigValue; 8] = [
    ConfigValue::FakeRateLimitSendRate,
    ConfigValue::FakePacketLossSend,
    ConfigValue::FakePacketLagSend,
    ConfigValue::FakePacketReorderSend,
    ConfigValue::FakePacketReorderTime,
    ConfigValue::FakePacketDupSend,
    ConfigValue::FakePacketDupTimeMax,
    ConfigValue::TimeoutInitial,
];

impl<'a> Applied<'a> {
    fn new(sockets: &'a Sockets, c: &Condition) -> Self {
        let values = [
            ConfigData::Int32(c.rate),
            ConfigData::Float(c.loss_pct),
            ConfigData::Int32(c.lag_ms),
            ConfigData::Float(c.reorder_pct),
            ConfigData::Int32(c.reorder_ms),
            ConfigData::Float(c.dup_pct),
            ConfigData::Int32(10),
            ConfigData::Int32(HANDSHAKE_TIMEOUT_MS),
        ];
        for (v, d) in VALUES.into_iter().zip(values) {
            sockets
                .set_config_value(v, ConfigTarget::Global, Some(d))
                .unwrap();
        }
        Applied { sockets }
    }
}

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        for v in VALUES {
            let _ = self.sockets.set_config_value(v, ConfigTarget::Global, None);
        }
    }
}

/// A connected client and server, each in its own `Sockets`.
struct Pair {
    server: Sockets,
    client: Sockets,
    s: ConnectionHandle,
    c: ConnectionHandle,
}

fn state(s: &Sockets, h: ConnectionHandle) -> ConnectionState {
    s.get_connection_info(h).unwrap().state
}

fn pair(world: &VirtualWorld) -> Pair {
    let (client, c, server, s) = virtual_pair(world, &[]);
    Pair {
        server,
        client,
        s,
        c,
    }
}

/// A message whose every byte follows from its kind, number and length, so corruption,
/// truncation and mix-ups all show: `[kind][number u32][length u32][pattern...]`.
fn message(kind: u8, n: u32, len: usize) -> Vec<u8> {
    let len = len.max(9);
    let mut m = Vec::with_capacity(len);
    m.push(kind);
    m.extend_from_slice(&n.to_be_bytes());
    m.extend_from_slice(&(len as u32).to_be_bytes());
    let seed = n.wrapping_mul(2_654_435_761).wrapping_add(u32::from(kind));
    m.extend((9..len).map(|i| (seed.wrapping_add(i as u32 * 31) >> 3) as u8));
    m
}

/// Checks a message is whole and intact; returns (kind, number).
fn check(m: &[u8]) -> (u8, u32) {
    assert!(m.len() >= 9, "truncated message: {} bytes", m.len());
    let n = u32::from_be_bytes(m[1..5].try_into().unwrap());
    let len = u32::from_be_bytes(m[5..9].try_into().unwrap()) as usize;
    assert_eq!(m.len(), len, "message {n} is partial");
    assert!(
        m == message(m[0], n, len).as_slice(),
        "message {n} is corrupted"
    );
    (m[0], n)
}

const RELIABLE: u8 = b'R';
const UNRELIABLE: u8 = b'U';

/// Bulk: `count` reliable messages of 16 KiB, queued as fast as the send buffer takes them,
/// all checked on arrival.
struct Bulk {
    count: u32,
    sent: u32,
    received: u32,
}

impl Bulk {
    const SIZE: usize = 16 * 1024;

    fn new(total: usize) -> Self {
        Bulk {
            count: total.div_ceil(Self::SIZE) as u32,
            sent: 0,
            received: 0,
        }
    }

    fn done(&self) -> bool {
        self.received == self.count
    }

    fn step(&mut self, p: &Pair) {
        while self.sent < self.count {
            let m = message(RELIABLE, self.sent, Self::SIZE);
            match p
                .client
                .send_message_to_connection(p.c, m, SendFlags::RELIABLE)
            {
                Ok(_) => self.sent += 1,
                Err(Error::LimitExceeded) => break,
                Err(e) => panic!("bulk send failed: {e}"),
            }
        }
        for m in p.server.receive_messages_on_connection(p.s, 256).unwrap() {
            assert_eq!(
                check(&m.payload),
                (RELIABLE, self.received),
                "bulk: out of order or repeated"
            );
            self.received += 1;
        }
    }
}

/// Game-like: every 30 ms one reliable message of up to 4000 bytes and one unreliable of up
/// to 2000, for `ticks` ticks.
struct Game {
    rng: ChaCha8Rng,
    ticks: u32,
    tick: u32,
    next_tick: Instant,
    next_reliable: u32,
    /// Reliable messages refused for a full buffer, to send again.
    waiting: Option<Vec<u8>>,
    unreliable_seen: HashSet<u32>,
}

impl Game {
    const TICK: Duration = Duration::from_millis(30);

    fn new(ticks: u32, seed: u64, start: Instant) -> Self {
        Game {
            rng: ChaCha8Rng::seed_from_u64(seed),
            ticks,
            tick: 0,
            next_tick: start,
            next_reliable: 0,
            waiting: None,
            unreliable_seen: HashSet::new(),
        }
    }

    fn done(&self) -> bool {
        self.next_reliable == self.ticks
    }

    fn step(&mut self, p: &Pair, now: Instant) {
        if let Some(m) = self.waiting.take() {
            self.send_reliable(p, m);
        }
        if self.tick < self.ticks && now >= self.next_tick && self.waiting.is_none() {
            let r = 1 + (self.rng.next_u32() % 4000) as usize;
            let u = 1 + (self.rng.next_u32() % 2000) as usize;
            self.send_reliable(p, message(RELIABLE, self.tick, r));
            // Unreliable messages are never refused for lack of buffer; a full queue drops
            // them.
            let _ = p.client.send_message_to_connection(
                p.c,
                message(UNRELIABLE, self.tick, u),
                SendFlags::UNRELIABLE,
            );
            self.tick += 1;
            self.next_tick += Self::TICK;
        }
        self.receive(p);
    }

    fn send_reliable(&mut self, p: &Pair, m: Vec<u8>) {
        match p
            .client
            .send_message_to_connection(p.c, Bytes::from(m.clone()), SendFlags::RELIABLE)
        {
            Ok(_) => {}
            Err(Error::LimitExceeded) => self.waiting = Some(m),
            Err(e) => panic!("game send failed: {e}"),
        }
    }

    fn receive(&mut self, p: &Pair) {
        for m in p.server.receive_messages_on_connection(p.s, 256).unwrap() {
            match check(&m.payload) {
                (RELIABLE, n) => {
                    assert_eq!(n, self.next_reliable, "reliable out of order or repeated");
                    self.next_reliable += 1;
                }
                (UNRELIABLE, n) => {
                    assert!(n < self.ticks, "unreliable {n} was never sent");
                    assert!(self.unreliable_seen.insert(n), "unreliable {n} duplicated");
                }
                (k, _) => panic!("unknown kind {k}"),
            }
        }
    }
}

fn run(c: Condition, seed: u64) {
    let world = VirtualWorld::new(seed).unwrap();
    let sockets = world.sockets().unwrap();
    // The handshakes go through the condition too.
    let _applied = Applied::new(&sockets, &c);
    let bulk_pair = pair(&world);
    let game_pair = pair(&world);
    let deadline = world.now() + Duration::from_secs(45);
    let ticks = 100;
    let mut bulk = Bulk::new(c.bulk);
    let mut game = Game::new(ticks, seed, world.now());
    while !(bulk.done() && game.done()) {
        assert!(
            world.now() < deadline,
            "in time: bulk {} of {} messages, game {} of {ticks} reliable ones",
            bulk.received,
            bulk.count,
            game.next_reliable
        );
        bulk.step(&bulk_pair);
        game.step(&game_pair, world.now());
        let now = world.now();
        let next = game.next_tick.clamp(
            now + Duration::from_millis(1),
            now + Duration::from_millis(5),
        );
        world.run_until(next, || false);
    }
    // Stragglers (reordered or duplicated) that come after the last reliable one.
    world.run_for(Duration::from_millis(300));
    game.receive(&game_pair);
    let unreliable = game.unreliable_seen.len();
    // Unreliable ones may be lost, but not nearly all of them.
    let floor = (ticks as f32 * (1.0 - c.loss_pct / 100.0) * 0.5) as usize;
    assert!(
        unreliable >= floor,
        "only {unreliable} of {ticks} unreliable messages arrived under {c:?}"
    );
    eprintln!(
        "{c:?}: done in {:?} of virtual time",
        world.now() + Duration::from_secs(45) - deadline
    );
    for (p, is_bulk) in [(&bulk_pair, true), (&game_pair, false)] {
        assert_eq!(state(&p.client, p.c), ConnectionState::Connected, "{c:?}");
        assert_eq!(state(&p.server, p.s), ConnectionState::Connected, "{c:?}");
        let q = p.client.get_quick_connection_status(p.c).unwrap();
        let rtt = 2 * c.lag_ms;
        assert!(
            q.ping_ms >= rtt * 9 / 10 && q.ping_ms <= rtt * 3 / 2 + c.reorder_ms + 30,
            "ping {} ms for a {rtt} ms round trip under {c:?}",
            q.ping_ms
        );
        let sq = p.server.get_quick_connection_status(p.s).unwrap();
        eprintln!(
            "{c:?}: ping {} ms, server received {:.3}, client delivered {:.3}",
            q.ping_ms, sq.connection_quality_local, q.connection_quality_remote
        );
        let clean = 1.0 - c.loss_pct / 100.0;
        // The game pair stays under any rate limit: its quality is the random loss alone.
        // The bulk pair fills the path, so a rate limit's policer drops count in its quality
        // too (as they should), and how many depends on how evenly the sender could pace on a
        // busy machine: there it must show the loss and no more than twice the slack.
        let floor = if is_bulk && c.rate > 0 {
            clean - 0.4
        } else {
            clean - 0.2
        };
        for (what, quality) in [
            ("server's received share", sq.connection_quality_local),
            ("client's delivered share", q.connection_quality_remote),
        ] {
            assert!(
                quality <= 1.0 && quality >= floor,
                "{what} {quality} under {c:?}: {}",
                p.client.get_detailed_connection_status(p.c).unwrap()
            );
            if c.loss_pct >= 5.0 {
                assert!(quality < 1.0, "{what} shows no loss under {c:?}");
            }
        }
    }
}

fn with_dup(c: Condition) -> Condition {
    Condition { dup_pct: 10.0, ..c }
}

#[test]
fn rate_128k_loss_10_lag_50_reorder_2_at_50() {
    run(CONDITIONS[0], 1);
}

#[test]
fn rate_128k_loss_10_lag_50_reorder_2_at_50_dup_10() {
    run(with_dup(CONDITIONS[0]), 2);
}

#[test]
fn rate_1m_loss_5_lag_10_reorder_1_at_10() {
    run(CONDITIONS[1], 3);
}

#[test]
fn rate_1m_loss_5_lag_10_reorder_1_at_10_dup_10() {
    run(with_dup(CONDITIONS[1]), 4);
}

#[test]
fn rate_2m_loss_0_lag_50_reorder_30_at_40() {
    run(CONDITIONS[2], 5);
}

#[test]
fn rate_2m_loss_0_lag_50_reorder_30_at_40_dup_10() {
    run(with_dup(CONDITIONS[2]), 6);
}

#[test]
fn rate_1m_loss_20_lag_100() {
    run(CONDITIONS[3], 7);
}

#[test]
fn rate_1m_loss_20_lag_100_dup_10() {
    run(with_dup(CONDITIONS[3]), 8);
}
