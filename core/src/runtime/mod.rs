//! The driver: a service thread running a small tokio runtime that owns the sockets and
//! timers, feeds datagrams and timeouts to the sans-IO endpoints, and sends what they produce.
//!
//! Each endpoint has one task: flush transmits -> wait for a datagram, the endpoint's next
//! timeout, or a nudge from an API call -> feed the endpoint -> repeat. The endpoint itself
//! lives in the shared state behind one mutex, which is never held across an `.await`.
//!
//! [`Runtime`] is the seam under the API: the clock, the tasks and the UDP sockets, either
//! real (a service thread of its own and the kernel's sockets) or virtual
//! ([`VirtualRuntime`]: virtual time and an in-memory network, run by waiting threads).

use crate::netcond::{Conditioner, Impairment};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

mod gate;
mod memory;
#[cfg(feature = "virtual-time")]
mod virtual_time;
pub use gate::{Gate, ReadingHere};
pub use memory::{MemoryNet, MemorySocket};
#[cfg(feature = "virtual-time")]
pub use virtual_time::VirtualRuntime;

/// A datagram with its peer's address.
pub type Datagram = (SocketAddr, Vec<u8>);

/// Where a `Sockets` gets its time, its tasks and its sockets.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// Real time, a service thread of its own, the kernel's UDP sockets.
    Service(Arc<Service>),
    /// A virtual world's time and network, shared with everything else in it.
    #[cfg(feature = "virtual-time")]
    Virtual(Arc<VirtualRuntime>),
}

impl Runtime {
    /// The runtime's handle, for spawning tasks.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        match self {
            Runtime::Service(s) => s.handle(),
            #[cfg(feature = "virtual-time")]
            Runtime::Virtual(v) => v.handle(),
        }
    }

    /// True for a virtual runtime.
    pub fn is_virtual(&self) -> bool {
        !matches!(self, Runtime::Service(_))
    }

    /// Its clock, to read the time without owning the runtime.
    pub fn clock(&self) -> Clock {
        match self {
            Runtime::Service(_) => Clock::Real,
            #[cfg(feature = "virtual-time")]
            Runtime::Virtual(v) => Clock::Virtual(v.handle().clone()),
        }
    }

    /// Binds a UDP socket (on the world's network, for a virtual runtime).
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<Io> {
        match self {
            Runtime::Service(s) => {
                let _in = s.handle().enter();
                Io::bind_udp(addr)
            }
            #[cfg(feature = "virtual-time")]
            Runtime::Virtual(v) => v.bind(addr),
        }
    }

    /// Waits until `ready` holds or `deadline` passes; returns the last `ready`. A real
    /// runtime checks every `poll` and sleeps between; a virtual one runs its world until
    /// then, checking again at each `wake`.
    pub fn wait_until(
        &self,
        deadline: Instant,
        #[cfg_attr(not(feature = "virtual-time"), allow(unused_variables))] wake: &Notify,
        poll: std::time::Duration,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        match self {
            Runtime::Service(_) => loop {
                if ready() {
                    return true;
                }
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                std::thread::sleep(poll.min(deadline - now));
            },
            #[cfg(feature = "virtual-time")]
            Runtime::Virtual(v) => v.run_until(deadline, wake, ready),
        }
    }
}

/// A runtime's clock, held apart from the runtime (reading it keeps nothing alive).
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system's monotonic clock.
    Real,
    /// A virtual runtime's clock.
    #[cfg(feature = "virtual-time")]
    Virtual(tokio::runtime::Handle),
}

impl Clock {
    /// The time now.
    pub fn now(&self) -> Instant {
        match self {
            Clock::Real => Instant::now(),
            #[cfg(feature = "virtual-time")]
            Clock::Virtual(h) => virtual_time::virtual_now(h),
        }
    }
}

/// The time on the clock of the runtime the calling task runs on.
fn task_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Simulated network trouble applied at the socket (the global `FakePacket*` and
/// `FakeRateLimit*` config values), for testing an application on a clean network. Each
/// direction runs through a [`Conditioner`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FakeConditions {
    /// What happens to outgoing datagrams.
    pub send: Impairment,
    /// What happens to incoming datagrams.
    pub recv: Impairment,
}

