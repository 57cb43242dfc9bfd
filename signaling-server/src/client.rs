//! The signaling client: logs a [`Sockets`] in to a signaling server and carries its
//! rendezvous signals both ways.
//!
//! It runs on its own thread (with a small tokio runtime), so it fits applications with or
//! without tokio. Incoming connect requests are accepted when a P2P listen socket exists for
//! the virtual port asked for (the application then accepts the connection as usual) and
//! ignored otherwise. When the server says a peer is not online, the pending connection to it
//! ends at once with `Misc_P2P_Rendezvous` and a sentence saying so.
//!
//! [`SignalingClient::relay_transport`] is a P2P transport through the server's relay (see
//! [`crate::relay`]): for peers with no UDP path between them.

use crate::protocol::{self, ClientMsg, ServerMsg, MAX_SIGNAL};
use crate::tls::TlsClient;
use futures_util::{SinkExt, StreamExt};
use punchline::api::fakeip::FakeIpProvider;
use punchline::api::{Signaling, SignalingRecvContext};
use punchline::proto::rendezvous::{Body, Message};
use punchline::transport::{
    Path, PathConfig, PathParams, PathSink, RouteInfo, RouteKind, Transport,
};
use punchline::{ConnectionHandle, EndReason, Sockets};
use punchline_identity::{Certificate, Identity, KeyPair};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;

/// Why the client could not log in.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach the signaling server: {0}")]
    Connect(String),
    /// The server refused the login.
    #[error("the signaling server refused the login ({code}): {message}")]
    Refused {
        /// The server's error code.
        code: String,
        /// Its explanation.
        message: String,
    },
    /// The server did not follow the protocol.
    #[error("signaling protocol error: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("the signaling server did not answer in time")]
    Timeout,
}

enum Cmd {
    Signal { to: Identity, data: Vec<u8> },
    FakeIp { ports: usize },
    Resolve(Ipv4Addr),
    Stop,
}

/// Sends signals through the client's connection.
#[derive(Clone)]
struct Route {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Signaling for Route {
    fn send_signal(&self, peer: &Identity, signal: &[u8]) {
        let _ = self.tx.send(Cmd::Signal {
            to: peer.clone(),
            data: signal.to_vec(),
        });
    }
}

/// Relay frames waiting for the websocket before more are dropped.
const RELAY_OUT: usize = 1024;

/// The relay transport's paths, by rendezvous session: the peer's identity (as frames name
/// it) and the path's sink. And the way out.
struct RelayShared {
    paths: std::sync::Mutex<HashMap<u64, (String, PathSink)>>,
    out: mpsc::Sender<Vec<u8>>,
}

impl RelayShared {
    fn paths(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, PathSink)>> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A frame from the server: to the path it belongs to, if the session is that peer's.
    fn deliver(&self, frame: &[u8]) {
        let Ok(f) = crate::relay::decode(frame) else {
            tracing::debug!("malformed relay frame from the server");
            return;
        };
        if let Some((peer, sink)) = self.paths().get(&f.session) {
            if peer == f.peer {
                sink.deliver(f.datagram);
            }
        }
    }
}

/// A P2P transport through the signaling server's relay ([`crate::relay`]): the
/// connection's encrypted packets travel in the client's websocket, so it works wherever
/// the server is reachable, and neither peer learns the other's address.
#[derive(Clone)]
pub struct RelayTransport {
    shared: Arc<RelayShared>,
}

impl std::fmt::Debug for RelayTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTransport").finish_non_exhaustive()
    }
}

impl Transport for RelayTransport {
    fn wire_id(&self) -> u8 {
        crate::relay::WIRE_ID
    }

    fn penalty(&self, config: &PathConfig) -> i32 {
        config.sdr_penalty
    }

    fn name(&self) -> &'static str {
        "relay"
    }

    fn start_path(&self, params: PathParams, sink: PathSink) -> Arc<dyn Path> {
        let peer = params.peer.to_string();
        self.shared
            .paths()
            .insert(params.session, (peer.clone(), sink.clone()));
        // The server is the route: packets may go at once.
        sink.ready();
        Arc::new(RelayPath {
            peer,
            session: params.session,
            shared: self.shared.clone(),
        })
    }
}

