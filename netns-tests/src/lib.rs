//! NAT traversal tests in Linux network namespaces.
//!
//! A [`Lab`] is one test's network, built from uniquely named namespaces:
//!
//! - `inet`: the "internet", a bridge on 203.0.113.0/24 (TEST-NET-3);
//! - `srv`: the signaling server with STUN (203.0.113.1 and .2, for RFC 5780) and TURN,
//!   the real `punchline-signaling` command line run as its own process;
//! - one router per NAT [`Site`] (`r<k>`, WAN 203.0.113.<10+k>, LAN 10.0.<k>.0/24 on a
//!   bridge), with the nftables rules of `DESIGN.md` for its [`Nat`] type;
//! - hosts (`h<k>`): behind a router, or for [`Nat::None`] on the internet itself
//!   (203.0.113.<100+n>), each running a [`Peer`] process.
//!
//! A site's internet link is a veth pair, or with [`Impairment`] a [`wire`] that delays and
//! drops frames. IPv6 is off everywhere and every address is one the lab assigned
//! ([`Lab::audit`] checks), so no packet can leave the lab's namespaces.
//!
//! Every command and every wait is bounded in time. Dropping the lab kills what runs in its
//! namespaces and deletes them, on success and on failure (a panic unwinds through the
//! drop); a lab left behind by a killed test process is removed by the next one.
//!
//! Without root, `ip netns`, nftables or TAP devices, [`lab!`] prints `SKIPPED` and why, and
//! the test returns; with `PUNCHLINE_REQUIRE_NETNS=1` it fails instead.

pub mod peer;
pub mod wire;

use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The signaling server's address, and the second one STUN answers from.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The server's second address (RFC 5780's "other address").
pub const SERVER_ALT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// Signaling (websocket) port.
pub const SIGNALING_PORT: u16 = 7373;
/// STUN port (the behaviour-discovery answers also use the one above it).
pub const STUN_PORT: u16 = 3478;
/// TURN port.
pub const TURN_PORT: u16 = 3480;
/// How long any one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Prefix of every namespace a lab makes: `pl-<pid>-<lab>-<role>`.
const PREFIX: &str = "pl-";

/// Writes to the real stderr, past the test harness's capture, so a skip or a result table
/// shows in a normal `cargo test` run.
pub fn say(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// A NAT type (RFC 4787 terms), as in `DESIGN.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// No NAT: the host has a public address.
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// A new random port per destination, address-and-port-dependent filtering.
    Symmetric,
}

impl Nat {
    /// All four.
    pub const ALL: [Nat; 4] = [
        Nat::None,
        Nat::FullCone,
        Nat::PortRestricted,
        Nat::Symmetric,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Nat::None => "none",
            Nat::FullCone => "full cone",
            Nat::PortRestricted => "port-restricted",
            Nat::Symmetric => "symmetric",
        }
    }

    /// The router's nftables ruleset.
    fn ruleset(self, wan_ip: Ipv4Addr) -> String {
        // Endpoint-independent mapping needs the map: snat alone does not keep one external
        // port per internal socket. Braces on their own lines (nft 1.0 wants that).
        let full_cone = format!(
            "table ip nat {{
  map fullcone {{
    type inet_service : ipv4_addr . inet_service
    flags dynamic,timeout
    timeout 300s
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"wan\" meta l4proto udp dnat ip to udp dport map @fullcone
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" meta l4proto udp update @fullcone {{ udp sport timeout 300s : ip saddr . udp sport }}
    oifname \"wan\" snat ip to {wan_ip}
  }}
}}
"
        );
        let symmetric = "table ip nat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" masquerade random
  }
}
";
        let only_replies = "table ip filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"lan\" accept
  }
}
";
        match self {
            Nat::None => String::new(),
            Nat::FullCone => full_cone,
            Nat::PortRestricted => full_cone + only_replies,
            Nat::Symmetric => symmetric.to_string() + only_replies,
        }
    }
}

