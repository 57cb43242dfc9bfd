//! The Sockets API over real loopback UDP.

use punchline::api::config::{CallbackFn, ConfigData, ConfigError, ConfigValue, GetResult};
use punchline::api::{ConfigTarget, ConnectionInfoFlags, OutMessage};
use punchline::{
    ConnectionHandle, ConnectionState, EndReason, Error, ListenSocketHandle, PollGroupHandle,
    SendFlags, Sockets,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Polls `cond` every millisecond until it holds or `limit` passes.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// A server that accepts everything into a poll group; returns (sockets, listen, address, group).
struct Server {
    sockets: Sockets,
    listen: ListenSocketHandle,
    addr: SocketAddr,
    group: PollGroupHandle,
    events: punchline::api::StatusEvents,
    conns: Vec<ConnectionHandle>,
}

impl Server {
    fn start(bind: &str, options: &[(ConfigValue, ConfigData)]) -> Server {
        let sockets = Sockets::new().unwrap();
        let events = sockets.status_events();
        let listen = sockets
            .create_listen_socket_ip(bind.parse().unwrap(), options)
            .unwrap();
        let addr = sockets.get_listen_socket_address(listen).unwrap();
        let group = sockets.create_poll_group();
        Server {
            sockets,
            listen,
            addr,
            group,
            events,
            conns: Vec::new(),
        }
    }

    /// Accepts new connections; returns status changes seen.
    fn service(&mut self) -> Vec<punchline::ConnectionStatusChanged> {
        let mut seen = Vec::new();
        while let Some(ev) = self.events.try_recv() {
            if ev.info.state == ConnectionState::Connecting && ev.info.listen_socket.is_some() {
                self.sockets.accept_connection(ev.connection).unwrap();
                self.sockets
                    .set_connection_poll_group(ev.connection, self.group)
                    .unwrap();
                self.conns.push(ev.connection);
            }
            seen.push(ev);
        }
        seen
    }
}

fn loopback(addr: SocketAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr.ip(), port)
}

fn connect(client: &Sockets, addr: SocketAddr) -> ConnectionHandle {
    client.connect_by_ip_address(addr, &[]).unwrap()
}

fn connected(s: &Sockets, h: ConnectionHandle) -> bool {
    s.get_connection_info(h)
        .is_ok_and(|i| i.state == ConnectionState::Connected)
}

fn msg(client: usize, i: usize, reliable: bool) -> Vec<u8> {
    format!(
        "c{client} {} #{i} {}",
        if reliable { "R" } else { "U" },
        "x".repeat(i % 50)
    )
    .into_bytes()
}