impl FakeConditions {
    /// No fake trouble.
    pub const NONE: Self = Self {
        send: Impairment::NONE,
        recv: Impairment::NONE,
    };

    /// True when datagrams pass untouched.
    pub fn is_clean(&self) -> bool {
        self.send.is_clean() && self.recv.is_clean()
    }
}

/// A datagram held by fake conditions: the peer's address and the bytes.
type HeldDatagram = Datagram;

/// The service thread and its runtime.
#[derive(Debug)]
pub struct Service {
    handle: tokio::runtime::Handle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Starts the service thread.
    pub fn start() -> io::Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("punchline-service".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = shutdown_rx.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("service thread exited during start"))??;
        Ok(Self {
            handle,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The runtime's handle, for spawning driver tasks.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            // Dropped from the service thread itself (a callback holding the last handle):
            // it exits on its own once `block_on` returns.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Where an endpoint's datagrams go: a UDP socket, or an in-process pipe to another endpoint.
#[derive(Debug)]
pub enum Io {
    /// A real UDP socket, with batched syscalls (sendmmsg/recvmmsg) and segmentation offload
    /// (GSO/GRO) where the kernel has them, through `quinn-udp`.
    Udp {
        /// The socket (non-blocking).
        socket: std::net::UdpSocket,
        /// How the driver learns that it can be read or written.
        gate: Gate,
        /// Its offload capabilities and state.
        state: quinn_udp::UdpSocketState,
    },
    /// A socket on an in-memory network: a socket pair without the kernel, or a virtual
    /// world's socket.
    Memory(MemorySocket),
}

impl Io {
    /// Binds a UDP socket; an unspecified IPv6 address binds dual-stack. Call inside the
    /// runtime's context.
    pub fn bind_udp(addr: SocketAddr) -> io::Result<Io> {
        use socket2::{Domain, Protocol, Socket, Type};
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        crate::transport::size_socket_buffers(socket2::SockRef::from(&socket));
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let socket: std::net::UdpSocket = socket.into();
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        Ok(Io::Udp {
            gate: Gate::new(&socket)?,
            socket,
            state,
        })
    }

    /// Two sockets at made-up addresses (which must differ) on a network of their own.
    pub fn pipe_pair(a: SocketAddr, b: SocketAddr) -> io::Result<(Io, Io)> {
        let net = MemoryNet::new();
        Ok((Io::Memory(net.bind(a)?), Io::Memory(net.bind(b)?)))
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Io::Udp { socket, .. } => socket.local_addr(),
            Io::Memory(m) => Ok(m.local_addr()),
        }
    }

    /// The socket's descriptor, for threads that wait on it with `poll` (none for a pipe).
    pub fn poll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match self {
            Io::Udp { socket, .. } => Some(socket.as_fd()),
            Io::Memory(_) => None,
        }
    }

    /// Tells the driver that the calling thread waits on the socket ([`poll_fd`]) and reads
    /// it itself until the guard drops: meanwhile datagrams do not wake the service thread.
    ///
    /// [`poll_fd`]: Self::poll_fd
    pub fn read_here(&self) -> Option<ReadingHere<'_>> {
        match self {
            Io::Udp { socket, gate, .. } => Some(gate.read_here(socket)),
            Io::Memory(_) => None,
        }
    }

    /// True while some thread waits on the socket ([`read_here`](Self::read_here)) and
    /// will read what arrives itself: the driver leaves it to that thread.
    fn reads_deferred(&self) -> bool {
        match self {
            Io::Udp { gate, .. } => gate.has_readers(),
            Io::Memory(_) => false,
        }
    }

