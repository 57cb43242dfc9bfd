//! The data path that bypasses the `Sockets` state lock: what a thread needs to send on one
//! connection (its cell, its endpoint's socket and driver) and to read from it.
//!
//! Each connection's proto state sits in a cell of its own ([`ConnRef`]); a send or a read
//! on a connection locks that cell and nothing else, so threads working on different
//! connections do not wait for each other, nor for the service thread's work on other
//! connections. No lock is held while a datagram goes to the socket: datagrams are first
//! collected into a [`Batch`], then sent.

use super::*;
use crate::proto::ConnRef;
use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

/// An endpoint as its driver and the data path hold it: its protocol state under a lock of
/// its own (taken after the `Sockets` state lock, never before it), its socket and what
/// wakes its driver.
#[derive(Debug)]
pub(super) struct EpLink {
    /// The protocol endpoint.
    endpoint: Mutex<Endpoint>,
    /// The P2P endpoint: its driver services the transport paths when they say something
    /// or a connection goes.
    pub(super) p2p: std::sync::atomic::AtomicBool,
    /// Set by a transport path that queued a note (a signal, readiness, failure).
    pub(super) path_notes: Arc<std::sync::atomic::AtomicBool>,
    /// Stop the driver once no connection is left.
    pub(super) closing: std::sync::atomic::AtomicBool,
    /// Held by the one thread reading the socket and handling what it read (the driver, or
    /// a waiting thread): two at once could handle their batches out of order, and a peer
    /// would take the reordering for loss.
    reading: std::sync::atomic::AtomicBool,
    /// A thread found the claim held: the holder, on release, asks the driver to read.
    read_missed: std::sync::atomic::AtomicBool,
    /// The driver is to read the socket at its next turn, readiness or not.
    read_wanted: std::sync::atomic::AtomicBool,
    /// Wakes the endpoint's driver.
    pub(super) nudge: Arc<Notify>,
    /// The socket, shared with the driver, for sends made on the caller's thread (set once
    /// the driver starts).
    pub(super) io: OnceLock<Arc<Io>>,
    /// When the driver last planned to wake.
    pub(super) next_wake: Mutex<Option<Instant>>,
    /// Transport paths by stand-in address (P2P connections send through them).
    pub(super) paths: PathTable,
    /// The world of its `Sockets` (the clock, the fake network conditions).
    pub(super) world: Arc<World>,
}

impl EpLink {
    pub(super) fn new(endpoint: Endpoint, paths: PathTable, world: Arc<World>) -> Self {
        Self {
            endpoint: Mutex::new(endpoint),
            p2p: Default::default(),
            path_notes: Default::default(),
            closing: Default::default(),
            reading: Default::default(),
            read_missed: Default::default(),
            read_wanted: Default::default(),
            nudge: Arc::new(Notify::new()),
            io: OnceLock::new(),
            next_wake: Mutex::new(None),
            paths,
            world,
        }
    }

    /// Whether the layer above must look at `endpoint` (locked here): it has news, or, for
    /// the P2P endpoint, a connection went (its path is to close).
    pub(super) fn has_news(&self, endpoint: &mut Endpoint) -> bool {
        let removed = self.p2p.load(Ordering::Acquire) && endpoint.take_removed();
        endpoint.has_news() || removed
    }

    /// Takes the read claim on the socket: false while another thread holds it. Nobody waits
    /// for it: a thread that does not get it leaves the reading to the holder, which on
    /// release has the driver read again (what arrived after the holder's last read has no
    /// readiness left to wake anyone: the driver may have spent it finding the claim held).
    pub(super) fn claim_read(&self) -> bool {
        if !self.reading.swap(true, Ordering::AcqRel) {
            return true;
        }
        self.read_missed.store(true, Ordering::Release);
        // The holder may have let go before it could see the flag: try once more.
        !self.reading.swap(true, Ordering::AcqRel)
    }