#[test]
fn a_hundred_clients_exchange_reliable_and_unreliable_messages() {
    const CLIENTS: usize = 100;
    const EACH: usize = 1000;
    let mut server = Server::start("127.0.0.1:0", &[]);
    let client = Sockets::new().unwrap();
    let conns: Vec<ConnectionHandle> = (0..CLIENTS)
        .map(|_| connect(&client, server.addr))
        .collect();
    let ok = wait_until(Duration::from_secs(30), || {
        server.service();
        conns.iter().all(|h| connected(&client, *h)) && server.conns.len() == CLIENTS
    });
    if !ok {
        let states: Vec<_> = conns
            .iter()
            .map(|h| client.get_connection_info(*h).map(|i| i.state))
            .collect();
        let server_states: Vec<_> = server
            .conns
            .iter()
            .map(|h| server.sockets.get_connection_info(*h).map(|i| i.state))
            .collect();
        panic!(
            "client {states:?}\nserver {server_states:?}\n{}",
            client.get_detailed_connection_status(conns[0]).unwrap()
        );
    }
    // The server learns which client is which from the first reliable message.
    let mut who: HashMap<ConnectionHandle, usize> = HashMap::new();
    for (i, h) in conns.iter().enumerate() {
        client
            .send_message_to_connection(*h, format!("{i}").into_bytes(), SendFlags::RELIABLE)
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(30), || {
        for m in server
            .sockets
            .receive_messages_on_poll_group(server.group, 1000)
            .unwrap()
        {
            who.insert(
                m.connection,
                String::from_utf8(m.payload.to_vec())
                    .unwrap()
                    .parse()
                    .unwrap(),
            );
        }
        who.len() == CLIENTS
    }));
    // Both directions, interleaved, in batches that respect the send buffer.
    let mut sent = 0;
    let mut server_got: HashMap<usize, (usize, Vec<bool>)> = HashMap::new();
    let mut client_got: HashMap<usize, (usize, Vec<bool>)> = HashMap::new();
    let ok = wait_until(Duration::from_secs(120), || {
        if sent < EACH {
            let upto = (sent + 50).min(EACH);
            let mut batch = Vec::new();
            for i in sent..upto {
                for (c, h) in conns.iter().enumerate() {
                    batch.push(OutMessage {
                        connection: *h,
                        payload: msg(c, i, true).into(),
                        flags: SendFlags::RELIABLE,
                        lane: 0,
                    });
                    batch.push(OutMessage {
                        connection: *h,
                        payload: msg(c, i, false).into(),
                        flags: SendFlags::UNRELIABLE,
                        lane: 0,
                    });
                }
            }
            for r in client.send_messages(batch) {
                r.unwrap();
            }
            for (h, c) in &who {
                for i in sent..upto {
                    server
                        .sockets
                        .send_message_to_connection(*h, msg(*c, i, true), SendFlags::RELIABLE)
                        .unwrap();
                    server
                        .sockets
                        .send_message_to_connection(*h, msg(*c, i, false), SendFlags::UNRELIABLE)
                        .unwrap();
                }
            }
            sent = upto;
        }
        for m in server
            .sockets
            .receive_messages_on_poll_group(server.group, 10_000)
            .unwrap()
        {
            let c = who[&m.connection];
            let e = server_got.entry(c).or_insert((0, vec![false; EACH]));
            record(e, c, &m.payload, m.flags);
        }
        for (c, h) in conns.iter().enumerate() {
            for m in client.receive_messages_on_connection(*h, 10_000).unwrap() {
                let e = client_got.entry(c).or_insert((0, vec![false; EACH]));
                record(e, c, &m.payload, m.flags);
            }
        }
        let done = |g: &HashMap<usize, (usize, Vec<bool>)>| {
            g.len() == CLIENTS && g.values().all(|(r, _)| *r == EACH)
        };
        done(&server_got) && done(&client_got)
    });
    let unreliable = |g: &HashMap<usize, (usize, Vec<bool>)>| {
        g.values()
            .map(|(_, u)| u.iter().filter(|x| **x).count())
            .sum::<usize>()
    };
    assert!(
        ok,
        "reliable messages missing: server has {:?}",
        server_got.values().map(|v| v.0).min()
    );
    // Unreliable messages may be lost on a busy loopback, but not most of them.
    assert!(unreliable(&server_got) > CLIENTS * EACH / 2);
    assert!(unreliable(&client_got) > CLIENTS * EACH / 2);
}

/// Checks one message: reliable ones arrive in order, unreliable ones at most once, intact.
fn record(e: &mut (usize, Vec<bool>), client: usize, payload: &[u8], flags: SendFlags) {
    if flags.is_reliable() {
        assert_eq!(
            payload,
            msg(client, e.0, true).as_slice(),
            "reliable message out of order or altered"
        );
        e.0 += 1;
    } else {
        let text = std::str::from_utf8(payload).unwrap();
        let i: usize = text
            .split('#')
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            payload,
            msg(client, i, false).as_slice(),
            "unreliable message altered"
        );
        assert!(!e.1[i], "unreliable message {i} delivered twice");
        e.1[i] = true;
    }
}

