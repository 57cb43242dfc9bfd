//! Worlds: what the [`Sockets`] of one world share (the clock, the config values set at
//! global scope and the fake network conditions they make, where randomness comes from).
//! The process is one world, in real time; each [`VirtualWorld`] is another, in virtual
//! time on an in-memory network.

use super::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::sync::atomic::{AtomicU64, Ordering};

/// The wall-clock time (seconds since 1970) a virtual world starts at: 2027-01-15.
const VIRTUAL_UNIX_START: u64 = 1_800_000_000;

/// What the `Sockets` of one world share.
#[derive(Debug)]
pub(super) struct World {
    pub(super) clock: Clock,
    /// Config values set at global scope.
    pub(super) config: Mutex<ConfigStore>,
    /// The fake network conditions the global values make, read by every driver.
    pub(super) fake: RwLock<FakeConditions>,
    /// A virtual world's seeds; `None`: the system's randomness.
    seeds: Option<SeedSequence>,
    /// A virtual world's wake-up for threads running it: notified on any activity of any
    /// of its `Sockets`.
    pub(super) wake: Option<Arc<Notify>>,
    /// A virtual world's start, on its clock: its wall clock counts from there.
    started: Option<Instant>,
}

static PROCESS: LazyLock<Arc<World>> = LazyLock::new(|| {
    Arc::new(World {
        clock: Clock::Real,
        config: Mutex::new(ConfigStore::default()),
        fake: RwLock::new(FakeConditions::NONE),
        seeds: None,
        wake: None,
        started: None,
    })
});

impl World {
    /// The process's world: real time, global values shared by every `Sockets` in it.
    pub(super) fn process() -> Arc<World> {
        PROCESS.clone()
    }

    /// The fake network conditions in force.
    pub(super) fn fake(&self) -> FakeConditions {
        *self.fake.read().unwrap_or_else(|e| e.into_inner())
    }

    /// True for a virtual world.
    pub(super) fn is_virtual(&self) -> bool {
        self.started.is_some()
    }

    /// Seconds since 1970: the system's, or a virtual world's (from a fixed start).
    pub(super) fn unix_now(&self) -> u64 {
        match self.started {
            Some(t0) => VIRTUAL_UNIX_START + (self.clock.now() - t0).as_secs(),
            None => unix_now(),
        }
    }

    /// Sets a global config value and what follows from it.
    pub(super) fn set_config(
        &self,
        value: ConfigValue,
        data: Option<ConfigData>,
    ) -> Result<(), ConfigError> {
        let mut global = lock(&self.config);
        global.set(value, data)?;
        *self.fake.write().unwrap_or_else(|e| e.into_inner()) = fake_conditions(&global);
        // Debug output is the process's, whatever the world: only a debug value sets it
        // (so another world's unrelated values leave it be).
        if crate::api::utils::is_debug_value(value) {
            crate::api::utils::apply_debug_config(&global);
        }
        Ok(())
    }

    /// A generator for keys and seeds: from the system's randomness, or the next of a
    /// virtual world's seeds.
    pub(super) fn rng(&self) -> ChaCha20Rng {
        match &self.seeds {
            Some(s) => ChaCha20Rng::seed_from_u64(s.next()),
            None => ChaCha20Rng::from_seed({
                let mut seed = [0u8; 32];
                OsRng.fill_bytes(&mut seed);
                seed
            }),
        }
    }

    /// A 64-bit seed, as [`rng`](Self::rng) draws.
    pub(super) fn seed(&self) -> u64 {
        match &self.seeds {
            Some(s) => s.next(),
            None => OsRng.next_u64(),
        }
    }
}

/// Seeds drawn one after another from one seed (splitmix64): the same seed and the same
/// order of calls give the same seeds.
#[derive(Debug)]
struct SeedSequence(AtomicU64);

