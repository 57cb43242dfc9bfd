//! An impairing UDP relay for the benchmark: every compared peer goes through the same one, so
//! loss and delay are identical for all. One client per relay; it learns the client's address
//! from the first datagram.
//!
//! The relay runs on its own tokio runtime and waits for the next due datagram with a tokio
//! timer (epoll's millisecond timeout, backed by high-resolution timers). A blocking socket with
//! `SO_RCVTIMEO` would not do: that timeout counts in scheduler ticks (4 ms at HZ=250), which
//! made every delayed datagram up to a tick late and added about 10 ms to a 20 ms round trip.

use punchline::netcond::{Conditioner, Impairment};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Loss and one-way delay applied in both directions.
#[derive(Debug, Clone, Copy)]
pub struct Impair {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Added one-way delay.
    pub delay: Duration,
}

/// A bottleneck link in front of the impairment: `rate` bytes a second, and a drop-tail
/// queue of at most `queue` bytes waiting for it, as a router's.
#[derive(Debug, Clone, Copy)]
pub struct Bottleneck {
    /// Link rate, bytes per second.
    pub rate: u64,
    /// Bytes that may wait for the link; what arrives beyond is dropped.
    pub queue: u64,
}

/// A running relay; stops when dropped.
pub struct Proxy {
    /// Where clients send (instead of the server's address).
    pub addr: SocketAddr,
    /// With [`start_shared`](Self::start_shared), one address per server, in order.
    pub addrs: Vec<SocketAddr>,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Relays between a client and `server`, impaired by `imp`; `seed` makes the loss pattern
    /// the same for every peer measured.
    pub fn start(server: SocketAddr, imp: Impair, seed: u64) -> Proxy {
        Self::start_shared(&[server], imp, None, seed)
    }

    /// Relays between one client and each of `servers` (a relay address per server), all
    /// through the one impairment and `bottleneck`: flows that share a path.
    pub fn start_shared(
        servers: &[SocketAddr],
        imp: Impair,
        bottleneck: Option<Bottleneck>,
        seed: u64,
    ) -> Proxy {
        let socks: Vec<std::net::UdpSocket> = servers
            .iter()
            .map(|_| {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind relay");
                sock.set_nonblocking(true).expect("nonblocking");
                sock
            })
            .collect();
        let addrs: Vec<SocketAddr> = socks
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .collect();
        let servers = servers.to_vec();
        let stop = Arc::new(Notify::new());
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let socks: Vec<UdpSocket> = socks
                    .into_iter()
                    .map(|s| UdpSocket::from_std(s).expect("tokio socket"))
                    .collect();
                tokio::select! {
                    () = relay(socks, servers, imp, bottleneck, seed) => {}
                    () = s2.notified() => {}
                }
            });
        });
        Proxy {
            addr: addrs[0],
            addrs,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn relay(
    socks: Vec<UdpSocket>,
    servers: Vec<SocketAddr>,
    imp: Impair,
    bottleneck: Option<Bottleneck>,
    seed: u64,
) {
    let mut clients: Vec<Option<SocketAddr>> = vec![None; socks.len()];
    // One conditioner for both directions and every flow, like one lossy path shared by data
    // and acks. Items: (relay socket, destination, datagram).
    let mut net: Conditioner<(usize, SocketAddr, Vec<u8>)> = Conditioner::new(
        Impairment {
            loss_pct: (imp.loss * 100.0) as f32,
            lag: imp.delay,
            ..Impairment::NONE
        },
        seed,
    );
    // When the bottleneck link is free again.
    let mut link_free = std::time::Instant::now();
    let mut buf = vec![0u8; 65_536];
    loop {
        while let Some((i, to, data)) = net.pop_due(Instant::now().into_std()) {
            let _ = socks[i].send_to(&data, to).await;
        }
        let next = net.next_due().map(Instant::from_std);
        let got = tokio::select! {
            r = recv_any(&socks, &mut buf) => r,
            () = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        let Some((i, n, from)) = got else {
            continue;
        };
        let to = if from == servers[i] {
            match clients[i] {
                Some(c) => c,
                None => continue,
            }
        } else {
            clients[i] = Some(from);
            servers[i]
        };
        let now = Instant::now().into_std();
        // The bottleneck: a datagram leaves once those before it have; if more than the queue
        // holds wait ahead of it, it is dropped.
        let at = match bottleneck {
            None => now,
            Some(b) => {
                let start = link_free.max(now);
                let waiting = start.duration_since(now).as_secs_f64() * b.rate as f64;
                if waiting > b.queue as f64 {
                    continue;
                }
                link_free = start + Duration::from_secs_f64(n as f64 / b.rate as f64);
                link_free
            }
        };
        net.push(at, (i, to, buf[..n].to_vec()), n);
    }
}

/// The next datagram on any of `socks`: (socket index, length, sender).
async fn recv_any(socks: &[UdpSocket], buf: &mut [u8]) -> Option<(usize, usize, SocketAddr)> {
    std::future::poll_fn(|cx| {
        for (i, s) in socks.iter().enumerate() {
            let mut rb = tokio::io::ReadBuf::new(buf);
            match s.poll_recv_from(cx, &mut rb) {
                std::task::Poll::Ready(Ok(from)) => {
                    return std::task::Poll::Ready(Some((i, rb.filled().len(), from)))
                }
                std::task::Poll::Ready(Err(_)) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => {}
            }
        }
        std::task::Poll::Pending
    })
    .await
}