#[test]
fn ipv6_and_dual_stack_listening() {
    let mut v6 = Server::start("[::1]:0", &[]);
    let client = Sockets::new().unwrap();
    let h = connect(&client, v6.addr);
    assert!(wait_until(Duration::from_secs(10), || {
        v6.service();
        connected(&client, h)
    }));
    client
        .send_message_to_connection(h, b"over ipv6".to_vec(), SendFlags::RELIABLE)
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        v6.sockets
            .receive_messages_on_poll_group(v6.group, 10)
            .unwrap()
            .iter()
            .any(|m| &m.payload[..] == b"over ipv6")
    }));
    assert!(client
        .get_connection_info(h)
        .unwrap()
        .address_remote
        .is_ipv6());

    let mut dual = Server::start("[::]:0", &[]);
    let h4 = connect(
        &client,
        loopback("127.0.0.1:0".parse().unwrap(), dual.addr.port()),
    );
    let h6 = connect(
        &client,
        loopback("[::1]:0".parse().unwrap(), dual.addr.port()),
    );
    assert!(wait_until(Duration::from_secs(10), || {
        dual.service();
        connected(&client, h4) && connected(&client, h6)
    }));
    let addrs: Vec<SocketAddr> = dual
        .conns
        .iter()
        .map(|c| dual.sockets.get_connection_info(*c).unwrap().address_remote)
        .collect();
    assert!(
        addrs.iter().any(|a| a.is_ipv4()) && addrs.iter().any(|a| a.is_ipv6()),
        "{addrs:?}"
    );
}

#[test]
fn close_with_linger_delivers_everything() {
    let mut server = Server::start("127.0.0.1:0", &[]);
    let client = Sockets::new().unwrap();
    let h = connect(&client, server.addr);
    for i in 0..500 {
        client
            .send_message_to_connection(h, vec![i as u8; 1000], SendFlags::RELIABLE)
            .unwrap();
    }
    // Closed while still connecting, with 500 KB queued: the linger flushes it all.
    assert!(wait_until(Duration::from_secs(10), || {
        server.service();
        connected(&client, h)
    }));
    assert!(client.close_connection(h, 1001, "done sending", true));
    let mut got = Vec::new();
    let mut closed = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            for ev in server.service() {
                if ev.info.state == ConnectionState::ClosedByPeer {
                    closed = Some(ev.info.clone());
                }
            }
            got.extend(
                server
                    .sockets
                    .receive_messages_on_poll_group(server.group, 1000)
                    .unwrap(),
            );
            closed.is_some() && got.len() == 500
        }),
        "got {} messages, closed {closed:?}",
        got.len()
    );
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload[..], vec![i as u8; 1000][..]);
    }
    let info = closed.unwrap();
    assert_eq!(
        (info.end_reason, info.end_debug.as_str()),
        (EndReason(1001), "done sending")
    );
}

#[test]
fn a_server_that_never_accepts_times_out_the_client() {
    let server = Server::start("127.0.0.1:0", &[]); // never calls service()
    let client = Sockets::new().unwrap();
    let start = Instant::now();
    let h = client
        .connect_by_ip_address(
            server.addr,
            &[(ConfigValue::TimeoutInitial, ConfigData::Int32(1000))],
        )
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        client.get_connection_info(h).unwrap().state == ConnectionState::ProblemDetectedLocally
    }));
    let info = client.get_connection_info(h).unwrap();
    assert_eq!(info.end_reason, EndReason::MISC_TIMEOUT);
    assert!(start.elapsed() >= Duration::from_millis(1000));
    assert!(client.close_connection(h, 0, "", false));
    assert!(
        !client.close_connection(h, 0, "", false),
        "the handle is released"
    );
    drop(server);
}