/// One connection's way through the relay.
struct RelayPath {
    /// The peer's identity as frames name it.
    peer: String,
    session: u64,
    shared: Arc<RelayShared>,
}

impl std::fmt::Debug for RelayPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayPath")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Path for RelayPath {
    fn handle_signal(&self, _signal: &[u8]) {}

    fn send(&self, datagram: &[u8]) {
        if let Some(frame) = crate::relay::encode(&self.peer, self.session, datagram) {
            // A full queue drops the datagram, as a socket would.
            let _ = self.shared.out.try_send(frame);
        }
    }

    fn route(&self) -> RouteInfo {
        RouteInfo {
            kind: RouteKind::Relayed,
            remote: None,
            pairs: vec!["relay: the signaling server's websocket".into()],
            switches: 0,
        }
    }

    fn close(&self) {
        let mut paths = self.shared.paths();
        if paths
            .get(&self.session)
            .is_some_and(|(p, _)| *p == self.peer)
        {
            paths.remove(&self.session);
        }
    }
}

/// A logged-in connection to a signaling server, serving one [`Sockets`].
pub struct SignalingClient {
    route: Route,
    identity: Identity,
    relay: Arc<RelayShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SignalingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalingClient")
            .field("identity", &self.identity)
            .finish()
    }
}

impl Signaling for SignalingClient {
    fn send_signal(&self, peer: &Identity, signal: &[u8]) {
        self.route.send_signal(peer, signal);
    }
}

impl FakeIpProvider for SignalingClient {
    fn request_fake_ip(&self, num_ports: usize) {
        let _ = self.route.tx.send(Cmd::FakeIp { ports: num_ports });
    }

    fn resolve_fake_ip(&self, ip: Ipv4Addr) {
        let _ = self.route.tx.send(Cmd::Resolve(ip));
    }
}

impl Drop for SignalingClient {
    fn drop(&mut self) {
        let _ = self.route.tx.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            // The last reference may go on the client's own thread (through what that
            // thread holds): it stops by itself after `Stop`, and joining itself would panic.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl SignalingClient {
    /// Connects to the server at `url` (`ws://host:port/`), logs in as `sockets`' identity
    /// with `key` (its key; and `cert` for an identity that is not the key itself), and makes
    /// itself `sockets`' signaling. Blocks until logged in, or refused, or 10 s pass.
    ///
    /// A `wss://` server's certificate is checked against the system's roots and the CA file
    /// named by `PUNCHLINE_SIGNALING_CA_FILE` (see [`TlsClient::from_env`]); use
    /// [`connect_with`](Self::connect_with) to say what to trust.
    pub fn connect(
        url: &str,
        key: &KeyPair,
        cert: Option<&Certificate>,
        sockets: &Sockets,
    ) -> Result<Arc<SignalingClient>, ClientError> {
        Self::connect_with(url, key, cert, sockets, None)
    }

    /// [`connect`](Self::connect), checking a `wss://` server's certificate against `tls`
    /// (for a self-hosted server: [`TlsClient::with_ca_file`]).
    pub fn connect_with(
        url: &str,
        key: &KeyPair,
        cert: Option<&Certificate>,
        sockets: &Sockets,
        tls: Option<&TlsClient>,
    ) -> Result<Arc<SignalingClient>, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let route = Route { tx };
        let (relay_tx, relay_rx) = mpsc::channel(RELAY_OUT);
        let relay = Arc::new(RelayShared {
            paths: std::sync::Mutex::new(HashMap::new()),
            out: relay_tx,
        });
        let identity = sockets.get_identity();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let job = Job {
            url: url.to_string(),
            tls: tls.cloned(),
            key: key.clone(),
            cert: cert.map(Certificate::to_base64),
            identity: identity.clone(),
            sockets: sockets.clone(),
            route: route.clone(),
            relay: relay.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("punchline-signaling".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ClientError::Connect(e.to_string())));
                        return;
                    }
                };
                rt.block_on(job.run(rx, relay_rx, ready_tx));
            })
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let result = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or(Err(ClientError::Timeout));
        let client = Arc::new(SignalingClient {
            route,
            identity,
            relay,
            thread: Some(thread),
        });
        result?;
        sockets.set_signaling(client.clone());
        sockets.set_fake_ip_provider(client.clone());
        Ok(client)
    }

    /// The identity logged in.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A P2P transport through this server's relay, for
    /// [`Sockets::set_p2p_transport`]: both peers need it (and the server must relay).
    pub fn relay_transport(&self) -> RelayTransport {
        RelayTransport {
            shared: self.relay.clone(),
        }
    }

    /// Logs out and stops the client's thread. The `Sockets` it served keeps a reference to
    /// it as its signaling (and the thread one to the `Sockets`), so neither is freed while
    /// the client runs: call this when done with both.
    pub fn disconnect(&self) {
        let _ = self.route.tx.send(Cmd::Stop);
    }
}

