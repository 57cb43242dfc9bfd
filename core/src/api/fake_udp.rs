//! [`FakeUdpPort`]: a UDP-socket-like object addressed by fake IP and port (the reference
//! API's `ISteamNetworkingFakeUDPPort`), so that code written for IPv4 addresses can talk to
//! peers named by identity. Datagrams ride on [`Messages`] sessions: the channel is the
//! destination fake port, and each carries its source fake address in front
//! (`[source IPv4] [source port u16 big-endian] [data]`). The receiver believes the source
//! IP only while it does not resolve to someone other than the sender.
//!
//! Sending to a fake IP whose holder is not known yet fails with `InvalidState` and asks the
//! signaling server; try again shortly (as the reference API's queued resolution).

use super::fakeip::{get_ipv4_fake_ip_type, FakeIpType};
use super::messages::{Messages, MessagesEvent};
use super::Sockets;
use crate::proto::{Error, SendFlags};
use bytes::Bytes;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

/// Bytes in front of each datagram: the source fake IP and port.
const HEADER: usize = 6;

/// A datagram received on a [`FakeUdpPort`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeUdpMessage {
    /// The sender's fake IP (0.0.0.0 when not known) and fake port.
    pub from: SocketAddrV4,
    /// The data.
    pub payload: Bytes,
}

impl Sockets {
    /// A UDP-socket-like port at our fake IP's port number `fake_port_index` (the
    /// reference API's `CreateFakeUDPPort`): datagrams to and from fake IP addresses, over
    /// [`Messages`] sessions. Needs the fake IP allocated; it uses this `Sockets`' Messages
    /// interface (virtual port 65535), so create ports, not a `Messages`, when using both.
    pub fn create_fake_udp_port(&self, fake_port_index: usize) -> Result<FakeUdpPort, Error> {
        let (ip, port) = self.fake_port(fake_port_index)?;
        let messages = self.shared_extension(|| Messages::new(self).map(Arc::new))?;
        Ok(FakeUdpPort::new(self, messages, ip, port))
    }
}

/// A fake UDP port: send to and receive from fake IP addresses.
#[derive(Debug)]
pub struct FakeUdpPort {
    sockets: Sockets,
    messages: Arc<Messages>,
    ip: Ipv4Addr,
    port: u16,
}

impl FakeUdpPort {
    pub(crate) fn new(sockets: &Sockets, messages: Arc<Messages>, ip: Ipv4Addr, port: u16) -> Self {
        Self {
            sockets: sockets.clone(),
            messages,
            ip,
            port,
        }
    }

    /// Our fake address.
    pub fn local_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, self.port)
    }

    /// Sends `data` to `to`, a fake IP and port; a broken session to its holder starts
    /// again. `InvalidParam` for an address that is not a fake IP; `InvalidState` while its
    /// holder is not known yet (it has been asked for: try again).
    pub fn send_message_to_fake_ip(
        &self,
        to: SocketAddrV4,
        data: &[u8],
        flags: SendFlags,
    ) -> Result<(), Error> {
        if get_ipv4_fake_ip_type(*to.ip()) == FakeIpType::NotFake {
            return Err(Error::InvalidParam(format!("{to} is not a fake IP")));
        }
        let peer = self
            .sockets
            .get_real_identity_for_fake_ip(*to.ip())
            .ok_or(Error::InvalidState)?;
        let mut payload = Vec::with_capacity(HEADER + data.len());
        payload.extend_from_slice(&self.ip.octets());
        payload.extend_from_slice(&self.port.to_be_bytes());
        payload.extend_from_slice(data);
        let flags = SendFlags(flags.0 | SendFlags::AUTO_RESTART_BROKEN_SESSION.0);
        self.messages
            .send_message_to_user(&peer, &payload, flags, u32::from(to.port()))
    }

    /// Up to `max` datagrams that arrived for this port, oldest first. Sessions from peers
    /// are accepted as they come, as a UDP socket takes any sender.
    pub fn receive_messages(&self, max: usize) -> Vec<FakeUdpMessage> {
        while let Some(e) = self.messages.poll_event() {
            if let MessagesEvent::SessionRequest { identity } = e {
                self.messages.accept_session_with_user(&identity);
            }
        }
        self.messages
            .receive_messages_on_channel(u32::from(self.port), max)
            .into_iter()
            .filter(|m| m.payload.len() >= HEADER)
            .map(|m| {
                let p = &m.payload;
                let claimed = Ipv4Addr::new(p[0], p[1], p[2], p[3]);
                let port = u16::from_be_bytes([p[4], p[5]]);
                let fake = get_ipv4_fake_ip_type(claimed) != FakeIpType::NotFake;
                // A claim that resolves to someone else is a lie; an unresolved one is
                // harmless (replies go to whoever really holds it).
                let believed = fake
                    && self
                        .sockets
                        .get_real_identity_for_fake_ip(claimed)
                        .is_none_or(|holder| holder == m.peer_identity);
                let ip = if believed {
                    claimed
                } else {
                    self.sockets
                        .fake_ip_of(&m.peer_identity)
                        .unwrap_or(Ipv4Addr::UNSPECIFIED)
                };
                FakeUdpMessage {
                    from: SocketAddrV4::new(ip, port),
                    payload: m.payload.slice(HEADER..),
                }
            })
            .collect()
    }
}