#[test]
fn invalid_handles_are_refused() {
    let s = Sockets::new().unwrap();
    let bogus = ConnectionHandle(12345);
    assert!(matches!(
        s.send_message_to_connection(bogus, b"x".to_vec(), SendFlags::RELIABLE),
        Err(Error::InvalidParam(_))
    ));
    assert!(matches!(
        s.receive_messages_on_connection(bogus, 1),
        Err(Error::InvalidParam(_))
    ));
    assert!(matches!(
        s.accept_connection(bogus),
        Err(Error::InvalidParam(_))
    ));
    assert!(matches!(
        s.get_connection_info(bogus),
        Err(Error::InvalidParam(_))
    ));
    assert!(matches!(
        s.flush_messages_on_connection(bogus),
        Err(Error::InvalidParam(_))
    ));
    assert!(!s.close_connection(bogus, 0, "", false));
    assert!(!s.close_listen_socket(ListenSocketHandle(999)));
    assert!(matches!(
        s.receive_messages_on_poll_group(PollGroupHandle(999), 1),
        Err(Error::InvalidParam(_))
    ));
    assert!(!s.destroy_poll_group(PollGroupHandle(999)));
    assert_eq!(s.get_connection_user_data(bogus), -1);
    assert!(matches!(
        s.connect_by_ip_address("0.0.0.0:0".parse().unwrap(), &[]),
        Err(Error::InvalidParam(_))
    ));
}

#[test]
fn a_full_send_buffer_reports_limit_exceeded_and_too_big_is_invalid() {
    let server = Server::start("127.0.0.1:0", &[]);
    let client = Sockets::new().unwrap();
    let h = client
        .connect_by_ip_address(
            server.addr,
            &[(ConfigValue::SendBufferSize, ConfigData::Int32(10_000))],
        )
        .unwrap();
    let mut n = 0;
    let err = loop {
        match client.send_message_to_connection(h, vec![0u8; 1000], SendFlags::RELIABLE) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!((err, n), (Error::LimitExceeded, 10));
    assert!(matches!(
        client.send_message_to_connection(h, vec![0u8; 600 * 1024], SendFlags::RELIABLE),
        Err(Error::InvalidParam(_))
    ));
    assert_eq!(
        client.send_message_to_connection(h, b"late".to_vec(), SendFlags::UNRELIABLE_NO_DELAY),
        Err(Error::Ignored),
        "no-delay while connecting"
    );
}

#[test]
fn a_message_over_recv_max_message_size_closes_the_connection() {
    let mut server = Server::start(
        "127.0.0.1:0",
        &[(ConfigValue::RecvMaxMessageSize, ConfigData::Int32(2000))],
    );
    let client = Sockets::new().unwrap();
    let h = connect(&client, server.addr);
    assert!(wait_until(Duration::from_secs(10), || {
        server.service();
        connected(&client, h)
    }));
    client
        .send_message_to_connection(h, vec![7u8; 3000], SendFlags::RELIABLE)
        .unwrap();
    let mut problem = None;
    assert!(wait_until(Duration::from_secs(10), || {
        for ev in server.service() {
            if ev.info.state == ConnectionState::ProblemDetectedLocally {
                problem = Some(ev.info);
            }
        }
        problem.is_some()
            && client.get_connection_info(h).unwrap().state == ConnectionState::ClosedByPeer
    }));
    let p = problem.unwrap();
    assert_eq!(p.end_reason, EndReason::MISC_GENERIC);
    assert!(
        p.end_debug.contains("RecvMaxMessageSize"),
        "{}",
        p.end_debug
    );
    assert_eq!(
        client.get_connection_info(h).unwrap().end_reason,
        EndReason::MISC_GENERIC
    );
}

#[test]
fn two_instances_in_one_process_connect_both_ways() {
    let mut a = Server::start("127.0.0.1:0", &[]);
    let mut b = Server::start("127.0.0.1:0", &[]);
    let ab = connect(&a.sockets, b.addr);
    let ba = connect(&b.sockets, a.addr);
    assert!(wait_until(Duration::from_secs(10), || {
        a.service();
        b.service();
        connected(&a.sockets, ab) && connected(&b.sockets, ba)
    }));
    assert_eq!(
        a.sockets.get_connection_info(ab).unwrap().identity_remote,
        b.sockets.get_identity()
    );
    assert_eq!(
        b.sockets.get_connection_info(ba).unwrap().identity_remote,
        a.sockets.get_identity()
    );
    assert_ne!(a.sockets.get_identity(), b.sockets.get_identity());
}

#[test]
fn status_callbacks_run_on_the_callers_thread_and_follow_scopes() {
    let mut server = Server::start("127.0.0.1:0", &[]);
    let client = Sockets::new().unwrap();
    let seen: Arc<Mutex<Vec<(ConnectionState, std::thread::ThreadId)>>> = Arc::default();
    let s2 = seen.clone();
    let cb = CallbackFn(Arc::new(move |arg: &dyn std::any::Any| {
        let ev = arg
            .downcast_ref::<punchline::ConnectionStatusChanged>()
            .expect("status event");
        s2.lock()
            .unwrap()
            .push((ev.info.state, std::thread::current().id()));
    }));
    client
        .set_config_value(
            ConfigValue::CallbackConnectionStatusChanged,
            ConfigTarget::Interface,
            Some(ConfigData::Ptr(Some(cb))),
        )
        .unwrap();
    let h = connect(&client, server.addr);
    assert!(wait_until(Duration::from_secs(10), || {
        server.service();
        connected(&client, h)
    }));
    assert!(
        seen.lock().unwrap().is_empty(),
        "callbacks wait for run_callbacks"
    );
    client.run_callbacks();
    let seen = seen.lock().unwrap().clone();
    let states: Vec<ConnectionState> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        states,
        vec![ConnectionState::Connecting, ConnectionState::Connected]
    );
    assert!(seen.iter().all(|s| s.1 == std::thread::current().id()));
}

