//! The connection state machine.
//!
//! A [`Connection`] is pure: it never reads a clock, touches a socket or draws OS randomness.
//! Its owner (normally the [`Endpoint`](super::Endpoint)) drives it in this order:
//!
//! 1. feed inputs: `handle_packet` for each datagram, `handle_timeout` when `poll_timeout`
//!    passes, and application calls (`send_message`, `close`, ...);
//! 2. drain `poll_transmit` until it returns `false`, sending each datagram;
//! 3. drain `poll_event`;
//! 4. sleep until `poll_timeout`.

use super::auth::{self, PeerInfo, Refusal};
use super::codec::{decode_frames, AckRange, Frame, Segment, MAX_ACK_RANGES};
use super::config::{ConnectionConfig, Credentials};
use super::crypto::{self, expand_packet_number, Keys, ReplayWindow, TAG_LEN};
use super::packet::{self, ClientHello, Control, ServerHello, ShortHeader, SHORT_HEADER_LEN};
use super::pmtud::Pmtud;
use super::ranges::RangeSet;
use super::recovery::{self, Cubic, Pacer, RttEstimator};
use super::recv::{Reassembly, Received, RecvError};
use super::send::{SegRef, SendQueue};
use super::types::{ConnectionInfoFlags, ConnectionState, EndReason, SendFlags};
use super::Error;
use bytes::{Bytes, BytesMut};
use punchline_identity::Identity;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

/// The smallest packet worth sending while the amplification budget is short.
const MIN_PACKET: usize = 64;

/// Before the peer's address is validated, a server sends at most this many times the bytes
/// it received from that address (RFC 9000's factor): enough for its hello (and the
/// certificate it may carry) in answer to one padded client hello, too little to make it a
/// useful amplifier for a spoofed source.
pub const AMPLIFICATION_FACTOR: u64 = 3;

/// The largest message an application may send.
pub const MAX_SEND_MESSAGE_SIZE: usize = 512 * 1024;

/// Something the application should know about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The state changed (end reason and debug text are on the connection).
    StateChanged {
        /// The previous state.
        old: ConnectionState,
        /// The new state.
        new: ConnectionState,
    },
}

/// A client hello the endpoint verified and will create a server connection for.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub hello: ClientHello,
    /// The hello datagram as received (part of the transcript).
    pub bytes: Vec<u8>,
    pub peer: PeerInfo,
    pub unencrypted: bool,
}

/// A P2P connection's rendezvous facts: who the peer must be, and the virtual ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pInfo {
    /// The identity the peer must prove in the handshake.
    pub peer: Identity,
    /// The rendezvous session carrying its signals.
    pub session: u64,
    /// Our virtual port.
    pub local_vport: u16,
    /// The peer's virtual port.
    pub remote_vport: u16,
    /// Symmetric connect mode.
    pub symmetric: bool,
    /// The transport finding its path ([`DIRECT`](crate::proto::rendezvous::DIRECT): UDP to the
    /// rendezvous candidates); settled when the peer accepts.
    pub transport: u8,
}

/// Which side started the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We connected.
    Client,
    /// We accepted.
    Server,
}

/// Counters of what a connection did; never reset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Bytes sent (UDP payload).
    pub bytes_sent: u64,
    /// Datagrams accepted.
    pub packets_received: u64,
    /// Bytes accepted.
    pub bytes_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Reliable segments queued for retransmission.
    pub segments_retransmitted: u64,
    /// Packets that failed authentication (tampered, or keyed for another connection).
    pub decrypt_failures: u64,
    /// Times this side moved its send key to the next generation.
    pub key_updates: u64,
    /// Packets dropped as replays or duplicates.
    pub replays_dropped: u64,
    /// Authenticated packets whose contents did not decode.
    pub malformed: u64,
    /// Packets dropped because the receive buffer was full.
    pub recv_buffer_drops: u64,
    /// Packets declared lost that arrived after all (reordered).
    pub spurious_losses: u64,
    /// Authentic packets dropped because they came from an address other than the peer's.
    pub wrong_address: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Path MTU probes sent.
    pub mtu_probes_sent: u64,
    /// Path MTU probes lost (a size above the path's limit, or plain loss).
    pub mtu_probes_lost: u64,
    /// Times the path stopped carrying the packet size in use and the connection fell
    /// back to the base size.
    pub mtu_black_holes: u64,
}

/// A snapshot of the numbers behind a connection's quick status.
#[derive(Debug, Clone, PartialEq)]
pub struct PathStatus {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window in bytes.
    pub congestion_window: u64,
    /// Bytes in flight.
    pub bytes_in_flight: u64,
    /// Current pacing rate in bytes/s.
    pub send_rate: u64,
    /// Reliable bytes queued or unacknowledged.
    pub pending_reliable: usize,
    /// Unreliable bytes queued.
    pub pending_unreliable: usize,
    /// Reliable bytes sent but not acknowledged.
    pub sent_unacked_reliable: usize,
    /// How long the oldest queued message has waited.
    pub queue_time: Duration,
    /// Fraction of the peer's packets that reached us (1.0 when none were missed).
    pub received_fraction: f32,
    /// Fraction of our packets the peer acknowledged rather than lost.
    pub delivered_fraction: f32,
    /// The packet size in use (UDP payload), from path MTU discovery.
    pub mtu: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Timer {
    Idle,
    Handshake,
    Loss,
    Ack,
    Keepalive,
    Close,
}
const TIMER_COUNT: usize = 6;

/// Reliable ranges carried by one packet; most carry one or two, kept inline.
type SegRefs = smallvec::SmallVec<[SegRef; 2]>;

/// An ack-eliciting packet in flight (packets carrying only acks are not tracked).
#[derive(Debug)]
struct SentPacket {
    time: Instant,
    size: u64,
    segments: SegRefs,
}

/// How many bytes the pacer lets go at once: ten packets (an initial window's worth), a
/// sixteenth of the window, or what the rate sends in [`PACING_TICK`], whichever is most.
/// Bursts overflow the queues and socket buffers on the way (a quarter of the window did on
/// the 50 ms bench path: 0.43x quinn, with drops it then took for congestion); fewer bytes than
/// the rate sends between two timer wake-ups would cap the rate itself on a fast path.
fn pacing_burst(rate: u64, window: u64, mtu: usize) -> u64 {
    let per_tick = (rate as f64 * PACING_TICK.as_secs_f64()) as u64;
    (window / 16).max(mtu as u64 * 10).max(per_tick)
}

/// The timer granularity the pacer plans for: a driver sleeping to the next send wakes up
/// this late at worst.
const PACING_TICK: Duration = Duration::from_millis(1);

/// How much one packet's fate moves [`Connection`]'s recent loss rate: about the last 32
/// packets count.
const LOSS_RATE_WEIGHT: f64 = 1.0 / 32.0;

/// The client resends its hello after this, doubling each time up to [`HELLO_BACKOFF_MAX`]:
/// about a dozen tries within the default 10 s `TimeoutInitial`, so a lossy path still
/// connects (1,200 bytes a second at worst).
const HELLO_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const HELLO_BACKOFF_MAX: Duration = Duration::from_secs(1);

enum Handshake {
    /// Client: waiting for the server hello.
    Client {
        secret: StaticSecret,
        hello: ClientHello,
        bytes: Vec<u8>,
        /// Every hello sent (the first, and one per retry): the server answers one of them.
        sent: Vec<Vec<u8>>,
        retries_left: u8,
        backoff: Duration,
        due: bool,
        /// When `bytes` last went out, and whether more than once: an answer to a resent
        /// hello could be to any copy, so it gives no RTT sample (Karn's rule).
        last_sent: Option<Instant>,
        resent: bool,
    },
    /// Server: a verified client hello waiting for the application to accept.
    ServerPending { hello: ClientHello, bytes: Vec<u8> },
    /// Server: accepted; the server hello may need resending.
    ServerAccepted { reply: Vec<u8> },
    /// Server of a P2P connection: waiting for the client's hello over the path the
    /// rendezvous found; `accepted` once the application accepted.
    P2pAwaitingHello { accepted: bool },
    /// Keys agreed and no handshake packet will be needed again.
    Done,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handshake::Client { .. } => "Client",
            Handshake::ServerPending { .. } => "ServerPending",
            Handshake::ServerAccepted { .. } => "ServerAccepted",
            Handshake::P2pAwaitingHello { .. } => "P2pAwaitingHello",
            Handshake::Done => "Done",
        })
    }
}

