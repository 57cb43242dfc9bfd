//! An in-memory network: sockets that exchange datagrams through buffers instead of the
//! kernel. A socket pair's two ends share a private one; every socket of a virtual world
//! is on the world's.
//!
//! The network is one host: a datagram to a port nobody bound at its exact address goes to
//! the socket bound to that port at the unspecified address of its family (or, for IPv4,
//! to a dual-stack IPv6 one), whatever the IP. So a socket bound to `0.0.0.0:0` is reached
//! at `127.0.0.1`, and at any interface address its owner advertises. A datagram for a port
//! nobody bound, or for a socket whose buffer is full, is dropped, as UDP drops it.

use super::Datagram;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Datagrams a socket's buffer holds before more are dropped (a UDP receive buffer of a
/// few MiB holds about as many full-sized ones).
const SOCKET_BUFFER: usize = 4096;

/// First port handed out for a bind to port 0.
const FIRST_EPHEMERAL: u16 = 40_000;

/// The sockets of one in-memory network, by bound address.
#[derive(Debug)]
pub struct MemoryNet {
    inner: Mutex<NetInner>,
}

#[derive(Debug)]
struct NetInner {
    bound: HashMap<SocketAddr, mpsc::Sender<Datagram>>,
    next_port: u16,
}

impl MemoryNet {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(NetInner {
                bound: HashMap::new(),
                next_port: FIRST_EPHEMERAL,
            }),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, NetInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds a socket at `addr` (port 0: a free one).
    pub fn bind(self: &Arc<Self>, mut addr: SocketAddr) -> io::Result<MemorySocket> {
        let mut inner = self.inner();
        if addr.port() == 0 {
            let mut tries = 0u32;
            loop {
                let port = inner.next_port;
                inner.next_port = inner.next_port.checked_add(1).unwrap_or(FIRST_EPHEMERAL);
                addr.set_port(port);
                if !inner.bound.contains_key(&addr) {
                    break;
                }
                tries += 1;
                if tries > u32::from(u16::MAX) {
                    return Err(io::ErrorKind::AddrInUse.into());
                }
            }
        } else if inner.bound.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is bound already"),
            ));
        }
        let (tx, rx) = mpsc::channel(SOCKET_BUFFER);
        inner.bound.insert(addr, tx);
        Ok(MemorySocket {
            local: addr,
            net: self.clone(),
            rx: tokio::sync::Mutex::new(rx),
        })
    }

    /// Delivers `data` from the socket bound at `from` to whoever is bound where `to`
    /// leads; dropped when nobody is, or when that socket's buffer is full.
    fn send(&self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let inner = self.inner();
        let unspecified = |v6: bool| -> SocketAddr {
            let ip: IpAddr = if v6 {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            SocketAddr::new(ip, to.port())
        };
        let target = inner
            .bound
            .get(&to)
            .or_else(|| inner.bound.get(&unspecified(to.is_ipv6())))
            .or_else(|| {
                // A dual-stack IPv6 socket takes IPv4 too.
                to.is_ipv4()
                    .then(|| inner.bound.get(&unspecified(true)))
                    .flatten()
            });
        let Some(target) = target else {
            return;
        };
        // The source a receiver sees: a socket bound to every address sends from the
        // loopback address of the destination's family.
        let source = if from.ip().is_unspecified() {
            let ip: IpAddr = if to.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(ip, from.port())
        } else {
            from
        };
        let _ = target.try_send((source, data.to_vec()));
    }
}

/// A socket on a [`MemoryNet`]; dropping it frees its address.
#[derive(Debug)]
pub struct MemorySocket {
    local: SocketAddr,
    net: Arc<MemoryNet>,
    pub(super) rx: tokio::sync::Mutex<mpsc::Receiver<Datagram>>,
}

impl MemorySocket {
    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one datagram (never blocks: a full buffer at the other end drops it).
    pub fn send(&self, to: SocketAddr, data: &[u8]) {
        self.net.send(self.local, to, data);
    }
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        self.net.inner().bound.remove(&self.local);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(s: &MemorySocket) -> Option<Datagram> {
        s.rx.try_lock().unwrap().try_recv().ok()
    }

    #[test]
    fn unspecified_binds_take_any_ip_and_reply_from_loopback() {
        let net = MemoryNet::new();
        let server = net.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = net.bind("0.0.0.0:0".parse().unwrap()).unwrap();
        assert_ne!(server.local_addr().port(), client.local_addr().port());
        client.send(server.local_addr(), b"hi");
        let (from, data) = recv(&server).expect("delivered");
        assert_eq!(data, b"hi");
        assert_eq!(from.ip(), IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_eq!(from.port(), client.local_addr().port());
        // Any IP reaches the unspecified bind; the reply finds the client.
        server.send(from, b"back");
        assert_eq!(recv(&client).expect("reply").1, b"back");
        let other: SocketAddr = SocketAddr::new([10, 1, 2, 3].into(), from.port());
        server.send(other, b"again");
        assert_eq!(recv(&client).expect("any ip").1, b"again");
    }

    #[test]
    fn nobody_bound_drops_and_a_closed_socket_frees_its_address() {
        let net = MemoryNet::new();
        let a = net.bind("127.0.0.1:5000".parse().unwrap()).unwrap();
        assert_eq!(
            net.bind("127.0.0.1:5000".parse().unwrap())
                .unwrap_err()
                .kind(),
            io::ErrorKind::AddrInUse
        );
        a.send("127.0.0.1:5001".parse().unwrap(), b"lost");
        drop(a);
        let b = net.bind("127.0.0.1:5000".parse().unwrap()).unwrap();
        assert!(recv(&b).is_none());
    }

    #[test]
    fn a_full_buffer_drops_what_does_not_fit() {
        let net = MemoryNet::new();
        let a = net.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = net.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        for _ in 0..SOCKET_BUFFER + 10 {
            a.send(b.local_addr(), b"x");
        }
        let mut n = 0;
        while recv(&b).is_some() {
            n += 1;
        }
        assert_eq!(n, SOCKET_BUFFER);
    }
}