/// Delay and loss on a site's internet link, in both directions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// One-way delay.
    pub delay_ms: u64,
    /// Share of frames dropped, 0 to 1.
    pub loss: f64,
}

/// Runs `program args` with `input` on stdin, bounded by [`COMMAND_TIMEOUT`]; its stdout,
/// or what went wrong.
fn command(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let end = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: no answer in {COMMAND_TIMEOUT:?}"));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip ARGS`, panicking with the error: a lab that cannot be built is a failed test.
fn ip(args: &[&str]) -> String {
    command("ip", args, None).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `args` inside namespace `ns`.
fn in_ns(ns: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    command("ip", &full, input)
}

/// Why this machine cannot run namespace tests, if it cannot.
pub fn unavailable() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?");
        if euid != "0" {
            return Some(format!("needs root (effective uid {euid})"));
        }
        for (program, arg) in [("ip", "-V"), ("nft", "--version")] {
            if let Err(e) = command(program, &[arg], None) {
                return Some(format!("`{program}` is missing ({e})"));
            }
        }
        let probe = format!("{PREFIX}{}-probe", std::process::id());
        if let Err(e) = command("ip", &["netns", "add", &probe], None) {
            return Some(format!("cannot make a network namespace ({e})"));
        }
        let checks = in_ns(&probe, &["nft", "list", "ruleset"], None)
            .map_err(|e| format!("nftables does not work in a namespace ({e})"))
            .and_then(|_| {
                in_ns(
                    &probe,
                    &["ip", "tuntap", "add", "dev", "probe0", "mode", "tap"],
                    None,
                )
                .map_err(|e| format!("cannot make TAP devices ({e})"))
            });
        let _ = command("ip", &["netns", "del", &probe], None);
        checks.err()
    })
    .clone()
}

/// True (after saying SKIPPED and why) when the machine cannot run namespace tests; fails
/// instead when `PUNCHLINE_REQUIRE_NETNS=1`.
pub fn skip(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return false;
    };
    if std::env::var("PUNCHLINE_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
        panic!("{test}: namespace tests are required (PUNCHLINE_REQUIRE_NETNS=1) but {why}");
    }
    say(&format!("SKIPPED {test}: {why}"));
    true
}

/// Starts a lab for the calling test, or says SKIPPED and returns from it.
#[macro_export]
macro_rules! lab {
    ($name:expr) => {
        match $crate::Lab::new($name, env!("CARGO_BIN_EXE_netns-host")) {
            Some(lab) => lab,
            None => return,
        }
    };
}

/// Removes the namespaces of labs whose test process is gone.
fn remove_stale() {
    let Ok(list) = command("ip", &["netns", "list"], None) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}

/// Kills what runs in `ns` and deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = command("ip", &["netns", "pids", ns], None) {
        for pid in pids.split_whitespace() {
            let _ = command("kill", &["-9", pid], None);
        }
    }
    let _ = command("ip", &["netns", "del", ns], None);
}

/// One end of a link the lab can cut.
#[derive(Debug, Clone)]
pub struct LinkEnd {
    ns: String,
    dev: String,
}

/// A NAT site: a router (none for [`Nat::None`]) and the hosts behind it.
#[derive(Debug)]
pub struct Site {
    /// Its NAT type.
    pub nat: Nat,
    index: u8,
    router: Option<String>,
    /// The router's internet link (for `Nat::None`, set per host).
    uplink: Option<LinkEnd>,
    impairment: Option<Impairment>,
    hosts: u8,
}

/// A host: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its way to the internet (its router's, or its own).
    pub uplink: LinkEnd,
}