#[test]
fn config_values_inherit_and_refuse_bad_scopes_and_types() {
    let server = Server::start(
        "127.0.0.1:0",
        &[(ConfigValue::NagleTime, ConfigData::Int32(1234))],
    );
    let s = &server.sockets;
    let l = ConfigTarget::ListenSocket(server.listen);
    assert_eq!(
        s.get_config_value(ConfigValue::NagleTime, l).unwrap(),
        (ConfigData::Int32(1234), GetResult::Ok)
    );
    assert_eq!(
        s.get_config_value(ConfigValue::NagleTime, ConfigTarget::Interface)
            .unwrap(),
        (ConfigData::Int32(5000), GetResult::OkInherited)
    );
    s.set_config_value(
        ConfigValue::TimeoutConnected,
        ConfigTarget::Interface,
        Some(ConfigData::Int32(7000)),
    )
    .unwrap();
    assert_eq!(
        s.get_config_value(ConfigValue::TimeoutConnected, l)
            .unwrap(),
        (ConfigData::Int32(7000), GetResult::OkInherited)
    );
    // A global-only value cannot be set on a connection or listen socket.
    assert!(matches!(
        s.set_config_value(
            ConfigValue::FakePacketLossSend,
            l,
            Some(ConfigData::Float(5.0))
        ),
        Err(ConfigError::BadScope { .. })
    ));
    assert!(matches!(
        s.set_config_value(
            ConfigValue::SendBufferSize,
            ConfigTarget::Interface,
            Some(ConfigData::String("big".into()))
        ),
        Err(ConfigError::WrongType { .. })
    ));
    assert!(matches!(
        s.set_config_value(
            ConfigValue::MtuDataSize,
            ConfigTarget::Interface,
            Some(ConfigData::Int32(1))
        ),
        Err(ConfigError::ReadOnly(_))
    ));
    assert!(matches!(
        s.get_config_value(
            ConfigValue::NagleTime,
            ConfigTarget::Connection(ConnectionHandle(4242))
        ),
        Err(ConfigError::BadScopeObject)
    ));
    assert!(matches!(
        s.create_listen_socket_ip(
            "127.0.0.1:0".parse().unwrap(),
            &[(ConfigValue::Unencrypted, ConfigData::Int32(9))]
        ),
        Err(Error::InvalidParam(_))
    ));
    // Options given at connect apply to that connection, and the user data is bound at once.
    let client = Sockets::new().unwrap();
    let h = client
        .connect_by_ip_address(
            server.addr,
            &[
                (ConfigValue::ConnectionUserData, ConfigData::Int64(77)),
                (ConfigValue::SendRateMax, ConfigData::Int32(123_456)),
            ],
        )
        .unwrap();
    assert_eq!(client.get_connection_user_data(h), 77);
    assert_eq!(client.get_connection_info(h).unwrap().user_data, 77);
    let c = ConfigTarget::Connection(h);
    assert_eq!(
        client
            .get_config_value(ConfigValue::SendRateMax, c)
            .unwrap(),
        (ConfigData::Int32(123_456), GetResult::Ok)
    );
    assert_eq!(
        client
            .get_config_value(ConfigValue::MtuDataSize, c)
            .unwrap()
            .0,
        ConfigData::Int32(1452 - 29)
    );
}

