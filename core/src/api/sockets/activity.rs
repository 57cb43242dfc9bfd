//! Waking threads that wait for activity ([`Sockets::wait_for_activity`]).
//!
//! A waiting thread sleeps in `poll(2)` on the endpoints' UDP sockets and on a wake-up socket
//! of its own. A datagram that arrives wakes it at once: it reads and handles the datagram on
//! its own thread (as the service thread would), so a reply costs one thread wake-up, not two.
//! Activity the service thread handles (and in-process pipes, which have no socket) wakes it
//! through the wake-up socket, which is written only while some thread waits.
//!
//! No wake-up is lost: each thread remembers the activity count when its last wait ended, and
//! a wait returns at once if there has been activity since, so a reply handled between a
//! thread's last look at its messages and its next wait does not go unnoticed.

use super::*;
use std::cell::RefCell;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

/// A socket a waiting thread may read: its endpoint (by id and as the data path holds it) and
/// the socket.
type Watched = (EpId, Arc<Io>, Arc<link::EpLink>);

/// The read claim on an endpoint's socket, given back when dropped (a panic included).
struct ReadClaim<'a>(&'a link::EpLink);

impl<'a> ReadClaim<'a> {
    fn take(link: &'a link::EpLink) -> Option<Self> {
        link.claim_read().then_some(Self(link))
    }
}

impl Drop for ReadClaim<'_> {
    fn drop(&mut self) {
        self.0.release_read();
    }
}

/// Most batches a waiting thread reads from one socket before it hands the rest to the driver.
const MAX_BATCHES: usize = 16;

#[derive(Debug)]
pub(super) struct Activity {
    /// Counts activity: batches of datagrams handled, callbacks queued.
    epoch: AtomicU64,
    /// Threads inside `poll`.
    waiters: AtomicUsize,
    /// Readable while a wake-up is pending: written by `notify` while a thread waits, drained
    /// by the last waiter to leave.
    wake_rx: UnixDatagram,
    wake_tx: UnixDatagram,
    /// The endpoints' sockets.
    sockets: Mutex<Vec<Watched>>,
    /// Receive buffers, taken by a thread for one read (so no lock is held in a syscall).
    inboxes: Mutex<Vec<Inbox>>,
    /// Endpoints whose sockets a waiting thread left datagrams in (more than it would read
    /// at once), for their drivers to read: a driver that left reading to a waiting thread
    /// is not woken again by those datagrams.
    read_requests: Mutex<Vec<EpId>>,
    any_requests: std::sync::atomic::AtomicBool,
    /// A virtual world's wake-up for the thread running it (notified with every activity).
    world_wake: Option<Arc<Notify>>,
}