    /// Sends one datagram at once from the calling thread, without waiting; fails with
    /// `WouldBlock` when the socket buffer is full.
    pub fn try_send_now(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        match self {
            Io::Udp { socket, .. } => {
                let to = match (socket.local_addr()?.is_ipv6(), to.ip()) {
                    (true, IpAddr::V4(v4)) => {
                        SocketAddr::new(v4.to_ipv6_mapped().into(), to.port())
                    }
                    _ => to,
                };
                socket.send_to(data, to).map(|_| ())
            }
            Io::Memory(m) => {
                m.send(to, data);
                Ok(())
            }
        }
    }

    /// How many equal-sized datagrams one send may carry (1 without GSO).
    fn max_segments(&self) -> usize {
        match self {
            Io::Udp { state, .. } => state.max_gso_segments().clamp(1, 64),
            Io::Memory(_) => 1,
        }
    }

    /// Sends `contents` to `to` as datagrams of `segment` bytes (the last may be shorter).
    async fn send_segments(
        &self,
        contents: &[u8],
        segment: usize,
        to: SocketAddr,
    ) -> io::Result<()> {
        match self {
            Io::Udp {
                socket,
                gate,
                state,
            } => {
                let to = match (socket.local_addr()?.is_ipv6(), to.ip()) {
                    (true, IpAddr::V4(v4)) => {
                        SocketAddr::new(v4.to_ipv6_mapped().into(), to.port())
                    }
                    _ => to,
                };
                let transmit = quinn_udp::Transmit {
                    destination: to,
                    ecn: None,
                    contents,
                    segment_size: (contents.len() > segment).then_some(segment),
                    src_ip: None,
                };
                gate.send(socket, || state.try_send(socket.into(), &transmit))
                    .await
            }
            Io::Memory(m) => {
                for chunk in contents.chunks(segment.max(1)) {
                    m.send(to, chunk);
                }
                Ok(())
            }
        }
    }

    /// Reads datagrams that are already waiting into `inbox`, without blocking and from any
    /// thread. Returns false when none were waiting (or for an in-process pipe).
    pub fn try_recv_batch(&self, inbox: &mut Inbox) -> bool {
        inbox.items.clear();
        let Io::Udp { socket, state, .. } = self else {
            return false;
        };
        let mut metas = [quinn_udp::RecvMeta::default(); INBOX_SLOTS];
        let mut iovs: Vec<IoSliceMut<'_>> =
            inbox.slots.iter_mut().map(|s| IoSliceMut::new(s)).collect();
        let n = match state.recv(socket.into(), &mut iovs, &mut metas) {
            Ok(n) => n,
            Err(_) => return false,
        };
        drop(iovs);
        inbox.take_metas(&metas[..n]);
        !inbox.items.is_empty()
    }

    /// Waits for datagrams and reads as many as are ready into `inbox` (at least one).
    /// While another thread waits on the socket to read it itself ([`read_here`](Self::read_here)), a
    /// datagram is left to that thread. A read happens only under the socket's read claim
    /// (`claim` takes it, `release` gives it back); on `Ok` the caller holds the claim until
    /// it has handled the batch, so that batches are handled in the order they were read.
    async fn recv_batch(
        &self,
        inbox: &mut Inbox,
        claim: impl Fn() -> bool,
        release: impl Fn(),
    ) -> io::Result<()> {
        inbox.items.clear();
        match self {
            Io::Udp {
                socket,
                gate,
                state,
            } => loop {
                let mut ready = gate.readable().await?;
                if self.reads_deferred() || !claim() {
                    // Forget this readiness (the next datagram brings another); the waiting
                    // thread sees the socket readable and reads it.
                    ready.clear_ready();
                    continue;
                }
                let mut metas = [quinn_udp::RecvMeta::default(); INBOX_SLOTS];
                let mut iovs: Vec<IoSliceMut<'_>> =
                    inbox.slots.iter_mut().map(|s| IoSliceMut::new(s)).collect();
                let r = state.recv(socket.into(), &mut iovs, &mut metas);
                drop(iovs);
                match r {
                    Ok(n) => {
                        inbox.take_metas(&metas[..n]);
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready.clear_ready();
                        release();
                        continue;
                    }
                    Err(e) => {
                        release();
                        return Err(e);
                    }
                }
            },
            Io::Memory(m) => {
                let mut rx = m.rx.lock().await;
                let Some(first) = rx.recv().await else {
                    return std::future::pending().await;
                };
                // Nobody else reads an in-memory socket: the claim is for the caller's release.
                claim();
                inbox.fill(first, || rx.try_recv().ok());
                Ok(())
            }
        }
    }
}

