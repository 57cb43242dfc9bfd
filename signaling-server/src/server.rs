//! The signaling server: websocket clients prove their identities, then exchange signals;
//! FakeIP allocation; `/healthz` and `/metrics` on the same address. See docs/SIGNALING.md.

use crate::conn::{read_head, Io, Rewound};
use crate::fakeip::{FakeIpError, FakeIps};
use crate::limit::{Bucket, SourceSlot, SourceSlots};
use crate::mailbox::{Mailbox, Pushed};
use crate::protocol::{
    self, ClientMsg, IceSettings, ServerMsg, TurnSettings, MAX_FAKE_PORTS, MAX_SIGNAL,
};
use crate::turn_server::{TurnSession, TurnSessions};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use punchline_identity::{CertStore, Certificate, Identity, PublicKey};
use rand_core::{OsRng, RngCore};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};
use tokio_tungstenite::WebSocketStream;

/// Server settings (the binary's flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Logged-in and logging-in clients together.
    pub max_clients: usize,
    /// Largest frame accepted, in bytes.
    pub max_frame: usize,
    /// Messages per second per client (burst: twice this).
    pub rate: u32,
    /// A client silent this long is closed.
    pub idle_timeout: Duration,
    /// A client not logged in by then is closed.
    pub login_timeout: Duration,
    /// CAs whose certificates prove non-key identities.
    pub trusted: CertStore,
    /// Drop signals to offline identities silently (do not reveal who is online).
    pub quiet_undeliverable: bool,
    /// A STUN server to tell clients of (an unspecified IP: the address they reached us at).
    pub stun: Option<SocketAddr>,
    /// A TURN server to give clients credentials for.
    pub turn: Option<TurnAdvert>,
    /// Bytes per second each logged-in client may send through the relay (burst: twice
    /// this); 0 turns the relay off.
    pub relay_rate: u32,
    /// Most bytes queued toward one client: the websocket's write buffer and the server's
    /// own queues together (at least 64 KiB).
    pub client_queue: usize,
    /// A write to a client that does not finish in this time disconnects it.
    pub write_timeout: Duration,
    /// Signals per second one client may send to one other (burst: twice this).
    pub pair_rate: u32,
    /// Connections from one source (an IPv4 address, an IPv6 /64) not yet logged in.
    pub max_pending_per_source: usize,
    /// Logged-in clients from one source.
    pub max_clients_per_source: usize,
    /// Unfinished HTTP requests and websocket upgrades, from everyone together.
    pub max_upgrades: usize,
    /// Serve `wss://` with this certificate (see [`crate::tls::server_config`]); plain
    /// `ws://` when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Host names clients reach this server by (lower case, no port): a login proof must
    /// name one of them, or the address the client reached, or `localhost` on loopback.
    pub names: Vec<String>,
    /// The server's own identity, when it has a key: sent in every challenge and bound in
    /// every login proof.
    pub identity: Option<Identity>,
}

/// The smallest per-client queue cap: room for the largest frames in every queue.
pub const MIN_CLIENT_QUEUE: usize = 64 * 1024;

/// The TURN server clients are told of at login, with credentials of their own.
#[derive(Clone)]
pub struct TurnAdvert {
    /// Its address (an unspecified IP: the address clients reached us at).
    pub addr: SocketAddr,
    /// The secret it checks credentials against (see [`crate::turn_server`]).
    pub secret: Vec<u8>,
    /// How long credentials last.
    pub ttl: Duration,
    /// The TURN server's sessions, when it runs in this process: each login's credentials
    /// then work only while it lasts (see [`crate::turn_server::TurnSessions`]). `None` for
    /// a TURN server elsewhere (coturn with `use-auth-secret`): credentials last their ttl.
    pub sessions: Option<TurnSessions>,
}

