//! The peer program the tests run on each host (`netns-host peer --signaling URL --seed N
//! [--transport ice|relay|routes] [--no-turn] [--pops NAME=URL,…]`): a punchline `Sockets`
//! with ICE on the host's own addresses (or the signaling server's relay, or both with
//! route selection), logged in to the signaling server, listening for P2P connections and
//! accepting them. `--no-turn` keeps ICE from using TURN (host and server-reflexive
//! candidates only); `--pops` sets the relay network whose POPs `location` pings.
//!
//! It reads one command per line on stdin and writes one JSON event per line on stdout.
//!
//! | command | what it does |
//! |---|---|
//! | `connect <identity>` | `connect_p2p` to that identity (virtual port 0) |
//! | `exchange <n> <bytes>` | sends `n` reliable messages and `bytes` of unreliable ones (1,000-byte messages) |
//! | `stream <n> <ms>` | sends `n` reliable messages, one every `ms` |
//! | `expect <n> <ms>` | answers `received` once `n` reliable messages have arrived in all, or after `ms` |
//! | `status` | answers `status` |
//! | `location` | measures pings to the POPs and answers `location {location, pops, status}` |
//! | `quit` | closes the connection and exits |
//!
//! Events: `ready {identity}`; `connected {ms, route, remote, relayed}` (ms since `connect`
//! or since the incoming request); `route {route, remote}` when the route changes;
//! `ended {ms, state, reason, debug}`; `received {ok, reliable, unreliable_bytes, ms}`;
//! `status {…}`; `error {what}` for anything wrong with what arrived (a reliable message
//! out of order, a duplicate or damaged message), which the tests treat as a failure.
//!
//! Every message is `[kind][number u32][length u32][pattern…]` with a pattern that follows
//! from the rest, so damage, truncation and mix-ups show.

use bytes::Bytes;
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::relay;
use punchline::api::{ConnectionInfoFlags, StatusEvents};
use punchline::identity::{Identity, KeyPair};
use punchline::transport::RouteKind;
use punchline::transport::{Routes, Transport, ICE_PRIVATE, ICE_PUBLIC};
use punchline::{ConnectionHandle, ConnectionState, Error, SendFlags, Sockets, SocketsConfig};
use punchline_ice::IceTransport;
use punchline_signaling::pops::WsPinger;
use punchline_signaling::SignalingClient;
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RELIABLE: u8 = b'R';
const UNRELIABLE: u8 = b'U';
/// Size of each unreliable message.
const UNRELIABLE_SIZE: usize = 1000;

/// A test message: `[kind][number][length][pattern]`.
pub fn message(kind: u8, n: u32, len: usize) -> Vec<u8> {
    let len = len.max(9);
    let mut m = Vec::with_capacity(len);
    m.push(kind);
    m.extend_from_slice(&n.to_be_bytes());
    m.extend_from_slice(&(len as u32).to_be_bytes());
    let seed = n.wrapping_mul(2_654_435_761).wrapping_add(u32::from(kind));
    m.extend((9..len).map(|i| (seed.wrapping_add(i as u32 * 31) >> 3) as u8));
    m
}

/// Checks a message is whole and intact; returns (kind, number).
pub fn check(m: &[u8]) -> Result<(u8, u32), String> {
    if m.len() < 9 {
        return Err(format!("truncated message of {} bytes", m.len()));
    }
    let n = u32::from_be_bytes([m[1], m[2], m[3], m[4]]);
    let len = u32::from_be_bytes([m[5], m[6], m[7], m[8]]) as usize;
    if m.len() != len {
        return Err(format!("message {n}: {} bytes of {len}", m.len()));
    }
    if m != message(m[0], n, len).as_slice() {
        return Err(format!("message {n} is damaged"));
    }
    Ok((m[0], n))
}

/// Reliable message `n`'s size: 20 to 1,219 bytes, so some take two packets.
fn reliable_size(n: u32) -> usize {
    20 + (n as usize * 97) % 1200
}

fn emit(v: Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn route_name(r: RouteKind) -> &'static str {
    match r {
        RouteKind::None => "none",
        RouteKind::DirectLocal => "direct-local",
        RouteKind::DirectPublic => "direct-public",
        RouteKind::Relayed => "relayed",
    }
}

/// Which transport P2P connections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Ice,
    Relay,
    /// Both, the best route chosen by `Routes`.
    Routes,
}

struct Options {
    signaling: String,
    seed: u8,
    via: Via,
    no_turn: bool,
    pops: Option<String>,
}