struct Job {
    url: String,
    tls: Option<TlsClient>,
    key: KeyPair,
    cert: Option<String>,
    identity: Identity,
    sockets: Sockets,
    route: Route,
    relay: Arc<RelayShared>,
}

type Ws = crate::tls::ClientWs;

async fn send(ws: &mut Ws, m: &ClientMsg) -> Result<(), ClientError> {
    let text = serde_json::to_string(m).expect("client messages serialize");
    ws.send(Frame::text(text))
        .await
        .map_err(|e| ClientError::Connect(e.to_string()))
}

/// What the server sends: JSON messages, and relay frames.
enum Incoming {
    Msg(ServerMsg),
    Relay(Vec<u8>),
}

/// The next JSON message from the server.
async fn next(ws: &mut Ws) -> Result<ServerMsg, ClientError> {
    loop {
        if let Incoming::Msg(m) = next_incoming(ws).await? {
            return Ok(m);
        }
    }
}

/// The next message or relay frame from the server.
async fn next_incoming(ws: &mut Ws) -> Result<Incoming, ClientError> {
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map(Incoming::Msg)
                    .map_err(|e| ClientError::Protocol(format!("{e}: {t}")))
            }
            Some(Ok(Frame::Binary(b))) => return Ok(Incoming::Relay(b.to_vec())),
            Some(Ok(Frame::Close(_))) | None => {
                return Err(ClientError::Protocol(
                    "the server closed the connection".into(),
                ))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ClientError::Connect(e.to_string())),
        }
    }
}

/// Signals sent recently, by number, to learn the session of one that was undeliverable.
const REMEMBERED: usize = 256;
/// The message rate assumed of a server that does not say (the server's default).
const DEFAULT_RATE: u32 = 200;

/// Makes the server's STUN and TURN servers (and this client's TURN credentials) the
/// `Sockets`' ICE settings, at interface scope (so a connection's own values still win).
fn apply_ice(sockets: &Sockets, ice: &protocol::IceSettings) {
    use punchline::api::config::{ConfigData, ConfigValue};
    use punchline::api::ConfigTarget;
    let join = |f: &dyn Fn(&protocol::TurnSettings) -> &str| {
        ice.turn.iter().map(f).collect::<Vec<_>>().join(",")
    };
    let values = [
        (ConfigValue::P2pStunServerList, ice.stun.join(",")),
        (ConfigValue::P2pTurnServerList, join(&|t| &t.url)),
        (ConfigValue::P2pTurnUserList, join(&|t| &t.username)),
        (ConfigValue::P2pTurnPassList, join(&|t| &t.credential)),
    ];
    for (value, text) in values {
        if text.is_empty() {
            continue;
        }
        if let Err(e) = sockets.set_config_value(
            value,
            ConfigTarget::Interface,
            Some(ConfigData::String(text)),
        ) {
            tracing::warn!(?value, error = %e, "cannot apply the server's ICE settings");
        }
    }
}

