//! What the server's test files share: raw websocket clients of its protocol, and floods.
//! The server process and plain HTTP come from `punchline-tests` (its `server` module).
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use punchline::identity::{Identity, KeyPair};
use punchline_signaling::protocol::{self, ClientMsg, ServerMsg};
#[allow(unused_imports)] // not every suite makes HTTP requests
pub use punchline_tests::server::{http_get, Process};
pub use punchline_tests::util::rt;
use rand_core::OsRng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as Frame;

/// This crate's server binary, running (killed on drop), listening on a free loopback port
/// with `args` added.
pub fn start_server(args: &[&str]) -> Process {
    Process::start_bin(
        std::path::Path::new(env!("CARGO_BIN_EXE_punchline-signaling")),
        args,
    )
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
