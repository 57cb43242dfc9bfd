//! coturn's `turnserver` (Debian package `coturn`) on loopback, for suites that use it as the
//! TURN server.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// coturn's `turnserver`, stopped when dropped.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    dir: std::path::PathBuf,
    /// The UDP (and TCP) port it listens on, on 127.0.0.1.
    pub port: u16,
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

/// Starts turnserver on a free loopback port ([`Coturn::port`]) with one long-term user
/// ([`USER`]), or None without coturn. A turnserver that exits or stays silent (its port
/// was taken between our check and its bind, say) is tried again on another port; after
/// three tries the panic carries its log.
pub fn start() -> Option<Coturn> {
    if !installed("turnserver") {
        return None;
    }
    let mut logs = Vec::new();
    for _ in 0..3 {
        match try_start(crate::util::free_port()) {
            Ok(c) => return Some(c),
            Err(log) => logs.push(log),
        }
    }
    panic!(
        "turnserver did not come up in three tries:\n{}",
        logs.join("\n---\n")
    );
}

/// One try: the running server, or its log.
fn try_start(port: u16) -> Result<Coturn, String> {
    let dir = std::env::temp_dir().join(format!("punchline-coturn-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("turnserver.log");
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
            &format!("--log-file={}", log.display()),
            "--simple-log",
            &format!("--userdb={}", dir.join("turndb").display()),
            &format!("--pidfile={}", dir.join("turnserver.pid").display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnserver");
    let mut c = Coturn { child, dir, port };
    // Ready once it answers a STUN binding request.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let request = [
        0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let end = Instant::now() + Duration::from_secs(10);
    let why = loop {
        let _ = probe.send_to(&request, ("127.0.0.1", port));
        let mut buf = [0u8; 512];
        if probe.recv_from(&mut buf).is_ok() {
            return Ok(c);
        }
        if let Ok(Some(status)) = c.child.try_wait() {
            break format!("turnserver on port {port} exited ({status})");
        }
        if Instant::now() >= end {
            break format!("turnserver on port {port} did not answer STUN in 10 s");
        }
    };
    // The log file name gets coturn's date suffix; read whatever it wrote.
    let mut text = String::new();
    if let Ok(entries) = std::fs::read_dir(&c.dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("turnserver") {
                text += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
    }
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!("{why}; its log ends:\n{}", tail.join("\n")))
}
