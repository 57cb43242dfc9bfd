//! Rendezvous: the messages two peers exchange through a signaling channel (a server, or the
//! application's own) to set up a P2P connection, and the reliability that carries them.
//!
//! Signaling channels are slow and may lose, duplicate or reorder what they carry, so every
//! rendezvous message has a sequence number within its session and is sent again until the
//! peer acknowledges it; duplicates are dropped and messages are handed on in order.
//!
//! ```text
//! message: ["PR"] [version 1] [kind u8] [session u64] [seq u32] [ack u32]
//!          [from identity] [to identity] [body]
//! kinds:   1 connect request  [from vport u16] [to vport u16] [symmetric u8] [transport u8]
//!                             [candidates]
//!          2 connect accept   [transport u8] [candidates]
//!          3 close            [end reason u32] [debug len u8, debug]
//!          4 ack              (nothing: the header's `ack` says it all)
//!          5 transport        [len u16, at most 1200] [bytes]
//! candidates: [count u8 (at most 8)] ([family 4|6] [address 4|16] [port u16])...
//! ```
//!
//! `transport` names how the path is found: 0 direct UDP to the `candidates`; any other
//! value a [`Transport`](crate::transport::Transport) plugged in (1 is ICE), whose own
//! signals (credentials, trickled candidates, restarts) ride in transport messages. The
//! requester names the transport it wants; the accept names the one chosen (0 when the
//! acceptor has no transport at all). An acceptor with a transport answers a request for
//! another one, or for none, with a close: its addresses never leave it in the
//! rendezvous, and it never falls back to direct UDP.
//!
//! `seq` numbers a session's messages from one side, from 1 (0 in an ack: it carries none);
//! `ack` is the highest seq received from the other side with none missing before it.

use super::codec::{DecodeError, Reader};
use punchline_identity::Identity;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 2] = b"PR";
/// The rendezvous format version this code speaks.
pub const RENDEZVOUS_VERSION: u8 = 1;
/// The wire id of direct UDP (no transport: the rendezvous' own candidate addresses).
pub const DIRECT: u8 = 0;
/// Most bytes in one signal of a transport's path.
pub const MAX_TRANSPORT_SIGNAL: usize = 1200;
/// Most bytes in one transport message: a path's signal, behind the one-byte tag of its
/// route when [`Routes`](crate::transport::Routes) carries it.
pub const MAX_TRANSPORT_MESSAGE: usize = MAX_TRANSPORT_SIGNAL + 1;
/// Most candidate addresses in one message.
pub const MAX_CANDIDATES: usize = 8;
/// Longest debug text in a close.
pub const MAX_DEBUG: usize = 127;
/// The first retransmission waits this long; each later one twice as long, up to
/// [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between retransmissions.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Messages held waiting for a missing earlier one.
const MAX_HELD: usize = 16;
/// Messages awaiting acknowledgement; beyond this, sending fails.
const MAX_UNACKED: usize = 32;

const KIND_CONNECT: u8 = 1;
const KIND_ACCEPT: u8 = 2;
const KIND_CLOSE: u8 = 3;
const KIND_ACK: u8 = 4;
const KIND_TRANSPORT: u8 = 5;

/// What a rendezvous message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Asks the peer to connect: to its listen socket on `to_vport` (or, with `symmetric`, to
    /// its own outbound connection on that port), reachable at `candidates`.
    ConnectRequest {
        /// The sender's virtual port.
        from_vport: u16,
        /// The virtual port asked for.
        to_vport: u16,
        /// Symmetric connect mode.
        symmetric: bool,
        /// The transport the sender wants (0: direct UDP).
        transport: u8,
        /// Where the sender can be reached.
        candidates: Vec<SocketAddr>,
    },
    /// The peer accepted: where it can be reached.
    ConnectAccept {
        /// The transport chosen (0: direct UDP).
        transport: u8,
        /// Its addresses.
        candidates: Vec<SocketAddr>,
    },
    /// A signal of the transport in use, for the peer's side of it.
    Transport {
        /// Its bytes (at most [`MAX_TRANSPORT_MESSAGE`]).
        data: Vec<u8>,
    },
    /// Refused, or closed: the end reason and why.
    Close {
        /// End reason code.
        reason: u32,
        /// Debug text.
        debug: String,
    },
    /// Only acknowledges (the header's `ack`).
    Ack,
}

