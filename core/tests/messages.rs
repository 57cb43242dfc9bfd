//! The Messages interface (ISteamNetworkingMessages) between `Sockets` introduced by an
//! in-process signaling hub, in a virtual world (each test its own, in virtual time):
//! sessions on first send, requests and acceptance, channels, broken sessions and their
//! restart, idle close.

mod common;

use common::hub::{virtual_peer, Hub, Policy};
use punchline::api::config::{CallbackFn, ConfigData, ConfigValue};
use punchline::api::ConfigTarget;
use punchline::api::{Messages, MessagesEvent};
use punchline::identity::Identity;
use punchline::{ConnectionState, Error, SendFlags, Sockets, VirtualWorld};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Two peers in a world, introduced by a hub that delivers between the world's steps.
struct Pair {
    world: VirtualWorld,
    hub: Arc<Hub>,
    a: Messages,
    b: Messages,
    ia: Identity,
    ib: Identity,
    sb: Sockets,
}

/// One step of the world: 2 ms of virtual time, with signals delivered first.
const STEP: Duration = Duration::from_millis(2);

impl Pair {
    /// Runs the world until `f` gives something, for up to 10 s of virtual time.
    fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let end = self.world.now() + Duration::from_secs(10);
        loop {
            self.hub.deliver();
            if let Some(v) = f() {
                return v;
            }
            assert!(self.world.now() < end, "timed out waiting for {what}");
            self.world.run_for(STEP);
        }
    }

    /// Runs the world for `d`.
    fn pass(&self, d: Duration) {
        let end = self.world.now() + d;
        while self.world.now() < end {
            self.hub.deliver();
            self.world.run_for(STEP);
        }
    }
}

/// The next message on `channel`, as (sender, text).
fn next(p: &Pair, m: &Messages, channel: u32) -> (Identity, String) {
    p.wait_for("a message", || {
        m.receive_messages_on_channel(channel, 1).pop().map(|msg| {
            assert_eq!(msg.channel, channel as i32);
            (
                msg.peer_identity,
                String::from_utf8_lossy(&msg.payload).into_owned(),
            )
        })
    })
}

fn request(p: &Pair, m: &Messages) -> Identity {
    p.wait_for("a session request", || match m.poll_event() {
        Some(MessagesEvent::SessionRequest { identity }) => Some(identity),
        _ => None,
    })
}

fn pair(seed: u64) -> Pair {
    let world = VirtualWorld::new(seed).unwrap();
    let (hub, peers) = Hub::manual(0, 0, seed);
    let sa = virtual_peer(&world, &hub, &peers, Policy::Accept);
    let sb = virtual_peer(&world, &hub, &peers, Policy::Accept);
    Pair {
        world,
        hub,
        ia: sa.get_identity(),
        ib: sb.get_identity(),
        a: Messages::new(&sa).unwrap(),
        b: Messages::new(&sb).unwrap(),
        sb,
    }
}

#[test]
fn a_first_message_asks_for_a_session_and_channels_stay_apart() {
    let p = pair(1);
    p.a.send_message_to_user(&p.ib, b"hello on 5", SendFlags::RELIABLE, 5)
        .unwrap();
    assert_eq!(request(&p, &p.b), p.ia);
    // Nothing arrives before the session is accepted.
    p.pass(Duration::from_millis(100));
    assert!(p.b.receive_messages_on_channel(5, 10).is_empty());
    assert!(p.b.accept_session_with_user(&p.ia));
    assert_eq!(next(&p, &p.b, 5), (p.ia.clone(), "hello on 5".into()));
    p.b.send_message_to_user(&p.ia, b"back on 7", SendFlags::RELIABLE, 7)
        .unwrap();
    assert_eq!(next(&p, &p.a, 7), (p.ib.clone(), "back on 7".into()));
    assert!(p.a.receive_messages_on_channel(5, 10).is_empty());
    let (info, status) = p.a.get_session_connection_info(&p.ib).unwrap();
    assert_eq!(info.state, ConnectionState::Connected);
    assert_eq!(info.identity_remote, p.ib);
    assert!(status.ping_ms >= 0);
    assert!(p
        .a
        .get_session_connection_info(&Identity::localhost())
        .is_none());
}

