//! The signaling server: websocket clients prove their identities, then exchange signals;
//! FakeIP allocation; `/healthz` and `/metrics` on the same address. See docs/SIGNALING.md.

use crate::protocol::{
    self, ClientMsg, IceSettings, ServerMsg, TurnSettings, MAX_FAKE_PORTS, MAX_SIGNAL,
};
use futures_util::{SinkExt, StreamExt};
use punchline_identity::{CertStore, Certificate, Identity, PublicKey};
use rand_core::{OsRng, RngCore};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as Frame;
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
}

/// The TURN server clients are told of at login, with credentials of their own.
#[derive(Clone)]
pub struct TurnAdvert {
    /// Its address (an unspecified IP: the address clients reached us at).
    pub addr: SocketAddr,
    /// The secret it checks credentials against (see [`crate::turn_server`]).
    pub secret: Vec<u8>,
    /// How long credentials last.
    pub ttl: Duration,
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
    /// Datagrams the relay dropped (over a client's rate, the receiver's queue full, or the
    /// receiver offline).
    pub relay_dropped: AtomicU64,
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
             punchline_signaling_relay_dropped_total {}\n",
            g(&self.clients),
            g(&self.signals_forwarded),
            g(&self.undeliverable),
            g(&self.rejects),
            g(&self.errors),
            g(&self.fakeips),
            g(&self.relayed),
            g(&self.relay_dropped),
        )
    }
}

/// What a connection task is told to send.
#[derive(Debug)]
enum Out {
    Msg(ServerMsg),
    /// Send this error, then close.
    Close(ServerMsg),
}

#[derive(Debug)]
struct Online {
    key: PublicKey,
    conn: u64,
    tx: mpsc::Sender<Out>,
    /// Relay frames for the client (their own queue, so a flood of data never crowds out
    /// signals).
    relay: mpsc::Sender<Vec<u8>>,
}

/// Relay frames queued for one client before more are dropped (about 600 KB).
const RELAY_QUEUE: usize = 512;

#[derive(Debug, Default)]
struct FakeIps {
    by_identity: HashMap<Identity, (Ipv4Addr, Vec<u16>)>,
    by_ip: HashMap<Ipv4Addr, Identity>,
}