thread_local! {
    /// Per `Activity` (by address), the count this thread saw when its last wait ended.
    static SEEN: RefCell<Vec<(usize, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Most `Activity`s a thread remembers; one it forgot waits from the current count.
const SEEN_MAX: usize = 8;

impl Activity {
    pub(super) fn new(world_wake: Option<Arc<Notify>>) -> std::io::Result<Self> {
        let (wake_rx, wake_tx) = UnixDatagram::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        Ok(Self {
            epoch: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            wake_rx,
            wake_tx,
            sockets: Mutex::new(Vec::new()),
            inboxes: Mutex::new(Vec::new()),
            read_requests: Mutex::new(Vec::new()),
            any_requests: std::sync::atomic::AtomicBool::new(false),
            world_wake,
        })
    }

    /// Records activity and wakes the threads waiting for it.
    pub(super) fn notify(&self) {
        self.epoch.fetch_add(1, SeqCst);
        // A thread that registers after this load sees the new count before it sleeps.
        if self.waiters.load(SeqCst) > 0 {
            // Full means a wake-up is pending already.
            let _ = self.wake_tx.send(&[1]);
        }
        if let Some(w) = &self.world_wake {
            w.notify_waiters();
        }
    }

    /// Lets waiting threads read endpoint `ep`'s socket (a UDP one) themselves.
    pub(super) fn watch(&self, ep: EpId, io: &Arc<Io>, link: &Arc<link::EpLink>) {
        if io.poll_fd().is_some() {
            lock(&self.sockets).push((ep, io.clone(), link.clone()));
        }
    }

    /// Stops watching endpoint `ep`'s socket.
    pub(super) fn unwatch(&self, ep: EpId) {
        lock(&self.sockets).retain(|(e, _, _)| *e != ep);
    }

    fn key(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Blocks until there has been activity since this thread's last wait ended, or until
    /// `timeout`. With `read_sockets`, datagrams that arrive are handled on this thread. In a
    /// virtual world (`rt` virtual) the thread runs the world meanwhile.
    pub(super) fn wait(
        &self,
        shared: &Shared,
        rt: &Runtime,
        timeout: Duration,
        read_sockets: bool,
    ) {
        let deadline = shared.world.clock.now() + timeout;
        let key = self.key();
        let seen = SEEN.with_borrow(|s| s.iter().find(|(k, _)| *k == key).map(|(_, n)| *n));
        let seen = seen.unwrap_or_else(|| self.epoch.load(SeqCst));
        match &self.world_wake {
            Some(wake) if rt.is_virtual() => {
                rt.wait_until(deadline, wake, timeout, || self.epoch.load(SeqCst) != seen);
            }
            _ => self.wait_real(shared, seen, deadline, read_sockets),
        }
        let now = self.epoch.load(SeqCst);
        SEEN.with_borrow_mut(|s| match s.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = now,
            None => {
                if s.len() == SEEN_MAX {
                    s.remove(0);
                }
                s.push((key, now));
            }
        });
    }

    /// [`wait`](Self::wait) in real time: until the count moves from `seen`.
    fn wait_real(&self, shared: &Shared, seen: u64, deadline: Instant, read_sockets: bool) {
        loop {
            let now = Instant::now();
            if self.epoch.load(SeqCst) != seen || now >= deadline {
                break;
            }
            let watched: Vec<Watched> = if read_sockets {
                lock(&self.sockets).clone()
            } else {
                Vec::new()
            };
            self.waiters.fetch_add(1, SeqCst);
            // While this thread reads the sockets, their drivers leave what arrives to it
            // and are not woken for it (else both would wake for each datagram), until it
            // has drained them below: what arrives after that wakes the drivers.
            let reading_here: Vec<_> = watched
                .iter()
                .filter_map(|(_, io, _)| io.read_here())
                .collect();
            if self.epoch.load(SeqCst) == seen {
                self.poll_once(&watched, deadline - now);
            }
            if self.waiters.fetch_sub(1, SeqCst) == 1 {
                // The last one out: no thread needs the pending wake-up any more.
                while self.wake_rx.recv(&mut [0u8; 16]).is_ok() {}
            }
            // Read every socket once now that this thread no longer counts as waiting: what
            // arrived while the drivers left it to this thread is here, and handling it
            // wakes only the other waiters.
            let mut handled = false;
            for w in &watched {
                handled |= self.drain_socket(shared, w);
            }
            drop(reading_here);
            if handled {
                break;
            }
        }
    }

    /// Sleeps in `poll` on the wake-up socket and the `watched` sockets until one is
    /// readable or `timeout` passes (or a signal interrupts it).
    fn poll_once(&self, watched: &[Watched], timeout: Duration) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = Vec::with_capacity(1 + watched.len());
        fds.push(PollFd::new(&self.wake_rx, PollFlags::IN));
        fds.extend(
            watched
                .iter()
                .filter_map(|(_, io, _)| io.poll_fd())
                .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
        );
        let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let _ = poll(&mut fds, Some(&timeout));
    }

    /// Reads and handles what waits on endpoint `ep`'s socket, on this thread. True when
    /// there was something (the service thread may have read it first).
    pub(super) fn read_socket(
        &self,
        shared: &Shared,
        ep: EpId,
        io: &Io,
        link: &link::EpLink,
    ) -> bool {
        // The driver is reading it (this thread may poll again at once, and does until the
        // driver's batch is handled: that raises the activity count it waits on).
        let Some(_claim) = ReadClaim::take(link) else {
            return false;
        };
        let mut inbox = lock(&self.inboxes).pop().unwrap_or_else(|| Inbox::new(4));
        let got = io.try_recv_batch(&mut inbox);
        if got {
            shared.handle_datagrams(ep, link, shared.world.clock.now(), &inbox, true);
        }
        lock(&self.inboxes).push(inbox);
        got
    }

    /// Reads what waits on a watched socket, up to [`MAX_BATCHES`] batches; the driver is
    /// asked to read the rest. True when there was something.
    fn drain_socket(&self, shared: &Shared, (ep, io, link): &Watched) -> bool {
        let mut batches = 0;
        while batches < MAX_BATCHES && self.read_socket(shared, *ep, io, link) {
            batches += 1;
        }
        if batches == MAX_BATCHES {
            let mut requests = lock(&self.read_requests);
            if !requests.contains(ep) {
                requests.push(*ep);
            }
            self.any_requests.store(true, SeqCst);
            drop(requests);
            link.nudge.notify_one();
        }
        batches > 0
    }

    /// Whether a waiting thread asked endpoint `ep`'s driver to read its socket (the
    /// request is taken).
    pub(super) fn take_read_request(&self, ep: EpId) -> bool {
        if !self.any_requests.load(SeqCst) {
            return false;
        }
        let mut requests = lock(&self.read_requests);
        let before = requests.len();
        requests.retain(|e| *e != ep);
        self.any_requests.store(!requests.is_empty(), SeqCst);
        requests.len() != before
    }

    /// Reads every watched socket; true when one had datagrams.
    pub(super) fn read_sockets(&self, shared: &Shared) -> bool {
        let watched: Vec<Watched> = lock(&self.sockets).clone();
        let mut got = false;
        for w in &watched {
            got |= self.drain_socket(shared, w);
        }
        got
    }
}