#[derive(Debug, Default)]
struct AckState {
    received: RangeSet,
    largest_at: Option<Instant>,
    unacked_eliciting: u32,
    deadline: Option<Instant>,
    dirty: bool,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    side: Side,
    local_id: u32,
    remote_id: u32,
    remote: SocketAddr,
    state: ConnectionState,
    end_reason: EndReason,
    end_debug: String,
    config: ConnectionConfig,
    creds: Arc<Credentials>,
    peer: Option<PeerInfo>,
    handshake: Handshake,
    keys: Option<Keys>,
    unencrypted: bool,
    validated: bool,
    amp_received: u64,
    amp_sent: u64,
    next_pn: u64,
    replay: ReplayWindow,
    ack: AckState,
    sent: BTreeMap<u64, SentPacket>,
    largest_acked: Option<u64>,
    in_flight: u64,
    rtt: RttEstimator,
    cc: Cubic,
    pacer: Pacer,
    pto_count: u32,
    probes: u32,
    /// Path MTU discovery: the packet size in use.
    pmtud: Pmtud,
    /// The share of recent ack-eliciting packets declared lost (an average over the last
    /// few dozen, each packet weighing [`LOSS_RATE_WEIGHT`]).
    loss_rate: f64,
    ping_pending: bool,
    last_eliciting_sent: Option<Instant>,
    sendq: SendQueue,
    recv: Reassembly,
    timers: [Option<Instant>; TIMER_COUNT],
    started: Instant,
    /// When the first hello went out to the current route (the first RTT sample's start).
    last_recv: Instant,
    close_frame: Option<(u32, String)>,
    close_due: bool,
    closed_ack_due: bool,
    reject_due: Option<Vec<u8>>,
    pending_hello: Option<Vec<u8>>,
    pacing_wait: Option<Instant>,
    last_poll: Instant,
    /// Packets later than this many behind the newest acknowledged one count as lost.
    reorder_threshold: u64,
    /// Multiplies the time-based loss threshold (9/8 RTT).
    reorder_time_factor: f64,
    /// Recently declared lost, to notice the ones that were only reordered.
    declared_lost: VecDeque<u64>,
    /// Server: an address token to send the client once (`Some` until sent); whether one
    /// was given. Client: the last token the server sent, for the endpoint to keep.
    token_out: Option<Vec<u8>>,
    token_given: bool,
    token_in: Option<Vec<u8>>,
    /// Set for a P2P connection.
    p2p: Option<P2pInfo>,
    /// Declared lost since the last window cut; the cut is undone only if every one of them
    /// proves spurious. `None` once the list outgrew its bound (the cut then stands).
    episode_lost: Option<Vec<u64>>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Connection {
    /// A client connection; its hello is ready to send. `secret` is the ephemeral X25519
    /// secret (from the caller's seeded RNG).
    /// `token` is an address token from an earlier connection to this server (or empty):
    /// with it, the server skips the cookie round trip. `unix_now` (seconds) stamps the
    /// hello, which a server takes in unproven only while it is fresh.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_client(
        now: Instant,
        unix_now: u64,
        local_id: u32,
        remote: SocketAddr,
        config: ConnectionConfig,
        creds: Arc<Credentials>,
        secret: [u8; 32],
        token: Vec<u8>,
    ) -> Self {
        let secret = StaticSecret::from(secret);
        let hello = ClientHello {
            client_id: local_id,
            ephemeral: XPublic::from(&secret).to_bytes(),
            unencrypted: config.unencrypted.min(3),
            sent_at: unix_now,
            creds: packet::Credentials {
                identity: creds.identity(),
                key: creds.key.as_ref().map(|k| k.public_key()),
                cert: creds.cert.clone(),
            },
            cookie: token,
            signature: None,
        };
        let bytes = hello.encode(creds.key.as_ref());
        let mut c = Self::new(now, Side::Client, local_id, remote, config, creds);
        c.validated = true;
        c.handshake = Handshake::Client {
            secret,
            hello,
            sent: vec![bytes.clone()],
            bytes,
            retries_left: 2,
            backoff: HELLO_BACKOFF_FIRST,
            due: true,
            last_sent: None,
            resent: false,
        };
        c.set_state(ConnectionState::Connecting);
        c
    }

    /// A P2P client connection: its hello waits until the rendezvous gives it a path
    /// ([`set_route`](Self::set_route)).
    pub(crate) fn new_p2p_client(
        now: Instant,
        unix_now: u64,
        local_id: u32,
        config: ConnectionConfig,
        creds: Arc<Credentials>,
        secret: [u8; 32],
        p2p: P2pInfo,
    ) -> Self {
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut c = Self::new_client(
            now,
            unix_now,
            local_id,
            nowhere,
            config,
            creds,
            secret,
            Vec::new(),
        );
        if let Handshake::Client { due, .. } = &mut c.handshake {
            *due = false;
        }
        c.p2p = Some(p2p);
        c
    }

    /// A P2P server connection for a peer's connect request: waits in Connecting for the
    /// application to accept, then for the peer's hello.
    pub(crate) fn new_p2p_server(
        now: Instant,
        local_id: u32,
        config: ConnectionConfig,
        creds: Arc<Credentials>,
        p2p: P2pInfo,
    ) -> Self {
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut c = Self::new(now, Side::Server, local_id, nowhere, config, creds);
        c.handshake = Handshake::P2pAwaitingHello { accepted: false };
        c.p2p = Some(p2p);
        c.set_state(ConnectionState::Connecting);
        c
    }

    /// The P2P facts, for a P2P connection.
    pub fn p2p(&self) -> Option<&P2pInfo> {
        self.p2p.as_ref()
    }

    /// P2P client: the rendezvous found the peer at `addr`: send the hello there.
    pub(crate) fn set_route(&mut self, addr: SocketAddr) {
        if let Handshake::Client { due, .. } = &mut self.handshake {
            if matches!(
                self.state,
                ConnectionState::Connecting | ConnectionState::FindingRoute
            ) && !*due
            {
                self.remote = addr;
                *due = true;
                self.set_state(ConnectionState::FindingRoute);
            }
        }
    }

    /// P2P client: the peer accepted and a transport is looking for the path.
    pub(crate) fn finding_route(&mut self, transport: u8) {
        if self.state == ConnectionState::Connecting {
            if let Some(p) = &mut self.p2p {
                p.transport = transport;
            }
            self.set_state(ConnectionState::FindingRoute);
        }
    }

    /// The transport could not make a path: ends the connection (before it connected) or
    /// reports the problem (after).
    pub(crate) fn path_failed(&mut self, reason: EndReason, debug: &str) {
        if !self.state.is_closed_locally()
            && !matches!(
                self.state,
                ConnectionState::ClosedByPeer | ConnectionState::ProblemDetectedLocally
            )
        {
            if matches!(
                self.state,
                ConnectionState::Connecting | ConnectionState::FindingRoute
            ) {
                self.handshake = Handshake::Done;
            }
            self.fail(reason, debug);
        }
    }

    /// True for a P2P client still waiting for the rendezvous to give it a path.
    pub(crate) fn awaits_route(&self) -> bool {
        self.p2p.is_some()
            && self.state == ConnectionState::Connecting
            && matches!(self.handshake, Handshake::Client { due: false, .. })
            && self.remote.port() == 0
    }

    /// Symmetric connect, when the peer's session wins the tie: this outbound connection
    /// becomes the server end of the peer's session, accepted already.
    pub(crate) fn merge_into_peer_session(&mut self, session: u64, transport: u8) {
        self.side = Side::Server;
        self.handshake = Handshake::P2pAwaitingHello { accepted: true };
        if let Some(p) = &mut self.p2p {
            p.session = session;
            p.transport = transport;
        }
        self.set_state(ConnectionState::FindingRoute);
    }

    /// P2P server: true when waiting for the hello of an accepted request.
    pub(crate) fn awaits_hello(&self) -> bool {
        matches!(
            self.handshake,
            Handshake::P2pAwaitingHello { accepted: true }
        )
    }

    /// P2P server: the peer's hello arrived (verified, and from the expected identity) at
    /// `from`; answer it as an accepted connection.
    pub(crate) fn adopt_hello(
        &mut self,
        now: Instant,
        from: SocketAddr,
        incoming: Incoming,
        secret: [u8; 32],
    ) -> Result<(), Error> {
        if !self.awaits_hello() {
            return Err(Error::InvalidState);
        }
        self.take_hello(from, incoming);
        self.answer_hello(now, secret)
    }

    /// Server: a verified client hello from `from`, to answer once accepted.
    fn take_hello(&mut self, from: SocketAddr, incoming: Incoming) {
        self.remote = from;
        self.remote_id = incoming.hello.client_id;
        self.amp_received = incoming.bytes.len() as u64;
        self.unencrypted = incoming.unencrypted;
        self.peer = Some(incoming.peer);
        self.handshake = Handshake::ServerPending {
            hello: incoming.hello,
            bytes: incoming.bytes,
        };
    }

    /// The rendezvous says the peer refused or closed. It counts only while this side still
    /// had a way forward: a connection that failed on its own already keeps its own reason.
    pub(crate) fn closed_by_signal(&mut self, reason: u32, debug: String) {
        if matches!(
            self.state,
            ConnectionState::Connecting | ConnectionState::FindingRoute
        ) {
            self.end(EndReason(reason), debug);
            self.handshake = Handshake::Done;
            self.set_state(ConnectionState::ClosedByPeer);
        }
    }