#[test]
fn socket_pairs_in_process_and_over_loopback() {
    let s = Sockets::new().unwrap();
    for network in [false, true] {
        let alice = punchline::identity::Identity::generic_string("alice").unwrap();
        let (a, b) = s
            .create_socket_pair(network, Some(alice.clone()), None)
            .unwrap();
        s.send_message_to_connection(a, b"ping".to_vec(), SendFlags::RELIABLE_NO_NAGLE)
            .unwrap();
        let mut got = Vec::new();
        assert!(wait_until(Duration::from_secs(5), || {
            got.extend(s.receive_messages_on_connection(b, 10).unwrap());
            !got.is_empty()
        }));
        assert_eq!(&got[0].payload[..], b"ping");
        assert_eq!(got[0].peer_identity, alice);
        let flags = s.get_connection_info(a).unwrap().flags;
        assert_eq!(
            flags.contains(ConnectionInfoFlags::LOOPBACK_BUFFERS),
            !network
        );
        assert!(s.close_connection(a, 0, "", false));
        assert!(s.close_connection(b, 0, "", false));
    }
}

#[test]
fn quick_and_detailed_status_report_the_connection() {
    let mut server = Server::start("127.0.0.1:0", &[]);
    let client = Sockets::new().unwrap();
    let h = connect(&client, server.addr);
    assert!(wait_until(Duration::from_secs(10), || {
        server.service();
        connected(&client, h)
    }));
    for _ in 0..200 {
        client
            .send_message_to_connection(h, vec![1u8; 1000], SendFlags::RELIABLE)
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || {
        server
            .sockets
            .receive_messages_on_poll_group(server.group, 1000)
            .unwrap();
        client
            .get_quick_connection_status(h)
            .unwrap()
            .sent_unacked_reliable
            == 0
            && client
                .get_quick_connection_status(h)
                .unwrap()
                .pending_reliable
                == 0
    }));
    std::thread::sleep(Duration::from_millis(50));
    let q = client.get_quick_connection_status(h).unwrap();
    assert_eq!(q.state, ConnectionState::Connected);
    assert!(q.send_rate_bytes_per_sec > 0);
    assert!(q.connection_quality_remote > 0.9, "{q:?}");
    let text = client.get_detailed_connection_status(h).unwrap();
    assert!(
        text.contains("state: Connected") && text.contains("messages: 200 sent"),
        "{text}"
    );
}