#[derive(Debug)]
struct Hub {
    config: Config,
    metrics: Arc<Metrics>,
    online: Mutex<HashMap<Identity, Online>>,
    fake: Mutex<FakeIps>,
    connections: AtomicUsize,
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
        let hub = Arc::new(Hub {
            config,
            metrics: metrics.clone(),
            online: Mutex::new(HashMap::new()),
            fake: Mutex::new(FakeIps::default()),
            connections: AtomicUsize::new(0),
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
                    let (hub, stopped) = (hub.clone(), stopped.clone());
                    tasks.spawn(async move {
                        if let Err(e) = handle(stream, hub, stopped).await {
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
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = match peek_request(&stream).await? {
        Some(head) => head,
        None => return Ok(()),
    };
    if !path.upgrade {
        return answer_http(stream, &path.path, &hub).await;
    }
    let local_ip = canonical_ip(stream.local_addr()?.ip());
    // Relay frames and signals are small and latency-bound: no Nagle delay.
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .max_frame_size(Some(hub.config.max_frame))
        .max_message_size(Some(hub.config.max_frame));
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let slot = hub.connections.fetch_add(1, Ordering::SeqCst);
    let r = if slot >= hub.config.max_clients {
        let mut ws = ws;
        hub.metrics.errors.fetch_add(1, Ordering::Relaxed);
        send(
            &mut ws,
            &ServerMsg::error("server_full", "the server is full"),
        )
        .await?;
        close(&mut ws).await;
        Ok(())
    } else {
        client(ws, hub.clone(), stopped, local_ip).await
    };
    hub.connections.fetch_sub(1, Ordering::SeqCst);
    r
}

struct Head {
    path: String,
    upgrade: bool,
}

/// Reads the HTTP request head without consuming it (a websocket handshake reads it again).
async fn peek_request(stream: &TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = vec![0u8; 4096];
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout_at(end.into(), stream.peek(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
        if n == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&buf[..n]);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let head = &text[..head_end];
            let mut lines = head.split("\r\n");
            let path = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .unwrap_or("")
                .to_string();
            let upgrade = lines.any(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("upgrade:") && l.contains("websocket")
            });
            return Ok(Some(Head { path, upgrade }));
        }
        if n == buf.len() {
            return Err(std::io::Error::other("request head too large"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn answer_http(
    mut stream: TcpStream,
    path: &str,
    hub: &Hub,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Consume the request head we peeked at.
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut sink)).await;
    let (status, body) = match path {
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/metrics" => ("200 OK", hub.metrics.text()),
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

type Ws = WebSocketStream<TcpStream>;

async fn send(ws: &mut Ws, m: &ServerMsg) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let text = serde_json::to_string(m).expect("server messages serialize");
    ws.send(Frame::text(text)).await
}

async fn close(ws: &mut Ws) {
    let _ = ws
        .send(Frame::Close(Some(CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
}

/// Per-client message (or relay byte) budget.
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    /// The client was told the relay is off.
    told_off: bool,
}

impl Bucket {
    fn take(&mut self) -> bool {
        self.take_n(1.0)
    }

    /// Takes `n` tokens if there are that many.
    fn take_n(&mut self, n: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(2.0 * self.rate);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Errors tolerated from one client before it is closed.
const MAX_ERRORS: u32 = 20;

async fn client(
    mut ws: Ws,
    hub: Arc<Hub>,
    mut stopped: watch::Receiver<bool>,
    local_ip: IpAddr,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    send(
        &mut ws,
        &ServerMsg::Challenge {
            nonce: protocol::base64(&nonce),
            server: protocol::SERVER_NAME.into(),
        },
    )
    .await?;
    let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Out>(256);
    let (relay_tx, mut relay_rx) = mpsc::channel::<Vec<u8>>(RELAY_QUEUE);
    let mut relay_bucket = Bucket {
        tokens: 2.0 * f64::from(hub.config.relay_rate),
        last: Instant::now(),
        rate: f64::from(hub.config.relay_rate),
        told_off: false,
    };
    let mut me: Option<Identity> = None;
    let mut me_text: Option<String> = None;
    let mut errors = 0u32;
    let mut bucket = Bucket {
        tokens: 2.0 * f64::from(hub.config.rate),
        last: Instant::now(),
        rate: f64::from(hub.config.rate),
        told_off: false,
    };
    let login_deadline = tokio::time::Instant::now() + hub.config.login_timeout;
    let mut last_heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(hub.config.idle_timeout / 3);
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = loop {
        let idle_at = if me.is_some() {
            last_heard + hub.config.idle_timeout
        } else {
            login_deadline
        };
        tokio::select! {
            frame = ws.next() => {
                let Some(frame) = frame else { break Ok(()) };
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        // Oversized frames end here too: tell the client why if we can.
                        let _ = send(&mut ws, &ServerMsg::error("too_large", e.to_string())).await;
                        break Err(e.into());
                    }
                };
                last_heard = tokio::time::Instant::now();
                let reply = match frame {
                    Frame::Text(text) => {
                        if bucket.take() {
                            on_message(&hub, &mut me, &key_slot(conn, &tx, &relay_tx, local_ip), &nonce, text.as_str())
                        } else {
                            Reply::Error(ServerMsg::error("rate_limited", "too many messages; slow down"))
                        }
                    }
                    Frame::Binary(data) => {
                        // The sender's name in every frame it relays, written once.
                        if me_text.is_none() {
                            me_text = me.as_ref().map(Identity::to_string);
                        }
                        relay(&hub, me_text.as_deref(), &mut relay_bucket, &data)
                    }
                    Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_) => Reply::None,
                    Frame::Close(_) => break Ok(()),
                };
                match reply {
                    Reply::None => {}
                    Reply::Msg(m) => send(&mut ws, &m).await?,
                    Reply::Error(m) => {
                        hub.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        errors += 1;
                        send(&mut ws, &m).await?;
                        if errors > MAX_ERRORS {
                            close(&mut ws).await;
                            break Ok(());
                        }
                    }
                    Reply::Close(m) => {
                        hub.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        send(&mut ws, &m).await?;
                        close(&mut ws).await;
                        break Ok(());
                    }
                }
            }
            Some(frame) = relay_rx.recv() => {
                ws.send(Frame::Binary(frame.into())).await?;
            }
            out = rx.recv() => match out {
                Some(Out::Msg(m)) => send(&mut ws, &m).await?,
                Some(Out::Close(m)) => {
                    send(&mut ws, &m).await?;
                    close(&mut ws).await;
                    break Ok(());
                }
                None => break Ok(()),
            },
            _ = ping.tick() => {
                ws.send(Frame::Ping(Vec::new().into())).await?;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                let why = if me.is_some() { "idle too long" } else { "no login in time" };
                let _ = send(&mut ws, &ServerMsg::error("timeout", why)).await;
                close(&mut ws).await;
                break Ok(());
            }
            _ = stopped.changed() => {
                close(&mut ws).await;
                break Ok(());
            }
        }
    };
    if let Some(id) = me {
        leave(&hub, &id, conn);
    }
    result
}

/// How a client's slot in the hub is reached.
struct Slot<'a> {
    conn: u64,
    tx: &'a mpsc::Sender<Out>,
    relay: &'a mpsc::Sender<Vec<u8>>,
    /// The address the client reached us at.
    local_ip: IpAddr,
}

fn key_slot<'a>(
    conn: u64,
    tx: &'a mpsc::Sender<Out>,
    relay: &'a mpsc::Sender<Vec<u8>>,
    local_ip: IpAddr,
) -> Slot<'a> {
    Slot {
        conn,
        tx,
        relay,
        local_ip,
    }
}

/// Passes a client's relay frame on to the peer it names, as from the client's
/// authenticated identity. Datagrams over the client's rate, to a peer offline, or beyond
/// the peer's queue are dropped (counted), as a network would.
fn relay(hub: &Hub, me: Option<&str>, bucket: &mut Bucket, data: &[u8]) -> Reply {
    let Some(me) = me else {
        return Reply::Error(ServerMsg::error(
            "not_logged_in",
            "log in before sending relay frames",
        ));
    };
    if hub.config.relay_rate == 0 {
        // Said once per client (every frame would soon count as misbehaving).
        if !bucket.told_off {
            bucket.told_off = true;
            return Reply::Error(ServerMsg::error("relay_off", "this server does not relay"));
        }
        hub.metrics.relay_dropped.fetch_add(1, Ordering::Relaxed);
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
    if !bucket.take_n(data.len() as f64) {
        return dropped();
    }
    let Some(out) = crate::relay::encode(me, frame.session, frame.datagram) else {
        return dropped();
    };
    let peer = lock(&hub.online).get(&to).map(|o| o.relay.clone());
    match peer {
        Some(tx) if tx.try_send(out).is_ok() => {
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
}

/// The STUN and TURN servers (with fresh credentials) to tell `who` of.
fn ice_settings(config: &Config, local_ip: IpAddr, who: &Identity) -> Option<IceSettings> {
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
            let c = crate::turn_server::credentials(&t.secret, &who.to_string(), t.ttl);
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
    me: &mut Option<Identity>,
    slot: &Slot<'_>,
    nonce: &[u8],
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
    match (msg, me.as_ref()) {
        (
            ClientMsg::Login {
                identity,
                public_key,
                signature,
                certificate,
            },
            None,
        ) => match login(
            hub,
            slot,
            nonce,
            &identity,
            &public_key,
            &signature,
            certificate,
        ) {
            Ok(id) => {
                *me = Some(id.clone());
                Reply::Msg(ServerMsg::Welcome {
                    identity: id.to_string(),
                    ice: ice_settings(&hub.config, slot.local_ip, &id),
                    rate: Some(hub.config.rate),
                })
            }
            Err(e) => {
                hub.metrics.rejects.fetch_add(1, Ordering::Relaxed);
                Reply::Close(e)
            }
        },
        (ClientMsg::Login { .. }, Some(_)) => {
            Reply::Error(ServerMsg::error("malformed", "already logged in"))
        }
        (_, None) => Reply::Close(ServerMsg::error(
            "not_logged_in",
            "log in first: answer the challenge",
        )),
        (ClientMsg::Signal { to, data, id }, Some(from)) => forward(hub, from, &to, &data, id),
        (ClientMsg::FakeipRequest { id }, Some(who)) => fake_ip(hub, who, id),
        (ClientMsg::FakeipResolve { id, ip }, Some(_)) => {
            let Ok(addr) = ip.parse::<Ipv4Addr>() else {
                return Reply::Error(ServerMsg::error("malformed", "ip is not an IPv4 address"));
            };
            let holder = lock(&hub.fake).by_ip.get(&addr).map(Identity::to_string);
            Reply::Msg(ServerMsg::FakeipIdentity {
                id,
                ip,
                identity: holder,
            })
        }
    }
}

fn login(
    hub: &Hub,
    slot: &Slot<'_>,
    nonce: &[u8],
    identity: &str,
    public_key: &str,
    signature: &str,
    certificate: Option<String>,
) -> Result<Identity, ServerMsg> {
    let fail = |why: &str| ServerMsg::error("auth_failed", why);
    let id: Identity = identity
        .parse()
        .map_err(|_| fail("identity does not parse"))?;
    let key =
        protocol::public_key(public_key).ok_or_else(|| fail("public_key is not an ed25519 key"))?;
    let sig = protocol::signature(signature).ok_or_else(|| fail("signature is not 64 bytes"))?;
    key.verify(&protocol::login_proof(nonce, identity), &sig)
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
    let mut online = lock(&hub.online);
    if let Some(old) = online.get(&id) {
        if old.key != key {
            return Err(ServerMsg::error(
                "identity_in_use",
                "that identity is online with another key",
            ));
        }
        let _ = old.tx.try_send(Out::Close(ServerMsg::error(
            "replaced",
            "the same identity logged in again elsewhere",
        )));
    } else {
        hub.metrics.clients.fetch_add(1, Ordering::Relaxed);
    }
    online.insert(
        id.clone(),
        Online {
            key,
            conn: slot.conn,
            tx: slot.tx.clone(),
            relay: slot.relay.clone(),
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
        let mut fake = lock(&hub.fake);
        if let Some((ip, _)) = fake.by_identity.remove(id) {
            fake.by_ip.remove(&ip);
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
    let target = lock(&hub.online).get(&to_id).map(|o| o.tx.clone());
    match target {
        Some(tx) => {
            let m = ServerMsg::Signal {
                from: from.to_string(),
                data: data.to_string(),
            };
            // A recipient that is not keeping up loses signals (they are sent again).
            if tx.try_send(Out::Msg(m)).is_ok() {
                hub.metrics
                    .signals_forwarded
                    .fetch_add(1, Ordering::Relaxed);
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
    let fake = &mut *fake;
    let entry = match fake.by_identity.get_mut(who) {
        Some(e) => e,
        None => {
            let ip = loop {
                let r = OsRng.next_u32();
                // 169.254.1.0 to 169.254.254.255: skip the reserved first and last /24.
                let ip = Ipv4Addr::new(169, 254, 1 + (r % 254) as u8, (r >> 8) as u8);
                if !fake.by_ip.contains_key(&ip) {
                    break ip;
                }
            };
            fake.by_ip.insert(ip, who.clone());
            hub.metrics.fakeips.fetch_add(1, Ordering::Relaxed);
            fake.by_identity
                .entry(who.clone())
                .or_insert((ip, Vec::new()))
        }
    };
    if entry.1.len() >= MAX_FAKE_PORTS {
        return Reply::Error(ServerMsg::error(
            "limit",
            format!("at most {MAX_FAKE_PORTS} fake ports per identity"),
        ));
    }
    let port = loop {
        let p = 1024 + (OsRng.next_u32() % (65536 - 1024)) as u16;
        if !entry.1.contains(&p) {
            break p;
        }
    };
    entry.1.push(port);
    Reply::Msg(ServerMsg::Fakeip {
        id,
        ip: entry.0.to_string(),
        ports: entry.1.clone(),
    })
}