impl std::fmt::Debug for TurnAdvert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnAdvert")
            .field("addr", &self.addr)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_clients: 10_000,
            max_frame: 16 * 1024,
            rate: 200,
            idle_timeout: Duration::from_secs(60),
            login_timeout: Duration::from_secs(10),
            trusted: CertStore::new(),
            quiet_undeliverable: false,
            stun: None,
            turn: None,
            relay_rate: 1_000_000,
            client_queue: 256 * 1024,
            write_timeout: Duration::from_secs(10),
            pair_rate: 100,
            max_pending_per_source: 32,
            max_clients_per_source: 1024,
            max_upgrades: 512,
            tls: None,
            names: Vec::new(),
            identity: None,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Logged-in clients.
    pub clients: AtomicU64,
    /// Signals forwarded.
    pub signals_forwarded: AtomicU64,
    /// Signals to offline identities.
    pub undeliverable: AtomicU64,
    /// Logins refused.
    pub rejects: AtomicU64,
    /// Error messages sent.
    pub errors: AtomicU64,
    /// FakeIP addresses held.
    pub fakeips: AtomicU64,
    /// Datagrams passed on by the relay.
    pub relayed: AtomicU64,
    /// Datagrams the relay dropped (over a client's rate, the receiver's queue full, the
    /// receiver offline, or the two not in a rendezvous together).
    pub relay_dropped: AtomicU64,
    /// Signals dropped toward a recipient (over the pair's rate, or the recipient's queue
    /// full with this sender's signals the most).
    pub signals_dropped: AtomicU64,
    /// Connections refused for their source's caps or the cap on unfinished upgrades.
    pub refused: AtomicU64,
    /// Clients disconnected for not keeping up (a stuck write, or their own answers piling
    /// up unread).
    pub slow_clients: AtomicU64,
}

impl Metrics {
    fn text(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE punchline_signaling_clients gauge\n\
             punchline_signaling_clients {}\n\
             # TYPE punchline_signaling_signals_forwarded_total counter\n\
             punchline_signaling_signals_forwarded_total {}\n\
             # TYPE punchline_signaling_undeliverable_total counter\n\
             punchline_signaling_undeliverable_total {}\n\
             # TYPE punchline_signaling_rejects_total counter\n\
             punchline_signaling_rejects_total {}\n\
             # TYPE punchline_signaling_errors_total counter\n\
             punchline_signaling_errors_total {}\n\
             # TYPE punchline_signaling_fakeips gauge\n\
             punchline_signaling_fakeips {}\n\
             # TYPE punchline_signaling_relayed_total counter\n\
             punchline_signaling_relayed_total {}\n\
             # TYPE punchline_signaling_relay_dropped_total counter\n\
             punchline_signaling_relay_dropped_total {}\n\
             # TYPE punchline_signaling_signals_dropped_total counter\n\
             punchline_signaling_signals_dropped_total {}\n\
             # TYPE punchline_signaling_refused_total counter\n\
             punchline_signaling_refused_total {}\n\
             # TYPE punchline_signaling_slow_clients_total counter\n\
             punchline_signaling_slow_clients_total {}\n",
            g(&self.clients),
            g(&self.signals_forwarded),
            g(&self.undeliverable),
            g(&self.rejects),
            g(&self.errors),
            g(&self.fakeips),
            g(&self.relayed),
            g(&self.relay_dropped),
            g(&self.signals_dropped),
            g(&self.refused),
            g(&self.slow_clients),
        )
    }
}

#[derive(Debug)]
struct Online {
    key: PublicKey,
    conn: u64,
    /// Everything queued toward the client.
    mailbox: Arc<Mailbox>,
    /// Tells the client's task to close with this error (a later login replaced it).
    kick: mpsc::Sender<ServerMsg>,
    /// The identities this client signalled, most recent last (at most
    /// [`MAX_CONTACTS`]): two clients that signalled each other are in a rendezvous, and
    /// only such pairs may relay to each other or resolve each other's FakeIP.
    contacts: Vec<Identity>,
}

/// Identities remembered per client as signalled.
const MAX_CONTACTS: usize = 64;

impl Online {
    fn signalled(&mut self, to: &Identity) {
        if let Some(i) = self.contacts.iter().position(|c| c == to) {
            let c = self.contacts.remove(i);
            self.contacts.push(c);
        } else {
            if self.contacts.len() >= MAX_CONTACTS {
                self.contacts.remove(0);
            }
            self.contacts.push(to.clone());
        }
    }
}

/// Whether `a` and `b` signalled each other (both online).
fn in_rendezvous(online: &HashMap<Identity, Online>, a: &Identity, b: &Identity) -> bool {
    let knows = |x: &Identity, y: &Identity| online.get(x).is_some_and(|o| o.contacts.contains(y));
    knows(a, b) && knows(b, a)
}