/// One rendezvous message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The session it belongs to (chosen by the peer that started it).
    pub session: u64,
    /// Its number among the sender's messages in the session; 0 for an ack.
    pub seq: u32,
    /// The highest seq the sender has received from the other side without a gap.
    pub ack: u32,
    /// Who sent it.
    pub from: Identity,
    /// Who it is for.
    pub to: Identity,
    /// What it says.
    pub body: Body,
}

impl Message {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(MAGIC);
        out.push(RENDEZVOUS_VERSION);
        out.push(match self.body {
            Body::ConnectRequest { .. } => KIND_CONNECT,
            Body::ConnectAccept { .. } => KIND_ACCEPT,
            Body::Close { .. } => KIND_CLOSE,
            Body::Ack => KIND_ACK,
            Body::Transport { .. } => KIND_TRANSPORT,
        });
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ack.to_be_bytes());
        self.from.encode(&mut out);
        self.to.encode(&mut out);
        match &self.body {
            Body::ConnectRequest {
                from_vport,
                to_vport,
                symmetric,
                transport,
                candidates,
            } => {
                out.extend_from_slice(&from_vport.to_be_bytes());
                out.extend_from_slice(&to_vport.to_be_bytes());
                out.push(u8::from(*symmetric));
                out.push(*transport);
                put_candidates(&mut out, candidates);
            }
            Body::ConnectAccept {
                transport,
                candidates,
            } => {
                out.push(*transport);
                put_candidates(&mut out, candidates);
            }
            Body::Transport { data } => {
                let n = data.len().min(MAX_TRANSPORT_MESSAGE);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&data[..n]);
            }
            Body::Close { reason, debug } => {
                out.extend_from_slice(&reason.to_be_bytes());
                let mut end = debug.len().min(MAX_DEBUG);
                while !debug.is_char_boundary(end) {
                    end -= 1;
                }
                out.push(end as u8);
                out.extend_from_slice(&debug.as_bytes()[..end]);
            }
            Body::Ack => {}
        }
        out
    }

    /// Decodes a whole signal; trailing bytes are an error.
    pub fn decode(input: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(input);
        if r.bytes(2)? != MAGIC {
            return Err(DecodeError::Malformed("not a rendezvous message"));
        }
        let version = r.u8()?;
        if version != RENDEZVOUS_VERSION {
            return Err(DecodeError::UnknownType {
                what: "rendezvous version",
                tag: version,
            });
        }
        let kind = r.u8()?;
        let session = r.u64()?;
        let seq = r.u32()?;
        let ack = r.u32()?;
        let from = identity(&mut r)?;
        let to = identity(&mut r)?;
        let body = match kind {
            KIND_CONNECT => Body::ConnectRequest {
                from_vport: r.u16()?,
                to_vport: r.u16()?,
                symmetric: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Malformed("symmetric flag")),
                },
                transport: r.u8()?,
                candidates: candidates(&mut r)?,
            },
            KIND_ACCEPT => Body::ConnectAccept {
                transport: r.u8()?,
                candidates: candidates(&mut r)?,
            },
            KIND_TRANSPORT => {
                let n = usize::from(r.u16()?);
                if n > MAX_TRANSPORT_MESSAGE {
                    return Err(DecodeError::TooLong {
                        what: "transport signal",
                        len: n,
                        max: MAX_TRANSPORT_MESSAGE,
                    });
                }
                Body::Transport {
                    data: r.bytes(n)?.to_vec(),
                }
            }
            KIND_CLOSE => {
                let reason = r.u32()?;
                let debug = r.short_string(MAX_DEBUG)?;
                Body::Close { reason, debug }
            }
            KIND_ACK => Body::Ack,
            tag => {
                return Err(DecodeError::UnknownType {
                    what: "rendezvous message",
                    tag,
                })
            }
        };
        if r.remaining() != 0 {
            return Err(DecodeError::Malformed("bytes after the rendezvous message"));
        }
        if (seq == 0) != (body == Body::Ack) {
            return Err(DecodeError::Malformed("rendezvous sequence number"));
        }
        Ok(Message {
            session,
            seq,
            ack,
            from,
            to,
            body,
        })
    }
}

fn identity(r: &mut Reader<'_>) -> Result<Identity, DecodeError> {
    let (id, used) = Identity::decode(r.rest()).map_err(|_| DecodeError::Malformed("identity"))?;
    r.bytes(used)?;
    Ok(id)
}

fn put_candidates(out: &mut Vec<u8>, candidates: &[SocketAddr]) {
    let n = candidates.len().min(MAX_CANDIDATES);
    out.push(n as u8);
    for a in &candidates[..n] {
        match a.ip() {
            IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
        }
        out.extend_from_slice(&a.port().to_be_bytes());
    }
}

