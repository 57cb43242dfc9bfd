//! Our ICE through coturn (Debian package `coturn`, started by the test on loopback) as the
//! TURN server: two peers that may only use relayed candidates connect through it.
//!
//! Without coturn installed the test says SKIPPED; with `PUNCHLINE_REQUIRE_COTURN=1` (set by
//! `.ci/run`) that is a failure.

mod common;

use common::*;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::transport::RouteKind;
use punchline_signaling::Config;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// coturn's `turnserver`, stopped when dropped.
struct Coturn {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free UDP port on loopback (for programs that cannot pick their own and tell).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port()
}

/// Starts turnserver on 127.0.0.1:`port` with one long-term user, or None without coturn.
fn coturn(port: u16) -> Option<Coturn> {
    let installed = Command::new("sh")
        .args(["-c", "command -v turnserver"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var("PUNCHLINE_REQUIRE_COTURN").as_deref() != Ok("1"),
            "coturn is required (PUNCHLINE_REQUIRE_COTURN=1) but turnserver is not installed"
        );
        eprintln!("SKIPPED: coturn is not installed (apt-get install coturn)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("punchline-coturn-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let relay_min = 49152 + (port % 8000);
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            &format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1",
            &format!("--min-port={relay_min}"),
            &format!("--max-port={}", relay_min + 200),
            "--lt-cred-mech",
            "--user=punch:line",
            "--realm=punchline.test",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            "--log-file=stdout",
            "--simple-log",
            &format!("--userdb={}", dir.join("turndb").display()),
            &format!("--pidfile={}", dir.join("turnserver.pid").display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnserver");
    let c = Coturn { child, dir };
    // Ready once it answers a STUN binding request.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let request = [
        0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = probe.send_to(&request, ("127.0.0.1", port));
        let mut buf = [0u8; 512];
        if probe.recv_from(&mut buf).is_ok() {
            return Some(c);
        }
        assert!(Instant::now() < end, "turnserver did not come up");
    }
}

#[test]
fn our_ice_relays_through_coturn() {
    let port = free_port();
    let Some(_coturn) = coturn(port) else {
        return;
    };
    let sig = Signaling::start(Config::default(), false);
    let (a, b) = (peer(&sig), peer(&sig));
    let turn = [
        ice_enable(1),
        (
            ConfigValue::P2pTurnServerList,
            ConfigData::String(format!("turn:127.0.0.1:{port}")),
        ),
        (
            ConfigValue::P2pTurnUserList,
            ConfigData::String("punch".into()),
        ),
        (
            ConfigValue::P2pTurnPassList,
            ConfigData::String("line".into()),
        ),
    ];
    let (ha, hb) = connect(&a, &b, &turn, &turn);
    assert_talking(&a, ha, &b, hb, 200);
    for (p, h) in [(&a, ha), (&b, hb)] {
        let info = info(p, h);
        assert_eq!(info.route, RouteKind::Relayed, "{info:?}");
        let detail = p.sockets.get_detailed_connection_status(h).unwrap();
        assert!(detail.contains("relay 127.0.0.1"), "{detail}");
    }
}
