//! A chat server and client over IP, on the `Sockets` API: reliable messages, a poll group
//! for the server's clients, `/nick` and `/quit`; and ([`local`]) what the one-process P2P
//! examples share.

pub mod local;

use punchline::api::{ConnectionStatusChanged, StatusEvents};
use punchline::{
    ConnectionHandle, ConnectionState, Error, ListenSocketHandle, PollGroupHandle, SendFlags,
    Sockets,
};
use std::collections::HashMap;
use std::net::SocketAddr;

/// A chat room: every line a client sends goes to every client.
#[derive(Debug)]
pub struct ChatServer {
    sockets: Sockets,
    listen: ListenSocketHandle,
    group: PollGroupHandle,
    events: StatusEvents,
    nicks: HashMap<ConnectionHandle, String>,
}

impl ChatServer {
    /// Listens on `addr` (port 0 picks a free port).
    pub fn start(addr: SocketAddr) -> Result<Self, Error> {
        let sockets = Sockets::new().map_err(|e| Error::InvalidParam(e.to_string()))?;
        let events = sockets.status_events();
        let listen = sockets.create_listen_socket_ip(addr, &[])?;
        let group = sockets.create_poll_group();
        Ok(Self {
            sockets,
            listen,
            group,
            events,
            nicks: HashMap::new(),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        // The listen socket exists for as long as the server does.
        self.sockets
            .get_listen_socket_address(self.listen)
            .expect("listen socket is open")
    }

    /// Handles connection changes and chat lines; returns what happened, as log lines.
    pub fn poll(&mut self) -> Vec<String> {
        let mut log = Vec::new();
        while let Some(ev) = self.events.try_recv() {
            self.on_status(ev, &mut log);
        }
        loop {
            let Ok(msgs) = self.sockets.receive_messages_on_poll_group(self.group, 64) else {
                break;
            };
            if msgs.is_empty() {
                break;
            }
            for m in msgs {
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                self.on_line(m.connection, text.trim_end(), &mut log);
            }
        }
        log
    }

    fn on_status(&mut self, ev: ConnectionStatusChanged, log: &mut Vec<String>) {
        let h = ev.connection;
        match ev.info.state {
            ConnectionState::Connecting if ev.info.listen_socket.is_some() => {
                if let Err(e) = self.sockets.accept_connection(h) {
                    log.push(format!(
                        "* could not accept {}: {e}",
                        ev.info.address_remote
                    ));
                    return;
                }
                let _ = self.sockets.set_connection_poll_group(h, self.group);
                let nick = format!("guest{}", h.0);
                log.push(format!(
                    "* {nick} connected from {}",
                    ev.info.address_remote
                ));
                self.nicks.insert(h, nick);
            }
            ConnectionState::ClosedByPeer | ConnectionState::ProblemDetectedLocally => {
                let nick = self.nicks.remove(&h).unwrap_or_default();
                self.sockets.close_connection(h, 0, "goodbye", false);
                let line = format!("* {nick} left ({})", ev.info.end_debug);
                self.broadcast(&line);
                log.push(line);
            }
            _ => {}
        }
    }

    fn on_line(&mut self, from: ConnectionHandle, text: &str, log: &mut Vec<String>) {
        let nick = self.nicks.get(&from).cloned().unwrap_or_default();
        if let Some(new) = text.strip_prefix("/nick ") {
            let new = new.trim().to_string();
            let line = format!("* {nick} is now {new}");
            self.nicks.insert(from, new);
            self.broadcast(&line);
            log.push(line);
        } else if text == "/quit" {
            self.nicks.remove(&from);
            self.sockets.close_connection(from, 0, "quit", true);
            let line = format!("* {nick} quit");
            self.broadcast(&line);
            log.push(line);
        } else {
            let line = format!("<{nick}> {text}");
            self.broadcast(&line);
            log.push(line);
        }
    }

    fn broadcast(&self, line: &str) {
        for h in self.nicks.keys() {
            let _ = self.sockets.send_message_to_connection(
                *h,
                line.as_bytes().to_vec(),
                SendFlags::RELIABLE,
            );
        }
    }
}

/// What a chat client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Connected to the server.
    Connected,
    /// A line from the room.
    Line(String),
    /// The connection ended, with the reason text.
    Closed(String),
}

/// One chat participant.
#[derive(Debug)]
pub struct ChatClient {
    sockets: Sockets,
    conn: ConnectionHandle,
    events: StatusEvents,
}

impl ChatClient {
    /// Connects to a chat server.
    pub fn connect(server: SocketAddr) -> Result<Self, Error> {
        let sockets = Sockets::new().map_err(|e| Error::InvalidParam(e.to_string()))?;
        let events = sockets.status_events();
        let conn = sockets.connect_by_ip_address(server, &[])?;
        Ok(Self {
            sockets,
            conn,
            events,
        })
    }

    /// Sends a line (`/nick NAME` and `/quit` are commands). Lines typed while connecting are
    /// queued and go out once connected.
    pub fn send_line(&self, line: &str) -> Result<(), Error> {
        self.sockets
            .send_message_to_connection(self.conn, line.as_bytes().to_vec(), SendFlags::RELIABLE)
            .map(|_| ())
    }

    /// What happened since the last poll.
    pub fn poll(&mut self) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        if let Ok(msgs) = self.sockets.receive_messages_on_connection(self.conn, 64) {
            for m in msgs {
                out.push(ClientEvent::Line(
                    String::from_utf8_lossy(&m.payload).into_owned(),
                ));
            }
        }
        while let Some(ev) = self.events.try_recv() {
            match ev.info.state {
                ConnectionState::Connected => out.push(ClientEvent::Connected),
                ConnectionState::ClosedByPeer | ConnectionState::ProblemDetectedLocally => {
                    // Lines that arrived before the close are still readable.
                    if let Ok(msgs) = self
                        .sockets
                        .receive_messages_on_connection(self.conn, usize::MAX)
                    {
                        for m in msgs {
                            out.push(ClientEvent::Line(
                                String::from_utf8_lossy(&m.payload).into_owned(),
                            ));
                        }
                    }
                    self.sockets.close_connection(self.conn, 0, "", false);
                    out.push(ClientEvent::Closed(ev.info.end_debug));
                }
                _ => {}
            }
        }
        out
    }
}