/// Maps an IPv4-mapped IPv6 address to plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Datagrams to send, packed into one reused buffer (no allocation per datagram once warm).
#[derive(Debug, Default)]
pub struct Outbox {
    data: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
}

impl Outbox {
    /// Lets `next` append datagrams straight into the buffer until it returns `None`; each
    /// call appends one and returns its destination and length.
    pub fn fill(&mut self, mut next: impl FnMut(&mut Vec<u8>) -> Option<(SocketAddr, usize)>) {
        while let Some((to, len)) = next(&mut self.data) {
            self.items.push((to, self.data.len() - len, len));
        }
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }
}

/// Datagrams received in one go, fed to the endpoint under one lock.
#[derive(Debug)]
pub struct Inbox {
    slots: Vec<Vec<u8>>,
    /// (sender, slot, offset, length): with GRO one slot holds several datagrams.
    items: Vec<(SocketAddr, usize, usize, usize)>,
}

/// Most bytes in one segmented send.
const MAX_GSO_BYTES: usize = 64_000;

/// Buffers read per receive call.
const INBOX_SLOTS: usize = 32;

impl Inbox {
    /// An inbox of `slots` 64 KiB buffers.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots).map(|_| vec![0u8; 65_536]).collect(),
            items: Vec::with_capacity(slots * 4),
        }
    }

    /// Copies `first` and then what `next` yields, while slots are free.
    fn fill(&mut self, first: Datagram, mut next: impl FnMut() -> Option<Datagram>) {
        self.items.clear();
        let mut item = Some(first);
        let mut slot = 0;
        while let Some((from, data)) = item.take() {
            let n = data.len().min(self.slots[slot].len());
            self.slots[slot][..n].copy_from_slice(&data[..n]);
            self.items.push((from, slot, 0, n));
            slot += 1;
            if slot < self.slots.len() {
                item = next();
            }
        }
    }

    /// Records what a receive call put in the slots, splitting coalesced (GRO) buffers.
    fn take_metas(&mut self, metas: &[quinn_udp::RecvMeta]) {
        for (slot, meta) in metas.iter().enumerate().take(self.slots.len()) {
            let from = canonical(meta.addr);
            if crate::proto::types::is_path_addr(&from) {
                // The discard prefix stands for a transport's path inside the library; on
                // a real socket such a source is spoofed (it would pass for path traffic).
                continue;
            }
            let stride = meta.stride.max(1);
            let mut start = 0;
            while start < meta.len {
                let len = stride.min(meta.len - start);
                self.items.push((from, slot, start, len));
                start += len;
            }
        }
    }

    /// The datagrams, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.items
            .iter()
            .map(|&(from, slot, start, len)| (from, &self.slots[slot][start..start + len]))
    }
}

/// What a driver task needs from its owner: feed the endpoint and collect what to send.
pub trait Driven: Send + Sync + 'static {
    /// Feeds received datagrams.
    fn on_datagrams(&self, now: Instant, inbox: &Inbox);
    /// Runs timers due by `now`, queues datagrams to send into `out`, and says when to
    /// wake next.
    fn poll(&self, now: Instant, out: &mut Outbox) -> Wake;
    /// The fake network conditions in force now.
    fn fake(&self) -> FakeConditions {
        FakeConditions::default()
    }
    /// Takes the socket's read claim: true when no other thread is reading it (and now none
    /// may until [`release_read`](Self::release_read)). Two threads that both read and
    /// handle datagrams could otherwise handle them out of order.
    fn claim_read(&self) -> bool {
        true
    }
    /// Gives the read claim back.
    fn release_read(&self) {}
    /// True when a waiting thread left datagrams in the socket for the driver to read
    /// (asked once: the request is taken).
    fn read_requested(&self) -> bool {
        false
    }
    /// Sends a datagram some other way than the socket (a transport's path), if `to` says
    /// so; true when it was taken (sent or dropped).
    fn divert(&self, _to: SocketAddr, _data: &[u8]) -> bool {
        false
    }
}