    /// Gives the read claim back; if another thread found it held meanwhile, the driver is
    /// woken to read.
    pub(super) fn release_read(&self) {
        self.reading.store(false, Ordering::Release);
        if self.read_missed.swap(false, Ordering::AcqRel) {
            self.read_wanted.store(true, Ordering::Release);
            self.nudge.notify_one();
        }
    }

    /// Whether the driver is to read at this turn (the request is taken).
    pub(super) fn take_read_wanted(&self) -> bool {
        self.read_wanted.swap(false, Ordering::AcqRel)
    }

    /// Locks the protocol endpoint. The `Sockets` state lock, if the caller takes it, must
    /// be taken first.
    pub(super) fn endpoint(&self) -> MutexGuard<'_, Endpoint> {
        lock(&self.endpoint)
    }

    /// True when datagrams may go out from the calling thread: a socket is there and no
    /// fake network conditions apply (those run on the service thread).
    pub(super) fn sends_direct(&self) -> bool {
        self.io.get().is_some() && self.world.fake().is_clean()
    }

    /// Sends a batch from the calling thread (no lock held). False when a datagram did not
    /// go (the socket buffer was full): it is lost like one dropped on the way, and the
    /// protocol recovers it.
    pub(super) fn send(&self, batch: &Batch) -> bool {
        let Some(io) = self.io.get() else {
            return batch.is_empty();
        };
        let mut sent_all = true;
        for (to, data) in batch.iter() {
            if is_path_addr(&to) {
                let path = self
                    .paths
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&to)
                    .cloned();
                if let Some(p) = path {
                    p.send(data);
                }
            } else {
                sent_all &= io.try_send_now(data, to).is_ok();
            }
        }
        sent_all
    }

    /// Wakes the driver when `deadline` (a connection's or the endpoint's next timer) falls
    /// before the driver's planned wake-up, or when a send failed.
    pub(super) fn wake_if_needed(&self, deadline: Option<Instant>, sent_all: bool) {
        let planned = *lock(&self.next_wake);
        let needed = match (deadline, planned) {
            (Some(t), Some(planned)) => t < planned,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if needed || !sent_all {
            self.nudge.notify_one();
        }
    }
}

/// Datagrams collected under a lock, to send once it is released.
#[derive(Debug, Default)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    items: Vec<(SocketAddr, usize)>,
}

impl Batch {
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends datagrams while `next` writes one at the end of the buffer and says where
    /// it goes (its length is what it appended).
    pub(super) fn fill(&mut self, mut next: impl FnMut(&mut Vec<u8>) -> Option<SocketAddr>) {
        loop {
            let start = self.bytes.len();
            let Some(to) = next(&mut self.bytes) else {
                self.bytes.truncate(start);
                return;
            };
            self.items.push((to, self.bytes.len() - start));
        }
    }

    fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        let mut at = 0;
        self.items.iter().map(move |&(to, len)| {
            let d = &self.bytes[at..at + len];
            at += len;
            (to, d)
        })
    }
}

thread_local! {
    /// The calling thread's batch (reused: no allocation per send).
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
}

/// Runs `f` with this thread's empty batch.
pub(super) fn with_batch<R>(f: impl FnOnce(&mut Batch) -> R) -> R {
    BATCH.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => {
            b.clear();
            f(&mut b)
        }
        // Re-entered (a callback inside a send): a batch of its own.
        Err(_) => f(&mut Batch::default()),
    })
}

/// A connection as the data path holds it.
#[derive(Debug)]
pub(super) struct HotConn {
    pub(super) conn: ConnRef,
    pub(super) link: Arc<EpLink>,
    /// The application's value for the connection (`ConnectionUserData`).
    pub(super) user_data: AtomicI64,
}

/// Connections by handle, for the data path (read-mostly: written as connections come and
/// go).
pub(super) type HotTable = Arc<RwLock<FxHashMap<ConnectionHandle, Arc<HotConn>>>>;

impl HotConn {
    pub(super) fn user_data(&self) -> i64 {
        self.user_data.load(Ordering::Relaxed)
    }