fn candidates(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, DecodeError> {
    let n = r.u8()? as usize;
    if n > MAX_CANDIDATES {
        return Err(DecodeError::TooLarge {
            what: "candidate count",
            value: n as u64,
            max: MAX_CANDIDATES as u64,
        });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ip = match r.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            tag => {
                return Err(DecodeError::UnknownType {
                    what: "address family",
                    tag,
                })
            }
        };
        out.push(SocketAddr::new(ip, r.u16()?));
    }
    Ok(out)
}

/// Why a message could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Too many messages are still unacknowledged.
    #[error("too many rendezvous messages await acknowledgement")]
    Backlog,
}

struct Unacked {
    seq: u32,
    body: Body,
    due: Instant,
    backoff: Duration,
}

/// One side of a rendezvous session: numbers what it sends, sends it again until
/// acknowledged, and hands on what it receives once, in order.
pub struct Session {
    /// The session id.
    pub id: u64,
    /// This side.
    pub local: Identity,
    /// The other side.
    pub peer: Identity,
    next_seq: u32,
    unacked: Vec<Unacked>,
    /// Highest seq received with none missing before it.
    received: u32,
    /// Received ahead of a gap, by seq.
    held: BTreeMap<u32, Body>,
    ack_due: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("unacked", &self.unacked.len())
            .field("received", &self.received)
            .finish()
    }
}

impl Session {
    /// A session between `local` and `peer`.
    pub fn new(id: u64, local: Identity, peer: Identity) -> Self {
        Self {
            id,
            local,
            peer,
            next_seq: 1,
            unacked: Vec::new(),
            received: 0,
            held: BTreeMap::new(),
            ack_due: false,
        }
    }

    /// Queues `body` to be sent now and again until acknowledged. (Acks are not queued:
    /// the session sends them by itself.)
    pub fn send(&mut self, now: Instant, body: Body) -> Result<(), SendError> {
        if body == Body::Ack {
            return Ok(());
        }
        if self.unacked.len() >= MAX_UNACKED {
            return Err(SendError::Backlog);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.push(Unacked {
            seq,
            body,
            due: now,
            backoff: INITIAL_BACKOFF,
        });
        Ok(())
    }

    /// True when everything sent was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Takes in a message of this session; returns the bodies now deliverable, in order
    /// (none for a duplicate or an ack).
    pub fn handle(&mut self, msg: Message) -> Vec<Body> {
        self.unacked.retain(|u| u.seq > msg.ack);
        if msg.seq == 0 {
            return Vec::new();
        }
        // Anything numbered is acknowledged, duplicates too (the first ack may be lost).
        self.ack_due = true;
        if msg.seq <= self.received || self.held.contains_key(&msg.seq) {
            return Vec::new();
        }
        if msg.seq > self.received + 1 {
            if self.held.len() < MAX_HELD {
                self.held.insert(msg.seq, msg.body);
            }
            return Vec::new();
        }
        self.received = msg.seq;
        let mut out = vec![msg.body];
        while let Some(body) = self.held.remove(&(self.received + 1)) {
            self.received += 1;
            out.push(body);
        }
        out
    }

    /// The next message to send by `now`, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message> {
        if let Some(u) = self.unacked.iter_mut().find(|u| u.due <= now) {
            u.due = now + u.backoff;
            u.backoff = (u.backoff * 2).min(MAX_BACKOFF);
            self.ack_due = false;
            return Some(Message {
                session: self.id,
                seq: u.seq,
                ack: self.received,
                from: self.local.clone(),
                to: self.peer.clone(),
                body: u.body.clone(),
            });
        }
        if self.ack_due {
            self.ack_due = false;
            return Some(Message {
                session: self.id,
                seq: 0,
                ack: self.received,
                from: self.local.clone(),
                to: self.peer.clone(),
                body: Body::Ack,
            });
        }
        None
    }