/// A process running in a namespace, its stdout read line by line; killed when dropped.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    fn spawn(ns: &str, name: &str, args: &[String]) -> Proc {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let err = child.stderr.take().expect("piped");
        let keep = stderr.clone();
        // With PUNCHLINE_NETNS_LOG_DIR set, every stderr line is kept in a file there too
        // (with PUNCHLINE_NETNS_LOG for the peers' log filter, a run's whole story).
        let mut file = std::env::var_os("PUNCHLINE_NETNS_LOG_DIR").and_then(|dir| {
            let file: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            std::fs::File::create(std::path::Path::new(&dir).join(format!("{file}.log"))).ok()
        });
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let mut k = keep.lock().unwrap_or_else(|e| e.into_inner());
                if k.len() == 100 {
                    k.pop_front();
                }
                k.push_back(line);
            }
        });
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line within `timeout`.
    fn line(&self, timeout: Duration) -> Result<String, String> {
        self.lines.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => {
                format!("{}: nothing said in {timeout:?}", self.name)
            }
            mpsc::RecvTimeoutError::Disconnected => format!("{}: exited", self.name),
        })
    }

    /// Its last stderr lines, for failure messages.
    fn stderr_tail(&self) -> String {
        let k = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        k.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits for a stdout line starting with `prefix`.
    fn wait_for(&self, prefix: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.line(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!(
                    "{e} (waiting for {prefix:?}); stderr:\n{}",
                    self.stderr_tail()
                ),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The signaling server (with STUN and TURN) running in the lab's `srv` namespace.
pub struct Server {
    proc: Proc,
    ns: String,
    bin: String,
}

impl Server {
    fn start(ns: &str, bin: &str) -> Server {
        let args: Vec<String> = [
            bin,
            "signaling",
            "--listen",
            &format!("{SERVER_IP}:{SIGNALING_PORT}"),
            "--stun",
            &format!("{SERVER_IP}:{STUN_PORT}"),
            "--stun-alt-ip",
            &SERVER_ALT_IP.to_string(),
            "--turn",
            &format!("{SERVER_IP}:{TURN_PORT}"),
            "--turn-secret",
            "netns-lab",
            // The lab's "internet" is TEST-NET-3, which TURN refuses by default.
            "--turn-allow-peer",
            "203.0.113.0/24",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc::spawn(ns, "signaling server", &args);
        proc.wait_for("listening on", Duration::from_secs(15));
        Server {
            proc,
            ns: ns.to_string(),
            bin: bin.to_string(),
        }
    }

    /// Kills the server process.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts it again (a new process on the same addresses).
    pub fn restart(&mut self) {
        self.proc.kill();
        *self = Server::start(&self.ns, &self.bin);
    }
}

/// A peer process on a host (see [`peer`] for its commands and events).
pub struct Peer {
    proc: Proc,
    /// Its identity.
    pub identity: String,
    /// Every event it printed so far.
    pub events: Vec<Value>,
    /// Reliable messages the other peer has sent it in all, as far as [`exchange`] knows.
    pub reliable_due: u32,
}

impl Peer {
    /// Sends one command line.
    pub fn send(&mut self, command: &str) {
        let name = self.proc.name.clone();
        let stdin = self.proc.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{name}: cannot send {command:?}: {e}"));
    }

    /// Waits for the next event named one of `names`; fails on an `error` event or a
    /// timeout.
    pub fn wait(&mut self, names: &[&str], timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = self.proc.line(left).unwrap_or_else(|e| {
                panic!(
                    "{e} (waiting for {names:?}); events so far: {:?}; stderr:\n{}",
                    self.events,
                    self.proc.stderr_tail()
                )
            });
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue; // not an event (a library's own output)
            };
            self.events.push(v.clone());
            let name = v["event"].as_str().unwrap_or("");
            if name == "error" {
                panic!("{}: {}", self.proc.name, v["what"]);
            }
            if names.contains(&name) {
                return v;
            }
        }
    }

    /// Asks for its status.
    pub fn status(&mut self) -> Value {
        self.send("status");
        self.wait(&["status"], Duration::from_secs(5))
    }

    /// The events named `name` seen so far.
    pub fn seen(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|v| v["event"] == name).collect()
    }
}

/// Connects `a` to `b`; both must see Connected. Returns (a's event, b's event).
pub fn connect(a: &mut Peer, b: &mut Peer) -> (Value, Value) {
    a.send(&format!("connect {}", b.identity));
    let ea = a.wait(&["connected", "ended"], Duration::from_secs(60));
    let eb = b.wait(&["connected", "ended"], Duration::from_secs(60));
    assert_eq!(ea["event"], "connected", "connecting side: {ea}");
    assert_eq!(eb["event"], "connected", "accepting side: {eb}");
    (ea, eb)
}

/// Both send `n` reliable messages and `bytes` of unreliable ones; both must receive all
/// reliable ones (within 90 s). Returns the unreliable bytes each has received in all.
pub fn exchange(a: &mut Peer, b: &mut Peer, n: u32, bytes: u32) -> (u64, u64) {
    for p in [&mut *a, &mut *b] {
        p.reliable_due += n;
        p.send(&format!("exchange {n} {bytes}"));
        p.send(&format!("expect {} 90000", p.reliable_due));
    }
    let ra = a.wait(&["received"], Duration::from_secs(100));
    let rb = b.wait(&["received"], Duration::from_secs(100));
    for (r, p) in [(&ra, &*a), (&rb, &*b)] {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["reliable"], p.reliable_due, "{r}");
    }
    (
        ra["unreliable_bytes"].as_u64().unwrap_or(0),
        rb["unreliable_bytes"].as_u64().unwrap_or(0),
    )
}

