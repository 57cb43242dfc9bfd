//! Everything queued toward one client, bounded in bytes, with fair queueing of other
//! clients' signals.
//!
//! A client's outgoing frames wait in three queues that together hold at most the
//! mailbox's share of the per-client cap (the websocket's own write buffer has the rest):
//!
//! - **control**: the server's own frames (answers, errors, pings). They follow from the
//!   client's own messages, so a client that sends without reading fills them: past their
//!   share it is too slow and is disconnected.
//! - **signals**, one queue per sender, served round robin, each sender held to a per-pair
//!   rate. When they are full, the longest sender's newest signal is dropped (never a
//!   quieter sender's), so strangers flooding a client cannot crowd out its peers' signals.
//!   The rendezvous sends a lost signal again.
//! - **relay** datagrams: dropped past their share, as a full network queue would.

use crate::limit::Bucket;
use punchline_identity::Identity;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as Frame;

/// Senders with a queue (or a pair-rate budget) remembered per client.
const MAX_SENDERS: usize = 256;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Dropped: over the pair's rate, or the queues are full and this sender has the most
    /// queued.
    Dropped,
    /// The control queue overflowed: the client is not reading; disconnect it.
    Overflow,
}

#[derive(Debug)]
struct SenderQueue {
    frames: VecDeque<String>,
    bytes: usize,
    rate: Bucket,
}

#[derive(Debug, Default)]
struct Queues {
    control: VecDeque<Frame>,
    control_bytes: usize,
    senders: HashMap<Identity, SenderQueue>,
    /// Senders with queued signals, in round-robin order.
    ring: VecDeque<Identity>,
    signal_bytes: usize,
    relay: VecDeque<Vec<u8>>,
    relay_bytes: usize,
    /// Alternates the writer between signals and relay datagrams.
    relay_next: bool,
}

/// One client's outgoing queues.
#[derive(Debug)]
pub struct Mailbox {
    queues: Mutex<Queues>,
    ready: Notify,
    control_cap: usize,
    signal_cap: usize,
    relay_cap: usize,
    pair_rate: f64,
}

fn frame_len(f: &Frame) -> usize {
    f.len()
}

