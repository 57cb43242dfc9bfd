//! [`Messages`]: the ISteamNetworkingMessages analog, a UDP-style interface. Messages go to a
//! peer named by identity on a numbered channel, with no connection to manage: sessions are
//! P2P connections (symmetric connect, on the reserved virtual port [`MESSAGES_VPORT`]) made
//! on the first send, accepted on request, and closed after [`DEFAULT_IDLE_TIMEOUT`] without
//! traffic.
//!
//! On the wire each message carries its channel in front: `[channel u32 big-endian] [data]`.
//!
//! A session that breaks (the peer closed it, or the path failed) stays broken: sends to that
//! peer fail with [`Error::NoConnection`] until [`Messages::close_session_with_user`], unless
//! they carry [`SendFlags::AUTO_RESTART_BROKEN_SESSION`], which starts a new session. A
//! [`MessagesEvent::SessionFailed`] reports the break. A peer's first message on a new
//! session comes with [`MessagesEvent::SessionRequest`]; nothing is received from it until
//! [`Messages::accept_session_with_user`] (or a send to it, which accepts too).

use super::config::{ConfigData, ConfigValue};
use super::sockets::Sockets;
use super::types::{ConnectionInfo, Message, QuickStatus, StatusEvents};
use super::{ConnectionHandle, ListenSocketHandle, PollGroupHandle};
use crate::proto::{ConnectionState, Error, SendFlags};
use bytes::Bytes;
use punchline_identity::Identity;
use rustc_hash::FxHashMap;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The virtual port Messages sessions use (the same on every peer).
pub const MESSAGES_VPORT: u16 = u16::MAX;
/// Sessions with nothing sent or received for this long are closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Messages held per channel for the application; beyond, new ones are dropped.
pub const MAX_QUEUED_PER_CHANNEL: usize = 10_000;
/// Session events held for the application; beyond, the oldest are dropped.
const MAX_EVENTS: usize = 1024;

/// What happened to a session.
#[derive(Debug, Clone, PartialEq)]
pub enum MessagesEvent {
    /// A peer sent to us for the first time: accept with
    /// [`accept_session_with_user`](Messages::accept_session_with_user) to receive from it.
    SessionRequest {
        /// Who.
        identity: Identity,
    },
    /// A session could not be made or broke; its connection's last info says why.
    SessionFailed {
        /// The connection's info at the end.
        info: ConnectionInfo,
    },
}

#[derive(Debug)]
struct Session {
    conn: ConnectionHandle,
    accepted: bool,
    /// Broken: sends fail until the application closes the session.
    broken: bool,
    last_active: Instant,
    channels: BTreeSet<u32>,
}

#[derive(Debug)]
struct Inner {
    events: StatusEvents,
    listen: ListenSocketHandle,
    group: PollGroupHandle,
    /// By the peer's identity (which peers choose: a hash map with random keys).
    sessions: HashMap<Identity, Session>,
    by_conn: FxHashMap<ConnectionHandle, Identity>,
    inbox: HashMap<u32, VecDeque<Message>>,
    out_events: VecDeque<MessagesEvent>,
    idle_timeout: Duration,
}

/// The Messages interface over a [`Sockets`].
#[derive(Debug)]
pub struct Messages {
    sockets: Sockets,
    inner: Mutex<Inner>,
}

fn symmetric() -> [(ConfigValue, ConfigData); 2] {
    [
        (ConfigValue::SymmetricConnect, ConfigData::Int32(1)),
        (
            ConfigValue::LocalVirtualPort,
            ConfigData::Int32(i32::from(MESSAGES_VPORT)),
        ),
    ]
}