impl SeedSequence {
    #[cfg_attr(not(feature = "virtual-time"), allow(dead_code))]
    fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    fn next(&self) -> u64 {
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut z = self
            .0
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A world in virtual time: its [`Sockets`] share a clock that stands still until a thread
/// waits on one of them ([`Sockets::wait_for_activity`], [`run_for`](Self::run_for),
/// [`run_until`](Self::run_until)) and then jumps from timer to timer, and talk over an
/// in-memory network instead of the kernel's. Everything random in it (keys, connection
/// seeds, the fake network conditions) comes from the world's seed.
///
/// So a test of game networking runs as fast as the processor allows, with lag and loss
/// that do not depend on the machine: the same seed and the same calls give the same run.
/// The global config values (the fake network conditions among them) are the world's own,
/// apart from the process's and other worlds'.
///
/// Its network is one host: a socket bound to `0.0.0.0:0` is reached at `127.0.0.1` and at
/// any other address with its port. It carries IP connections, socket pairs and P2P
/// connections whose signals the application passes; the ICE transport, STUN/TURN and
/// relays need the real network. Drive it from plain threads (not from inside an async
/// runtime), one at a time for a repeatable run.
///
/// ```
/// use punchline::{SendFlags, VirtualWorld};
/// use std::time::{Duration, Instant};
///
/// let world = VirtualWorld::new(42)?;
/// let sockets = world.sockets()?;
/// let (a, b) = sockets.create_socket_pair(true, None, None)?;
/// sockets.send_message_to_connection(a, b"hello".to_vec(), SendFlags::RELIABLE)?;
/// let (start, real) = (world.now(), Instant::now());
/// world.run_for(Duration::from_secs(60)); // a minute passes at once
/// assert!(world.now() - start >= Duration::from_secs(60));
/// assert!(real.elapsed() < Duration::from_secs(10));
/// assert_eq!(sockets.receive_messages_on_connection(b, 10)?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "virtual-time")]
#[derive(Debug, Clone)]
pub struct VirtualWorld {
    rt: Arc<VirtualRuntime>,
    world: Arc<World>,
}

#[cfg(feature = "virtual-time")]
impl VirtualWorld {
    /// An empty world at virtual time zero whose randomness comes from `seed`.
    pub fn new(seed: u64) -> std::io::Result<Self> {
        let rt = Arc::new(VirtualRuntime::new()?);
        let clock = Runtime::Virtual(rt.clone()).clock();
        let world = Arc::new(World {
            started: Some(clock.now()),
            clock,
            config: Mutex::new(ConfigStore::default()),
            fake: RwLock::new(FakeConditions::NONE),
            seeds: Some(SeedSequence::new(seed)),
            wake: Some(Arc::new(Notify::new())),
        });
        Ok(Self { rt, world })
    }

    /// A `Sockets` in this world with a key drawn from the world's seed.
    pub fn sockets(&self) -> std::io::Result<Sockets> {
        self.sockets_with_config(SocketsConfig::default())
    }

    /// A `Sockets` in this world with the given identity and trust.
    pub fn sockets_with_config(&self, cfg: SocketsConfig) -> std::io::Result<Sockets> {
        Sockets::in_world(cfg, Runtime::Virtual(self.rt.clone()), self.world.clone())
    }

    /// The virtual time now.
    pub fn now(&self) -> Instant {
        self.world.clock.now()
    }

    /// Runs the world for `d` of virtual time.
    pub fn run_for(&self, d: Duration) {
        self.run_until(self.now() + d, || false);
    }

    /// Runs the world until `ready` holds (checked now and after any activity of its
    /// `Sockets`: datagrams handled, callbacks queued) or virtual time reaches `deadline`;
    /// returns the last `ready`.
    pub fn run_until(&self, deadline: Instant, ready: impl FnMut() -> bool) -> bool {
        let wake = self
            .world
            .wake
            .as_ref()
            .expect("a virtual world has a wake-up");
        self.rt.run_until(deadline, wake, ready)
    }
}

#[cfg(test)]
mod tests {
    use super::SeedSequence;

    #[test]
    fn seeds_follow_from_the_first_seed() {
        let (a, b, c) = (
            SeedSequence::new(7),
            SeedSequence::new(7),
            SeedSequence::new(8),
        );
        let (sa, sb, sc) = (a.next(), b.next(), c.next());
        assert_eq!(sa, sb);
        assert_ne!(sa, sc);
        assert_ne!(a.next(), sa);
    }
}