impl Job {
    /// Logs in; returns the socket and the server's message rate limit.
    async fn login(&self) -> Result<(Ws, Option<u32>), ClientError> {
        let mut ws = crate::tls::dial(&self.url, self.tls.as_ref())
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let (nonce, server_key) = match next(&mut ws).await? {
            ServerMsg::Challenge {
                nonce, server_key, ..
            } => (
                protocol::unbase64(&nonce, 64)
                    .ok_or_else(|| ClientError::Protocol("challenge nonce is not base64".into()))?,
                server_key,
            ),
            ServerMsg::Error { code, message } => {
                return Err(ClientError::Refused { code, message })
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected a challenge: {other:?}"
                )))
            }
        };
        let host = protocol::url_host(&self.url)
            .ok_or_else(|| ClientError::Connect(format!("{:?} names no host", self.url)))?;
        let ctx = protocol::LoginContext {
            nonce: &nonce,
            host: &host,
            server_key: server_key.as_deref(),
        };
        let login = protocol::login(&self.key, &self.identity, &ctx, self.cert.clone())
            .ok_or_else(|| ClientError::Protocol("the server's name is too long".into()))?;
        send(&mut ws, &login).await?;
        match next(&mut ws).await? {
            ServerMsg::Welcome { ice, rate, .. } => {
                if let Some(ice) = ice {
                    apply_ice(&self.sockets, &ice);
                }
                Ok((ws, rate))
            }
            ServerMsg::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected welcome: {other:?}"
            ))),
        }
    }

    async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Cmd>,
        mut relay_rx: mpsc::Receiver<Vec<u8>>,
        ready: std::sync::mpsc::Sender<Result<(), ClientError>>,
    ) {
        let (mut ws, rate) = match tokio::time::timeout(Duration::from_secs(10), self.login()).await
        {
            Ok(Ok(r)) => {
                let _ = ready.send(Ok(()));
                r
            }
            Ok(Err(e)) => {
                let _ = ready.send(Err(e));
                return;
            }
            Err(_) => {
                let _ = ready.send(Err(ClientError::Timeout));
                return;
            }
        };
        let mut sent: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut next_id = 1u64;
        // Ports wanted by a fake-IP request under way (the server adds one per request).
        let mut fake_ports_wanted: Option<usize> = None;
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        // Signals beyond the server's rate are dropped here rather than there (where they
        // would count toward a disconnect): the rendezvous sends them again.
        let rate = f64::from(rate.unwrap_or(DEFAULT_RATE).max(1)) * 0.8;
        let mut tokens = rate;
        let mut refilled = tokio::time::Instant::now();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Signal { to, data }) => {
                        if data.len() > MAX_SIGNAL {
                            continue;
                        }
                        let now = tokio::time::Instant::now();
                        tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate);
                        refilled = now;
                        if tokens < 1.0 {
                            tracing::debug!(%to, "signal dropped: over the server's rate");
                            continue;
                        }
                        tokens -= 1.0;
                        let id = next_id;
                        next_id += 1;
                        let m = ClientMsg::Signal {
                            to: to.to_string(),
                            data: protocol::base64(&data),
                            id: Some(id),
                        };
                        if sent.len() >= REMEMBERED {
                            sent.pop_front();
                        }
                        sent.push_back((id, data));
                        if send(&mut ws, &m).await.is_err() {
                            break;
                        }
                    }
                    Some(Cmd::FakeIp { ports }) => {
                        fake_ports_wanted = Some(ports);
                        next_id += 1;
                        if send(&mut ws, &ClientMsg::FakeipRequest { id: next_id }).await.is_err() {
                            break;
                        }
                    }
                    Some(Cmd::Resolve(ip)) => {
                        next_id += 1;
                        let m = ClientMsg::FakeipResolve { id: next_id, ip: ip.to_string() };
                        if send(&mut ws, &m).await.is_err() {
                            break;
                        }
                    }
                    Some(Cmd::Stop) | None => {
                        let _ = ws.close(None).await;
                        break;
                    }
                },
                Some(frame) = relay_rx.recv() => {
                    if ws.send(Frame::Binary(frame.into())).await.is_err() {
                        break;
                    }
                }
                msg = next_incoming(&mut ws) => match msg {
                    Ok(Incoming::Relay(frame)) => self.relay.deliver(&frame),
                    Ok(Incoming::Msg(msg)) => match msg {
                    ServerMsg::Signal { from, data } => self.deliver(&from, &data),
                    ServerMsg::Undeliverable { to, id } => {
                        let signal = id.and_then(|id| sent.iter().find(|(i, _)| *i == id));
                        if let Some((_, signal)) = signal {
                            self.peer_offline(&to, signal);
                        }
                    }
                    ServerMsg::Fakeip { ip, ports, .. } => {
                        let Some(wanted) = fake_ports_wanted else { continue };
                        let Ok(ip) = ip.parse::<Ipv4Addr>() else { continue };
                        if ports.len() >= wanted {
                            fake_ports_wanted = None;
                            let ports = ports[..wanted].to_vec();
                            self.sockets.complete_fake_ip_request(Ok((ip, ports)));
                        } else {
                            next_id += 1;
                            if send(&mut ws, &ClientMsg::FakeipRequest { id: next_id }).await.is_err() {
                                break;
                            }
                        }
                    }
                    ServerMsg::FakeipIdentity { ip, identity, .. } => {
                        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                            let id = identity.and_then(|i| i.parse::<Identity>().ok());
                            self.sockets.learn_fake_ip(ip, id);
                        }
                    }
                    ServerMsg::Error { code, message } => {
                        if code == "limit" && fake_ports_wanted.take().is_some() {
                            self.sockets.complete_fake_ip_request(Err(message.clone()));
                        }
                        tracing::warn!(%code, %message, "signaling server error");
                    }
                    _ => {}
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "signaling connection lost");
                        break;
                    }
                },
                _ = keepalive.tick() => {
                    if ws.send(Frame::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }

    fn deliver(&self, from: &str, data: &str) {
        let Some(signal) = protocol::unbase64(data, MAX_SIGNAL) else {
            return;
        };
        // The sender is the one the server authenticated, whatever the signal says inside.
        let Ok(sender) = from.parse::<Identity>() else {
            tracing::debug!(%from, "a signal from no identity");
            return;
        };
        let mut ctx = Ctx {
            sockets: self.sockets.clone(),
            route: self.route.clone(),
        };
        if !self
            .sockets
            .received_p2p_custom_signal_from(&signal, &sender, &mut ctx)
        {
            tracing::debug!(%from, "signal not taken");
        }
    }

    /// The server could not deliver `signal` to `to`: end the connection it was for, by
    /// handing `Sockets` the close the peer would have sent.
    fn peer_offline(&self, to: &str, signal: &[u8]) {
        let Ok(m) = Message::decode(signal) else {
            return;
        };
        if m.seq == 0 {
            return; // an ack: nothing waits for it
        }
        let close = Message {
            session: m.session,
            seq: 1,
            ack: m.seq,
            from: m.to,
            to: m.from,
            body: Body::Close {
                reason: EndReason::MISC_P2P_RENDEZVOUS.0,
                debug: format!("{to} is not online (signaling server)"),
            },
        };
        let mut ctx = Ctx {
            sockets: self.sockets.clone(),
            route: self.route.clone(),
        };
        self.sockets
            .received_p2p_custom_signal(&close.encode(), &mut ctx);
    }
}

/// Accepts connect requests for virtual ports with a P2P listen socket; ignores the rest.
struct Ctx {
    sockets: Sockets,
    route: Route,
}

impl SignalingRecvContext for Ctx {
    fn on_connect_request(
        &mut self,
        connection: ConnectionHandle,
        peer: &Identity,
        local_vport: u16,
    ) -> Option<Arc<dyn Signaling>> {
        let listening = self
            .sockets
            .get_connection_info(connection)
            .is_ok_and(|i| i.listen_socket.is_some());
        if !listening {
            tracing::debug!(%peer, local_vport, "connect request for a port nobody listens on");
            return None;
        }
        Some(Arc::new(self.route.clone()))
    }

    fn send_rejection_signal(&mut self, peer: &Identity, signal: &[u8]) {
        self.route.send_signal(peer, signal);
    }
}
