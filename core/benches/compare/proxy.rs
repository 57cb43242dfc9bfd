//! An impairing UDP relay for the benchmark: every compared peer goes through the same one, so
//! loss and delay are identical for all. One client per relay; it learns the client's address
//! from the first datagram.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Relays between a client and `server`, impaired by `imp`; `seed` makes the loss pattern
    /// the same for every peer measured.
    pub fn start(server: SocketAddr, imp: Impair, seed: u64) -> Proxy {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind relay");
        sock.set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || relay(sock, server, imp, seed, &s2));
        Proxy {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(sock: UdpSocket, server: SocketAddr, imp: Impair, seed: u64, stop: &AtomicBool) {
    let mut client: Option<SocketAddr> = None;
    let mut queue: VecDeque<(Instant, SocketAddr, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65_536];
    let mut x = seed | 1;
    let mut chance = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while queue.front().is_some_and(|(t, _, _)| *t <= now) {
            let (_, to, data) = queue.pop_front().expect("checked");
            let _ = sock.send_to(&data, to);
        }
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
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
        if chance() < imp.loss {
            continue;
        }
        if imp.delay.is_zero() && queue.is_empty() {
            let _ = sock.send_to(&buf[..n], to);
        } else {
            queue.push_back((Instant::now() + imp.delay, to, buf[..n].to_vec()));
        }
    }
}