#[test]
fn calls_from_many_threads_at_once_are_safe() {
    let mut server = Server::start("127.0.0.1:0", &[]);
    let client = Sockets::new().unwrap();
    let conns: Vec<ConnectionHandle> = (0..8).map(|_| connect(&client, server.addr)).collect();
    assert!(wait_until(Duration::from_secs(10), || {
        server.service();
        conns.iter().all(|h| connected(&client, *h))
    }));
    let threads: Vec<_> = conns
        .iter()
        .map(|h| {
            let (c, h) = (client.clone(), *h);
            std::thread::spawn(move || {
                for i in 0..500u32 {
                    c.send_message_to_connection(h, i.to_be_bytes().to_vec(), SendFlags::RELIABLE)
                        .unwrap();
                    let _ = c.get_quick_connection_status(h).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut per_conn: HashMap<ConnectionHandle, u32> = HashMap::new();
    assert!(wait_until(Duration::from_secs(20), || {
        for m in server
            .sockets
            .receive_messages_on_poll_group(server.group, 10_000)
            .unwrap()
        {
            let n = per_conn.entry(m.connection).or_default();
            assert_eq!(u32::from_be_bytes(m.payload[..4].try_into().unwrap()), *n);
            *n += 1;
        }
        per_conn.len() == 8 && per_conn.values().all(|n| *n == 500)
    }));
}

#[test]
fn usable_from_tokio_code_with_the_event_stream() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = Sockets::new().unwrap();
        let mut server_events = server.status_events();
        let listen = server
            .create_listen_socket_ip("127.0.0.1:0".parse().unwrap(), &[])
            .unwrap();
        let addr = server.get_listen_socket_address(listen).unwrap();
        let client = Sockets::new().unwrap();
        let mut client_events = client.status_events();
        let h = client.connect_by_ip_address(addr, &[]).unwrap();
        let limit = Duration::from_secs(10);
        let incoming = tokio::time::timeout(limit, server_events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(incoming.info.state, ConnectionState::Connecting);
        assert_eq!(incoming.old_state, ConnectionState::None);
        server.accept_connection(incoming.connection).unwrap();
        loop {
            let ev = tokio::time::timeout(limit, client_events.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(ev.connection, h);
            if ev.info.state == ConnectionState::Connected {
                break;
            }
        }
        server.close_connection(incoming.connection, 1234, "bye from async", false);
        loop {
            let ev = tokio::time::timeout(limit, client_events.recv())
                .await
                .unwrap()
                .unwrap();
            if ev.info.state == ConnectionState::ClosedByPeer {
                assert_eq!(ev.info.end_reason, EndReason(1234));
                assert_eq!(ev.info.end_debug, "bye from async");
                break;
            }
        }
    });
}

#[test]
fn waiting_threads_see_messages_arrive() {
    let s = Sockets::new().unwrap();
    let (a, b) = s.create_socket_pair(true, None, None).unwrap();
    for spin in [false, true] {
        for i in 0..50u8 {
            s.send_message_to_connection(a, vec![i; 10], SendFlags::RELIABLE_NO_NAGLE)
                .unwrap();
            let end = Instant::now() + Duration::from_secs(5);
            let got = loop {
                let m = s.receive_messages_on_connection(b, 10).unwrap();
                if !m.is_empty() || Instant::now() > end {
                    break m;
                }
                if spin {
                    s.wait_for_activity_spinning(
                        Duration::from_millis(50),
                        Duration::from_micros(50),
                    );
                } else {
                    s.wait_for_activity(Duration::from_millis(50));
                }
            };
            assert_eq!(got.len(), 1, "message {i} (spinning: {spin})");
            assert_eq!(got[0].payload[..], [i; 10]);
        }
    }
}

/// A thread that sits waiting for activity reads the sockets it saw when its wait began;
/// a socket opened after that is its driver's to read, at once, not once the wait ends.
#[test]
fn a_socket_opened_while_a_thread_waits_is_read_at_once() {
    let mut server = Server::start("127.0.0.1:0", &[]);
    let waiter = {
        let s = server.sockets.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            s.wait_for_activity(Duration::from_secs(30));
            start.elapsed()
        })
    };
    // The waiter is asleep on the first listen socket by now (if not, it sees both).
    std::thread::sleep(Duration::from_millis(200));
    let second = server
        .sockets
        .create_listen_socket_ip("127.0.0.1:0".parse().unwrap(), &[])
        .unwrap();
    let addr = server.sockets.get_listen_socket_address(second).unwrap();
    let client = Sockets::new().unwrap();
    let c = connect(&client, addr);
    let up = wait_until(Duration::from_secs(10), || {
        server.service();
        connected(&client, c)
    });
    assert!(up, "the connection to the new socket did not come up");
    let waited = waiter.join().unwrap();
    assert!(
        waited < Duration::from_secs(30),
        "the waiter slept through the handshake"
    );
}
