//! `VirtualWorld`: `Sockets` in virtual time on an in-memory network. Time stands still
//! until a thread waits, then jumps from timer to timer; a run follows from its seed and its
//! calls alone; each world's global config values are its own.

mod common;

use common::virtual_pair;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::ConfigTarget;
use punchline::{ConnectionState, SendFlags, VirtualWorld};
use std::time::{Duration, Instant};

#[test]
fn an_idle_hour_passes_in_moments_and_the_connection_lives() {
    let world = VirtualWorld::new(1).unwrap();
    let (client, c, server, s) = virtual_pair(&world, &[]);
    let start = world.now();
    let real = Instant::now();
    world.run_for(Duration::from_secs(3600));
    assert!(world.now() - start >= Duration::from_secs(3600));
    assert!(
        real.elapsed() < Duration::from_secs(60),
        "an hour of keepalives took {:?}",
        real.elapsed()
    );
    for (sockets, h) in [(&client, c), (&server, s)] {
        assert_eq!(
            sockets.get_connection_info(h).unwrap().state,
            ConnectionState::Connected,
            "keepalives kept it up"
        );
    }
    client
        .send_message_to_connection(c, &b"still here"[..], SendFlags::RELIABLE)
        .unwrap();
    let mut got = Vec::new();
    world.run_until(world.now() + Duration::from_secs(1), || {
        got.extend(server.receive_messages_on_connection(s, 10).unwrap());
        !got.is_empty()
    });
    assert_eq!(&got[0].payload[..], b"still here");
    assert_eq!(
        got[0].received_at,
        world.now(),
        "stamped on the world's clock"
    );
}

/// What a run under loss, lag and jitter looks like from the receiving side: each
/// message's number and when (after the start, in virtual time) it arrived.
fn lossy_run(seed: u64) -> Vec<(u32, Duration)> {
    let world = VirtualWorld::new(seed).unwrap();
    let (client, c, server, s) = virtual_pair(&world, &[]);
    for (v, d) in [
        (ConfigValue::FakePacketLossSend, ConfigData::Float(20.0)),
        (ConfigValue::FakePacketLagSend, ConfigData::Int32(40)),
        (ConfigValue::FakePacketJitterSendAvg, ConfigData::Float(5.0)),
        (ConfigValue::FakePacketJitterSendMax, ConfigData::Int32(20)),
        (
            ConfigValue::FakePacketJitterSendPct,
            ConfigData::Float(50.0),
        ),
    ] {
        client
            .set_config_value(v, ConfigTarget::Global, Some(d))
            .unwrap();
    }
    let start = world.now();
    let mut arrivals = Vec::new();
    for i in 0..200u32 {
        let flags = if i % 2 == 0 {
            SendFlags::RELIABLE
        } else {
            SendFlags::UNRELIABLE
        };
        client
            .send_message_to_connection(c, i.to_be_bytes().to_vec(), flags)
            .unwrap();
        world.run_for(Duration::from_millis(10));
        for m in server.receive_messages_on_connection(s, 100).unwrap() {
            let n = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            arrivals.push((n, m.received_at - start));
        }
    }
    world.run_until(world.now() + Duration::from_secs(10), || {
        for m in server.receive_messages_on_connection(s, 100).unwrap() {
            let n = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
            arrivals.push((n, m.received_at - start));
        }
        (0..200)
            .step_by(2)
            .all(|i| arrivals.iter().any(|(n, _)| *n == i))
    });
    arrivals
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let a = lossy_run(7);
    let b = lossy_run(7);
    let other = lossy_run(8);
    // Every reliable message arrives; unreliable ones are lost at about the loss rate.
    for i in (0..200).step_by(2) {
        assert!(a.iter().any(|(n, _)| *n == i), "reliable {i} arrived");
    }
    let unreliable = a.iter().filter(|(n, _)| n % 2 == 1).count();
    assert!(
        (60..=95).contains(&unreliable),
        "{unreliable} of 100 unreliable messages arrived under 20% loss"
    );
    assert_eq!(a, b, "same seed, same arrivals at the same virtual times");
    assert_ne!(a, other, "another seed loses other datagrams");
}

