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

/// A running relay; stops when dropped.
pub struct Proxy {
    /// Where clients send (instead of the server's address).
    pub addr: SocketAddr,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Relays between a client and `server`, impaired by `imp`; `seed` makes the loss pattern
    /// the same for every peer measured.
    pub fn start(server: SocketAddr, imp: Impair, seed: u64) -> Proxy {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind relay");
        sock.set_nonblocking(true).expect("nonblocking");
        let addr = sock.local_addr().expect("addr");
        let stop = Arc::new(Notify::new());
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let sock = UdpSocket::from_std(sock).expect("tokio socket");
                tokio::select! {
                    () = relay(sock, server, imp, seed) => {}
                    () = s2.notified() => {}
                }
            });
        });
        Proxy {
            addr,
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

async fn relay(sock: UdpSocket, server: SocketAddr, imp: Impair, seed: u64) {
    let mut client: Option<SocketAddr> = None;
    // One conditioner for both directions, like one lossy path shared by data and acks.
    let mut net: Conditioner<(SocketAddr, Vec<u8>)> = Conditioner::new(
        Impairment {
            loss_pct: (imp.loss * 100.0) as f32,
            lag: imp.delay,
            ..Impairment::NONE
        },
        seed,
    );
    let mut buf = vec![0u8; 65_536];
    loop {
        while let Some((to, data)) = net.pop_due(Instant::now().into_std()) {
            let _ = sock.send_to(&data, to).await;
        }
        let next = net.next_due().map(Instant::from_std);
        let got = tokio::select! {
            r = sock.recv_from(&mut buf) => r.ok(),
            () = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        let Some((n, from)) = got else {
            continue;
        };
        let to = if from == server {
            match client {
                Some(c) => c,
                None => continue,
            }
        } else {
            client = Some(from);
            server
        };
        net.push(Instant::now().into_std(), (to, buf[..n].to_vec()), n);
    }
}
