//! The signaling server: the real process ([`Process`]), or in this process on a runtime
//! of its own with STUN and TURN ([`Signaling`]), which lets a suite look inside (dropped
//! signals, TURN allocations).

use punchline_signaling::server::TurnAdvert;
use punchline_signaling::stun::StunServer;
use punchline_signaling::turn_server::{TurnConfig, TurnServer};
use punchline_signaling::{Config, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The server binary, running; killed on drop.
#[derive(Debug)]
pub struct Process {
    /// The process.
    pub child: Child,
    /// Where it listens for websocket clients (and HTTP).
    pub addr: SocketAddr,
    /// What it printed before it said where it listens (the STUN and TURN addresses).
    pub banner: Vec<String>,
}

/// Starts this package's build of the server, as [`Process::start_bin`] does. A macro, so
/// that the path comes from Cargo at the suite's compile time (`CARGO_BIN_EXE_...`), built
/// with the suite: never a stale or other binary.
#[macro_export]
macro_rules! server_process {
    ($args:expr) => {
        $crate::server::Process::start_bin(
            ::std::path::Path::new(env!("CARGO_BIN_EXE_punchline-tests-signaling")),
            $args,
        )
    };
}

impl Process {
    /// Starts the server binary at `bin` (a crate's own, from `env!("CARGO_BIN_EXE_...")`;
    /// this package's suites use [`server_process!`]) listening on a free loopback port,
    /// with `args` added; returns once it says where it listens.
    pub fn start_bin(bin: &Path, args: &[&str]) -> Process {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        // Lines about STUN and TURN come first when those run.
        let mut banner = Vec::new();
        let addr = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| match l.strip_prefix("listening on ") {
                Some(a) => Some(a.to_string()),
                None => {
                    banner.push(l);
                    None
                }
            })
            .expect("the server says where it listens")
            .parse()
            .unwrap();
        Process {
            child,
            addr,
            banner,
        }
    }

    /// The address on the banner line starting `prefix` (`"stun on "`, `"turn on "`).
    pub fn banner_addr(&self, prefix: &str) -> SocketAddr {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split(' ').next())
            .expect("the server printed that line")
            .parse()
            .unwrap()
    }

    /// Its resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("VmRSS in kB")
            * 1024
    }

    /// A counter from its `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.addr, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {body}"))
    }

    /// Its `ws://` URL.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET of `path` from `addr`: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A signaling server on its own runtime thread, with STUN and TURN when asked.
pub struct Signaling {
    /// Its `ws://` URL.
    pub url: String,
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    /// Its STUN server, when asked for.
    pub stun: Option<StunServer>,
    /// Its TURN server, when asked for.
    pub turn: Option<TurnServer>,
}

impl Signaling {
    /// Signals the server dropped (over a pair's rate, or a recipient's queue full).
    pub fn dropped_signals(&self) -> u64 {
        self.server.as_ref().map_or(0, |s| {
            s.metrics()
                .signals_dropped
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Starts a server with `config` on a free loopback port; with `ice`, STUN and TURN
    /// servers too (TURN relaying to loopback), advertised to the clients.
    pub fn start(mut config: Config, ice: bool) -> Signaling {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let local = "127.0.0.1:0".parse().unwrap();
        let (stun, turn) = if ice {
            let secret = b"test secret".to_vec();
            let stun = rt.block_on(StunServer::start(local, None)).unwrap();
            // The peers are on loopback, which TURN refuses by default.
            let turn_config = TurnConfig::new(local, local.ip(), secret.clone())
                .allow_peer("127.0.0.0/8".parse().unwrap());
            let turn = rt.block_on(TurnServer::start(turn_config)).unwrap();
            config.stun = Some(stun.addr());
            config.turn = Some(TurnAdvert {
                addr: turn.addr(),
                secret,
                ttl: Duration::from_secs(600),
                sessions: Some(turn.sessions()),
            });
            (Some(stun), Some(turn))
        } else {
            (None, None)
        };
        let server = rt.block_on(Server::start(local, config)).unwrap();
        Signaling {
            url: format!("ws://{}/", server.addr()),
            rt,
            server: Some(server),
            stun,
            turn,
        }
    }
}

impl Signaling {
    /// Ends every allocation on the TURN server; returns how many there were.
    pub fn drop_turn_allocations(&self) -> usize {
        let turn = self.turn.as_ref().expect("a TURN server");
        self.rt.block_on(turn.drop_allocations())
    }
}

impl Drop for Signaling {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
        if let Some(t) = self.turn.take() {
            self.rt.block_on(t.stop());
        }
        self.stun.take();
    }
}