    /// When [`poll_transmit`](Self::poll_transmit) next has something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.unacked.iter().map(|u| u.due).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    fn alice() -> Identity {
        Identity::generic_string("alice").unwrap()
    }
    fn bob() -> Identity {
        Identity::generic_string("bob").unwrap()
    }

    fn request() -> Body {
        Body::ConnectRequest {
            from_vport: 3,
            to_vport: 7,
            symmetric: true,
            transport: 1,
            candidates: vec![
                "10.0.0.1:4000".parse().unwrap(),
                "[fe80::1]:4001".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn messages_round_trip_and_truncations_are_refused() {
        let bodies = [
            request(),
            Body::ConnectAccept {
                transport: 0,
                candidates: vec!["127.0.0.1:9".parse().unwrap()],
            },
            Body::Transport {
                data: b"ice credentials".to_vec(),
            },
            Body::Close {
                reason: 1001,
                debug: "no thanks".into(),
            },
            Body::Ack,
        ];
        for body in bodies {
            let seq = if body == Body::Ack { 0 } else { 5 };
            let m = Message {
                session: 0xDEAD_BEEF,
                seq,
                ack: 4,
                from: alice(),
                to: bob(),
                body,
            };
            let enc = m.encode();
            assert_eq!(Message::decode(&enc).unwrap(), m);
            for cut in 0..enc.len() {
                assert!(Message::decode(&enc[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = enc.clone();
            longer.push(0);
            assert!(Message::decode(&longer).is_err(), "trailing byte");
        }
        assert!(Message::decode(b"PR\x02").is_err(), "unknown version");
    }

    /// Runs two sessions over a channel that loses, duplicates and reorders; returns what
    /// each side delivered.
    fn exchange(loss: u32, dup: u32, seed: u64) -> (Vec<Body>, Vec<Body>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let t0 = Instant::now();
        let mut a = Session::new(1, alice(), bob());
        let mut b = Session::new(1, bob(), alice());
        let a_sends = [
            request(),
            Body::Close {
                reason: 0,
                debug: "x".into(),
            },
        ];
        let b_sends = [Body::ConnectAccept {
            transport: 0,
            candidates: vec![],
        }];
        for m in &a_sends {
            a.send(t0, m.clone()).unwrap();
        }
        for m in &b_sends {
            b.send(t0, m.clone()).unwrap();
        }
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        // In flight: (deliver at, to a?, bytes).
        let mut wire: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(60) {
            for (side, s) in [(false, &mut a), (true, &mut b)] {
                while let Some(m) = s.poll_transmit(now) {
                    let bytes = m.encode();
                    if rng.next_u32() % 100 < loss {
                        continue;
                    }
                    let copies = if rng.next_u32() % 100 < dup { 2 } else { 1 };
                    for _ in 0..copies {
                        let delay = Duration::from_millis(20 + u64::from(rng.next_u32() % 100));
                        wire.push((now + delay, side, bytes.clone()));
                    }
                }
            }
            wire.sort_by_key(|w| w.0);
            let due: Vec<_> = wire.iter().take_while(|w| w.0 <= now).cloned().collect();
            wire.drain(..due.len());
            for (_, to_a, bytes) in due {
                let m = Message::decode(&bytes).unwrap();
                if to_a {
                    got_a.extend(a.handle(m));
                } else {
                    got_b.extend(b.handle(m));
                }
            }
            if a.all_acked() && b.all_acked() && wire.is_empty() {
                break;
            }
            now += Duration::from_millis(10);
        }
        assert!(a.all_acked() && b.all_acked(), "everything acknowledged");
        (got_a, got_b)
    }

    #[test]
    fn every_message_arrives_once_in_order_despite_loss_and_duplication() {
        for seed in 0..50 {
            let (at_a, at_b) = exchange(30, 50, seed);
            assert_eq!(
                at_a,
                vec![Body::ConnectAccept {
                    transport: 0,
                    candidates: vec![],
                }]
            );
            assert_eq!(
                at_b,
                vec![
                    request(),
                    Body::Close {
                        reason: 0,
                        debug: "x".into()
                    }
                ],
                "seed {seed}"
            );
        }
    }

    #[test]
    fn retransmissions_back_off_and_a_backlog_is_refused() {
        let t0 = Instant::now();
        let mut s = Session::new(9, alice(), bob());
        s.send(t0, request()).unwrap();
        assert!(s.poll_transmit(t0).is_some());
        assert!(s.poll_transmit(t0).is_none());
        assert_eq!(s.poll_timeout(), Some(t0 + INITIAL_BACKOFF));
        let t1 = t0 + INITIAL_BACKOFF;
        assert!(s.poll_transmit(t1).is_some());
        assert_eq!(s.poll_timeout(), Some(t1 + INITIAL_BACKOFF * 2));
        for _ in 1..MAX_UNACKED {
            s.send(t0, request()).unwrap();
        }
        assert_eq!(s.send(t0, request()), Err(SendError::Backlog));
    }
}
