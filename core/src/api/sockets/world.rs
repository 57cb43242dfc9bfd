//! Worlds: what the [`Sockets`] of one world share (the clock, the config values set at
//! global scope and the fake network conditions they make, where randomness comes from).
//! The process is one world, in real time; each [`VirtualWorld`] is another, in virtual
//! time on an in-memory network.

use super::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

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
}

static PROCESS: LazyLock<Arc<World>> = LazyLock::new(|| {
    Arc::new(World {
        clock: Clock::Real,
        config: Mutex::new(ConfigStore::default()),
        fake: RwLock::new(FakeConditions::NONE),
        seeds: None,
        wake: None,
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

    /// Sets a global config value and what follows from it.
    pub(super) fn set_config(
        &self,
        value: ConfigValue,
        data: Option<ConfigData>,
    ) -> Result<(), ConfigError> {
        let mut global = lock(&self.config);
        global.set(value, data)?;
        *self.fake.write().unwrap_or_else(|e| e.into_inner()) = fake_conditions(&global);
        // Debug output is the process's, whatever the world.
        crate::api::utils::apply_debug_config(&global);
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
#[derive(Debug, Clone)]
pub struct VirtualWorld {
    rt: Arc<VirtualRuntime>,
    world: Arc<World>,
}

impl VirtualWorld {
    /// An empty world at virtual time zero whose randomness comes from `seed`.
    pub fn new(seed: u64) -> std::io::Result<Self> {
        let rt = Arc::new(VirtualRuntime::new()?);
        let world = Arc::new(World {
            clock: Runtime::Virtual(rt.clone()).clock(),
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
