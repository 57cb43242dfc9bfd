//! Virtual time: a runtime whose clock stands still until a thread waits on it, and then
//! jumps straight to the next timer that is due. Its drivers run on the waiting thread, so
//! what happens depends on the calls made and the seed alone, never on how fast the
//! machine is or how its threads are scheduled.
//!
//! Built on tokio's paused clock: a current-thread runtime that only runs inside
//! [`VirtualRuntime::run_until`], and advances its clock whenever every task waits for a
//! timer. Its sockets are on an in-memory network ([`MemoryNet`]).

use super::memory::MemoryNet;
use super::Io;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// A runtime in virtual time with an in-memory network, shared by everything in one
/// virtual world.
#[derive(Debug)]
pub struct VirtualRuntime {
    /// Always there until dropped.
    rt: Option<tokio::runtime::Runtime>,
    net: Arc<MemoryNet>,
}

impl VirtualRuntime {
    /// A runtime at virtual time zero, with an empty network.
    pub fn new() -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()?;
        Ok(Self {
            rt: Some(rt),
            net: MemoryNet::new(),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as its owner")
    }

    /// The runtime's handle, for spawning tasks (they run while a thread waits).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt().handle()
    }

    /// The virtual time now.
    pub fn now(&self) -> Instant {
        virtual_now(self.handle())
    }

    /// Binds a socket on the world's network.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<Io> {
        self.net.bind(addr).map(Io::Memory)
    }

    /// Runs the world on this thread until `ready` holds (checked at the start and after
    /// each `wake`) or until virtual time reaches `deadline`; returns the last `ready`.
    /// Tasks and timers due meanwhile run here, in an order fixed by the calls before.
    ///
    /// Panics when called from inside an async runtime (an async test, a task, or code the
    /// world itself runs, such as a signaling callback): a virtual world is driven by plain
    /// threads.
    pub fn run_until(
        &self,
        deadline: Instant,
        wake: &Notify,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "a virtual world runs only on a plain thread: this call came from inside an async \
             runtime (an async test or task, or a callback the world itself runs)"
        );
        self.rt().block_on(async {
            let end = tokio::time::Instant::from_std(deadline);
            loop {
                let woken = wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if ready() {
                    return true;
                }
                if tokio::time::Instant::now() >= end {
                    return false;
                }
                tokio::select! {
                    biased;
                    () = &mut woken => {}
                    () = tokio::time::sleep_until(end) => {}
                }
            }
        })
    }
}

impl Drop for VirtualRuntime {
    fn drop(&mut self) {
        // Without waiting for the tasks, so that dropping a world anywhere (inside async
        // code too) is safe.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The time on `handle`'s clock (virtual for a paused runtime).
pub(super) fn virtual_now(handle: &tokio::runtime::Handle) -> Instant {
    let _in = handle.enter();
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_stands_still_until_a_thread_waits_and_then_jumps() {
        let w = VirtualRuntime::new().unwrap();
        let t0 = w.now();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(w.now(), t0, "no wait, no time");
        let wake = Notify::new();
        let real = Instant::now();
        assert!(!w.run_until(t0 + Duration::from_secs(3600), &wake, || false));
        assert!(
            real.elapsed() < Duration::from_secs(60),
            "an hour in no time"
        );
        assert!(w.now() >= t0 + Duration::from_secs(3600));
    }

    #[test]
    fn tasks_run_while_waiting_and_wake_the_waiter() {
        let w = VirtualRuntime::new().unwrap();
        let wake = Arc::new(Notify::new());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t0 = w.now();
        let (d, n) = (done.clone(), wake.clone());
        w.handle().spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            d.store(true, std::sync::atomic::Ordering::SeqCst);
            n.notify_waiters();
        });
        let ok = w.run_until(t0 + Duration::from_secs(10), &wake, || {
            done.load(std::sync::atomic::Ordering::SeqCst)
        });
        assert!(ok);
        let took = w.now() - t0;
        assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(260));
    }

    #[test]
    fn dropping_a_world_inside_async_code_is_safe() {
        let w = VirtualRuntime::new().unwrap();
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        outer.block_on(async move { drop(w) });
    }
}