/// Datagrams from elsewhere than the socket (transport paths), with their stand-in
/// sender addresses.
pub type SideInput = mpsc::Receiver<Datagram>;

/// When a driver task should run next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// At this time, or earlier for a datagram or a nudge.
    At(Instant),
    /// Only for a datagram or a nudge.
    Idle,
    /// The endpoint is gone: stop.
    Stop,
}

/// Runs one endpoint until its owner says it is gone; datagrams come from `io` and, if
/// given, `side`. The fake network conditions draw their randomness from `seed`.
pub async fn drive<D: Driven>(
    owner: D,
    io: Arc<Io>,
    nudge: Arc<Notify>,
    mut side: Option<SideInput>,
    seed: u64,
) {
    let mut inbox = Inbox::new(if matches!(*io, Io::Udp { .. }) {
        INBOX_SLOTS
    } else {
        64
    });
    let mut out = Outbox::default();
    let mut fake_out: Conditioner<HeldDatagram> = Conditioner::new(Impairment::NONE, seed);
    let mut fake_in: Conditioner<HeldDatagram> =
        Conditioner::new(Impairment::NONE, seed.rotate_left(32) ^ 0x5bd1_e995);
    let mut delayed = Inbox::new(1);
    let max_segments = io.max_segments();
    let mut read_more = false;
    let mut after_side = false;
    loop {
        let fake = owner.fake();
        if fake.send != *fake_out.impairment() {
            fake_out.set(fake.send);
        }
        if fake.recv != *fake_in.impairment() {
            fake_in.set(fake.recv);
        }
        if read_more || owner.read_requested() {
            // Left behind by a waiting thread, with no readiness to tell of them.
            let mut batches = 0;
            while batches < INBOX_SLOTS {
                let Some(_claim) = Claimed::take(&owner) else {
                    break; // the holder has the driver read again when it lets go
                };
                if !io.try_recv_batch(&mut inbox) {
                    break;
                }
                receive(&owner, task_now(), &mut inbox, &mut fake_in, &mut delayed);
                batches += 1;
            }
            read_more = batches == INBOX_SLOTS;
            if read_more {
                nudge.notify_one(); // more yet: again after this turn
            }
        } else if after_side && !io.reads_deferred() {
            // The side input goes first in the (biased) select below: after it the socket
            // gets a turn too, so that neither starves the other.
            if let Some(_claim) = Claimed::take(&owner) {
                if io.try_recv_batch(&mut inbox) {
                    receive(&owner, task_now(), &mut inbox, &mut fake_in, &mut delayed);
                }
            }
        }
        after_side = false;
        let now = task_now();
        feed_due(&owner, &mut fake_in, &mut delayed, now);
        out.clear();
        let deadline = match owner.poll(now, &mut out) {
            Wake::Stop => return,
            Wake::At(t) => Some(t),
            Wake::Idle => None,
        };
        let faking = !fake.send.is_clean() || !fake_out.is_empty();
        let mut i = 0;
        while i < out.items.len() {
            let (to, start, len) = out.items[i];
            if crate::debug::tracing_packets() {
                crate::debug::trace_packet(true, to, &out.data[start..start + len]);
            }
            if !faking && owner.divert(to, &out.data[start..start + len]) {
                i += 1;
                continue;
            }
            if faking {
                i += 1;
                fake_out.push(now, (to, out.data[start..start + len].to_vec()), len);
                continue;
            }
            // A run of equal-sized datagrams to one peer goes out in one segmented send (at most
            // 64 KiB in all: the kernel refuses larger).
            let mut end = i + 1;
            while end < out.items.len()
                && end - i < max_segments
                && out.items[end - 1].2 == len
                && out.items[end].0 == to
                && out.items[end].2 <= len
                && out.items[end].1 + out.items[end].2 - start <= MAX_GSO_BYTES
            {
                end += 1;
            }
            let (_, last_start, last_len) = out.items[end - 1];
            let contents = &out.data[start..last_start + last_len];
            if let Err(e) = io.send_segments(contents, len, to).await {
                tracing::debug!(%to, error = %e, segments = end - i, "send failed");
                if end - i > 1 {
                    // Segmentation refused: send them one by one.
                    for &(to, start, len) in &out.items[i..end] {
                        let _ = io
                            .send_segments(&out.data[start..start + len], len, to)
                            .await;
                    }
                }
            }
            i = end;
        }
        while let Some((to, data)) = fake_out.pop_due(task_now()) {
            if owner.divert(to, &data) {
                continue;
            }
            if let Err(e) = io.send_segments(&data, data.len(), to).await {
                tracing::debug!(%to, error = %e, "send failed");
            }
        }
        let deadline = [deadline, fake_out.next_due(), fake_in.next_due()]
            .into_iter()
            .flatten()
            .min();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        // Biased: the order of the branches is fixed, so a virtual world runs the same way
        // every time (each turn handles timers and sends whatever branch woke it).
        tokio::select! {
            biased;
            Some(first) = async {
                match side.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(rx) = side.as_mut() {
                    inbox.fill(first, || rx.try_recv().ok());
                }
                receive(&owner, task_now(), &mut inbox, &mut fake_in, &mut delayed);
                after_side = true;
            }
            r = io.recv_batch(
                &mut inbox,
                || owner.claim_read(),
                || owner.release_read(),
            ) => match r {
                Ok(()) => {
                    // The claim `recv_batch` took, given back once the batch is handled.
                    let _claim = Claimed(&owner);
                    receive(&owner, task_now(), &mut inbox, &mut fake_in, &mut delayed);
                }
                // ICMP errors from earlier sends surface here on Linux; they are not fatal.
                Err(e) => tracing::trace!(error = %e, "recv error"),
            },
            () = sleep => {}
            () = nudge.notified() => {}
        }
    }
}