    /// A server connection for a verified client hello, waiting for `accept`.
    pub(crate) fn new_server(
        now: Instant,
        local_id: u32,
        remote: SocketAddr,
        config: ConnectionConfig,
        creds: Arc<Credentials>,
        incoming: Incoming,
    ) -> Self {
        let mut c = Self::new(now, Side::Server, local_id, remote, config, creds);
        c.take_hello(remote, incoming);
        c.set_state(ConnectionState::Connecting);
        c
    }

    fn new(
        now: Instant,
        side: Side,
        local_id: u32,
        remote: SocketAddr,
        config: ConnectionConfig,
        creds: Arc<Credentials>,
    ) -> Self {
        let mss = config.mtu();
        let mut c = Self {
            side,
            local_id,
            remote_id: 0,
            remote,
            state: ConnectionState::None,
            end_reason: EndReason::INVALID,
            end_debug: String::new(),
            config,
            creds,
            peer: None,
            handshake: Handshake::Done,
            keys: None,
            unencrypted: false,
            validated: false,
            amp_received: 0,
            amp_sent: 0,
            next_pn: 0,
            replay: ReplayWindow::default(),
            ack: AckState::default(),
            sent: BTreeMap::new(),
            largest_acked: None,
            in_flight: 0,
            rtt: RttEstimator::new(),
            // Window steps of the base packet size: the size in use may be smaller than
            // the configured bound for a long time.
            cc: Cubic::new(mss.min(super::pmtud::BASE_MTU)),
            pacer: Pacer::new(),
            pto_count: 0,
            probes: 0,
            pmtud: Pmtud::new(mss),
            loss_rate: 0.0,
            ping_pending: false,
            last_eliciting_sent: None,
            sendq: SendQueue::new(),
            recv: Reassembly::new(),
            timers: [None; TIMER_COUNT],
            started: now,
            last_recv: now,
            close_frame: None,
            close_due: false,
            closed_ack_due: false,
            reject_due: None,
            pending_hello: None,
            pacing_wait: None,
            last_poll: now,
            reorder_threshold: 3,
            reorder_time_factor: 1.0,
            declared_lost: VecDeque::new(),
            token_out: None,
            token_given: false,
            token_in: None,
            p2p: None,
            episode_lost: None,
            events: VecDeque::new(),
            stats: Stats::default(),
        };
        c.timers[Timer::Idle as usize] = Some(now + c.config.timeout_initial);
        c
    }

    // ----- accessors -------------------------------------------------------------------

