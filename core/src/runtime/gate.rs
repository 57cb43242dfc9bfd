//! How the driver learns that a UDP socket can be read or written, in a way that threads
//! reading the socket themselves can silence.
//!
//! A thread waiting for activity sleeps in `poll` on the socket and handles what arrives on
//! its own thread. Were the socket registered with the runtime's reactor as well, every
//! datagram would also wake the service thread, only for it to find the datagram taken; and
//! a registration for writability wakes it each time a sent datagram leaves the socket's
//! buffer. On a machine with few cores those wake-ups compete with the threads doing the
//! work. So on Linux the reactor watches two epoll sets instead of the socket: one holds the
//! socket for reading, except while some thread reads it itself; the other holds it for
//! writing only while a send waits for room.

use std::io;
use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How a UDP socket's driver waits to read or write it (see the module's text).
#[derive(Debug)]
pub struct Gate {
    /// What the reactor watches to learn that the socket may be readable: an epoll set that
    /// holds the socket (Linux), else a duplicate of the socket's descriptor.
    reads: AsyncFd<OwnedFd>,
    /// Likewise for writability; on Linux the set holds the socket only while a send waits.
    writes: AsyncFd<OwnedFd>,
    /// Threads reading the socket themselves.
    readers: AtomicUsize,
    /// Putting the socket back in the read set failed: it is left in from now on (Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    deaf: std::sync::atomic::AtomicBool,
}

/// A thread reads the socket itself while this lives ([`Gate::read_here`]).
#[derive(Debug)]
pub struct ReadingHere<'a> {
    gate: &'a Gate,
    socket: &'a UdpSocket,
}

/// Registers `fd` with the runtime's reactor (call inside its context).
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // Deprecated because a borrowed descriptor could be closed under it; an `OwnedFd`
    // stays open for as long as the `AsyncFd` that owns it, which is the whole contract.
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, interest)
}

#[cfg(target_os = "linux")]
mod sets {
    use rustix::event::epoll;
    use std::io;
    use std::net::UdpSocket;
    use std::os::fd::OwnedFd;

    pub(super) fn new() -> io::Result<OwnedFd> {
        Ok(epoll::create(epoll::CreateFlags::CLOEXEC)?)
    }

    /// Puts `socket` in `set` (for `out`put or input) or takes it out. Already in, or
    /// already out, is no error (a race the callers account for).
    pub(super) fn set_member(
        set: &OwnedFd,
        socket: &UdpSocket,
        member: bool,
        out: bool,
    ) -> io::Result<()> {
        let flags = if out {
            epoll::EventFlags::OUT
        } else {
            epoll::EventFlags::IN
        };
        let r = if member {
            epoll::add(set, socket, epoll::EventData::new_u64(0), flags)
        } else {
            epoll::delete(set, socket)
        };
        match r {
            Err(rustix::io::Errno::EXIST) if member => Ok(()),
            Err(rustix::io::Errno::NOENT) if !member => Ok(()),
            r => Ok(r?),
        }
    }
}

impl Gate {
    /// Call inside the runtime's context.
    pub(super) fn new(socket: &UdpSocket) -> io::Result<Self> {
        #[cfg(target_os = "linux")]
        let (reads, writes) = {
            let (reads, writes) = (sets::new()?, sets::new()?);
            sets::set_member(&reads, socket, true, false)?;
            (reads, writes)
        };
        #[cfg(not(target_os = "linux"))]
        let (reads, writes) = {
            use std::os::fd::AsFd;
            let fd = socket.as_fd();
            (fd.try_clone_to_owned()?, fd.try_clone_to_owned()?)
        };
        Ok(Self {
            reads: register(reads, Interest::READABLE)?,
            // An epoll set with members is readable, whatever they wait for.
            #[cfg(target_os = "linux")]
            writes: register(writes, Interest::READABLE)?,
            #[cfg(not(target_os = "linux"))]
            writes: register(writes, Interest::WRITABLE)?,
            readers: AtomicUsize::new(0),
            deaf: Default::default(),
        })
    }

    /// Waits until the socket may be readable (it may not be: the caller reads and, on
    /// `WouldBlock`, clears the readiness it was given).
    pub(super) async fn readable(
        &self,
    ) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>> {
        self.reads.readable().await
    }

    /// Runs `send` until it does not fail with `WouldBlock`, waiting for room in between.
    /// One caller at a time (the socket's driver).
    pub(super) async fn send<R>(
        &self,
        socket: &UdpSocket,
        mut send: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        let mut waiting: Option<WaitingForRoom<'_>> = None;
        loop {
            match send() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            // (Re-)joining looks at the socket as it is now: if there is room by now, the
            // set is ready at once (a member that stayed in would only tell of room freed
            // later).
            drop(waiting.take());
            waiting = Some(WaitingForRoom::join(self, socket)?);
            #[cfg(target_os = "linux")]
            let ready = self.writes.readable().await;
            #[cfg(not(target_os = "linux"))]
            let ready = self.writes.writable().await;
            ready?.clear_ready();
        }
    }

