//! The `punchline-signaling` binary's embedded STUN and TURN servers against coturn's own
//! clients (Debian package `coturn`): `turnutils_stunclient` and `turnutils_natdiscovery`
//! read our RFC 5780 answers, `turnutils_uclient` relays through our TURN server with
//! the credentials a login gets, which stop working at logout, and our `nat-check` reads a
//! host with no NAT correctly. Everything runs on loopback (127.0.0.1 and 127.0.0.2).
//!
//! Without coturn installed the tests say SKIPPED; with `PUNCHLINE_REQUIRE_COTURN=1` (set by
//! `.ci/run`) that is a failure.

mod common;

use punchline::identity::KeyPair;
use punchline_signaling::protocol::ServerMsg;
use rand_core::OsRng;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True when coturn's tools are here; otherwise says SKIPPED (or fails when required).
fn have_coturn(test: &str) -> bool {
    let found = [
        "turnutils_stunclient",
        "turnutils_uclient",
        "turnutils_peer",
    ]
    .iter()
    .all(|t| punchline_tests::coturn::installed(t));
    if !found {
        eprintln!("{test}: SKIPPED");
    }
    found
}

/// The server binary with STUN (RFC 5780 on 127.0.0.1 and 127.0.0.2).
struct Served {
    _proc: Proc,
    stun: SocketAddr,
}

fn serve() -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_punchline-signaling"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--stun",
            "127.0.0.1:0",
            "--stun-alt-ip",
            "127.0.0.2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start punchline-signaling");
    let stdout = child.stdout.take().expect("piped");
    let proc = Proc(child);
    let mut stun = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("server output");
        let field = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|a| a.parse::<SocketAddr>().expect("an address"))
        };
        stun = stun.or(field("stun on "));
        if line.starts_with("listening on ") {
            break;
        }
    }
    Served {
        _proc: proc,
        stun: stun.expect("stun address printed"),
    }
}

/// Runs a command to its end (killed after `limit`); returns (success, stdout + stderr).
fn run(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start command");
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut out);
    }
    (status.is_some_and(|s| s.success()), out)
}

#[test]
fn coturn_stun_clients_read_our_rfc_5780_answers() {
    if !have_coturn("coturn_stun_clients_read_our_rfc_5780_answers") {
        return;
    }
    let s = serve();
    let port = s.stun.port().to_string();
    let (ok, out) = run(
        Command::new("turnutils_stunclient").args(["-p", &port, "127.0.0.1"]),
        Duration::from_secs(20),
    );
    assert!(ok, "{out}");
    // Answers came from the changed IP and port, as the CHANGE-REQUESTs asked, and to the
    // RESPONSE-PORT the client asked for.
    assert!(out.contains("RFC 5780 response 3"), "{out}");
    assert!(
        out.contains(&format!("Other addr: : 127.0.0.2:{}", s.stun.port() + 1)),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Response origin: : 127.0.0.2:{}",
            s.stun.port() + 1
        )),
        "{out}"
    );
    assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
    let (_, out) = run(
        Command::new("turnutils_natdiscovery").args(["-m", "-f", "-p", &port, "127.0.0.1"]),
        Duration::from_secs(30),
    );
    assert!(out.contains("Endpoint Independent Mapping"), "{out}");
    assert!(out.contains("Endpoint Independent Filtering"), "{out}");
}

#[test]
fn coturn_uclient_relays_through_our_turn_server() {
    if !have_coturn("coturn_uclient_relays_through_our_turn_server") {
        return;
    }
    // The peer is on loopback, which the server relays to only when told.
    let server =
        common::start_server(&["--turn", "127.0.0.1:0", "--turn-allow-peer", "127.0.0.0/8"]);
    let turn_port = server.banner_addr("turn on ").port().to_string();
    // An echo peer on loopback, reached through our relay.
    let peer_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|u| u.local_addr())
        .unwrap()
        .port()
        .to_string();
    let _peer = Proc(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &peer_port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnutils_peer"),
    );
    std::thread::sleep(Duration::from_millis(300));
    // The credentials a login gets.
    let rt = common::rt();
    let key = KeyPair::generate(&mut OsRng);
    let (mut ws, welcome) = rt.block_on(common::login_as(&server.url(), &key.identity(), &key));
    let ServerMsg::Welcome { ice: Some(ice), .. } = welcome else {
        panic!("no TURN credentials at login: {welcome:?}");
    };
    let creds = &ice.turn[0];
    let uclient = |user: &str, password: &str| {
        run(
            Command::new("turnutils_uclient").args([
                "-u",
                user,
                "-w",
                password,
                "-p",
                &turn_port,
                "-e",
                "127.0.0.1",
                "-r",
                &peer_port,
                "-n",
                "20",
                "-m",
                "1",
                "-l",
                "200",
                "-X",
                "127.0.0.1",
            ]),
            Duration::from_secs(30),
        )
    };
    let (ok, out) = uclient(&creds.username, &creds.credential);
    assert!(ok, "{out}");
    assert!(out.contains("tot_recv_msgs=40"), "{out}");
    assert!(out.contains("Total lost packets 0 "), "{out}");
    // A wrong password is refused (a 401 each time, until the client gives up).
    let (ok, out) = uclient(&creds.username, "not the password");
    assert!(!ok, "{out}");
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    // At logout the login's credentials stop working.
    rt.block_on(async {
        let _ = ws.close(None).await;
    });
    drop(ws);
    let end = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let (ok, out) = uclient(&creds.username, &creds.credential);
        if !ok || Instant::now() > end {
            assert!(!ok, "the credentials still work after logout: {out}");
            break out;
        }
    };
    assert!(out.contains("Cannot complete Allocation"), "{out}");
}

#[test]
fn nat_check_sees_no_nat_on_loopback() {
    let s = serve();
    let (ok, out) = run(
        Command::new(env!("CARGO_BIN_EXE_punchline-signaling")).args([
            "nat-check",
            "--stun",
            &s.stun.to_string(),
            "--bind",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(30),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("mapping:        endpoint-independent"),
        "{out}"
    );
    assert!(
        out.contains("filtering:      endpoint-independent"),
        "{out}"
    );
    assert!(
        out.contains("NAT type:       none (open internet)"),
        "{out}"
    );
}

#[test]
fn nat_check_explains_a_server_without_discovery() {
    // A STUN server without a second address cannot tell NAT behaviour: nat-check says so.
    let mut child = Command::new(env!("CARGO_BIN_EXE_punchline-signaling"))
        .args(["--listen", "127.0.0.1:0", "--stun", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _proc = Proc(child);
    let stun = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("stun on ").map(str::to_string))
        .expect("stun address");
    let (ok, out) = run(
        Command::new(env!("CARGO_BIN_EXE_punchline-signaling")).args([
            "nat-check",
            "--stun",
            &stun,
            "--bind",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(30),
    );
    assert!(!ok);
    assert!(out.contains("does not support RFC 5780"), "{out}");
}