/// A driver's read claim on its socket, given back when dropped.
struct Claimed<'a, D: Driven>(&'a D);

impl<'a, D: Driven> Claimed<'a, D> {
    fn take(owner: &'a D) -> Option<Self> {
        owner.claim_read().then_some(Self(owner))
    }
}

impl<D: Driven> Drop for Claimed<'_, D> {
    fn drop(&mut self) {
        self.0.release_read();
    }
}

/// Feeds a received batch to the endpoint, through the fake receive conditions if any are in
/// force.
fn receive<D: Driven>(
    owner: &D,
    now: Instant,
    inbox: &mut Inbox,
    fake_in: &mut Conditioner<HeldDatagram>,
    delayed: &mut Inbox,
) {
    if crate::debug::tracing_packets() {
        for (from, data) in inbox.iter() {
            crate::debug::trace_packet(false, from, data);
        }
    }
    if fake_in.impairment().is_clean() && fake_in.is_empty() {
        owner.on_datagrams(now, inbox);
        return;
    }
    for (from, data) in inbox.iter() {
        fake_in.push(now, (from, data.to_vec()), data.len());
    }
    feed_due(owner, fake_in, delayed, now);
}

/// Feeds the datagrams the fake receive conditions release by `now`, one at a time.
fn feed_due<D: Driven>(
    owner: &D,
    fake_in: &mut Conditioner<HeldDatagram>,
    delayed: &mut Inbox,
    now: Instant,
) {
    while let Some((from, data)) = fake_in.pop_due(now) {
        let len = data.len().min(delayed.slots[0].len());
        delayed.slots[0][..len].copy_from_slice(&data[..len]);
        delayed.items.clear();
        delayed.items.push((from, 0, 0, len));
        owner.on_datagrams(now, delayed);
    }
}
