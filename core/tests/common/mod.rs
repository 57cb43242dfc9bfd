//! Helpers shared by the protocol tests.
#![allow(dead_code)]

pub mod hub;

use bytes::Bytes;
use punchline::identity::KeyPair;
use punchline::proto::{
    ConnId, ConnectionConfig, ConnectionState, Credentials, EndpointConfig, Received, SendFlags,
};
use punchline::sim::Sim;
use std::time::Duration;

/// An endpoint config whose identity is a key made from `seed`.
pub fn keyed(seed: u8) -> EndpointConfig {
    EndpointConfig {
        credentials: Credentials::with_key(KeyPair::from_seed([seed; 32])),
        ..EndpointConfig::default()
    }
}

/// A client and server with keys, connected; returns (sim, client conn, server conn).
pub fn connected(seed: u64) -> (Sim, ConnId, ConnId) {
    connected_with(seed, keyed(1), keyed(2), ConnectionConfig::default())
}

/// Like [`connected`] with explicit configs.
pub fn connected_with(
    seed: u64,
    client: EndpointConfig,
    server: EndpointConfig,
    conn: ConnectionConfig,
) -> (Sim, ConnId, ConnId) {
    let mut sim = Sim::pair(seed, client, server);
    let c = sim.connect(0, 1, conn);
    let ok = sim.run_until(Duration::from_secs(30), |s| {
        s.state(0, c) == ConnectionState::Connected
            && s.first_conn(1)
                .is_some_and(|id| s.state(1, id) == ConnectionState::Connected)
    });
    assert!(
        ok,
        "handshake did not complete: client {:?}",
        sim.state(0, c)
    );
    let s = sim.first_conn(1).expect("server connection");
    (sim, c, s)
}

/// Deterministic contents for message `i` of `len` bytes.
/// Connects node 0 to node 1 of `sim` and returns the first client hello it sent (as the
/// network saw it) and the client's connection, once Connected.
#[allow(dead_code)]
pub fn connect_capturing_hello(sim: &mut Sim) -> (punchline::sim::Packet, ConnId) {
    let captured = std::rc::Rc::new(std::cell::RefCell::new(None));
    let cap = captured.clone();
    sim.filter = Some(Box::new(move |p| {
        if p.data[0] == 0xC1 && cap.borrow().is_none() {
            *cap.borrow_mut() = Some(p.clone());
        }
        true
    }));
    let c = sim.connect(0, 1, ConnectionConfig::default());
    assert!(sim.run_until(Duration::from_secs(5), |s| s.state(0, c)
        == ConnectionState::Connected));
    sim.filter = None;
    let hello = captured.borrow().clone().expect("a hello was sent");
    (hello, c)
}

pub fn payload(i: u64, len: usize) -> Bytes {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Drains every message waiting on `conn` at `node`.
pub fn drain(sim: &mut Sim, node: usize, conn: ConnId) -> Vec<Received> {
    let mut out = Vec::new();
    if let Some(mut c) = sim.nodes[node].endpoint.connection_mut(conn) {
        while let Some(m) = c.receive() {
            out.push(m);
        }
    }
    out
}

/// Sends on `conn` at `node`.
pub fn send(
    sim: &mut Sim,
    node: usize,
    conn: ConnId,
    data: Bytes,
    flags: SendFlags,
) -> Result<u64, punchline::proto::Error> {
    let now = sim.now;
    sim.nodes[node]
        .endpoint
        .connection_mut(conn)
        .expect("live connection")
        .send_message(now, data, flags)
}

/// This process's resident memory, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

type Options = [(
    punchline::api::config::ConfigValue,
    punchline::api::config::ConfigData,
)];

type Pair = (
    punchline::Sockets,
    punchline::ConnectionHandle,
    punchline::Sockets,
    punchline::ConnectionHandle,
);

/// `client` connects to a listen socket of `server` with `options`; the server accepts.
/// `wait(limit, ready)` runs until `ready` holds (false if `limit` passed first).
fn connect_to(
    server: punchline::Sockets,
    client: punchline::Sockets,
    options: &Options,
    limit: Duration,
    wait: impl FnOnce(Duration, &mut dyn FnMut() -> bool) -> bool,
) -> Pair {
    let mut events = server.status_events();
    let listen = server
        .create_listen_socket_ip("127.0.0.1:0".parse().unwrap(), &[])
        .unwrap();
    let addr = server.get_listen_socket_address(listen).unwrap();
    let c = client.connect_by_ip_address(addr, options).unwrap();
    let mut s = None;
    let connected = wait(limit, &mut || {
        while let Some(e) = events.try_recv() {
            if e.info.state == ConnectionState::Connecting && s.is_none() {
                server.accept_connection(e.connection).unwrap();
                s = Some(e.connection);
            }
        }
        let up = |sockets: &punchline::Sockets, h| {
            sockets.get_connection_info(h).unwrap().state == ConnectionState::Connected
        };
        s.is_some_and(|s| up(&client, c) && up(&server, s))
    });
    assert!(connected, "the pair did not connect within {limit:?}");
    (client, c, server, s.expect("accepted"))
}

/// A client and a server `Sockets` over loopback UDP, connected (the client's connection
/// with `options`): (client, its connection, server, its connection).
pub fn udp_pair(options: &Options) -> Pair {
    let server = punchline::Sockets::new().unwrap();
    let client = punchline::Sockets::new().unwrap();
    connect_to(
        server,
        client,
        options,
        Duration::from_secs(10),
        |limit, ready| {
            let end = std::time::Instant::now() + limit;
            while !ready() {
                if std::time::Instant::now() >= end {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            true
        },
    )
}

/// A client connected to a server over `world`'s network, each in its own `Sockets`;
/// `options` apply to the client's connection.
#[allow(dead_code)]
pub fn virtual_pair(world: &punchline::VirtualWorld, options: &Options) -> Pair {
    let (server, client) = (world.sockets().unwrap(), world.sockets().unwrap());
    connect_to(
        server,
        client,
        options,
        Duration::from_secs(60),
        |limit, ready| world.run_until(world.now() + limit, ready),
    )
}