fn options(args: Vec<std::ffi::OsString>) -> Result<Options, String> {
    let mut signaling = None;
    let mut seed = None;
    let mut via = Via::Ice;
    let mut no_turn = false;
    let mut pops = None;
    let mut it = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(flag) = it.next() {
        if flag == "--no-turn" {
            no_turn = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--signaling" => signaling = Some(value),
            "--seed" => seed = Some(value.parse().map_err(|e| format!("--seed: {e}"))?),
            "--transport" => {
                via = match value.as_str() {
                    "ice" => Via::Ice,
                    "relay" => Via::Relay,
                    "routes" => Via::Routes,
                    _ => return Err(format!("--transport {value}: ice, relay or routes")),
                }
            }
            "--pops" => pops = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Options {
        signaling: signaling.ok_or("--signaling is required")?,
        seed: seed.ok_or("--seed is required")?,
        via,
        no_turn,
        pops,
    })
}

/// Runs the peer until `quit` or the end of stdin; returns the exit code.
pub fn run(args: Vec<std::ffi::OsString>) -> i32 {
    let opts = match options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("peer: {e}");
            return 2;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PUNCHLINE_NETNS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    match Peer::start(&opts) {
        Ok(mut peer) => {
            peer.run();
            0
        }
        Err(e) => {
            emit(json!({"event": "error", "what": e}));
            1
        }
    }
}

/// Reads stdin lines into a channel.
fn commands() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

struct Peer {
    sockets: Sockets,
    signaling: std::sync::Arc<SignalingClient>,
    events: StatusEvents,
    listen: punchline::ListenSocketHandle,
    /// Options for connections (`--no-turn`).
    options: Vec<(ConfigValue, ConfigData)>,
    /// A `location` command's deadline, while its pings are measured.
    locating: Option<Instant>,
    conn: Option<ConnectionHandle>,
    /// When the connection was asked for (or came in).
    started: Instant,
    ended: bool,
    route: RouteKind,
    /// Messages waiting for room in the send buffer.
    outbox: VecDeque<(Bytes, SendFlags)>,
    next_reliable: u32,
    next_unreliable: u32,
    /// (left, every, next at) of a `stream` command.
    stream: Option<(u32, Duration, Instant)>,
    /// (reliable messages, deadline) of an `expect` command.
    expect: Option<(u32, Instant)>,
    expect_started: Instant,
    received_reliable: u32,
    unreliable_seen: HashSet<u32>,
    unreliable_bytes: u64,
}

impl Peer {
    fn start(opts: &Options) -> Result<Peer, String> {
        let key = KeyPair::from_seed([opts.seed; 32]);
        let sockets = Sockets::with_config(SocketsConfig {
            key: Some(key.clone()),
            ..SocketsConfig::default()
        })
        .map_err(|e| format!("sockets: {e}"))?;
        let events = sockets.status_events();
        let signaling = SignalingClient::connect(&opts.signaling, &key, None, &sockets)
            .map_err(|e| format!("signaling {}: {e}", opts.signaling))?;
        // The host's own addresses only: nothing on loopback is worth offering a peer.
        let ice = || {
            IceTransport::new()
                .with_ip_filter(|ip| !ip.is_loopback())
                .into_arc()
        };
        let relay = || -> Arc<dyn Transport> { Arc::new(signaling.relay_transport()) };
        sockets.set_p2p_transport(match opts.via {
            Via::Ice => ice(),
            Via::Relay => relay(),
            Via::Routes => Routes::new(vec![ice(), relay()]).into_arc(),
        });
        if let Some(list) = &opts.pops {
            sockets.set_relay_network(Arc::new(WsPinger::parse(list)?));
        }
        let options = if opts.no_turn {
            vec![(
                ConfigValue::P2pTransportIceEnable,
                ConfigData::Int32(ICE_PRIVATE | ICE_PUBLIC),
            )]
        } else {
            Vec::new()
        };
        let listen = sockets
            .create_listen_socket_p2p(0, &options)
            .map_err(|e| format!("listen: {e}"))?;
        emit(json!({"event": "ready", "identity": sockets.get_identity().to_string()}));
        Ok(Peer {
            sockets,
            signaling,
            events,
            listen,
            options,
            locating: None,
            conn: None,
            started: Instant::now(),
            ended: false,
            route: RouteKind::None,
            outbox: VecDeque::new(),
            next_reliable: 0,
            next_unreliable: 0,
            stream: None,
            expect: None,
            expect_started: Instant::now(),
            received_reliable: 0,
            unreliable_seen: HashSet::new(),
            unreliable_bytes: 0,
        })
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn run(&mut self) {
        let commands = commands();
        loop {
            loop {
                match commands.try_recv() {
                    Ok(line) => {
                        if !self.command(line.trim()) {
                            self.quit();
                            return;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.quit();
                        return;
                    }
                }
            }
            self.status_changes();
            self.receive();
            self.send();
            self.check_expect();
            self.check_location();
            self.sockets.wait_for_activity(Duration::from_millis(5));
        }
    }

    fn quit(&mut self) {
        if let Some(c) = self.conn {
            let _ = self.sockets.close_connection(c, 0, "quit", false);
        }
        self.signaling.disconnect();
    }

    /// Acts on one command; `false` to quit.
    fn command(&mut self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
        match (verb, num(0), num(1)) {
            ("connect", _, _) => {
                let Some(id) = args.first().and_then(|a| a.parse::<Identity>().ok()) else {
                    emit(json!({"event": "error", "what": format!("bad identity in {line:?}")}));
                    return true;
                };
                self.started = Instant::now();
                match self.sockets.connect_p2p(&id, 0, &self.options) {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => emit(json!({"event": "error", "what": format!("connect_p2p: {e}")})),
                }
            }
            ("exchange", Some(n), Some(bytes)) => {
                let unreliable = bytes as usize / UNRELIABLE_SIZE;
                // Interleaved, so both kinds share the path the whole time.
                let every = (n as usize / unreliable.max(1)).max(1);
                for i in 0..n as usize {
                    self.push_reliable();
                    if i % every == 0 && self.next_unreliable < unreliable as u32 {
                        self.push_unreliable();
                    }
                }
                while self.next_unreliable < unreliable as u32 {
                    self.push_unreliable();
                }
            }
            ("stream", Some(n), Some(ms)) => {
                self.stream = Some((n as u32, Duration::from_millis(ms), Instant::now()));
            }
            ("expect", Some(n), Some(ms)) => {
                self.expect_started = Instant::now();
                self.expect = Some((n as u32, Instant::now() + Duration::from_millis(ms)));
            }
            ("status", _, _) => self.status(),
            ("location", _, _) => {
                self.sockets.init_relay_network_access();
                self.locating = Some(Instant::now() + Duration::from_secs(20));
            }
            ("quit", _, _) => return false,
            _ => emit(json!({"event": "error", "what": format!("unknown command {line:?}")})),
        }
        true
    }

    fn push_reliable(&mut self) {
        let n = self.next_reliable;
        self.next_reliable += 1;
        self.outbox.push_back((
            message(RELIABLE, n, reliable_size(n)).into(),
            SendFlags::RELIABLE,
        ));
    }

    fn push_unreliable(&mut self) {
        let n = self.next_unreliable;
        self.next_unreliable += 1;
        self.outbox.push_back((
            message(UNRELIABLE, n, UNRELIABLE_SIZE).into(),
            SendFlags::UNRELIABLE,
        ));
    }

    fn status_changes(&mut self) {
        while let Some(ev) = self.events.try_recv() {
            let info = &ev.info;
            if self.conn.is_none()
                && info.state == ConnectionState::Connecting
                && info.listen_socket == Some(self.listen)
            {
                self.started = Instant::now();
                self.conn = Some(ev.connection);
                if let Err(e) = self.sockets.accept_connection(ev.connection) {
                    emit(json!({"event": "error", "what": format!("accept: {e}")}));
                }
                continue;
            }
            if Some(ev.connection) != self.conn {
                continue;
            }
            match info.state {
                ConnectionState::Connected if ev.old_state != ConnectionState::Connected => {
                    self.route = info.route;
                    emit(json!({
                        "event": "connected",
                        "ms": self.ms(),
                        "route": route_name(info.route),
                        "remote": info.address_remote.to_string(),
                        "relayed": info.flags.contains(ConnectionInfoFlags::RELAYED),
                    }));
                }
                ConnectionState::ClosedByPeer | ConnectionState::ProblemDetectedLocally
                    if !self.ended =>
                {
                    self.ended = true;
                    emit(json!({
                        "event": "ended",
                        "ms": self.ms(),
                        "state": format!("{:?}", info.state),
                        "reason": info.end_reason.0,
                        "debug": info.end_debug,
                    }));
                }
                _ => {}
            }
        }
        // Route changes (ICE restarts, relay fallbacks) show in the connection info.
        if let Some(info) = self
            .conn
            .and_then(|c| self.sockets.get_connection_info(c).ok())
        {
            if info.state == ConnectionState::Connected && info.route != self.route {
                self.route = info.route;
                emit(json!({
                    "event": "route",
                    "ms": self.ms(),
                    "route": route_name(info.route),
                    "remote": info.address_remote.to_string(),
                }));
            }
        }
    }

    fn receive(&mut self) {
        let Some(conn) = self.conn else { return };
        loop {
            let Ok(batch) = self.sockets.receive_messages_on_connection(conn, 256) else {
                return;
            };
            if batch.is_empty() {
                return;
            }
            for m in batch {
                match check(&m.payload) {
                    Ok((RELIABLE, n)) if n == self.received_reliable => self.received_reliable += 1,
                    Ok((RELIABLE, n)) => emit(json!({"event": "error", "what": format!(
                        "reliable message {n} arrived when {} was next", self.received_reliable
                    )})),
                    Ok((UNRELIABLE, n)) => {
                        if self.unreliable_seen.insert(n) {
                            self.unreliable_bytes += m.payload.len() as u64;
                        } else {
                            emit(
                                json!({"event": "error", "what": format!("unreliable message {n} arrived twice")}),
                            );
                        }
                    }
                    Ok((kind, n)) => emit(
                        json!({"event": "error", "what": format!("message {n} of unknown kind {kind}")}),
                    ),
                    Err(e) => emit(json!({"event": "error", "what": e})),
                }
            }
        }
    }

    fn send(&mut self) {
        if let Some((left, every, at)) = self.stream {
            if Instant::now() >= at {
                self.push_reliable();
                self.stream = (left > 1).then(|| (left - 1, every, at + every));
            }
        }
        let Some(conn) = self.conn else { return };
        while let Some((data, flags)) = self.outbox.front() {
            match self
                .sockets
                .send_message_to_connection(conn, data.clone(), *flags)
            {
                Ok(_) => {
                    self.outbox.pop_front();
                }
                // The send buffer is full: the rest waits.
                Err(Error::LimitExceeded) => return,
                // Not connected yet (or any more): keep it for later.
                Err(Error::InvalidState) | Err(Error::NoConnection) => return,
                Err(e) => {
                    emit(json!({"event": "error", "what": format!("send: {e}")}));
                    self.outbox.pop_front();
                }
            }
        }
    }

    fn check_expect(&mut self) {
        let Some((n, deadline)) = self.expect else {
            return;
        };
        let ok = self.received_reliable >= n;
        if ok || Instant::now() >= deadline {
            self.expect = None;
            emit(json!({
                "event": "received",
                "ok": ok,
                "reliable": self.received_reliable,
                "unreliable_bytes": self.unreliable_bytes,
                "ms": self.expect_started.elapsed().as_millis() as u64,
            }));
        }
    }

    /// Answers a `location` command once the pings are measured (or its time is up).
    fn check_location(&mut self) {
        let Some(deadline) = self.locating else {
            return;
        };
        let status = self.sockets.get_relay_network_status();
        if status.ping_measurement_in_progress && Instant::now() < deadline {
            return;
        }
        self.locating = None;
        let pops: serde_json::Map<String, Value> = self
            .sockets
            .get_pop_list()
            .into_iter()
            .map(|id| {
                (
                    relay::pop_name(id),
                    json!(self.sockets.get_direct_ping_to_pop(id)),
                )
            })
            .collect();
        emit(json!({
            "event": "location",
            "location": self.sockets.get_local_ping_location().map(|(l, _)| l.to_string()),
            "pops": pops,
            "status": format!("{:?}", status.available),
            "debug": status.debug_message,
        }));
    }

    fn status(&self) {
        let info = self
            .conn
            .and_then(|c| self.sockets.get_connection_info(c).ok());
        let quick = self
            .conn
            .and_then(|c| self.sockets.get_quick_connection_status(c).ok());
        emit(json!({
            "event": "status",
            "state": info.as_ref().map(|i| format!("{:?}", i.state)),
            "route": info.as_ref().map(|i| route_name(i.route)),
            "remote": info.as_ref().map(|i| i.address_remote.to_string()),
            "reason": info.as_ref().map(|i| i.end_reason.0),
            "debug": info.as_ref().map(|i| i.end_debug.clone()),
            "ping_ms": quick.as_ref().map(|q| q.ping_ms),
            "reliable": self.received_reliable,
            "unreliable_bytes": self.unreliable_bytes,
            "outbox": self.outbox.len(),
            "detail": self.conn.and_then(|c| self.sockets.get_detailed_connection_status(c).ok()),
        }));
    }
}