    /// Our connection id (the endpoint's handle for this connection).
    pub fn local_id(&self) -> u32 {
        self.local_id
    }
    /// The peer's connection id (0 until known).
    pub fn remote_id(&self) -> u32 {
        self.remote_id
    }
    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }
    /// Server side, connected, and not yet given an address token for the client.
    pub(crate) fn wants_address_token(&self) -> bool {
        self.side == Side::Server && self.state == ConnectionState::Connected && !self.token_given
    }

    /// Gives the client this address token (sent once, with the next packet).
    pub(crate) fn give_address_token(&mut self, token: Vec<u8>) {
        self.token_given = true;
        self.token_out = Some(token);
    }

    /// Client side: the address token the server sent, if one came since the last call.
    pub(crate) fn take_address_token(&mut self) -> Option<Vec<u8>> {
        self.token_in.take()
    }

    /// Which end of the connection this is.
    pub fn side(&self) -> Side {
        self.side
    }
    /// The current state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }
    /// Why the connection ended (`INVALID` while it lives).
    pub fn end_reason(&self) -> EndReason {
        self.end_reason
    }
    /// Debug text for the end.
    pub fn end_debug(&self) -> &str {
        &self.end_debug
    }
    /// The peer's identity once its hello was verified.
    pub fn peer_identity(&self) -> Option<&Identity> {
        self.peer.as_ref().map(|p| &p.identity)
    }
    /// Connection-info flags.
    pub fn info_flags(&self) -> ConnectionInfoFlags {
        let mut f = ConnectionInfoFlags::default();
        if self.peer.as_ref().is_some_and(|p| !p.authenticated) {
            f |= ConnectionInfoFlags::UNAUTHENTICATED;
        }
        if self.unencrypted {
            f |= ConnectionInfoFlags::UNENCRYPTED;
        }
        if self.remote.ip().is_loopback() {
            f |= ConnectionInfoFlags::FAST;
        }
        f
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// The settings in force.
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }
    /// Path and queue numbers.
    pub fn path_status(&self, now: Instant) -> PathStatus {
        PathStatus {
            rtt: self.rtt.smoothed,
            mtu: self.mtu(),
            congestion_window: self.window(),
            bytes_in_flight: self.in_flight,
            send_rate: self.pacing_rate(),
            pending_reliable: self.sendq.queued_reliable(),
            pending_unreliable: self.sendq.queued_unreliable(),
            sent_unacked_reliable: self.sendq.unacked_reliable() - self.sendq.queued_reliable(),
            queue_time: self
                .sendq
                .oldest_queued()
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            received_fraction: match self.replay.largest() {
                Some(l) => (self.stats.packets_received as f32 / (l + 1) as f32).min(1.0),
                None => 1.0,
            },
            delivered_fraction: if self.next_pn == 0 {
                1.0
            } else {
                // Packets declared lost that arrived after all were only reordered.
                let lost = self
                    .stats
                    .packets_lost
                    .saturating_sub(self.stats.spurious_losses);
                1.0 - (lost as f32 / self.next_pn as f32).min(1.0)
            },
        }
    }
    /// True once the peer's address is known to be genuine.
    pub fn is_validated(&self) -> bool {
        self.validated
    }
    /// Bytes sent before the peer's address was validated (server side), and bytes received.
    pub fn amplification(&self) -> (u64, u64) {
        (self.amp_sent, self.amp_received)
    }

    // ----- application commands -----------------------------------------------------------

    /// Accepts a connecting peer (server side): sends the server hello and becomes Connected.
    /// `secret` is the ephemeral X25519 secret.
    pub fn accept(&mut self, now: Instant, secret: [u8; 32]) -> Result<(), Error> {
        if let Handshake::P2pAwaitingHello { accepted } = &mut self.handshake {
            if *accepted || self.state != ConnectionState::Connecting {
                return Err(Error::InvalidState);
            }
            *accepted = true;
            self.set_state(ConnectionState::FindingRoute);
            return Ok(());
        }
        if self.state != ConnectionState::Connecting {
            return Err(Error::InvalidState);
        }
        self.answer_hello(now, secret)
    }

    /// Server: answers the pending client hello with ours.
    fn answer_hello(&mut self, now: Instant, secret: [u8; 32]) -> Result<(), Error> {
        let Handshake::ServerPending { hello, bytes } =
            std::mem::replace(&mut self.handshake, Handshake::Done)
        else {
            return Err(Error::InvalidState);
        };
        let secret = StaticSecret::from(secret);
        let shared = secret.diffie_hellman(&XPublic::from(hello.ephemeral));
        if !shared.was_contributory() {
            self.fail(
                EndReason::REMOTE_BAD_CRYPT,
                "client ephemeral key is a low-order point",
            );
            return Err(Error::InvalidState);
        }
        let reply = ServerHello {
            client_id: hello.client_id,
            server_id: self.local_id,
            client_hello_hash: crypto::hash(&[&bytes]),
            ephemeral: XPublic::from(&secret).to_bytes(),
            unencrypted: self.unencrypted,
            creds: packet::Credentials {
                identity: self.creds.identity(),
                key: self.creds.key.as_ref().map(|k| k.public_key()),
                cert: self.creds.cert.clone(),
            },
            signature: None,
        }
        .encode(self.creds.key.as_ref(), &bytes);
        let transcript = crypto::hash(&[&bytes, &reply]);
        self.keys = Some(Keys::derive(shared.as_bytes(), &transcript, false));
        self.handshake = Handshake::ServerAccepted { reply };
        self.closed_ack_due = false;
        self.reject_due = None;
        self.due_server_hello();
        self.last_recv = now;
        // Connected once the client's first packet proves it holds the keys.
        self.arm_idle();
        Ok(())
    }

    fn due_server_hello(&mut self) {
        if let Handshake::ServerAccepted { reply, .. } = &self.handshake {
            self.reject_due = None;
            self.pending_hello = Some(reply.clone());
        }
    }

    /// Queues a message on lane 0. Returns its message number.
    pub fn send_message(
        &mut self,
        now: Instant,
        payload: Bytes,
        flags: SendFlags,
    ) -> Result<u64, Error> {
        self.send_message_on_lane(now, payload, flags, 0)
    }

    /// Sets up lanes: `priorities` (lower numbers go first) and `weights` (shares among
    /// lanes of equal priority), one each per lane. The lane count may grow, never shrink.
    pub fn configure_lanes(&mut self, priorities: &[i32], weights: &[u16]) -> Result<(), Error> {
        if self.state.is_closed_locally() {
            return Err(Error::InvalidState);
        }
        self.sendq
            .configure_lanes(priorities, weights)
            .map_err(Error::InvalidParam)
    }

    /// Queues a message on `lane`. Returns its message number.
    pub fn send_message_on_lane(
        &mut self,
        now: Instant,
        payload: Bytes,
        flags: SendFlags,
        lane: u16,
    ) -> Result<u64, Error> {
        if usize::from(lane) >= self.sendq.lane_count() {
            return Err(Error::InvalidParam(format!(
                "lane {lane}: the connection has {} (configure_connection_lanes)",
                self.sendq.lane_count()
            )));
        }
        match self.state {
            ConnectionState::Connecting
            | ConnectionState::FindingRoute
            | ConnectionState::Connected => {}
            ConnectionState::ClosedByPeer | ConnectionState::ProblemDetectedLocally => {
                return Err(Error::NoConnection)
            }
            _ => return Err(Error::InvalidState),
        }
        if payload.len() > MAX_SEND_MESSAGE_SIZE {
            return Err(Error::InvalidParam(format!(
                "message of {} bytes is over the {MAX_SEND_MESSAGE_SIZE}-byte limit",
                payload.len()
            )));
        }
        let reliable = flags.is_reliable();
        if flags.contains(SendFlags::NO_DELAY) && !reliable && !self.can_send_soon(payload.len()) {
            return Err(Error::Ignored);
        }
        if self.sendq.buffered() + payload.len() > self.config.send_buffer_size {
            return Err(Error::LimitExceeded);
        }
        let n = self
            .sendq
            .push_on_lane(now, payload, reliable, usize::from(lane));
        if flags.contains(SendFlags::NO_NAGLE) {
            self.sendq.request_flush();
        }
        self.stats.messages_sent += 1;
        Ok(n)
    }

    fn can_send_soon(&self, len: usize) -> bool {
        self.state == ConnectionState::Connected
            && self.in_flight + len as u64 <= self.window()
            && self.sendq.queued_reliable() + self.sendq.queued_unreliable() < self.mtu() * 4
    }

    /// Sends everything queued without waiting for Nagle.
    pub fn flush(&mut self) -> Result<(), Error> {
        match self.state {
            ConnectionState::Connecting
            | ConnectionState::FindingRoute
            | ConnectionState::Connected => {
                self.sendq.request_flush();
                Ok(())
            }
            ConnectionState::ClosedByPeer | ConnectionState::ProblemDetectedLocally => {
                Err(Error::NoConnection)
            }
            _ => Err(Error::InvalidState),
        }
    }

    /// Takes the next received message. Connecting connections never have any.
    pub fn receive(&mut self) -> Option<Received> {
        if self.is_handshaking() || self.state.is_closed_locally() {
            return None;
        }
        self.recv.pop()
    }

    /// The next received message, without taking it.
    pub fn peek_received(&self) -> Option<&Received> {
        if self.is_handshaking() || self.state.is_closed_locally() {
            return None;
        }
        self.recv.peek()
    }

    /// Connecting, or finding a route (P2P): the handshake is not done.
    fn is_handshaking(&self) -> bool {
        matches!(
            self.state,
            ConnectionState::Connecting | ConnectionState::FindingRoute
        )
    }

    /// Changes settings of a live connection (limits, rates, Nagle, timeouts).
    pub fn set_config(&mut self, config: ConnectionConfig) {
        if config.mtu() != self.config.mtu() {
            // A new upper bound: search again under it, from the base.
            self.pmtud = Pmtud::new(config.mtu());
        }
        self.config = config;
        self.arm_idle();
    }

    /// Received messages waiting.
    pub fn pending_received(&self) -> usize {
        self.recv.ready_len()
    }

    /// Closes the connection with an application end reason. With `linger`, reliable data
    /// already queued is delivered before the peer is told.
    pub fn close(&mut self, now: Instant, reason: EndReason, debug: &str, linger: bool) {
        let debug: String = debug.chars().take(super::codec::MAX_CLOSE_DEBUG).collect();
        match self.state {
            ConnectionState::Connecting | ConnectionState::FindingRoute => {
                if matches!(self.handshake, Handshake::ServerPending { .. }) {
                    // Refuse the waiting client; the reply is smaller than its hello.
                    self.reject_due = Some(
                        Control::Reject {
                            client_id: self.remote_id,
                            reason: reason.0,
                            debug: debug.clone(),
                        }
                        .encode(),
                    );
                    self.handshake = Handshake::Done;
                }
                self.end(reason, debug);
                if self.keys.is_some() {
                    // Keys agreed (accepted, not yet confirmed): tell the peer properly.
                    self.start_fin_wait(now);
                } else {
                    self.set_state(ConnectionState::Dead);
                }
            }
            ConnectionState::Connected => {
                self.end(reason, debug);
                self.sendq.drop_unreliable();
                if linger && !self.sendq.reliable_done() {
                    self.sendq.request_flush();
                    self.set_state(ConnectionState::Linger);
                } else {
                    self.start_fin_wait(now);
                }
            }
            ConnectionState::ClosedByPeer | ConnectionState::ProblemDetectedLocally => {
                self.set_state(ConnectionState::Dead);
            }
            ConnectionState::Linger
            | ConnectionState::FinWait
            | ConnectionState::Dead
            | ConnectionState::None => {}
        }
    }

    fn end(&mut self, reason: EndReason, debug: String) {
        if self.end_reason == EndReason::INVALID {
            self.end_reason = reason;
            self.end_debug = debug;
        }
    }

    fn start_fin_wait(&mut self, now: Instant) {
        self.sendq.clear();
        self.close_frame = Some((self.end_reason.0, self.end_debug.clone()));
        self.close_due = true;
        self.set_state(ConnectionState::FinWait);
        let linger = (self.rtt.pto() * 3).clamp(Duration::from_millis(300), Duration::from_secs(3));
        self.timers[Timer::Close as usize] = Some(now + linger);
        self.timers[Timer::Keepalive as usize] = None;
    }

    /// Ends the connection for a local problem and tells the peer when keys allow.
    fn fail(&mut self, reason: EndReason, why: &str) {
        tracing::debug!(conn = self.local_id, ?reason, why, "connection failed");
        self.end(reason, why.to_string());
        if self.keys.is_some() && !self.state.is_closed_locally() {
            self.close_frame = Some((reason.0, self.end_debug.clone()));
            self.close_due = true;
        }
        self.sendq.clear();
        self.set_state(ConnectionState::ProblemDetectedLocally);
    }

    fn set_state(&mut self, new: ConnectionState) {
        let old = self.state;
        if old == new {
            return;
        }
        self.state = new;
        if new == ConnectionState::Dead {
            self.timers = [None; TIMER_COUNT];
        }
        self.events.push_back(Event::StateChanged { old, new });
    }

    // ----- inputs ------------------------------------------------------------------------

    /// A client hello arrived again for this (server) connection: resend our reply, within
    /// the amplification budget. Any hello from this client counts, not only the one we
    /// answered: a client that got two cookies (its first hello was duplicated on the way)
    /// resends the hello with the later one, and still accepts our answer to the earlier.
    pub(crate) fn handle_repeated_client_hello(&mut self, bytes: &[u8]) {
        self.amp_received += bytes.len() as u64;
        self.due_server_hello();
    }

    /// The server answered our hello.
    pub(crate) fn handle_server_hello(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        hello: ServerHello,
        now_unix: u64,
    ) {
        if from != self.remote || !self.is_handshaking() {
            return;
        }
        let Handshake::Client {
            secret,
            sent,
            bytes: current,
            last_sent,
            resent,
            ..
        } = &self.handshake
        else {
            return;
        };
        // The handshake's round trip, when the answered hello went out once.
        let sample = last_sent
            .filter(|_| !*resent && crypto::hash(&[current]) == hello.client_hello_hash)
            .map(|at| now.saturating_duration_since(at));
        let Some(bytes) = sent
            .iter()
            .find(|b| crypto::hash(&[b.as_slice()]) == hello.client_hello_hash)
        else {
            self.stats.malformed += 1; // an answer to no hello of ours
            return;
        };
        if !hello.verify(bytes) {
            self.fail(
                EndReason::REMOTE_BAD_CRYPT,
                "server hello signature does not verify",
            );
            return;
        }
        let result = auth::check_peer(&self.creds, &self.config, &hello.creds, from, now_unix)
            .and_then(|peer| {
                auth::accept_encryption_decision(self.config.unencrypted, hello.unencrypted)?;
                Ok(peer)
            });
        let peer = match result {
            Ok(p) => p,
            Err(Refusal { reason, debug }) => {
                self.fail(reason, &debug);
                return;
            }
        };
        if let Some(p2p) = &self.p2p {
            if peer.identity != p2p.peer {
                let debug = format!(
                    "the peer proved identity {}, not {} named by the rendezvous",
                    peer.identity, p2p.peer
                );
                self.fail(EndReason::REMOTE_BAD_CERT, &debug);
                return;
            }
        }
        let shared = secret.diffie_hellman(&XPublic::from(hello.ephemeral));
        if !shared.was_contributory() {
            self.fail(
                EndReason::REMOTE_BAD_CRYPT,
                "server ephemeral key is a low-order point",
            );
            return;
        }
        let transcript = crypto::hash(&[bytes, datagram]);
        self.keys = Some(Keys::derive(shared.as_bytes(), &transcript, true));
        self.unencrypted = hello.unencrypted;
        self.remote_id = hello.server_id;
        self.peer = Some(peer);
        self.handshake = Handshake::Done;
        self.timers[Timer::Handshake as usize] = None;
        self.last_recv = now;
        self.stats.packets_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        if let Some(sample) = sample {
            self.rtt.update(sample, Duration::ZERO);
        }
        // Prove our address to the server at once, even with nothing queued.
        self.ping_pending = true;
        self.set_state(ConnectionState::Connected);
        self.arm_idle();
    }

    /// The server asked for a cookie.
    pub(crate) fn handle_retry(&mut self, from: SocketAddr, cookie: Vec<u8>) {
        if from != self.remote || !self.is_handshaking() {
            return;
        }
        let Handshake::Client {
            hello,
            bytes,
            sent,
            retries_left,
            due,
            last_sent,
            resent,
            backoff,
            ..
        } = &mut self.handshake
        else {
            return;
        };
        if *retries_left == 0 || hello.cookie == cookie {
            return;
        }
        *retries_left -= 1;
        hello.cookie = cookie;
        *bytes = hello.encode(self.creds.key.as_ref());
        sent.push(bytes.clone());
        *due = true;
        *last_sent = None;
        *resent = false;
        // The answer shows the path works: the hello with the cookie starts a fresh exchange.
        *backoff = HELLO_BACKOFF_FIRST;
    }

    /// The server refused our hello.
    pub(crate) fn handle_reject(&mut self, from: SocketAddr, reason: u32, debug: String) {
        if from != self.remote
            || !self.is_handshaking()
            || !matches!(self.handshake, Handshake::Client { .. })
        {
            return;
        }
        self.end(EndReason(reason), debug);
        self.handshake = Handshake::Done;
        self.set_state(ConnectionState::ClosedByPeer);
    }

    /// The peer says it has no such connection.
    pub(crate) fn handle_no_connection(&mut self, now: Instant, from: SocketAddr) {
        // Unauthenticated: believe it only when the peer has also gone quiet, so a forged one
        // cannot end a healthy connection.
        let quiet = (self.rtt.pto() * 3).max(Duration::from_secs(1));
        if from != self.remote || self.remote_id == 0 || now < self.last_recv + quiet {
            return;
        }
        match self.state {
            ConnectionState::Connected | ConnectionState::Linger => {
                self.end(
                    EndReason::MISC_PEER_SENT_NO_CONNECTION,
                    "peer has no record of this connection".into(),
                );
                self.sendq.clear();
                self.set_state(if self.state == ConnectionState::Linger {
                    ConnectionState::Dead
                } else {
                    ConnectionState::ClosedByPeer
                });
            }
            ConnectionState::FinWait => self.set_state(ConnectionState::Dead),
            _ => {}
        }
    }

    /// A data packet addressed to this connection, with its header as the endpoint decoded
    /// it from `datagram`'s first bytes (decoded once, on the endpoint's dispatch).
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: ShortHeader,
        mut datagram: BytesMut,
    ) {
        if self.keys.is_none() {
            return; // no keys yet: nothing the peer could have sent us
        }
        if header.encrypted == self.unencrypted || self.state == ConnectionState::Dead {
            self.stats.malformed += 1;
            return;
        }
        let pn = expand_packet_number(self.replay.largest(), header.pn_low);
        if !self.replay.is_fresh(pn) {
            self.stats.replays_dropped += 1;
            return;
        }
        let len = datagram.len();
        if let (true, Some(keys)) = (header.encrypted, &mut self.keys) {
            let (head, body) = datagram.split_at_mut(SHORT_HEADER_LEN);
            match keys.open_in_place(pn, header.key_phase, head, body) {
                Ok((n, opened)) => {
                    datagram.truncate(SHORT_HEADER_LEN + n);
                    if opened == crypto::Opened::PeerUpdated {
                        // The peer moved to its next key: from our next packet on, so do we.
                        keys.follow_peer(self.next_pn);
                        self.stats.key_updates = keys.updates();
                    }
                }
                Err(_) => {
                    self.stats.decrypt_failures += 1;
                    return;
                }
            }
        }
        if from != self.remote {
            // Authentic, but from another address: moving there unvalidated would let the peer
            // aim our traffic at a third party. Path changes are the route layer's job.
            self.stats.wrong_address += 1;
            return;
        }
        // Decrypted in place; messages slice it without copying.
        let payload = datagram.freeze().slice(SHORT_HEADER_LEN..);
        let mut frames = match decode_frames(&payload, self.config.recv_max_segments_per_packet) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(conn = self.local_id, error = %e, "dropping malformed packet");
                self.stats.malformed += 1;
                return;
            }
        };
        self.stats.bytes_received += len as u64;
        self.amp_received += len as u64;
        self.last_recv = now;
        if !self.admit(&frames) {
            // No room for its messages: drop them unacknowledged (the peer resends), but act
            // on its acks and closes so a slow reader does not stall or time out the peer.
            self.stats.recv_buffer_drops += 1;
            frames.retain(|f| !f.is_ack_eliciting());
        } else {
            self.replay.record(pn);
            self.stats.packets_received += 1;
        }
        // Only the holder of the keys, who received our hello at that address, can send this.
        self.validated = true;
        if let Handshake::ServerAccepted { .. } = self.handshake {
            // Key confirmation: the client holds the keys, so the hello was not a replay.
            self.handshake = Handshake::Done;
            self.pending_hello = None;
            if self.is_handshaking() {
                self.set_state(ConnectionState::Connected);
            }
        }
        self.arm_idle();
        if !self.replay.is_fresh(pn) {
            // Recorded above: acknowledge it.
            if frames.iter().any(Frame::is_ack_eliciting) {
                self.on_eliciting_packet(now, pn);
            } else {
                self.ack.received.insert(pn..pn + 1);
                self.trim_ack_ranges();
            }
            if self.ack.received.max() == Some(pn) {
                self.ack.largest_at = Some(now);
            }
        }
        for frame in frames {
            match frame {
                Frame::Ping => {}
                Frame::Ack {
                    delay_micros,
                    ranges,
                } => self.on_ack(now, delay_micros, &ranges),
                Frame::Segment(s) => {
                    if !self.on_segment(now, &s) {
                        break;
                    }
                }
                Frame::Close { reason, debug } => self.on_peer_close(reason, debug),
                Frame::AddressToken(t) => {
                    if self.side == Side::Client {
                        self.token_in = Some(t);
                    }
                }
                Frame::Closed => {
                    if self.state == ConnectionState::FinWait {
                        self.set_state(ConnectionState::Dead);
                    }
                }
            }
        }
        if self.state == ConnectionState::FinWait && self.close_frame.is_some() {
            // The peer is still talking: tell it again that we closed.
            self.close_due = true;
        }
    }

    /// Whether a packet's messages may be taken: they fit the receive limits, and no reliable
    /// segment is beyond the reordering window (it would be acknowledged but never delivered).
    /// Messages the application has not read always count; a packet carrying the next
    /// in-order message may exceed the limits by at most one message, so an out-of-order
    /// backlog can never starve the message that would drain it.
    fn admit(&self, frames: &[Frame]) -> bool {
        let (mut bytes, mut msgs, mut head) = (0usize, 0usize, false);
        for f in frames {
            if let Frame::Segment(s) = f {
                if !self.recv.in_window(s) {
                    return false;
                }
                head |= self.recv.is_head(s);
                bytes += self.recv.charge(s);
                msgs += 1;
            }
        }
        let cfg = &self.config;
        let fits = |held_bytes: usize, held_msgs: usize, slack_bytes: usize, slack_msgs: usize| {
            held_bytes + bytes <= cfg.recv_buffer_size + slack_bytes
                && held_msgs + msgs <= cfg.recv_buffer_messages + slack_msgs
        };
        msgs == 0
            || fits(self.recv.held_bytes(), self.recv.held_messages(), 0, 0)
            || (head
                && fits(self.recv.ready_bytes(), self.recv.ready_len(), 0, 0)
                && fits(
                    self.recv.held_bytes(),
                    self.recv.held_messages(),
                    cfg.recv_max_message_size + cfg.mtu(),
                    1,
                ))
    }

    fn on_segment(&mut self, now: Instant, s: &Segment) -> bool {
        if self.state != ConnectionState::Connected {
            return true; // lingering or closing: data is acknowledged but discarded
        }
        let before = self.recv.ready_len();
        match self.recv.insert(now, s, self.config.recv_max_message_size) {
            Ok(()) => {
                self.stats.messages_received += (self.recv.ready_len() - before) as u64;
                true
            }
            Err(RecvError::TooBig { size, max }) => {
                self.fail(
                    EndReason::MISC_GENERIC,
                    &format!("peer sent a {size}-byte message; RecvMaxMessageSize is {max}"),
                );
                false
            }
            Err(RecvError::Inconsistent | RecvError::OutOfWindow) => {
                self.stats.malformed += 1;
                true
            }
        }
    }

    fn on_peer_close(&mut self, reason: u32, debug: String) {
        self.closed_ack_due = true;
        match self.state {
            ConnectionState::Connecting
            | ConnectionState::FindingRoute
            | ConnectionState::Connected => {
                self.end(EndReason(reason), debug);
                self.sendq.clear();
                self.set_state(ConnectionState::ClosedByPeer);
            }
            ConnectionState::Linger | ConnectionState::FinWait => {
                self.set_state(ConnectionState::Dead);
            }
            _ => {}
        }
    }

    fn on_eliciting_packet(&mut self, now: Instant, pn: u64) {
        let out_of_order = self.ack.received.max().is_some_and(|m| pn < m)
            || self.ack.received.max().is_some_and(|m| pn > m + 1);
        self.ack.received.insert(pn..pn + 1);
        self.trim_ack_ranges();
        self.ack.dirty = true;
        self.ack.unacked_eliciting += 1;
        if self.ack.unacked_eliciting >= 2 || out_of_order {
            self.ack.deadline = Some(now);
        } else if self.ack.deadline.is_none() {
            self.ack.deadline = Some(now + RttEstimator::MAX_ACK_DELAY);
        }
        self.timers[Timer::Ack as usize] = self.ack.deadline;
    }

    fn trim_ack_ranges(&mut self) {
        while self.ack.received.range_count() > 2 * MAX_ACK_RANGES {
            self.ack.received.pop_min();
        }
    }

    fn on_ack(&mut self, now: Instant, delay_micros: u64, ranges: &[AckRange]) {
        let mut newly: Vec<(u64, SentPacket)> = Vec::new();
        self.note_spurious_losses(ranges);
        // The MTU probe is not in `sent`: an ack may cover it alone.
        if let Some(pn) = ranges.iter().find_map(|r| self.pmtud_probe_in(r)) {
            self.pmtud.on_probe_acked(pn);
        }
        for r in ranges {
            let pns: Vec<u64> = self.sent.range(r.clone()).map(|(pn, _)| *pn).collect();
            for pn in pns {
                // Just listed from the map.
                newly.push((pn, self.sent.remove(&pn).expect("listed")));
            }
        }
        let Some(largest) = newly.iter().map(|(pn, _)| *pn).max() else {
            return;
        };
        if Some(largest) == ranges.first().map(|r| *r.end()) {
            if let Some((_, p)) = newly.iter().find(|(pn, _)| *pn == largest) {
                let delay = Duration::from_micros(delay_micros.min(1_000_000));
                self.rtt
                    .update(now.saturating_duration_since(p.time), delay);
            }
        }
        self.largest_acked = Some(self.largest_acked.map_or(largest, |l| l.max(largest)));
        // The window was in use if what was in flight came close to filling it.
        let cwnd_limited = self.in_flight + 2 * self.mtu() as u64 >= self.window();
        for (pn, p) in newly {
            self.loss_rate *= 1.0 - LOSS_RATE_WEIGHT;
            self.pmtud.on_acked(pn, p.size as usize);
            self.in_flight -= p.size;
            self.cc
                .on_ack(now, p.time, p.size, self.rtt.smoothed, cwnd_limited);
            for s in p.segments {
                self.sendq.on_acked(s);
            }
        }
        self.pto_count = 0;
        self.detect_lost(now);
        self.check_mtu_probe(now);
        self.maybe_finish_linger(now);
    }

    /// The MTU probe's packet number, when range `r` acknowledges it.
    fn pmtud_probe_in(&self, r: &AckRange) -> Option<u64> {
        self.pmtud.probe_pn().filter(|pn| r.contains(pn))
    }

    /// Declares the MTU probe lost when a later packet was acknowledged well after it, or
    /// its time ran out (the window is not cut).
    fn check_mtu_probe(&mut self, now: Instant) {
        if self
            .pmtud
            .check_probe(
                now,
                self.largest_acked,
                self.loss_delay(),
                self.rtt.pto() * 2,
            )
            .is_some()
        {
            self.stats.mtu_probes_lost += 1;
        }
    }

    /// The packet size in use (path MTU discovery's current size).
    pub fn mtu(&self) -> usize {
        self.pmtud.mtu()
    }

    fn detect_lost(&mut self, now: Instant) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        let delay = self.loss_delay();
        let threshold = self.reorder_threshold;
        let lost: Vec<u64> = self
            .sent
            .range(..largest)
            .filter(|(pn, p)| **pn + threshold <= largest || p.time + delay <= now)
            .map(|(pn, _)| *pn)
            .collect();
        for pn in lost {
            // Just listed from the map.
            let p = self.sent.remove(&pn).expect("listed");
            self.stats.packets_lost += 1;
            if self.pmtud.on_lost(pn, p.size as usize, now, self.next_pn) {
                tracing::debug!(
                    conn = self.local_id,
                    "path MTU black hole: back to the base size"
                );
                self.stats.mtu_black_holes += 1;
            }
            self.declared_lost.push_back(pn);
            if self.declared_lost.len() > 256 {
                self.declared_lost.pop_front();
            }
            self.in_flight -= p.size;
            self.loss_rate = self.loss_rate * (1.0 - LOSS_RATE_WEIGHT) + LOSS_RATE_WEIGHT;
            let congested = recovery::congested(self.rtt.smoothed, self.rtt.min, self.loss_rate);
            if self.cc.on_loss(now, p.time, congested) {
                self.episode_lost = Some(Vec::new());
            }
            // Only losses of the flight the last cut answered decide whether it is undone
            // (a later random loss, which cut nothing, has no say).
            if let (Some(episode), true) = (&mut self.episode_lost, self.cc.in_episode(p.time)) {
                if episode.len() < 64 {
                    episode.push(pn);
                } else {
                    self.episode_lost = None;
                }
            }
            for s in p.segments {
                self.stats.segments_retransmitted += 1;
                self.sendq.on_lost(s);
            }
        }
        self.arm_loss_timer();
    }

    /// An ack for a packet already declared lost means it was reordered, not lost: tolerate
    /// more reordering from now on (up to 20 packets and 2 RTTs), and undo the last window
    /// cut if every loss since it proved spurious (a real loss in the same episode keeps it).
    fn note_spurious_losses(&mut self, ranges: &[AckRange]) {
        let acked = |pn: &u64| ranges.iter().any(|r| r.contains(pn));
        let before = self.declared_lost.len();
        self.declared_lost.retain(|pn| !acked(pn));
        let spurious = before - self.declared_lost.len();
        if spurious > 0 {
            self.stats.spurious_losses += spurious as u64;
            // Reordered, not lost: out of the loss rate again.
            self.loss_rate = (self.loss_rate - spurious as f64 * LOSS_RATE_WEIGHT).max(0.0);
            if let Some(episode) = &mut self.episode_lost {
                let n = episode.len();
                episode.retain(|pn| !acked(pn));
                if episode.is_empty() && n > 0 {
                    self.cc.undo();
                    self.episode_lost = None;
                }
            }
            self.reorder_threshold = (self.reorder_threshold + spurious as u64).min(20);
            self.reorder_time_factor = (self.reorder_time_factor + 0.25).min(2.0);
        }
    }

    /// How long after a later packet is acknowledged an earlier one counts as lost.
    fn loss_delay(&self) -> Duration {
        self.rtt.loss_delay().mul_f64(self.reorder_time_factor)
    }

    fn maybe_finish_linger(&mut self, now: Instant) {
        if self.state == ConnectionState::Linger && self.sendq.reliable_done() {
            self.start_fin_wait(now);
        }
    }

    /// Processes timers that have expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.expired(Timer::Idle, now) {
            self.timers[Timer::Idle as usize] = None;
            match self.state {
                ConnectionState::Connecting
                | ConnectionState::FindingRoute
                | ConnectionState::Connected
                | ConnectionState::Linger => {
                    let waited = if self.is_handshaking() {
                        self.config.timeout_initial
                    } else {
                        self.config.timeout_connected
                    };
                    let debug = format!("no response from the peer for {} ms", waited.as_millis());
                    let lingering = self.state == ConnectionState::Linger;
                    self.end(EndReason::MISC_TIMEOUT, debug);
                    self.sendq.clear();
                    self.close_due = false;
                    self.set_state(if lingering {
                        ConnectionState::Dead
                    } else {
                        ConnectionState::ProblemDetectedLocally
                    });
                }
                ConnectionState::FinWait => self.set_state(ConnectionState::Dead),
                _ => {}
            }
        }
        if self.expired(Timer::Close, now) {
            self.timers[Timer::Close as usize] = None;
            self.set_state(ConnectionState::Dead);
        }
        if self.expired(Timer::Handshake, now) {
            self.timers[Timer::Handshake as usize] = None;
            let handshaking = self.is_handshaking();
            if let Handshake::Client { due, backoff, .. } = &mut self.handshake {
                *due = handshaking;
                *backoff = (*backoff * 2).min(HELLO_BACKOFF_MAX);
            }
        }
        if self.expired(Timer::Ack, now) {
            self.timers[Timer::Ack as usize] = None;
            self.ack.deadline = Some(now);
        }
        if self.expired(Timer::Keepalive, now) {
            self.timers[Timer::Keepalive as usize] = None;
            if matches!(
                self.state,
                ConnectionState::Connected | ConnectionState::Linger
            ) {
                // Again each interval while the peer stays silent, so a lost ping or two
                // does not let the connection time out while the path works.
                self.ping_pending = true;
                self.timers[Timer::Keepalive as usize] = Some(now + self.keepalive_interval());
            }
        }
        if self.expired(Timer::Loss, now) {
            self.timers[Timer::Loss as usize] = None;
            self.on_loss_timer(now);
            if self.timers[Timer::Loss as usize].is_some_and(|t| t <= now) {
                // Backoff is capped; never leave the timer in the past.
                self.timers[Timer::Loss as usize] = Some(now + self.rtt.pto());
            }
        }
    }

    fn expired(&self, t: Timer, now: Instant) -> bool {
        self.timers[t as usize].is_some_and(|at| at <= now)
    }

    fn on_loss_timer(&mut self, now: Instant) {
        if !matches!(
            self.state,
            ConnectionState::Connected | ConnectionState::Linger | ConnectionState::FinWait
        ) && self.close_frame.is_none()
        {
            // Nothing will be sent again: forget what is in flight.
            self.sent.clear();
            self.in_flight = 0;
            return;
        }
        let delay = self.loss_delay();
        let time_loss = self
            .sent
            .range(..self.largest_acked.unwrap_or(0))
            .any(|(_, p)| p.time + delay <= now);
        if time_loss {
            self.detect_lost(now);
            return;
        }
        if self.state == ConnectionState::FinWait {
            self.close_due = true;
        }
        if !self.sent.is_empty() {
            // Probe timeout: resend the oldest packet's data and elicit an ack.
            self.pto_count = (self.pto_count + 1).min(16);
            if self.pto_count == 2 && self.pmtud.on_silence(now, self.next_pn) {
                // Nothing acknowledged through two timeouts: maybe the path stopped carrying
                // packets of this size. What is resent goes in packets of the base size.
                tracing::debug!(
                    conn = self.local_id,
                    "no acks: path MTU back to the base size"
                );
                self.stats.mtu_black_holes += 1;
            }
            self.probes = 2;
            if let Some(segs) = self.sent.values().next().map(|p| p.segments.clone()) {
                for s in segs {
                    self.sendq.on_lost(s);
                }
            }
            self.ping_pending = true;
        }
        self.arm_loss_timer();
    }

    fn arm_loss_timer(&mut self) {
        let delay = self.loss_delay();
        let time_loss = self
            .sent
            .range(..self.largest_acked.unwrap_or(0))
            .map(|(_, p)| p.time + delay)
            .min();
        let pto = self
            .last_eliciting_sent
            .filter(|_| !self.sent.is_empty())
            .map(|t| t + self.rtt.pto() * 2u32.pow(self.pto_count));
        self.timers[Timer::Loss as usize] = time_loss.or(pto);
    }

    /// How long a silent peer goes before we ping it.
    fn keepalive_interval(&self) -> Duration {
        (self.config.timeout_connected / 4).min(Duration::from_secs(5))
    }

    fn arm_idle(&mut self) {
        let t = match self.state {
            ConnectionState::Connecting | ConnectionState::FindingRoute => {
                self.started + self.config.timeout_initial
            }
            ConnectionState::Connected | ConnectionState::Linger => {
                self.last_recv + self.config.timeout_connected
            }
            _ => return,
        };
        self.timers[Timer::Idle as usize] = Some(t);
        if matches!(
            self.state,
            ConnectionState::Connected | ConnectionState::Linger
        ) {
            self.timers[Timer::Keepalive as usize] =
                Some(self.last_recv + self.keepalive_interval());
        }
    }

    // ----- outputs -----------------------------------------------------------------------

    /// The earliest time `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.timers.iter().flatten().min().copied();
        if matches!(
            self.state,
            ConnectionState::Connected | ConnectionState::Linger
        ) {
            // Wake when the pacer or Nagle releases data. A release time already passed was
            // acted on at the last poll; if data could not go then, an ack, a timer or an
            // incoming packet is what unblocks it, not another wakeup now.
            let wake = self
                .pacing_wait
                .or_else(|| self.sendq.nagle_deadline(self.config.nagle_time))
                .filter(|w| *w > self.last_poll);
            if let Some(w) = wake {
                t = Some(t.map_or(w, |t| t.min(w)));
            }
        }
        t
    }

    #[doc(hidden)]
    pub fn debug_timers(&self, now: Instant) -> String {
        format!(
            "state {:?} validated {} amp {:?} probes {} timers {:?} pacing {:?} nagle {:?} inflight {} window {} sendable {}",
            self.state,
            self.validated,
            (self.amp_sent, self.amp_received),
            self.probes,
            self.timers.map(|t| t.map(|t| t.saturating_duration_since(now))),
            self.pacing_wait.map(|t| t.saturating_duration_since(now)),
            self.sendq.nagle_deadline(self.config.nagle_time).map(|t| t.saturating_duration_since(now)),
            self.in_flight,
            self.window(),
            self.sendq.has_sendable(now, self.config.nagle_time, self.max_payload()),
        )
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn window(&self) -> u64 {
        let floor = (self.config.send_rate_min as f64 * self.rtt.smoothed.as_secs_f64()) as u64;
        // The floor too: a peer that delays its acks inflates the RTT, and with it the floor.
        // Never more in flight than half the receive buffer (ours stands for the peer's,
        // which it does not advertise): behind a lost packet the peer holds what follows
        // (each message charged whole), and what it cannot hold it drops, drops that look
        // like random loss, which does not cut the window. At the default 1 MiB, 512 KiB
        // in flight: about 10 MB/s at 50 ms. A bigger `RecvBufferSize` on both ends raises it.
        let receiver = (self.config.recv_buffer_size / 2).max(16 * self.mtu()) as u64;
        self.cc
            .window
            .max(floor)
            .min(super::recovery::MAX_WINDOW)
            .min(receiver)
    }

    fn pacing_rate(&self) -> u64 {
        let srtt = self.rtt.smoothed.as_secs_f64().max(0.000_1);
        // Pace at twice the window per RTT in slow start (so it can double), 1.25x after.
        let gain = if self.cc.in_slow_start() { 2.0 } else { 1.25 };
        let rate = (self.window() as f64 * gain / srtt) as u64;
        rate.clamp(
            self.config.send_rate_min,
            self.config.send_rate_max.max(self.config.send_rate_min),
        )
    }

    fn max_payload(&self) -> usize {
        self.mtu() - self.overhead()
    }

    /// Header and tag bytes of a data packet.
    fn overhead(&self) -> usize {
        SHORT_HEADER_LEN + if self.unencrypted { 0 } else { TAG_LEN }
    }

    /// Appends the next datagram to `buf`. Returns `false` (and leaves `buf` as it was) when
    /// there is nothing to send now.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        self.last_poll = self.last_poll.max(now);
        if let Some(reject) = self.reject_due.take() {
            buf.extend_from_slice(&reject);
            return true;
        }
        // A connection that gave up (or was closed) while connecting sends no more hellos.
        let handshaking = self.is_handshaking();
        if let Handshake::Client {
            bytes,
            due,
            backoff,
            last_sent,
            resent,
            ..
        } = &mut self.handshake
        {
            if std::mem::take(due) && handshaking {
                *resent |= last_sent.is_some();
                *last_sent = Some(now);
                buf.extend_from_slice(bytes);
                self.timers[Timer::Handshake as usize] = Some(now + *backoff);
                self.stats.packets_sent += 1;
                self.stats.bytes_sent += bytes.len() as u64;
                return true;
            }
            return false;
        }
        if let Some(hello) = &self.pending_hello {
            if !self.validated
                && self.amp_sent + hello.len() as u64 > AMPLIFICATION_FACTOR * self.amp_received
            {
                return false;
            }
            buf.extend_from_slice(hello);
            self.amp_sent += hello.len() as u64;
            self.stats.packets_sent += 1;
            self.stats.bytes_sent += hello.len() as u64;
            self.pending_hello = None;
            return true;
        }
        if self.keys.is_none() || self.state == ConnectionState::Dead {
            return false;
        }
        self.build_packet(now, buf)
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) may have a datagram at `now`; true when
    /// unsure, false only when it has none. With [`poll_timeout`](Self::poll_timeout) it
    /// tells a thread that fed the connection whether its driver must run before it planned.
    pub fn transmit_due(&self, now: Instant) -> bool {
        if self.reject_due.is_some() || self.pending_hello.is_some() {
            return true;
        }
        if let Handshake::Client { due, .. } = &self.handshake {
            return *due && self.is_handshaking();
        }
        if self.keys.is_none() || self.state == ConnectionState::Dead {
            return false;
        }
        let sending_data = matches!(
            self.state,
            ConnectionState::Connected | ConnectionState::Linger
        );
        let data = || {
            self.sendq
                .has_sendable(now, self.config.nagle_time, self.max_payload())
                && (self.probes > 0 || self.can_send_data())
        };
        self.ack.deadline.is_some_and(|d| d <= now)
            || (self.close_due && self.close_frame.is_some())
            || self.closed_ack_due
            || (sending_data && (self.ping_pending || self.token_out.is_some() || data()))
    }

    /// Bytes that may still be sent before the peer's address is validated (`None`: no limit).
    fn amplification_budget(&self) -> Option<usize> {
        (!self.validated).then(|| {
            (AMPLIFICATION_FACTOR * self.amp_received).saturating_sub(self.amp_sent) as usize
        })
    }

    /// True when the window and the amplification budget let a data packet go.
    fn can_send_data(&self) -> bool {
        self.in_flight + self.mtu() as u64 <= self.window()
            && self.amplification_budget().is_none_or(|b| b >= MIN_PACKET)
    }

    fn build_packet(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        let full_payload = self.max_payload();
        let mut max_payload = full_payload;
        if let Some(budget) = self.amplification_budget() {
            if budget < MIN_PACKET {
                return false;
            }
            max_payload = max_payload.min(budget - self.overhead());
        }
        let mut segments = SegRefs::new();
        let mut eliciting = false;
        let ack_now = self.ack.deadline.is_some_and(|d| d <= now);
        let sending_data = matches!(
            self.state,
            ConnectionState::Connected | ConnectionState::Linger
        );
        let closing = self.close_due && self.close_frame.is_some();
        // Data goes when there is some, and the window and pacer allow (probes skip both).
        let mut data_ok = sending_data
            && self
                .sendq
                .has_sendable(now, self.config.nagle_time, full_payload);
        self.pacing_wait = None;
        if data_ok && self.probes == 0 {
            let mtu = self.mtu();
            if !self.can_send_data() {
                data_ok = false;
            } else if let Some(at) = {
                let rate = self.pacing_rate();
                self.pacer
                    .delay(now, mtu, rate, pacing_burst(rate, self.window(), mtu))
            } {
                data_ok = false;
                self.pacing_wait = Some(at);
            }
        }
        if data_ok && self.validated && self.probes == 0 && self.pto_count == 0 {
            // Not while a timeout's retransmission is due or the peer has gone quiet.
            self.check_mtu_probe(now);
            if let Some(size) = self.pmtud.probe_due(now) {
                return self.build_mtu_probe(now, buf, size);
            }
        }
        let ping = self.ping_pending && sending_data;
        let token = self.token_out.is_some() && sending_data;
        if !(ack_now || closing || self.closed_ack_due || data_ok || ping || token) {
            return false;
        }
        // Frames go straight into `buf` after the header and are sealed there in place.
        let (start, pn) = self.begin_packet(buf);
        let body = buf.len();
        let payload = buf;
        if self.ack.dirty || ack_now {
            if let Some(f) = self.ack_frame(now, max_payload / 2) {
                f.encode(payload);
            }
        }
        if closing {
            if let Some((reason, debug)) = &self.close_frame {
                // The debug text gives way when the packet (or amplification budget) is short.
                let room = max_payload.saturating_sub(payload.len() - body + 6);
                let mut end = debug.len().min(room);
                while !debug.is_char_boundary(end) {
                    end -= 1;
                }
                if room > 0 || debug.is_empty() {
                    Frame::Close {
                        reason: *reason,
                        debug: debug[..end].to_string(),
                    }
                    .encode(payload);
                    eliciting = true;
                }
            }
            self.close_due = false;
        }
        if token {
            if let Some(t) = self.token_out.take() {
                Frame::AddressToken(t).encode(payload);
            }
        }
        if self.closed_ack_due {
            Frame::Closed.encode(payload);
            self.closed_ack_due = false;
        }
        if ping {
            Frame::Ping.encode(payload);
            self.ping_pending = false;
            eliciting = true;
        }
        if data_ok {
            while let Some((seg, r)) = self.sendq.next_segment(
                now,
                self.config.nagle_time,
                max_payload.saturating_sub(payload.len() - body),
                full_payload,
            ) {
                Frame::Segment(seg).encode(payload);
                segments.extend(r);
                eliciting = true;
            }
        }
        if payload.len() == body {
            payload.truncate(start);
            return false;
        }
        if self.probes > 0 && eliciting {
            self.probes -= 1;
        }
        self.seal_packet(payload, start, pn);
        let size = (payload.len() - start) as u64;
        self.amp_sent += size;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size;
        if eliciting {
            self.in_flight += size;
            self.pacer.on_send(size as usize);
            self.last_eliciting_sent = Some(now);
        }
        if eliciting {
            self.sent.insert(
                pn,
                SentPacket {
                    time: now,
                    size,
                    segments,
                },
            );
        }
        self.arm_loss_timer();
        true
    }

    /// A path MTU probe of `size` bytes: a PING padded to the size. It is not data: it stays out of the flight and its loss is not congestion (one
    /// at a time, paced like the rest).
    fn build_mtu_probe(&mut self, now: Instant, buf: &mut Vec<u8>, size: usize) -> bool {
        // PING and padding only (RFC 9000 §14.4): an ack in a probe that is too big for the
        // path would be lost with it.
        let (start, pn) = self.begin_packet(buf);
        Frame::Ping.encode(buf);
        let tag = if self.unencrypted { 0 } else { TAG_LEN };
        // Padding frames (zero bytes) up to the size, tag included.
        buf.resize((start + size - tag).max(buf.len()), 0);
        self.seal_packet(buf, start, pn);
        let sent = buf.len() - start;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += sent as u64;
        self.amp_sent += sent as u64;
        self.pacer.on_send(sent);
        self.last_eliciting_sent = Some(now);
        self.pmtud.on_probe_sent(pn, sent, now);
        self.stats.mtu_probes_sent += 1;
        true
    }

    /// Writes the short header of the next packet at the end of `buf`; returns where the
    /// packet starts and its number. A key that has sealed its share of packets, and that
    /// the peer has shown it holds, gives way to the next generation first.
    fn begin_packet(&mut self, buf: &mut Vec<u8>) -> (usize, u64) {
        let start = buf.len();
        let pn = self.next_pn;
        let mut key_phase = false;
        if let (false, Some(keys)) = (self.unencrypted, &mut self.keys) {
            if keys.update_if_due(pn, self.largest_acked, self.config.key_update_packets) {
                self.stats.key_updates = keys.updates();
            }
            key_phase = keys.send_phase();
        }
        ShortHeader {
            encrypted: !self.unencrypted,
            key_phase,
            dst_id: self.remote_id,
            pn_low: pn as u32,
        }
        .encode(buf);
        (start, pn)
    }

    /// Seals packet `pn` (from `start` to the end of `buf`) in place and appends its tag.
    fn seal_packet(&mut self, buf: &mut Vec<u8>, start: usize, pn: u64) {
        self.next_pn += 1;
        if let (false, Some(keys)) = (self.unencrypted, &self.keys) {
            let (header, frames) = buf[start..].split_at_mut(SHORT_HEADER_LEN);
            let tag = keys.seal_in_place(pn, header, frames);
            buf.extend_from_slice(&tag);
        }
    }

    /// An ACK frame of at most about `max_len` bytes (older ranges are left out).
    fn ack_frame(&mut self, now: Instant, max_len: usize) -> Option<Frame> {
        if self.ack.received.is_empty() {
            return None;
        }
        let mut len = 1 + 8 + 8 + 8;
        let ranges: Vec<AckRange> = self
            .ack
            .received
            .iter_rev()
            .take(MAX_ACK_RANGES)
            .take_while(|_| {
                len += 16;
                len <= max_len.max(41)
            })
            .map(|r| r.start..=r.end - 1)
            .collect();
        let delay = self
            .ack
            .largest_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.ack.unacked_eliciting = 0;
        self.ack.deadline = None;
        self.ack.dirty = false;
        self.timers[Timer::Ack as usize] = None;
        Some(Frame::Ack {
            delay_micros: delay.as_micros() as u64,
            ranges,
        })
    }
}
