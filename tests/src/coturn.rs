//! coturn's `turnserver` (Debian package `coturn`) on loopback, for suites that use it as the
//! TURN server.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// coturn's `turnserver`, stopped when dropped.
#[derive(Debug)]
pub struct Coturn {
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

/// Its one long-term user and password, and its realm.
pub const USER: (&str, &str, &str) = ("punch", "line", "punchline.test");

/// True when coturn's `command` is installed. Without it a suite says SKIPPED and returns;
/// with `PUNCHLINE_REQUIRE_COTURN=1` (set by `.ci/run`) its absence fails the suite.
pub fn installed(command: &str) -> bool {
    let there = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !there {
        assert!(
            std::env::var("PUNCHLINE_REQUIRE_COTURN").as_deref() != Ok("1"),
            "coturn is required (PUNCHLINE_REQUIRE_COTURN=1) but {command} is not installed"
        );
        eprintln!("SKIPPED: coturn's {command} is not installed (apt-get install coturn)");
    }
    there
}

/// Starts turnserver on 127.0.0.1:`port` with one long-term user ([`USER`]), or None
/// without coturn.
pub fn start(port: u16) -> Option<Coturn> {
    if !installed("turnserver") {
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
            &format!("--user={}:{}", USER.0, USER.1),
            &format!("--realm={}", USER.2),
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
