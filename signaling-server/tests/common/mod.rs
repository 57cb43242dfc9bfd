//! What the server's test files share: the server as a process, raw websocket clients,
//! plain HTTP.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use punchline::api::StatusEvents;
use punchline::identity::{Identity, KeyPair};
use punchline::{ConnectionHandle, ConnectionState, Sockets, SocketsConfig};
use punchline_signaling::protocol::{self, ClientMsg, ServerMsg};
use punchline_signaling::tls::TlsClient;
use punchline_signaling::SignalingClient;
use rand_core::OsRng;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as Frame;

/// The server binary, running; killed on drop.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    /// What it printed before it said where it listens (the STUN and TURN addresses).
    pub banner: Vec<String>,
}

impl Process {
    pub fn start(args: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_punchline-signaling"))
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

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn recv(ws: &mut Ws) -> ServerMsg {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an answer in time")
        {
            Some(Ok(Frame::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Frame::Close(_))) | None => panic!("closed"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
        }
    }
}

pub async fn send(ws: &mut Ws, m: &ClientMsg) {
    ws.send(Frame::text(serde_json::to_string(m).unwrap()))
        .await
        .unwrap();
}

/// Reads the challenge on `ws` and answers it as `identity` with `key` (and `cert`),
/// naming `host` as the server dialled; returns the server's answer.
pub async fn answer_challenge(
    ws: &mut Ws,
    host: &str,
    identity: &Identity,
    key: &KeyPair,
    cert: Option<String>,
) -> ServerMsg {
    let ServerMsg::Challenge {
        nonce, server_key, ..
    } = recv(ws).await
    else {
        panic!("no challenge");
    };
    let nonce = protocol::unbase64(&nonce, 64).unwrap();
    let ctx = protocol::LoginContext {
        nonce: &nonce,
        host,
        server_key: server_key.as_deref(),
    };
    send(ws, &protocol::login(key, identity, &ctx, cert).unwrap()).await;
    recv(ws).await
}

/// Connects and answers the challenge as `identity` with `key`; returns the socket and the
/// server's answer.
pub async fn login_as(url: &str, identity: &Identity, key: &KeyPair) -> (Ws, ServerMsg) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let host = protocol::url_host(url).unwrap();
    let answer = answer_challenge(&mut ws, &host, identity, key, None).await;
    (ws, answer)
}

/// Two fresh identities, logged in.
pub async fn two_logged_in(url: &str) -> ((KeyPair, Ws), (KeyPair, Ws)) {
    let (a, b) = (KeyPair::generate(&mut OsRng), KeyPair::generate(&mut OsRng));
    let (wa, _) = login_as(url, &a.identity(), &a).await;
    let (wb, _) = login_as(url, &b.identity(), &b).await;
    ((a, wa), (b, wb))
}

/// Sends `data` as a signal to `to`.
pub async fn signal(ws: &mut Ws, to: &Identity, data: &[u8], id: Option<u64>) {
    let m = ClientMsg::Signal {
        to: to.to_string(),
        data: protocol::base64(data),
        id,
    };
    send(ws, &m).await;
}

pub fn error_code(m: &ServerMsg) -> &str {
    match m {
        ServerMsg::Error { code, .. } => code,
        _ => "",
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A `Sockets` logged in to the server at `url` (a `wss://` one's certificate checked
/// against `tls`).
pub fn peer_with(
    url: &str,
    tls: Option<&TlsClient>,
) -> (Sockets, KeyPair, std::sync::Arc<SignalingClient>) {
    let key = KeyPair::generate(&mut OsRng);
    let sockets = Sockets::with_config(SocketsConfig {
        key: Some(key.clone()),
        // P2P on loopback only: peers are told nothing but 127.0.0.1.
        p2p_bind: Some("127.0.0.1:0".parse().unwrap()),
        ..SocketsConfig::default()
    })
    .unwrap();
    let client = SignalingClient::connect_with(url, &key, None, &sockets, tls).expect("log in");
    (sockets, key, client)
}

/// A `Sockets` logged in to the server at `url`.
pub fn peer(url: &str) -> (Sockets, KeyPair, std::sync::Arc<SignalingClient>) {
    peer_with(url, None)
}

pub fn state(s: &Sockets, h: ConnectionHandle) -> ConnectionState {
    s.get_connection_info(h)
        .map_or(ConnectionState::None, |i| i.state)
}

pub fn wait(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn accept_incoming(s: &Sockets, events: &mut StatusEvents, seen: &mut Vec<ConnectionHandle>) {
    while let Some(ev) = events.try_recv() {
        if ev.info.state == ConnectionState::Connecting && ev.info.listen_socket.is_some() {
            s.accept_connection(ev.connection).unwrap();
            seen.push(ev.connection);
        }
    }
}

/// `a` connects to `b` (listening on virtual port 0, accepting); both end up Connected.
/// Returns (a's connection, b's).
pub fn connect_pair(a: &Sockets, b: &Sockets) -> (ConnectionHandle, ConnectionHandle) {
    let mut b_events = b.status_events();
    b.create_listen_socket_p2p(0, &[]).unwrap();
    let c = a.connect_p2p(&b.get_identity(), 0, &[]).unwrap();
    let mut accepted = Vec::new();
    wait(Duration::from_secs(10), "both connected", || {
        accept_incoming(b, &mut b_events, &mut accepted);
        state(a, c) == ConnectionState::Connected
            && accepted.len() == 1
            && state(b, accepted[0]) == ConnectionState::Connected
    });
    (c, accepted[0])
}

/// What a flood of requests from one source got.
pub struct Flood {
    /// Requests sent.
    pub sent: u32,
    /// Answers received.
    pub answered: u32,
    /// How long the sending took.
    pub took: Duration,
    /// From the first request to the last answer's arrival: the server answered every
    /// request within it, so it bounds the time in which the source earned tokens.
    pub answering: Duration,
}

impl Flood {
    /// The most answers a source held to `rate` a second (bursts of twice that) may get.
    pub fn allowed(&self, rate: u32) -> f64 {
        let rate = f64::from(rate);
        2.0 * rate + rate * self.answering.as_secs_f64()
    }
}

/// Sends `request(1..=n)` from `socket` to `to`, about a second in all (so the server reads
/// them all, none lost to its buffer), reading answers as they come (a full receive buffer
/// would drop them and hide the server's limit), after the source's bucket has refilled.
pub fn flood_one_source(
    socket: &std::net::UdpSocket,
    to: SocketAddr,
    n: u32,
    request: impl Fn(u32) -> Vec<u8>,
) -> Flood {
    std::thread::sleep(Duration::from_millis(2500)); // the bucket refills
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1500];
    let mut answered = 0u32;
    let started = Instant::now();
    let mut last_answer = started;
    let mut drain = |answered: &mut u32, last: &mut Instant| {
        while socket.recv_from(&mut buf).is_ok() {
            *answered += 1;
            *last = Instant::now();
        }
    };
    for i in 1..=n {
        socket.send_to(&request(i), to).unwrap();
        drain(&mut answered, &mut last_answer);
        std::thread::sleep(Duration::from_micros(500));
    }
    let took = started.elapsed();
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        drain(&mut answered, &mut last_answer);
        std::thread::sleep(Duration::from_millis(10));
    }
    Flood {
        sent: n,
        answered,
        took,
        answering: last_answer - started,
    }
}