#[test]
fn each_world_has_global_values_of_its_own() {
    let lossy = VirtualWorld::new(3).unwrap();
    let clean = VirtualWorld::new(3).unwrap();
    let (lc, _, _, _) = virtual_pair(&lossy, &[]);
    let (cc, _, _, _) = virtual_pair(&clean, &[]);
    lc.set_config_value(
        ConfigValue::FakePacketLossSend,
        ConfigTarget::Global,
        Some(ConfigData::Float(100.0)),
    )
    .unwrap();
    let read = |s: &punchline::Sockets| {
        s.get_config_value(ConfigValue::FakePacketLossSend, ConfigTarget::Global)
            .unwrap()
            .0
    };
    assert_eq!(read(&lc), ConfigData::Float(100.0));
    assert_eq!(
        read(&cc),
        ConfigData::Float(0.0),
        "the other world is clean"
    );
    let process = punchline::Sockets::new().unwrap();
    assert_eq!(
        read(&process),
        ConfigData::Float(0.0),
        "and so is the process"
    );
}

#[test]
fn socket_pairs_work_in_a_world_over_both_transports() {
    let world = VirtualWorld::new(5).unwrap();
    let sockets = world.sockets().unwrap();
    for loopback in [true, false] {
        let (a, b) = sockets.create_socket_pair(loopback, None, None).unwrap();
        sockets
            .send_message_to_connection(a, &b"ping"[..], SendFlags::RELIABLE)
            .unwrap();
        let mut got = Vec::new();
        assert!(world.run_until(world.now() + Duration::from_secs(1), || {
            got.extend(sockets.receive_messages_on_connection(b, 10).unwrap());
            !got.is_empty()
        }));
        assert_eq!(&got[0].payload[..], b"ping");
    }
}

#[test]
fn a_dropped_sockets_stops_as_if_its_process_ended() {
    let world = VirtualWorld::new(9).unwrap();
    let (client, c, server, _s) = virtual_pair(&world, &[]);
    let listen_addr = {
        // The one listen socket the pair made: its address is free again once dropped.
        let l = server
            .create_listen_socket_ip("127.0.0.1:0".parse().unwrap(), &[])
            .unwrap();
        server.get_listen_socket_address(l).unwrap()
    };
    drop(server);
    let ended = world.run_until(world.now() + Duration::from_secs(120), || {
        client.get_connection_info(c).unwrap().state == ConnectionState::ProblemDetectedLocally
    });
    assert!(ended, "the client noticed its peer is gone");
    let again = world.sockets().unwrap();
    again
        .create_listen_socket_ip(listen_addr, &[])
        .expect("the address is free again");
}

/// Virtual time from `connect_by_ip_address` to the client's Connected, over a path of
/// 50 ms each way, to a listen socket made with `listen_options`.
fn time_to_connect(listen_options: &[(ConfigValue, ConfigData)]) -> Duration {
    let world = VirtualWorld::new(21).unwrap();
    let server = world.sockets().unwrap();
    server
        .set_config_value(
            ConfigValue::FakePacketLagSend,
            ConfigTarget::Global,
            Some(ConfigData::Int32(50)),
        )
        .unwrap();
    let mut events = server.status_events();
    let listen = server
        .create_listen_socket_ip("127.0.0.1:0".parse().unwrap(), listen_options)
        .unwrap();
    let addr = server.get_listen_socket_address(listen).unwrap();
    let client = world.sockets().unwrap();
    let start = world.now();
    let c = client.connect_by_ip_address(addr, &[]).unwrap();
    let connected = world.run_until(start + Duration::from_secs(10), || {
        while let Some(e) = events.try_recv() {
            if e.info.state == ConnectionState::Connecting {
                server.accept_connection(e.connection).unwrap();
            }
        }
        client.get_connection_info(c).unwrap().state == ConnectionState::Connected
    });
    assert!(connected);
    world.now() - start
}

#[test]
fn first_contact_takes_one_round_trip_unless_the_listen_socket_demands_a_cookie() {
    let rtt = Duration::from_millis(100);
    let default = time_to_connect(&[]);
    assert!(
        default >= rtt && default < rtt + Duration::from_millis(10),
        "first contact took {default:?} on a {rtt:?} path"
    );
    let cookie = time_to_connect(&[(ConfigValue::UnprovenHandshakesMax, ConfigData::Int32(0))]);
    assert!(
        cookie >= 2 * rtt && cookie < 2 * rtt + Duration::from_millis(10),
        "with a cookie first it took {cookie:?} on a {rtt:?} path"
    );
}