#[test]
fn both_sending_at_once_share_one_session() {
    for seed in 0..5 {
        let p = pair(10 + seed);
        p.a.send_message_to_user(&p.ib, b"from a", SendFlags::RELIABLE, 0)
            .unwrap();
        p.b.send_message_to_user(&p.ia, b"from b", SendFlags::RELIABLE, 0)
            .unwrap();
        // Each side sent, so each accepted: no request needs an answer.
        assert_eq!(
            next(&p, &p.b, 0),
            (p.ia.clone(), "from a".into()),
            "seed {seed}"
        );
        assert_eq!(
            next(&p, &p.a, 0),
            (p.ib.clone(), "from b".into()),
            "seed {seed}"
        );
    }
}

#[test]
fn a_broken_session_refuses_sends_until_closed_or_restarted() {
    let p = pair(2);
    p.a.send_message_to_user(&p.ib, b"one", SendFlags::RELIABLE, 1)
        .unwrap();
    request(&p, &p.b);
    p.b.accept_session_with_user(&p.ia);
    next(&p, &p.b, 1);
    // a ends the session: b sees it fail.
    assert!(p.a.close_session_with_user(&p.ib));
    let failed = p.wait_for("a session failure", || match p.b.poll_event() {
        Some(MessagesEvent::SessionFailed { info }) => Some(info),
        _ => None,
    });
    assert_eq!(failed.identity_remote, p.ia);
    assert_eq!(
        p.b.send_message_to_user(&p.ia, b"lost?", SendFlags::RELIABLE, 1),
        Err(Error::NoConnection)
    );
    // With the flag, a new session starts and a is asked again.
    let restart = SendFlags(SendFlags::RELIABLE.0 | SendFlags::AUTO_RESTART_BROKEN_SESSION.0);
    p.b.send_message_to_user(&p.ia, b"again", restart, 1)
        .unwrap();
    assert_eq!(request(&p, &p.a), p.ib);
    p.a.accept_session_with_user(&p.ib);
    assert_eq!(next(&p, &p.a, 1), (p.ib.clone(), "again".into()));
}

#[test]
fn idle_sessions_close() {
    let p = pair(3);
    p.a.set_idle_timeout(Duration::from_millis(300));
    p.a.send_message_to_user(&p.ib, b"x", SendFlags::RELIABLE, 2)
        .unwrap();
    request(&p, &p.b);
    p.b.accept_session_with_user(&p.ia);
    next(&p, &p.b, 2);
    assert!(p.a.get_session_connection_info(&p.ib).is_some());
    p.pass(Duration::from_millis(500));
    assert!(
        p.a.get_session_connection_info(&p.ib).is_none(),
        "idle session kept"
    );
}

#[test]
fn closing_the_last_channel_closes_the_session_and_drops_its_messages() {
    let q = pair(4);
    q.a.send_message_to_user(&q.ib, b"1", SendFlags::RELIABLE, 9)
        .unwrap();
    q.a.send_message_to_user(&q.ib, b"2", SendFlags::RELIABLE, 9)
        .unwrap();
    request(&q, &q.b);
    q.b.accept_session_with_user(&q.ia);
    next(&q, &q.b, 9);
    q.pass(Duration::from_millis(100));
    assert!(q.b.close_channel_with_user(&q.ia, 9));
    assert!(q.b.receive_messages_on_channel(9, 10).is_empty());
    assert!(q.b.get_session_connection_info(&q.ia).is_none());
}

#[test]
fn session_requests_also_reach_the_global_callback() {
    let p = pair(5);
    let got: Arc<Mutex<Vec<Identity>>> = Arc::default();
    let sink = got.clone();
    let cb = CallbackFn(Arc::new(move |e: &dyn std::any::Any| {
        if let Some(MessagesEvent::SessionRequest { identity }) = e.downcast_ref() {
            sink.lock().unwrap().push(identity.clone());
        }
    }));
    p.sb.set_config_value(
        ConfigValue::CallbackMessagesSessionRequest,
        ConfigTarget::Global,
        Some(ConfigData::Ptr(Some(cb))),
    )
    .unwrap();
    p.a.send_message_to_user(&p.ib, b"hi", SendFlags::RELIABLE, 0)
        .unwrap();
    assert_eq!(request(&p, &p.b), p.ia);
    p.sb.run_callbacks();
    p.sb.set_config_value(
        ConfigValue::CallbackMessagesSessionRequest,
        ConfigTarget::Global,
        None,
    )
    .unwrap();
    assert_eq!(*got.lock().unwrap(), vec![p.ia.clone()]);
}