impl Messages {
    /// The Messages interface of `sockets` (its P2P signaling must be set, as for
    /// `connect_p2p`). One per `Sockets`: it listens on [`MESSAGES_VPORT`].
    pub fn new(sockets: &Sockets) -> Result<Messages, Error> {
        let events = sockets.status_events();
        let listen = sockets.create_listen_socket_p2p(MESSAGES_VPORT, &symmetric()[..1])?;
        let group = sockets.create_poll_group();
        Ok(Messages {
            sockets: sockets.clone(),
            inner: Mutex::new(Inner {
                events,
                listen,
                group,
                sessions: HashMap::new(),
                by_conn: FxHashMap::default(),
                inbox: HashMap::new(),
                out_events: VecDeque::new(),
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
            }),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions idle this long are closed (default [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn set_idle_timeout(&self, timeout: Duration) {
        self.inner().idle_timeout = timeout;
    }

    /// Sends `data` to `peer` on `channel`, starting a session if there is none (the
    /// message waits in it). Fails with `NoConnection` on a broken session, unless `flags`
    /// has `AUTO_RESTART_BROKEN_SESSION`.
    pub fn send_message_to_user(
        &self,
        peer: &Identity,
        data: &[u8],
        flags: SendFlags,
        channel: u32,
    ) -> Result<(), Error> {
        let mut inner = self.inner();
        self.pump(&mut inner);
        let restart = flags.0 & SendFlags::AUTO_RESTART_BROKEN_SESSION.0 != 0;
        if inner.sessions.get(peer).is_some_and(|s| s.broken) {
            if !restart {
                return Err(Error::NoConnection);
            }
            self.drop_session(&mut inner, peer);
        }
        if !inner.sessions.contains_key(peer) {
            let conn = self
                .sockets
                .connect_p2p(peer, MESSAGES_VPORT, &symmetric())?;
            self.add_session(&mut inner, peer, conn, true);
        }
        let session = inner.sessions.get_mut(peer).ok_or(Error::InvalidState)?;
        if !session.accepted {
            // Sending to a peer that asked accepts it.
            self.sockets.accept_connection(session.conn)?;
            session.accepted = true;
        }
        session.last_active = self.sockets.now();
        session.channels.insert(channel);
        let mut payload = Vec::with_capacity(4 + data.len());
        payload.extend_from_slice(&channel.to_be_bytes());
        payload.extend_from_slice(data);
        let flags = SendFlags(flags.0 & !SendFlags::AUTO_RESTART_BROKEN_SESSION.0);
        self.sockets
            .send_message_to_connection(session.conn, payload, flags)
            .map(|_| ())
    }

    /// Up to `max` messages received on `channel`, oldest first. Each carries its channel
    /// and the sender's identity.
    pub fn receive_messages_on_channel(&self, channel: u32, max: usize) -> Vec<Message> {
        let mut inner = self.inner();
        self.pump(&mut inner);
        let Some(q) = inner.inbox.get_mut(&channel) else {
            return Vec::new();
        };
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    /// Accepts `peer`'s session request. False when it has asked for none.
    pub fn accept_session_with_user(&self, peer: &Identity) -> bool {
        let mut inner = self.inner();
        self.pump(&mut inner);
        let Some(s) = inner.sessions.get_mut(peer) else {
            return false;
        };
        if s.accepted {
            return true;
        }
        if self.sockets.accept_connection(s.conn).is_err() {
            return false;
        }
        s.accepted = true;
        s.last_active = self.sockets.now();
        true
    }

    /// Closes the session with `peer` (a broken one too), dropping what it queued for us.
    /// False when there was none.
    pub fn close_session_with_user(&self, peer: &Identity) -> bool {
        let mut inner = self.inner();
        self.pump(&mut inner);
        self.drop_session(&mut inner, peer)
    }

    /// Done with `channel` to `peer`: its queued messages are dropped, and once no channel
    /// to the peer is open, the session closes. False when there was no session.
    pub fn close_channel_with_user(&self, peer: &Identity, channel: u32) -> bool {
        let mut inner = self.inner();
        self.pump(&mut inner);
        if let Some(q) = inner.inbox.get_mut(&channel) {
            q.retain(|m| &m.peer_identity != peer);
        }
        let Some(s) = inner.sessions.get_mut(peer) else {
            return false;
        };
        s.channels.remove(&channel);
        if s.channels.is_empty() {
            self.drop_session(&mut inner, peer);
        }
        true
    }

    /// The session's connection state, info and status; `None` without a session.
    pub fn get_session_connection_info(
        &self,
        peer: &Identity,
    ) -> Option<(ConnectionInfo, QuickStatus)> {
        let mut inner = self.inner();
        self.pump(&mut inner);
        let conn = inner.sessions.get(peer)?.conn;
        let info = self.sockets.get_connection_info(conn).ok()?;
        let status = self.sockets.get_quick_connection_status(conn).ok()?;
        Some((info, status))
    }

    /// The next session event.
    pub fn poll_event(&self) -> Option<MessagesEvent> {
        let mut inner = self.inner();
        self.pump(&mut inner);
        inner.out_events.pop_front()
    }

    fn add_session(&self, inner: &mut Inner, peer: &Identity, conn: ConnectionHandle, ours: bool) {
        let _ = self.sockets.set_connection_poll_group(conn, inner.group);
        inner.by_conn.insert(conn, peer.clone());
        inner.sessions.insert(
            peer.clone(),
            Session {
                conn,
                accepted: ours,
                broken: false,
                last_active: self.sockets.now(),
                channels: BTreeSet::new(),
            },
        );
    }

    fn drop_session(&self, inner: &mut Inner, peer: &Identity) -> bool {
        let Some(s) = inner.sessions.remove(peer) else {
            return false;
        };
        inner.by_conn.remove(&s.conn);
        self.sockets
            .close_connection(s.conn, 0, "session closed", true);
        for q in inner.inbox.values_mut() {
            q.retain(|m| &m.peer_identity != peer);
        }
        true
    }

    /// Queues `e` for [`poll_event`](Self::poll_event), and for the
    /// `Callback_MessagesSessionRequest` / `Callback_MessagesSessionFailed` callback if one
    /// is set (global scope; run by [`Sockets::run_callbacks`], it receives the
    /// `MessagesEvent`).
    fn push_event(&self, inner: &mut Inner, e: MessagesEvent) {
        let value = match e {
            MessagesEvent::SessionRequest { .. } => ConfigValue::CallbackMessagesSessionRequest,
            MessagesEvent::SessionFailed { .. } => ConfigValue::CallbackMessagesSessionFailed,
        };
        self.sockets.queue_callback(Box::new(e.clone()), value);
        if inner.out_events.len() >= MAX_EVENTS {
            inner.out_events.pop_front();
        }
        inner.out_events.push_back(e);
    }

    /// Takes in status changes and received messages; closes idle sessions.
    fn pump(&self, inner: &mut Inner) {
        while let Some(ev) = inner.events.try_recv() {
            let h = ev.connection;
            match ev.info.state {
                ConnectionState::Connecting
                    if ev.info.listen_socket == Some(inner.listen)
                        && !inner.by_conn.contains_key(&h) =>
                {
                    let peer = ev.info.identity_remote.clone();
                    if inner.sessions.contains_key(&peer) {
                        // The peer began a new session: it replaces ours.
                        self.drop_session(inner, &peer);
                    }
                    self.add_session(inner, &peer, h, false);
                    self.push_event(inner, MessagesEvent::SessionRequest { identity: peer });
                }
                ConnectionState::ClosedByPeer | ConnectionState::ProblemDetectedLocally => {
                    let Some(peer) = inner.by_conn.get(&h).cloned() else {
                        continue;
                    };
                    if let Some(s) = inner.sessions.get_mut(&peer) {
                        s.broken = true;
                    }
                    self.push_event(inner, MessagesEvent::SessionFailed { info: ev.info });
                }
                _ => {}
            }
        }
        loop {
            let got = self
                .sockets
                .receive_messages_on_poll_group(inner.group, 256)
                .unwrap_or_default();
            if got.is_empty() {
                break;
            }
            for mut m in got {
                let Some(peer) = inner.by_conn.get(&m.connection).cloned() else {
                    continue;
                };
                let Some(s) = inner.sessions.get_mut(&peer) else {
                    continue;
                };
                if m.payload.len() < 4 {
                    continue; // no channel: not from a Messages peer
                }
                let channel =
                    u32::from_be_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                s.last_active = self.sockets.now();
                s.channels.insert(channel);
                m.payload = Bytes::slice(&m.payload, 4..);
                m.channel = channel as i32;
                let q = inner.inbox.entry(channel).or_default();
                if q.len() < MAX_QUEUED_PER_CHANNEL {
                    q.push_back(m);
                }
            }
        }
        let now = self.sockets.now();
        let mut idle: Vec<(ConnectionHandle, Identity)> = inner
            .sessions
            .iter()
            .filter(|(_, s)| !s.broken && now.duration_since(s.last_active) >= inner.idle_timeout)
            .map(|(p, s)| (s.conn, p.clone()))
            .collect();
        // In the order the sessions were made, whatever the map's (a virtual world's run
        // is the same each time).
        idle.sort_unstable_by_key(|(conn, _)| *conn);
        for (_, peer) in idle {
            self.drop_session(inner, &peer);
        }
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for s in inner.sessions.values() {
            self.sockets
                .close_connection(s.conn, 0, "session closed", true);
        }
        self.sockets.close_listen_socket(inner.listen);
        self.sockets.destroy_poll_group(inner.group);
    }
}