/// One test's network (see the crate docs).
pub struct Lab {
    name: String,
    prefix: String,
    bin: String,
    namespaces: Vec<String>,
    inet: String,
    /// The signaling server.
    pub server: Option<Server>,
    /// Processes the lab runs itself (wires).
    procs: Vec<Proc>,
    assigned: Vec<Ipv4Addr>,
    next_port: u32,
    next_site: u8,
    next_public_host: u8,
    next_pop: u8,
}

impl Lab {
    /// Builds the internet and the server; `None` (after saying SKIPPED) when the machine
    /// cannot, unless `PUNCHLINE_REQUIRE_NETNS=1`.
    pub fn new(name: &str, bin: &str) -> Option<Lab> {
        if skip(name) {
            return None;
        }
        remove_stale();
        static LABS: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            name: name.to_string(),
            prefix,
            bin: bin.to_string(),
            namespaces: Vec::new(),
            inet: String::new(),
            server: None,
            procs: Vec::new(),
            assigned: Vec::new(),
            next_port: 0,
            next_site: 1,
            next_public_host: 100,
            next_pop: 0,
        };
        lab.inet = lab.namespace("inet");
        ip(&[
            "-n", &lab.inet, "link", "add", "name", "br0", "type", "bridge",
        ]);
        ip(&["-n", &lab.inet, "link", "set", "br0", "up"]);
        let srv = lab.namespace("srv");
        let end = lab.veth_to_internet(&srv, "eth0", None);
        for a in [SERVER_IP, SERVER_ALT_IP] {
            lab.assign(&srv, &end.dev, a);
        }
        lab.server = Some(Server::start(&srv, bin));
        Some(lab)
    }

    /// The prefix of every namespace this lab makes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespaces this machine has now whose names start with `prefix`.
    pub fn namespaces_named(prefix: &str) -> Vec<String> {
        ip(&["netns", "list"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// Where peers reach the signaling server.
    pub fn signaling_url() -> String {
        format!("ws://{SERVER_IP}:{SIGNALING_PORT}/")
    }

    /// The STUN server, as `nat-check` takes it.
    pub fn stun() -> String {
        format!("{SERVER_IP}:{STUN_PORT}")
    }

    /// Gives `dev` in `ns` the address `addr`/24, noting it as the lab's.
    fn assign(&mut self, ns: &str, dev: &str, addr: Ipv4Addr) {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
        self.assigned.push(addr);
    }

    /// A new namespace `<prefix>-<role>` with loopback up and IPv6 off.
    fn namespace(&mut self, role: &str) -> String {
        let ns = format!("{}-{role}", self.prefix);
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            in_ns(&ns, &["sysctl", "-qw", &format!("{key}=1")], None)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        ns
    }

    /// Links `dev` in `ns` to the internet bridge: a veth pair, or a [`wire`] with
    /// `impairment`. Returns the `ns` end.
    fn veth_to_internet(&mut self, ns: &str, dev: &str, impairment: Option<Impairment>) -> LinkEnd {
        self.next_port += 1;
        let port = format!("p{}", self.next_port);
        match impairment {
            None => {
                ip(&[
                    "-n", ns, "link", "add", "name", dev, "type", "veth", "peer", "name", &port,
                    "netns", &self.inet,
                ]);
            }
            Some(imp) => {
                // The wire makes both TAP devices in the internet namespace; one moves.
                let far = format!("w{}", self.next_port);
                let args: Vec<String> = [
                    self.bin.as_str(),
                    "wire",
                    "--a",
                    &port,
                    "--b",
                    &far,
                    "--delay-ms",
                    &imp.delay_ms.to_string(),
                    "--loss",
                    &imp.loss.to_string(),
                    "--seed",
                    &self.next_port.to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let wire = Proc::spawn(&self.inet, &format!("wire {port}"), &args);
                wire.wait_for("ready", Duration::from_secs(10));
                self.procs.push(wire);
                ip(&["-n", &self.inet, "link", "set", &far, "netns", ns]);
                ip(&["-n", ns, "link", "set", &far, "name", dev]);
            }
        }
        ip(&["-n", &self.inet, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.inet, "link", "set", &port, "up"]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        LinkEnd {
            ns: ns.to_string(),
            dev: dev.to_string(),
        }
    }

    /// A site with a router of type `nat` (none for `Nat::None`).
    pub fn site(&mut self, nat: Nat) -> Site {
        self.site_impaired(nat, None)
    }

    /// A site whose internet link(s) delay and drop frames.
    pub fn site_impaired(&mut self, nat: Nat, impairment: Option<Impairment>) -> Site {
        let index = self.next_site;
        self.next_site += 1;
        let mut site = Site {
            nat,
            index,
            router: None,
            uplink: None,
            impairment,
            hosts: 0,
        };
        if nat == Nat::None {
            return site;
        }
        let r = self.namespace(&format!("r{index}"));
        let wan_ip = Ipv4Addr::new(203, 0, 113, 10 + index);
        let wan = self.veth_to_internet(&r, "wan", impairment);
        self.assign(&r, "wan", wan_ip);
        ip(&["-n", &r, "link", "add", "name", "lan", "type", "bridge"]);
        let lan_ip = Ipv4Addr::new(10, 0, index, 1);
        self.assign(&r, "lan", lan_ip);
        ip(&["-n", &r, "link", "set", "lan", "up"]);
        in_ns(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"], None)
            .unwrap_or_else(|e| panic!("{e}"));
        // Hosts on the LAN bridge talk to each other directly, not through the firewall.
        let _ = in_ns(
            &r,
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"],
            None,
        );
        in_ns(&r, &["nft", "-f", "-"], Some(&nat.ruleset(wan_ip)))
            .unwrap_or_else(|e| panic!("{nat:?} ruleset: {e}"));
        site.router = Some(r);
        site.uplink = Some(wan);
        site
    }

    /// Another relay, a point of presence `delay_ms` (one way) away from the internet
    /// bridge: its own namespace (`pop<k>`, 203.0.113.<200+k>) behind a [`wire`], running
    /// a second signaling server (no STUN or TURN). Returns its websocket URL.
    pub fn relay_pop(&mut self, delay_ms: u64) -> String {
        self.next_pop += 1;
        let k = self.next_pop;
        let ns = self.namespace(&format!("pop{k}"));
        let imp = Impairment {
            delay_ms,
            loss: 0.0,
        };
        let end = self.veth_to_internet(&ns, "eth0", Some(imp));
        let addr = Ipv4Addr::new(203, 0, 113, 200 + k);
        self.assign(&ns, &end.dev, addr);
        let listen = format!("{addr}:{SIGNALING_PORT}");
        let args: Vec<String> = [self.bin.as_str(), "signaling", "--listen", &listen]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let proc = Proc::spawn(&ns, &format!("relay pop{k}"), &args);
        proc.wait_for("listening on", Duration::from_secs(15));
        self.procs.push(proc);
        format!("ws://{listen}/")
    }

    /// A new host at `site`.
    pub fn host(&mut self, site: &mut Site) -> Host {
        site.hosts += 1;
        let ns = self.namespace(&format!("h{}x{}", site.index, site.hosts));
        match &site.router {
            None => {
                let ip_addr = Ipv4Addr::new(203, 0, 113, self.next_public_host);
                self.next_public_host += 1;
                let uplink = self.veth_to_internet(&ns, "eth0", site.impairment);
                self.assign(&ns, "eth0", ip_addr);
                Host {
                    ns,
                    ip: ip_addr,
                    uplink,
                }
            }
            Some(r) => {
                let port = format!("l{}", site.hosts);
                ip(&[
                    "-n", &ns, "link", "add", "name", "eth0", "type", "veth", "peer", "name",
                    &port, "netns", r,
                ]);
                ip(&["-n", r, "link", "set", &port, "master", "lan"]);
                ip(&["-n", r, "link", "set", &port, "up"]);
                let ip_addr = Ipv4Addr::new(10, 0, site.index, 1 + site.hosts);
                self.assign(&ns, "eth0", ip_addr);
                ip(&["-n", &ns, "link", "set", "eth0", "up"]);
                let gw = Ipv4Addr::new(10, 0, site.index, 1).to_string();
                ip(&["-n", &ns, "route", "add", "default", "via", &gw]);
                Host {
                    ns,
                    ip: ip_addr,
                    uplink: site.uplink.clone().expect("a router has an uplink"),
                }
            }
        }
    }

    /// Two sites of types `a` and `b` (their internet links impaired or not), a host at
    /// each, the lab audited, and a peer logged in on each host (key seeds 1 and 2).
    pub fn two_peers(
        &mut self,
        a: Nat,
        b: Nat,
        impairment: Option<Impairment>,
    ) -> ([Host; 2], Peer, Peer) {
        let mut sa = self.site_impaired(a, impairment);
        let mut sb = self.site_impaired(b, impairment);
        let hosts = [self.host(&mut sa), self.host(&mut sb)];
        self.audit();
        let pa = self.peer(&hosts[0], 1);
        let pb = self.peer(&hosts[1], 2);
        (hosts, pa, pb)
    }

    /// Starts a peer on `host` with identity key seed `seed`; waits until it is logged in.
    pub fn peer(&mut self, host: &Host, seed: u8) -> Peer {
        self.peer_with(host, seed, &[])
    }

    /// Like [`peer`](Self::peer), with more of the peer program's flags (`--transport relay`).
    pub fn peer_with(&mut self, host: &Host, seed: u8, flags: &[&str]) -> Peer {
        let args: Vec<String> = [
            self.bin.as_str(),
            "peer",
            "--signaling",
            &Lab::signaling_url(),
            "--seed",
            &seed.to_string(),
        ]
        .iter()
        .chain(flags)
        .map(|s| s.to_string())
        .collect();
        let mut peer = Peer {
            proc: Proc::spawn(&host.ns, &format!("peer {seed} on {}", host.ip), &args),
            identity: String::new(),
            events: Vec::new(),
            reliable_due: 0,
        };
        let ready = peer.wait(&["ready"], Duration::from_secs(30));
        peer.identity = ready["identity"].as_str().unwrap_or_default().to_string();
        peer
    }

    /// Runs a command on `host` (bounded in time); its stdout.
    pub fn run_on(&self, host: &Host, args: &[&str]) -> Result<String, String> {
        in_ns(&host.ns, args, None)
    }

    /// The lab's own tool (`netns-host`), for [`run_on`](Self::run_on).
    pub fn bin(&self) -> &str {
        &self.bin
    }

    /// Cuts a link: every packet through `end` is dropped, both ways, until
    /// [`restore`](Self::restore).
    pub fn cut(&self, end: &LinkEnd) {
        let dev = &end.dev;
        let rules = format!(
            "table inet outage {{
  chain input {{
    type filter hook input priority -300; policy accept;
    iifname \"{dev}\" drop
  }}
  chain forward {{
    type filter hook forward priority -300; policy accept;
    iifname \"{dev}\" drop
    oifname \"{dev}\" drop
  }}
  chain output {{
    type filter hook output priority -300; policy accept;
    oifname \"{dev}\" drop
  }}
}}
"
        );
        in_ns(&end.ns, &["nft", "-f", "-"], Some(&rules)).unwrap_or_else(|e| panic!("cut: {e}"));
    }

    /// Undoes [`cut`](Self::cut).
    pub fn restore(&self, end: &LinkEnd) {
        in_ns(&end.ns, &["nft", "delete", "table", "inet", "outage"], None)
            .unwrap_or_else(|e| panic!("restore: {e}"));
    }

    /// Blocks all UDP to and from `host` (TCP, and so signaling, still works).
    pub fn block_udp(&self, host: &Host) {
        let rules = "table inet noudp {
  chain input {
    type filter hook input priority -300; policy accept;
    meta l4proto udp drop
  }
  chain output {
    type filter hook output priority -300; policy accept;
    meta l4proto udp drop
  }
}
";
        in_ns(&host.ns, &["nft", "-f", "-"], Some(rules))
            .unwrap_or_else(|e| panic!("block UDP: {e}"));
    }

    /// Checks that no namespace has an address the lab did not assign, any IPv6 address,
    /// a route through a gateway outside the lab, or a link to a namespace outside it.
    pub fn audit(&self) {
        for ns in &self.namespaces {
            let v4 = ip(&["-n", ns, "-4", "-o", "addr", "show"]);
            for addr in v4.lines().filter_map(|l| {
                let mut w = l.split_whitespace();
                w.position(|x| x == "inet")?;
                w.next()?.split('/').next()?.parse::<Ipv4Addr>().ok()
            }) {
                assert!(
                    addr.is_loopback() || self.assigned.contains(&addr),
                    "{}: {ns} has address {addr}, not assigned by the lab",
                    self.name
                );
            }
            let v6 = ip(&["-n", ns, "-6", "-o", "addr", "show"]);
            assert!(
                v6.trim().is_empty(),
                "{}: {ns} has IPv6 addresses: {v6}",
                self.name
            );
            let routes = ip(&["-n", ns, "-4", "route", "show"]);
            for gw in routes.lines().filter_map(|l| {
                let mut w = l.split_whitespace();
                w.position(|x| x == "via")?;
                w.next()?.parse::<Ipv4Addr>().ok()
            }) {
                assert!(
                    self.assigned.contains(&gw),
                    "{}: {ns} routes through {gw}, outside the lab",
                    self.name
                );
            }
            let links = ip(&["-n", ns, "-o", "link", "show"]);
            assert!(
                !links.contains("link-netnsid"),
                "{}: {ns} links to an unnamed namespace (the host's?): {links}",
                self.name
            );
            for other in links.lines().filter_map(|l| {
                let mut w = l.split_whitespace();
                w.position(|x| x == "link-netns")?;
                w.next().map(str::to_string)
            }) {
                assert!(
                    self.namespaces.contains(&other),
                    "{}: {ns} links to namespace {other}, outside the lab",
                    self.name
                );
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.server = None;
        self.procs.clear();
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}
