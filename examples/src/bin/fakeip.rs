//! FakeIP: peers known by identity, addressed as IPv4 addresses, for code written for IP.
//! One process runs a signaling server (which hands out global fake IPs) and two peers. bob
//! gets a fake IP with two ports, listens on the first, and serves datagrams on the second;
//! alice connects to bob's fake IP and port with `connect_by_ip_address` as if it were a
//! server address, and then sends a datagram to his other fake port from a fake UDP port of
//! her own.
//!
//! ```sh
//! cargo run -p punchline-examples --bin fakeip
//! ```

use punchline::{ConnectionState, Error, SendFlags, Sockets};
use punchline_examples::local::{wait_for, LocalPeer, LocalServer};
use punchline_signaling::Config;
use std::net::{Ipv4Addr, SocketAddrV4};

fn fake_ip(s: &Sockets, ports: usize, name: &str) -> Result<(Ipv4Addr, Vec<u16>), String> {
    s.begin_async_request_fake_ip(ports);
    let (ip, ports) = wait_for("a fake IP", || s.get_fake_ip())?;
    println!("{name} holds fake IP {ip} with ports {ports:?}");
    Ok((ip, ports))
}

fn run() -> Result<(), String> {
    let server = LocalServer::start(Config::default())?;
    let (a, b) = (LocalPeer::join(&server)?, LocalPeer::join(&server)?);
    println!("alice is {}", a.key.identity());
    println!("bob is {}", b.key.identity());
    let (alice, bob) = (&a.sockets, &b.sockets);
    let (bob_ip, bob_ports) = fake_ip(bob, 2, "bob")?;
    fake_ip(alice, 1, "alice")?;

    // A "server" on bob's first fake port, reached like any IPv4 server.
    let mut events = bob.status_events();
    bob.create_listen_socket_p2p_fake_ip(0, &[])
        .map_err(|e| e.to_string())?;
    let bob_addr = SocketAddrV4::new(bob_ip, bob_ports[0]);
    // The first attempt asks the signaling server who holds the address.
    let conn = wait_for("the fake IP's holder", || {
        match alice.connect_by_ip_address(bob_addr.into(), &[]) {
            Ok(c) => Some(Ok(c)),
            Err(Error::InvalidState) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    })??;
    println!("alice: connect_by_ip_address({bob_addr}) -> a P2P connection to bob");
    let incoming = wait_for("bob's incoming connection", || {
        let e = events.try_recv()?;
        (e.info.state == ConnectionState::Connecting).then_some(e.connection)
    })?;
    bob.accept_connection(incoming).map_err(|e| e.to_string())?;
    wait_for("the connection", || {
        let s = alice.get_connection_info(conn).ok()?.state;
        (s == ConnectionState::Connected).then_some(())
    })?;
    let info = alice.get_connection_info(conn).map_err(|e| e.to_string())?;
    println!(
        "alice: connected to {} (remote fake address {:?})",
        info.identity_remote,
        alice.get_remote_fake_ip_for_connection(conn)
    );
    alice
        .send_message_to_connection(conn, b"hello over a fake IP".to_vec(), SendFlags::RELIABLE)
        .map_err(|e| e.to_string())?;
    let m = wait_for("bob's message", || {
        bob.receive_messages_on_connection(incoming, 1).ok()?.pop()
    })?;
    println!("bob got: {}", String::from_utf8_lossy(&m.payload));

    // Datagrams between fake UDP ports, as between UDP sockets.
    let alice_port = alice.create_fake_udp_port(0).map_err(|e| e.to_string())?;
    let bob_port = bob.create_fake_udp_port(1).map_err(|e| e.to_string())?;
    alice_port
        .send_message_to_fake_ip(bob_port.local_addr(), b"datagram", SendFlags::UNRELIABLE)
        .map_err(|e| e.to_string())?;
    let d = wait_for("a datagram", || bob_port.receive_messages(1).pop())?;
    println!(
        "bob's fake UDP port {} got {:?} from {}",
        bob_port.local_addr(),
        String::from_utf8_lossy(&d.payload),
        d.from
    );
    // The first attempt asks the server who holds alice's fake IP.
    wait_for("alice's fake IP holder", || {
        match bob_port.send_message_to_fake_ip(d.from, b"reply", SendFlags::RELIABLE) {
            Ok(()) => Some(Ok(())),
            Err(Error::InvalidState) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    })??;
    let r = wait_for("the reply", || alice_port.receive_messages(1).pop())?;
    println!(
        "alice got {:?} from {}",
        String::from_utf8_lossy(&r.payload),
        r.from
    );

    alice.close_connection(conn, 0, "bye", true);
    drop((alice_port, bob_port, a, b, server));
    println!("done");
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("fakeip: {e}");
        std::process::exit(1);
    }
}