#[derive(Debug)]
struct Hub {
    config: Config,
    metrics: Arc<Metrics>,
    online: Mutex<HashMap<Identity, Online>>,
    fake: Mutex<FakeIps>,
    sources: Arc<SourceSlots>,
    connections: AtomicUsize,
    upgrading: AtomicUsize,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `listen` and serves on the current tokio runtime until [`stop`](Self::stop).
    pub async fn start(listen: SocketAddr, config: Config) -> std::io::Result<Server> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = watch::channel(false);
        let mut config = config;
        config.client_queue = config.client_queue.max(MIN_CLIENT_QUEUE);
        let hub = Arc::new(Hub {
            sources: SourceSlots::new(config.max_pending_per_source, config.max_clients_per_source),
            config,
            metrics: metrics.clone(),
            online: Mutex::new(HashMap::new()),
            fake: Mutex::new(FakeIps::default()),
            connections: AtomicUsize::new(0),
            upgrading: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        });
        let task = tokio::spawn(serve(listener, hub, stopped));
        Ok(Server {
            addr,
            metrics,
            stop,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting, closes every client with a close frame, and waits for that.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Serves until `signal` completes, then stops gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.stop().await;
    }
}

async fn serve(listener: TcpListener, hub: Arc<Hub>, mut stopped: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, from)) => {
                    let Some(slot) = hub.sources.acquire(from.ip()) else {
                        hub.metrics.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%from, "refused: its source has its most connections logging in");
                        continue;
                    };
                    let (hub, stopped) = (hub.clone(), stopped.clone());
                    tasks.spawn(async move {
                        if let Err(e) = handle(stream, hub, stopped, slot).await {
                            tracing::debug!(%from, error = %e, "connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Every connection task sees the stop too and closes its client; wait for them.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

/// An IPv4-mapped IPv6 address as plain IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One TCP connection: a plain HTTP request (`/healthz`, `/metrics`) or a websocket.
async fn handle(
    stream: TcpStream,
    hub: Arc<Hub>,
    stopped: watch::Receiver<bool>,
    slot: SourceSlot,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let local_ip = canonical_ip(stream.local_addr()?.ip());
    let peer = stream.peer_addr()?;
    let ws = {
        let upgrading = Counted::new(&hub.upgrading);
        if upgrading.before >= hub.config.max_upgrades {
            hub.metrics.refused.fetch_add(1, Ordering::Relaxed);
            return Err("refused: too many unfinished upgrades".into());
        }
        // Relay frames and signals are small and latency-bound: no Nagle delay.
        stream.set_nodelay(true)?;
        // The TLS handshake, the request and the websocket upgrade, all in the login time.
        let limit = tokio::time::Instant::now() + hub.config.login_timeout;
        let mut io: Box<dyn Io> = match &hub.config.tls {
            Some(tls) => {
                let accept = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(stream);
                Box::new(
                    tokio::time::timeout_at(limit, accept)
                        .await
                        .map_err(|_| "TLS handshake timed out")??,
                )
            }
            None => Box::new(stream),
        };
        let left = limit.saturating_duration_since(tokio::time::Instant::now());
        let Some((head, bytes)) = read_head(&mut io, left.min(HEAD_TIME)).await? else {
            return Ok(());
        };
        if !head.upgrade {
            return answer_http(io, &head.path, &hub).await;
        }
        // Frames are written one at a time, so the write buffer holds about one frame
        // (and a pong); past its share of the client's cap the client is not reading.
        let config = WebSocketConfig::default()
            .max_frame_size(Some(hub.config.max_frame))
            .max_message_size(Some(hub.config.max_frame))
            .write_buffer_size(0)
            .max_write_buffer_size(hub.config.client_queue / 4);
        let upgrade =
            tokio_tungstenite::accept_async_with_config(Rewound::new(bytes, io), Some(config));
        tokio::time::timeout_at(limit, upgrade)
            .await
            .map_err(|_| "websocket upgrade timed out")??
    };
    let count = Counted::new(&hub.connections);
    if count.before >= hub.config.max_clients {
        let mut ws = ws;
        hub.metrics.errors.fetch_add(1, Ordering::Relaxed);
        let bye = async {
            let _ = send(
                &mut ws,
                &ServerMsg::error("server_full", "the server is full"),
            )
            .await;
            close(&mut ws).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
        return Ok(());
    }
    client(ws, hub.clone(), stopped, local_ip, peer, slot).await;
    Ok(())
}

/// How long a client may take to send its request head.
const HEAD_TIME: Duration = Duration::from_secs(5);

/// One more on a counter while it lives.
struct Counted<'a> {
    counter: &'a AtomicUsize,
    /// The count before this one.
    before: usize,
}

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Counted<'a> {
        Counted {
            before: counter.fetch_add(1, Ordering::SeqCst),
            counter,
        }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer_http(
    mut stream: Box<dyn Io>,
    path: &str,
    hub: &Hub,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::AsyncWriteExt;
    let (status, body) = match path {
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/metrics" => {
            let mut text = hub.metrics.text();
            if let Some(s) = hub.config.turn.as_ref().and_then(|t| t.sessions.as_ref()) {
                text.push_str(&s.metrics_text());
            }
            ("200 OK", text)
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

type Ws = WebSocketStream<Rewound<Box<dyn Io>>>;

fn text_frame(m: &ServerMsg) -> Frame {
    Frame::text(serde_json::to_string(m).expect("server messages serialize"))
}

async fn send(ws: &mut Ws, m: &ServerMsg) -> Result<(), WsError> {
    ws.send(text_frame(m)).await
}

fn close_frame() -> Frame {
    Frame::Close(Some(CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
}

async fn close(ws: &mut Ws) {
    let _ = ws.send(close_frame()).await;
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
}

/// Errors tolerated from one client before it is closed.
const MAX_ERRORS: u32 = 20;

/// How long a closing client's last words (an error, the close frame) may take to write.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// Why a client's connection ends.
#[derive(Debug)]
enum End {
    /// The client closed it (or the connection broke).
    Gone,
    /// Tell the client this error, then close.
    Tell(ServerMsg),
    /// It made more than [`MAX_ERRORS`] errors.
    Misbehaved,
    /// It does not keep up with what is sent to it.
    Slow(&'static str),
    /// The server stops.
    Stopped,
}

/// A client's state between its messages.
struct ClientState {
    conn: u64,
    me: Option<Identity>,
    /// `me` as text, for relay frames (written once).
    me_text: Option<String>,
    errors: u32,
    bucket: Bucket,
    relay_bucket: Bucket,
    /// The relay-off error was sent.
    told_relay_off: bool,
    slot: SourceSlot,
    local_ip: IpAddr,
    nonce: [u8; 32],
    /// This login's right to the TURN server in this process, given back at logout.
    turn: Option<TurnSession>,
}

/// Serves one websocket client to the end: a reader and a writer that run apart, so a
/// client that does not read can stall only its own writes, never its timeouts.
async fn client(
    ws: Ws,
    hub: Arc<Hub>,
    mut stopped: watch::Receiver<bool>,
    local_ip: IpAddr,
    peer: SocketAddr,
    slot: SourceSlot,
) {
    let (mut sink, mut stream) = ws.split();
    let mailbox = Arc::new(Mailbox::new(
        hub.config.client_queue,
        f64::from(hub.config.pair_rate),
    ));
    let (kick, mut kicked) = mpsc::channel::<ServerMsg>(1);
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    mailbox.push_control(text_frame(&ServerMsg::Challenge {
        nonce: protocol::base64(&nonce),
        server: protocol::SERVER_NAME.into(),
        server_key: hub.config.identity.as_ref().map(Identity::to_string),
    }));
    let rate = f64::from(hub.config.rate);
    let relay_rate = f64::from(hub.config.relay_rate);
    let mut st = ClientState {
        conn: hub.next_conn.fetch_add(1, Ordering::Relaxed),
        me: None,
        me_text: None,
        errors: 0,
        bucket: Bucket::new(rate, 2.0 * rate),
        relay_bucket: Bucket::new(relay_rate, 2.0 * relay_rate),
        told_relay_off: false,
        slot,
        local_ip,
        nonce,
        turn: None,
    };
    let end = tokio::select! {
        end = read_loop(&mut stream, &hub, &mailbox, &kick, &mut st) => end,
        end = write_loop(&mut sink, &mailbox, hub.config.write_timeout) => end,
        Some(m) = kicked.recv() => End::Tell(m),
        _ = stopped.changed() => End::Stopped,
    };
    // Leave first: the identity and its FakeIP are free even if the last words stall.
    if let Some(id) = &st.me {
        leave(&hub, id, st.conn);
    }
    // The login's TURN credentials stop working and its allocations end.
    drop(st.turn.take());
    let who = st.me.as_ref().map(Identity::to_string);
    match &end {
        End::Slow(why) => {
            hub.metrics.slow_clients.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, identity = ?who, why, "disconnected a client that does not keep up");
        }
        End::Misbehaved => {
            tracing::info!(%peer, identity = ?who, "closed a client after too many errors")
        }
        End::Tell(m) => {
            hub.metrics.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, identity = ?who, message = ?m, "closing a client");
        }
        End::Gone | End::Stopped => {}
    }
    let last_words = async {
        if let End::Tell(m) = &end {
            sink.send(text_frame(m)).await?;
        }
        if !matches!(end, End::Gone) {
            sink.send(close_frame()).await?;
        }
        sink.close().await
    };
    let _ = tokio::time::timeout(LAST_WORDS, last_words).await;
}

/// Writes what the mailbox holds, each frame within `timeout`.
async fn write_loop(sink: &mut SplitSink<Ws, Frame>, mailbox: &Mailbox, timeout: Duration) -> End {
    loop {
        while let Some(frame) = mailbox.pop() {
            match tokio::time::timeout(timeout, sink.send(frame)).await {
                Err(_) => return End::Slow("a write did not finish in time"),
                Ok(Err(WsError::WriteBufferFull(_))) => {
                    return End::Slow("its websocket write buffer is full")
                }
                Ok(Err(_)) => return End::Gone,
                Ok(Ok(())) => {}
            }
        }
        mailbox.wait().await;
    }
}

/// Reads the client's frames and acts on them until the connection should end.
async fn read_loop(
    stream: &mut SplitStream<Ws>,
    hub: &Hub,
    mailbox: &Arc<Mailbox>,
    kick: &mpsc::Sender<ServerMsg>,
    st: &mut ClientState,
) -> End {
    let login_deadline = tokio::time::Instant::now() + hub.config.login_timeout;
    let mut last_heard = tokio::time::Instant::now();
    let every = hub.config.idle_timeout / 3;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let idle_at = if st.me.is_some() {
            last_heard + hub.config.idle_timeout
        } else {
            login_deadline
        };
        let reply = tokio::select! {
            frame = stream.next() => {
                let frame = match frame {
                    None => return End::Gone,
                    Some(Err(WsError::Capacity(e))) => {
                        return End::Tell(ServerMsg::error("too_large", e.to_string()));
                    }
                    Some(Err(WsError::WriteBufferFull(_))) => {
                        return End::Slow("its websocket write buffer is full");
                    }
                    Some(Err(_)) => return End::Gone,
                    Some(Ok(f)) => f,
                };
                last_heard = tokio::time::Instant::now();
                on_frame(hub, mailbox, kick, st, frame)
            }
            _ = ping.tick() => {
                if mailbox.push_control(Frame::Ping(Vec::new().into())) == Pushed::Overflow {
                    return End::Slow("its answers pile up unread");
                }
                Reply::None
            }
            _ = tokio::time::sleep_until(idle_at) => {
                let why = if st.me.is_some() { "idle too long" } else { "no login in time" };
                return End::Tell(ServerMsg::error("timeout", why));
            }
        };
        let queue = |m: &ServerMsg| mailbox.push_control(text_frame(m)) != Pushed::Overflow;
        match reply {
            Reply::None => {}
            Reply::Msg(m) => {
                if !queue(&m) {
                    return End::Slow("its answers pile up unread");
                }
            }
            Reply::Error(m) => {
                hub.metrics.errors.fetch_add(1, Ordering::Relaxed);
                st.errors += 1;
                if st.errors > MAX_ERRORS {
                    return End::Misbehaved;
                }
                if !queue(&m) {
                    return End::Slow("its answers pile up unread");
                }
            }
            Reply::Close(m) => return End::Tell(m),
            Reply::End(e) => return e,
        }
    }
}

/// Acts on one frame from a client.
fn on_frame(
    hub: &Hub,
    mailbox: &Arc<Mailbox>,
    kick: &mpsc::Sender<ServerMsg>,
    st: &mut ClientState,
    frame: Frame,
) -> Reply {
    let rate_limited = || {
        Reply::Error(ServerMsg::error(
            "rate_limited",
            "too many messages; slow down",
        ))
    };
    match frame {
        Frame::Text(text) => {
            if !st.bucket.take() {
                return rate_limited();
            }
            on_message(hub, mailbox, kick, st, text.as_str())
        }
        Frame::Binary(data) => {
            if st.me_text.is_none() {
                st.me_text = st.me.as_ref().map(Identity::to_string);
            }
            relay(hub, st, &data)
        }
        // The websocket answers pings by itself; they count against the rate all the same.
        Frame::Ping(_) | Frame::Pong(_) => {
            if st.bucket.take() {
                Reply::None
            } else {
                rate_limited()
            }
        }
        Frame::Frame(_) => Reply::None,
        Frame::Close(_) => Reply::End(End::Gone),
    }
}

/// Passes a client's relay frame on to the peer it names, as from the client's
/// authenticated identity. Datagrams over the client's rate, to a peer offline or not in a
/// rendezvous with the client, or beyond the peer's queue are dropped (counted), as a
/// network would.
fn relay(hub: &Hub, st: &mut ClientState, data: &[u8]) -> Reply {
    let (Some(me), Some(me_text)) = (&st.me, &st.me_text) else {
        return Reply::Error(ServerMsg::error(
            "not_logged_in",
            "log in before sending relay frames",
        ));
    };
    if hub.config.relay_rate == 0 {
        // Said once per client (every frame would soon count as misbehaving).
        hub.metrics.relay_dropped.fetch_add(1, Ordering::Relaxed);
        if !st.told_relay_off {
            st.told_relay_off = true;
            return Reply::Error(ServerMsg::error("relay_off", "this server does not relay"));
        }
        return Reply::None;
    }
    let frame = match crate::relay::decode(data) {
        Ok(f) => f,
        Err(e) => return Reply::Error(ServerMsg::error("bad_relay_frame", e.to_string())),
    };
    let Ok(to) = frame.peer.parse::<Identity>() else {
        return Reply::Error(ServerMsg::error(
            "bad_relay_frame",
            format!("relay frame names no identity: {:?}", frame.peer),
        ));
    };
    let dropped = || {
        hub.metrics.relay_dropped.fetch_add(1, Ordering::Relaxed);
        Reply::None
    };
    if !st.relay_bucket.take_n(data.len() as f64) {
        return dropped();
    }
    let Some(out) = crate::relay::encode(me_text, frame.session, frame.datagram) else {
        return dropped();
    };
    let peer = {
        let online = lock(&hub.online);
        in_rendezvous(&online, me, &to)
            .then(|| online.get(&to).map(|o| o.mailbox.clone()))
            .flatten()
    };
    match peer {
        Some(mailbox) if mailbox.push_relay(out) == Pushed::Queued => {
            hub.metrics.relayed.fetch_add(1, Ordering::Relaxed);
            Reply::None
        }
        _ => dropped(),
    }
}

enum Reply {
    None,
    Msg(ServerMsg),
    Error(ServerMsg),
    Close(ServerMsg),
    End(End),
}

/// The STUN and TURN servers (with fresh credentials) to tell `who` of.
fn ice_settings(
    config: &Config,
    local_ip: IpAddr,
    who: &Identity,
    session: Option<&TurnSession>,
) -> Option<IceSettings> {
    let host = |a: SocketAddr| {
        let ip = if a.ip().is_unspecified() {
            local_ip
        } else {
            a.ip()
        };
        SocketAddr::new(ip, a.port())
    };
    let stun: Vec<String> = config
        .stun
        .iter()
        .map(|a| format!("stun:{}", host(*a)))
        .collect();
    let turn: Vec<TurnSettings> = config
        .turn
        .iter()
        .map(|t| {
            let user = session.map_or_else(|| who.to_string(), |s| s.user().to_string());
            let c = crate::turn_server::credentials(&t.secret, &user, t.ttl);
            TurnSettings {
                url: format!("turn:{}", host(t.addr)),
                username: c.username,
                credential: c.password,
                expires: c.expires,
            }
        })
        .collect();
    (!stun.is_empty() || !turn.is_empty()).then_some(IceSettings { stun, turn })
}

fn on_message(
    hub: &Hub,
    mailbox: &Arc<Mailbox>,
    kick: &mpsc::Sender<ServerMsg>,
    st: &mut ClientState,
    text: &str,
) -> Reply {
    let msg: ClientMsg = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            let unknown = e.to_string().contains("unknown variant");
            return Reply::Error(if unknown {
                ServerMsg::error("unknown_type", e.to_string())
            } else {
                ServerMsg::error("malformed", e.to_string())
            });
        }
    };
    match (msg, st.me.as_ref()) {
        (
            ClientMsg::Login {
                identity,
                public_key,
                signature,
                certificate,
                server,
            },
            None,
        ) => {
            let proof = Proof {
                identity: &identity,
                public_key: &public_key,
                signature: &signature,
                certificate,
                server,
            };
            match login(hub, st, mailbox, kick, proof) {
                Ok(id) => {
                    st.turn = hub
                        .config
                        .turn
                        .as_ref()
                        .and_then(|t| t.sessions.as_ref())
                        .map(|s| s.open(&id.to_string()));
                    let welcome = ServerMsg::Welcome {
                        identity: id.to_string(),
                        ice: ice_settings(&hub.config, st.local_ip, &id, st.turn.as_ref()),
                        rate: Some(hub.config.rate),
                    };
                    st.me = Some(id);
                    Reply::Msg(welcome)
                }
                Err(e) => {
                    hub.metrics.rejects.fetch_add(1, Ordering::Relaxed);
                    Reply::Close(e)
                }
            }
        }
        (ClientMsg::Login { .. }, Some(_)) => {
            Reply::Error(ServerMsg::error("malformed", "already logged in"))
        }
        (_, None) => Reply::Close(ServerMsg::error(
            "not_logged_in",
            "log in first: answer the challenge",
        )),
        (ClientMsg::Signal { to, data, id }, Some(from)) => forward(hub, from, &to, &data, id),
        (ClientMsg::FakeipRequest { id }, Some(who)) => fake_ip(hub, who, id),
        (ClientMsg::FakeipResolve { id, ip }, Some(asker)) => {
            let Ok(addr) = ip.parse::<Ipv4Addr>() else {
                return Reply::Error(ServerMsg::error("malformed", "ip is not an IPv4 address"));
            };
            let holder = lock(&hub.fake).holder(addr).cloned();
            // A FakeIP is how a peer known only by its address (a game server in a list) is
            // reached, so anyone may resolve it; a quiet server, which does not reveal who
            // is online, tells only the holder and peers in a rendezvous with it.
            let holder = holder.filter(|h| {
                !hub.config.quiet_undeliverable
                    || h == asker
                    || in_rendezvous(&lock(&hub.online), asker, h)
            });
            Reply::Msg(ServerMsg::FakeipIdentity {
                id,
                ip,
                identity: holder.as_ref().map(Identity::to_string),
            })
        }
    }
}

/// A login's claims.
struct Proof<'a> {
    identity: &'a str,
    public_key: &'a str,
    signature: &'a str,
    certificate: Option<String>,
    server: Option<String>,
}

/// Whether a login proof naming `host` is for this server, reached at `local_ip`.
fn is_our_name(config: &Config, host: &str, local_ip: IpAddr) -> bool {
    host == local_ip.to_string()
        || (local_ip.is_loopback() && host == "localhost")
        || config.names.iter().any(|n| n == host)
}

fn login(
    hub: &Hub,
    st: &mut ClientState,
    mailbox: &Arc<Mailbox>,
    kick: &mpsc::Sender<ServerMsg>,
    proof: Proof<'_>,
) -> Result<Identity, ServerMsg> {
    let Proof {
        identity,
        public_key,
        signature,
        certificate,
        server,
    } = proof;
    let fail = |why: &str| ServerMsg::error("auth_failed", why);
    let host = server.ok_or_else(|| {
        fail("the login names no server (a client older than login proof v2): update the client")
    })?;
    if !is_our_name(&hub.config, &host, st.local_ip) {
        tracing::warn!(
            host,
            reached = %st.local_ip,
            "refused a login proof for another server (if clients reach this one by that \
             name, add --name {host})"
        );
        return Err(fail(&format!(
            "the login proof is for server {host:?}, which is not this one (its operator names \
             it with --name)"
        )));
    }
    let server_key = hub.config.identity.as_ref().map(Identity::to_string);
    let ctx = protocol::LoginContext {
        nonce: &st.nonce,
        host: &host,
        server_key: server_key.as_deref(),
    };
    let id: Identity = identity
        .parse()
        .map_err(|_| fail("identity does not parse"))?;
    let key =
        protocol::public_key(public_key).ok_or_else(|| fail("public_key is not an ed25519 key"))?;
    let sig = protocol::signature(signature).ok_or_else(|| fail("signature is not 64 bytes"))?;
    let signed =
        protocol::login_proof(&ctx, identity).ok_or_else(|| fail("server name too long"))?;
    key.verify(&signed, &sig)
        .map_err(|_| fail("the signature does not verify"))?;
    let proven = match (&id, certificate) {
        (Identity::PublicKey(k), None) => *k == key,
        (_, Some(c)) => {
            let cert =
                Certificate::from_base64(&c).map_err(|e| fail(&format!("certificate: {e}")))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            hub.config
                .trusted
                .verify(&cert, now, Some(&id), None)
                .map_err(|e| fail(&format!("certificate refused: {e}")))?;
            cert.public_key == key
        }
        (_, None) => false,
    };
    if !proven {
        return Err(fail(
            "the key does not prove the identity (use the key's own identity, or a certificate)",
        ));
    }
    if !st.slot.log_in() {
        return Err(ServerMsg::error(
            "limit",
            "too many clients logged in from this address",
        ));
    }
    let mut online = lock(&hub.online);
    if let Some(old) = online.get(&id) {
        if old.key != key {
            return Err(ServerMsg::error(
                "identity_in_use",
                "that identity is online with another key",
            ));
        }
        let _ = old.kick.try_send(ServerMsg::error(
            "replaced",
            "the same identity logged in again elsewhere",
        ));
    } else {
        hub.metrics.clients.fetch_add(1, Ordering::Relaxed);
    }
    online.insert(
        id.clone(),
        Online {
            key,
            conn: st.conn,
            mailbox: mailbox.clone(),
            kick: kick.clone(),
            contacts: Vec::new(),
        },
    );
    tracing::info!(identity = %id, "logged in");
    Ok(id)
}

fn leave(hub: &Hub, id: &Identity, conn: u64) {
    let mut online = lock(&hub.online);
    // A replaced connection leaves nothing: its successor holds the slot.
    if online.get(id).is_some_and(|o| o.conn == conn) {
        online.remove(id);
        hub.metrics.clients.fetch_sub(1, Ordering::Relaxed);
        drop(online);
        if lock(&hub.fake).release(id) {
            hub.metrics.fakeips.fetch_sub(1, Ordering::Relaxed);
        }
        tracing::info!(identity = %id, "left");
    }
}

fn forward(hub: &Hub, from: &Identity, to: &str, data: &str, id: Option<u64>) -> Reply {
    let Ok(to_id) = to.parse::<Identity>() else {
        return Reply::Error(ServerMsg::error("malformed", "to is not an identity"));
    };
    if protocol::unbase64(data, MAX_SIGNAL).is_none() {
        return Reply::Error(ServerMsg::error(
            "malformed",
            format!("data must be base64 of at most {MAX_SIGNAL} bytes"),
        ));
    }
    let target = {
        let mut online = lock(&hub.online);
        let target = online.get(&to_id).map(|o| o.mailbox.clone());
        if target.is_some() {
            if let Some(me) = online.get_mut(from) {
                me.signalled(&to_id);
            }
        }
        target
    };
    match target {
        Some(mailbox) => {
            let m = ServerMsg::Signal {
                from: from.to_string(),
                data: data.to_string(),
            };
            // Over the pair's rate, or crowding a recipient that is not keeping up, a
            // signal is dropped (the rendezvous sends it again).
            let text = serde_json::to_string(&m).expect("server messages serialize");
            if mailbox.push_signal(from, text) == Pushed::Queued {
                hub.metrics
                    .signals_forwarded
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                hub.metrics.signals_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Reply::None
        }
        None => {
            hub.metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
            if hub.config.quiet_undeliverable {
                Reply::None
            } else {
                Reply::Msg(ServerMsg::Undeliverable {
                    to: to.to_string(),
                    id,
                })
            }
        }
    }
}

fn fake_ip(hub: &Hub, who: &Identity, id: u64) -> Reply {
    let mut fake = lock(&hub.fake);
    let before = fake.held();
    let r = fake.allocate(who);
    if fake.held() > before {
        hub.metrics.fakeips.fetch_add(1, Ordering::Relaxed);
    }
    match r {
        Ok((ip, ports)) => Reply::Msg(ServerMsg::Fakeip {
            id,
            ip: ip.to_string(),
            ports,
        }),
        Err(FakeIpError::PortLimit) => Reply::Error(ServerMsg::error(
            "limit",
            format!("at most {MAX_FAKE_PORTS} fake ports per identity"),
        )),
        Err(FakeIpError::PoolFull) => Reply::Error(ServerMsg::error(
            "limit",
            "every FakeIP address is held; try again later",
        )),
    }
}
