//! An in-process signaling hub standing in for a signaling server: it delivers rendezvous
//! signals between registered `Sockets` on its own thread (or, for a virtual world, when
//! the test says), losing and duplicating some.

use punchline::api::{Signaling, SignalingRecvContext};
use punchline::identity::Identity;
use punchline::{ConnectionHandle, Sockets, SocketsConfig};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::sync::{mpsc, Arc, Mutex};

/// What a peer does with connect requests.
#[derive(Clone, Copy, PartialEq)]
pub enum Policy {
    Accept,
    Refuse,
    Ignore,
}

/// Delivers signals between registered `Sockets` on its own thread, losing and duplicating
/// some.
pub struct Hub {
    tx: mpsc::Sender<(Identity, Vec<u8>)>,
    /// Without a thread of its own: the signals waiting for [`Hub::deliver`].
    manual: Mutex<Option<Delivery>>,
}

/// What delivers signals: where they wait, the odds of losing and duplicating one.
struct Delivery {
    rx: mpsc::Receiver<(Identity, Vec<u8>)>,
    rng: ChaCha8Rng,
    loss: u32,
    dup: u32,
    peers: Directory,
}

impl Delivery {
    fn deliver(&mut self, hub: &Arc<Hub>, to: Identity, signal: Vec<u8>) {
        if self.rng.next_u32() % 100 < self.loss {
            return;
        }
        let copies = if self.rng.next_u32() % 100 < self.dup {
            2
        } else {
            1
        };
        let target = self
            .peers
            .lock()
            .unwrap()
            .iter()
            .find(|(id, _)| *id == to)
            .map(|(_, peer)| (peer.sockets.clone(), peer.policy));
        if let Some((sockets, policy)) = target {
            for _ in 0..copies {
                let mut ctx = Ctx {
                    hub: hub.clone(),
                    sockets: sockets.clone(),
                    policy,
                };
                sockets.received_p2p_custom_signal(&signal, &mut ctx);
            }
        }
    }
}

pub struct Peer {
    sockets: Sockets,
    policy: Policy,
}

/// Everyone the hub delivers to, by identity.
pub type Directory = Arc<Mutex<Vec<(Identity, Peer)>>>;

/// A peer's way to the hub: its queue only (the hub holds the peers, so a peer holding the
/// hub would keep both alive for ever).
struct Route {
    tx: mpsc::Sender<(Identity, Vec<u8>)>,
}

impl Signaling for Route {
    fn send_signal(&self, peer: &Identity, signal: &[u8]) {
        let _ = self.tx.send((peer.clone(), signal.to_vec()));
    }
}

struct Ctx {
    hub: Arc<Hub>,
    sockets: Sockets,
    policy: Policy,
}

impl SignalingRecvContext for Ctx {
    fn on_connect_request(
        &mut self,
        connection: ConnectionHandle,
        _peer: &Identity,
        _local_vport: u16,
    ) -> Option<Arc<dyn Signaling>> {
        match self.policy {
            Policy::Accept => Some(Arc::new(Route {
                tx: self.hub.tx.clone(),
            })),
            Policy::Refuse => {
                self.sockets
                    .close_connection(connection, 1042, "not today", false);
                None
            }
            Policy::Ignore => None,
        }
    }

    fn send_rejection_signal(&mut self, peer: &Identity, signal: &[u8]) {
        let _ = self.hub.tx.send((peer.clone(), signal.to_vec()));
    }
}

impl Hub {
    /// A hub losing `loss`% and duplicating `dup`% of signals, on a thread of its own.
    pub fn start(loss: u32, dup: u32, seed: u64) -> (Arc<Hub>, Directory) {
        let (tx, rx) = mpsc::channel::<(Identity, Vec<u8>)>();
        let hub = Arc::new(Hub {
            tx,
            manual: Mutex::new(None),
        });
        let peers: Directory = Arc::new(Mutex::new(Vec::new()));
        let mut d = Delivery {
            rx,
            rng: ChaCha8Rng::seed_from_u64(seed),
            loss,
            dup,
            peers: peers.clone(),
        };
        let h = Arc::downgrade(&hub);
        std::thread::spawn(move || {
            while let Ok((to, signal)) = d.rx.recv() {
                let Some(hub) = h.upgrade() else { return };
                d.deliver(&hub, to, signal);
            }
        });
        (hub, peers)
    }

    /// A hub like [`start`](Self::start)'s that delivers only in [`deliver`](Self::deliver),
    /// for a virtual world: the run then follows from the seeds and the calls alone.
    #[allow(dead_code)]
    pub fn manual(loss: u32, dup: u32, seed: u64) -> (Arc<Hub>, Directory) {
        let (tx, rx) = mpsc::channel::<(Identity, Vec<u8>)>();
        let peers: Directory = Arc::new(Mutex::new(Vec::new()));
        let d = Delivery {
            rx,
            rng: ChaCha8Rng::seed_from_u64(seed),
            loss,
            dup,
            peers: peers.clone(),
        };
        let hub = Arc::new(Hub {
            tx,
            manual: Mutex::new(Some(d)),
        });
        (hub, peers)
    }

    /// Delivers the signals sent so far (and those the deliveries make), for a manual hub.
    #[allow(dead_code)]
    pub fn deliver(self: &Arc<Self>) {
        let mut manual = self.manual.lock().unwrap();
        let Some(d) = manual.as_mut() else { return };
        while let Ok((to, signal)) = d.rx.try_recv() {
            d.deliver(self, to, signal);
        }
    }
}

pub fn peer(hub: &Arc<Hub>, peers: &Mutex<Vec<(Identity, Peer)>>, policy: Policy) -> Sockets {
    peer_with(hub, peers, policy, |cfg| Sockets::with_config(cfg).unwrap())
}

/// A peer in a virtual world.
#[allow(dead_code)]
pub fn virtual_peer(
    world: &punchline::VirtualWorld,
    hub: &Arc<Hub>,
    peers: &Mutex<Vec<(Identity, Peer)>>,
    policy: Policy,
) -> Sockets {
    peer_with(hub, peers, policy, |cfg| {
        world.sockets_with_config(cfg).unwrap()
    })
}

fn peer_with(
    hub: &Arc<Hub>,
    peers: &Mutex<Vec<(Identity, Peer)>>,
    policy: Policy,
    make: impl FnOnce(SocketsConfig) -> Sockets,
) -> Sockets {
    // P2P on loopback only: peers are told nothing but 127.0.0.1.
    let s = make(SocketsConfig {
        p2p_bind: Some("127.0.0.1:0".parse().unwrap()),
        ..SocketsConfig::default()
    });
    s.set_signaling(Arc::new(Route { tx: hub.tx.clone() }));
    peers.lock().unwrap().push((
        s.get_identity(),
        Peer {
            sockets: s.clone(),
            policy,
        },
    ));
    s
}