    /// True while some thread reads the socket itself ([`read_here`](Self::read_here)).
    pub(super) fn has_readers(&self) -> bool {
        self.readers.load(SeqCst) > 0
    }

    /// Silences the driver's wake-ups for `socket`'s datagrams until the guard drops: the
    /// calling thread waits on the socket and reads it itself.
    pub(super) fn read_here<'a>(&'a self, socket: &'a UdpSocket) -> ReadingHere<'a> {
        if self.readers.fetch_add(1, SeqCst) == 0 {
            self.watch_reads(socket, false);
        }
        ReadingHere { gate: self, socket }
    }

    /// Puts `socket` in the reactor's read set or takes it out. A race between the first
    /// reader arriving and the last one leaving can leave the socket in the set while a
    /// thread reads it (a spare wake-up, nothing worse), never out of it with no reader: a
    /// thread takes it out only while it counts as a reader, and the last reader to leave
    /// puts it back after its count is gone.
    ///
    /// Taking it out cannot fail for want of resources; putting it back could (the kernel
    /// out of memory, or the epoll watch limit reached by others meanwhile). Then the
    /// socket stays out and no thread is told of its datagrams, so the gate stops taking
    /// it out (`deaf`) and tries again with every reader that comes and goes.
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    fn watch_reads(&self, socket: &UdpSocket, on: bool) {
        #[cfg(target_os = "linux")]
        {
            if !on && self.deaf.load(SeqCst) {
                return;
            }
            match sets::set_member(self.reads.get_ref(), socket, on, false) {
                Ok(()) => {
                    if on {
                        self.deaf.store(false, SeqCst);
                    }
                }
                Err(e) => {
                    self.deaf.store(true, SeqCst);
                    tracing::error!(error = %e, "cannot watch a UDP socket: reading it only while a thread waits for activity");
                }
            }
        }
    }
}

impl Drop for ReadingHere<'_> {
    fn drop(&mut self) {
        let last = self.gate.readers.fetch_sub(1, SeqCst) == 1;
        if last || self.gate.deaf.load(SeqCst) {
            // Back in the set: if a datagram waits, adding it wakes the reactor at once.
            self.gate.watch_reads(self.socket, true);
        }
    }
}

/// The socket is in the write set while this lives (so a send dropped while it waits, at
/// shutdown, does not leave it there to wake the reactor for every datagram sent).
struct WaitingForRoom<'a> {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    gate: &'a Gate,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    socket: &'a UdpSocket,
}

impl<'a> WaitingForRoom<'a> {
    fn join(gate: &'a Gate, socket: &'a UdpSocket) -> io::Result<Self> {
        #[cfg(target_os = "linux")]
        sets::set_member(gate.writes.get_ref(), socket, true, true)?;
        Ok(Self { gate, socket })
    }
}

impl Drop for WaitingForRoom<'_> {
    fn drop(&mut self) {
        // Taking a member out needs no resources: it fails only if it was never in.
        #[cfg(target_os = "linux")]
        let _ = sets::set_member(self.gate.writes.get_ref(), self.socket, false, true);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether the gate reports the socket readable within `wait`.
    async fn woken(gate: &Gate, wait: Duration) -> bool {
        tokio::time::timeout(wait, gate.readable()).await.is_ok()
    }

    #[tokio::test]
    async fn a_thread_reading_here_silences_the_driver_until_it_leaves() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let gate = Gate::new(&socket).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();

        // Nobody reads here: a datagram wakes the driver.
        peer.send_to(b"one", to).unwrap();
        assert!(woken(&gate, Duration::from_secs(5)).await);
        socket.recv(&mut [0u8; 16]).unwrap();
        gate.readable().await.unwrap().clear_ready();

        // Two threads read here, one leaves: still silent, and the datagram waits.
        let first = gate.read_here(&socket);
        let second = gate.read_here(&socket);
        drop(first);
        peer.send_to(b"two", to).unwrap();
        assert!(!woken(&gate, Duration::from_millis(100)).await);

        // The last one leaves with the datagram unread: the driver is woken for it.
        drop(second);
        assert!(woken(&gate, Duration::from_secs(5)).await);
        let mut buf = [0u8; 16];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two");
    }

    #[tokio::test]
    async fn a_send_that_finds_the_buffer_full_waits_for_room() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        socket2::SockRef::from(&socket)
            .set_send_buffer_size(4096)
            .unwrap();
        let gate = Gate::new(&socket).unwrap();
        let to = "127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap();
        // Refused twice, then accepted: the gate waits in between and returns the result.
        let mut tries = 0;
        let r = gate
            .send(&socket, || {
                tries += 1;
                if tries < 3 {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    socket.send_to(b"x", to)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 1);
        assert_eq!(tries, 3);
        // The socket left the write set once the send went: nothing holds it ready.
        assert!(
            rustix::event::epoll::wait(
                gate.writes.get_ref(),
                rustix::buffer::spare_capacity(&mut Vec::with_capacity(4)),
                Some(&rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0
                })
            )
            .unwrap()
                == 0
        );
    }
}