impl Mailbox {
    /// A mailbox holding at most `cap` bytes: an eighth for control frames, three eighths
    /// for signals, a quarter for relay datagrams (the websocket buffer has the last
    /// quarter). Each sender may queue `pair_rate` signals a second (burst: twice that).
    pub fn new(cap: usize, pair_rate: f64) -> Mailbox {
        Mailbox {
            queues: Mutex::new(Queues::default()),
            ready: Notify::new(),
            control_cap: cap / 8,
            signal_cap: cap * 3 / 8,
            relay_cap: cap / 4,
            pair_rate,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one of the server's own frames.
    pub fn push_control(&self, f: Frame) -> Pushed {
        let mut q = self.lock();
        let n = frame_len(&f);
        if q.control_bytes + n > self.control_cap {
            return Pushed::Overflow;
        }
        q.control_bytes += n;
        q.control.push_back(f);
        drop(q);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Queues a signal (its JSON text) from `from`.
    pub fn push_signal(&self, from: &Identity, text: String) -> Pushed {
        let mut guard = self.lock();
        let q = &mut *guard;
        let n = text.len();
        if !q.senders.contains_key(from) {
            if q.senders.len() >= MAX_SENDERS {
                q.senders.retain(|_, s| !s.frames.is_empty());
            }
            if q.senders.len() >= MAX_SENDERS {
                return Pushed::Dropped;
            }
            let rate = Bucket::new(self.pair_rate, 2.0 * self.pair_rate);
            q.senders.insert(
                from.clone(),
                SenderQueue {
                    frames: VecDeque::new(),
                    bytes: 0,
                    rate,
                },
            );
        }
        let Some(mine) = q.senders.get_mut(from) else {
            return Pushed::Dropped;
        };
        if n > self.signal_cap || !mine.rate.take() {
            return Pushed::Dropped;
        }
        let mine_after = mine.bytes + n;
        // Full: make room from the longest queue, unless that is the sender's own.
        while q.signal_bytes + n > self.signal_cap {
            let longest = q
                .senders
                .iter()
                .filter(|(id, _)| *id != from)
                .max_by_key(|(_, s)| s.bytes)
                .map(|(id, s)| (id.clone(), s.bytes));
            match longest {
                Some((id, bytes)) if bytes >= mine_after => {
                    let Some(s) = q.senders.get_mut(&id) else {
                        return Pushed::Dropped;
                    };
                    let Some(dropped) = s.frames.pop_back() else {
                        return Pushed::Dropped;
                    };
                    s.bytes -= dropped.len();
                    q.signal_bytes -= dropped.len();
                    if s.frames.is_empty() {
                        q.ring.retain(|r| *r != id);
                    }
                }
                _ => return Pushed::Dropped,
            }
        }
        let Some(mine) = q.senders.get_mut(from) else {
            return Pushed::Dropped;
        };
        if mine.frames.is_empty() {
            q.ring.push_back(from.clone());
        }
        mine.frames.push_back(text);
        mine.bytes += n;
        q.signal_bytes += n;
        drop(guard);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Queues a relay datagram's frame.
    pub fn push_relay(&self, frame: Vec<u8>) -> Pushed {
        let mut q = self.lock();
        if q.relay_bytes + frame.len() > self.relay_cap {
            return Pushed::Dropped;
        }
        q.relay_bytes += frame.len();
        q.relay.push_back(frame);
        drop(q);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// The next frame to write: control first, then signals (a round-robin turn) and relay
    /// datagrams alternately.
    pub fn pop(&self) -> Option<Frame> {
        let mut q = self.lock();
        let q = &mut *q;
        if let Some(f) = q.control.pop_front() {
            q.control_bytes -= frame_len(&f);
            return Some(f);
        }
        let relay_first = q.relay_next;
        q.relay_next = !q.relay_next;
        for relay in [relay_first, !relay_first] {
            if relay {
                if let Some(d) = q.relay.pop_front() {
                    q.relay_bytes -= d.len();
                    return Some(Frame::Binary(d.into()));
                }
            } else if let Some(id) = q.ring.pop_front() {
                let Some(s) = q.senders.get_mut(&id) else {
                    continue;
                };
                let Some(text) = s.frames.pop_front() else {
                    continue;
                };
                s.bytes -= text.len();
                q.signal_bytes -= text.len();
                if !s.frames.is_empty() {
                    q.ring.push_back(id);
                }
                return Some(Frame::text(text));
            }
        }
        None
    }

    /// Waits until something may have been queued.
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// Bytes queued now (for tests and metrics).
    pub fn queued(&self) -> usize {
        let q = self.lock();
        q.control_bytes + q.signal_bytes + q.relay_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Identity {
        format!("str:peer{n}").parse().unwrap()
    }

    fn drain(m: &Mailbox) -> Vec<String> {
        std::iter::from_fn(|| m.pop())
            .map(|f| f.into_text().unwrap().to_string())
            .collect()
    }

    #[test]
    fn senders_take_turns_and_a_flood_drops_only_the_flooders_signals() {
        // 3/8 of 64 KiB = 24 KiB of signals; strangers send 1 KiB signals, a friend 100 B.
        let m = Mailbox::new(64 * 1024, 1e9);
        let mut out = Vec::new();
        for round in 0..200 {
            for s in 1..=4 {
                m.push_signal(&id(s), format!("{s}:{round}:{}", "x".repeat(1000)));
            }
            if round % 4 == 0 {
                assert_eq!(
                    m.push_signal(&id(9), format!("9:{round}:{}", "f".repeat(100))),
                    Pushed::Queued,
                    "the friend's signal {round} is kept"
                );
            }
            assert!(m.queued() <= 24 * 1024);
            // The writer drains two frames for every four the strangers push.
            out.extend(std::iter::from_fn(|| m.pop()).take(2));
        }
        let out: Vec<String> = out
            .into_iter()
            .map(|f| f.into_text().unwrap().to_string())
            .chain(drain(&m))
            .collect();
        assert_eq!(out.iter().filter(|t| t.starts_with("9:")).count(), 50);
        assert_eq!(m.queued(), 0);
    }

    #[test]
    fn the_pair_rate_holds_each_sender_and_control_overflow_is_reported() {
        let m = Mailbox::new(64 * 1024, 10.0);
        let queued = (0..100)
            .filter(|i| m.push_signal(&id(1), format!("{i}")) == Pushed::Queued)
            .count();
        assert_eq!(queued, 20, "the burst: twice the rate");
        assert_eq!(m.push_signal(&id(2), "other".into()), Pushed::Queued);
        let big = Frame::text("y".repeat(3000));
        let overflow = (0..10)
            .map(|_| m.push_control(big.clone()))
            .position(|p| p == Pushed::Overflow);
        assert_eq!(overflow, Some(2), "8 KiB of control frames, then overflow");
        // Control first, then the rest; relay datagrams beyond their share are dropped.
        assert_eq!(m.push_relay(vec![0; 16 * 1024]), Pushed::Queued);
        assert_eq!(m.push_relay(vec![0; 1]), Pushed::Dropped);
        assert!(matches!(m.pop(), Some(Frame::Text(_))));
        assert!(matches!(m.pop(), Some(Frame::Text(_))));
        let rest: Vec<Frame> = std::iter::from_fn(|| m.pop()).collect();
        assert_eq!(rest.len(), 22);
        assert_eq!(m.queued(), 0);
    }
}