    pub(super) fn set_user_data(&self, v: i64) {
        self.user_data.store(v, Ordering::Relaxed);
    }

    /// Queues a message and, for an urgent one, sends what is ready from this thread.
    pub(super) fn send(
        &self,
        h: ConnectionHandle,
        data: Bytes,
        flags: SendFlags,
        lane: u16,
    ) -> Result<u64, Error> {
        let mut out = Err(Error::NoConnection);
        self.send_all(h, std::iter::once((data, flags, lane)), |r| out = r);
        out
    }

    /// Queues messages under one lock of the connection (so the scheduler sees them all
    /// before any goes), one result each to `out`, in order; when any is urgent, sends what is
    /// ready from this thread.
    pub(super) fn send_all(
        &self,
        h: ConnectionHandle,
        msgs: impl IntoIterator<Item = (Bytes, SendFlags, u16)>,
        mut out: impl FnMut(Result<u64, Error>),
    ) {
        let now = self.link.world.clock.now();
        let Some(mut c) = self.conn.lock() else {
            msgs.into_iter().for_each(|_| out(Err(Error::NoConnection)));
            return;
        };
        let mut urgent = false;
        for (data, flags, lane) in msgs {
            let len = data.len();
            let r = c.send_message_on_lane(now, data, flags, lane);
            if let Ok(n) = r {
                urgent |= flags.contains(SendFlags::NO_NAGLE)
                    || flags.contains(SendFlags::USE_CURRENT_THREAD);
                crate::debug::emit(DebugOutputType::Debug, Some(Subsystem::Message), || {
                    format!(
                        "#{}: message {n} queued on lane {lane}, {len} bytes, {flags:?}",
                        h.0
                    )
                });
            }
            out(r);
        }
        if urgent && self.link.sends_direct() {
            with_batch(|batch| {
                batch.fill(|buf| c.poll_transmit(now, buf).then(|| c.remote_addr()));
                let deadline = c.poll_timeout();
                drop(c);
                let sent_all = self.link.send(batch);
                self.link.wake_if_needed(deadline, sent_all);
            });
        } else {
            drop(c);
            self.link.nudge.notify_one();
        }
    }

    /// When the next message waiting on the connection arrived.
    pub(super) fn peek_time(&self) -> Option<Instant> {
        self.conn.read()?.peek_received().map(|m| m.received_at)
    }

    /// Takes up to `max` received messages into `out`; how many were taken.
    pub(super) fn receive(&self, h: ConnectionHandle, max: usize, out: &mut Vec<Message>) -> usize {
        let before = out.len();
        self.receive_until(h, max, None, out);
        out.len() - before
    }

    /// Takes received messages into `out` while fewer than `max` are taken and the next one
    /// arrived no later than `until` (any time with `None`), under one lock. Returns when the
    /// next message left arrived, if one is left.
    pub(super) fn receive_until(
        &self,
        h: ConnectionHandle,
        max: usize,
        until: Option<Instant>,
        out: &mut Vec<Message>,
    ) -> Option<Instant> {
        let mut c = self.conn.lock()?;
        let mut taken = 0;
        let next = loop {
            let next = c.peek_received().map(|m| m.received_at);
            if taken == max || next.is_none() || until.is_some_and(|u| next > Some(u)) {
                break next;
            }
            let Some(m) = c.receive() else {
                break None;
            };
            taken += 1;
            out.push(Message {
                payload: m.payload,
                connection: h,
                message_number: m.msg_num,
                flags: if m.reliable {
                    SendFlags::RELIABLE
                } else {
                    SendFlags::UNRELIABLE
                },
                channel: 0,
                user_data: self.user_data(),
                peer_identity: c
                    .peer_identity()
                    .cloned()
                    .unwrap_or_else(|| Identity::ip(c.remote_addr())),
                received_at: m.received_at,
            });
        };
        drop(c);
        next
    }
}
