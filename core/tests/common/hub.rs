//! An in-process signaling hub standing in for a signaling server: it delivers rendezvous
//! signals between registered `Sockets` on its own thread, losing and duplicating some.

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
}

pub struct Peer {
    sockets: Sockets,
    policy: Policy,
}

/// Everyone the hub delivers to, by identity.
pub type Directory = Arc<Mutex<Vec<(Identity, Peer)>>>;

struct Route {
    hub: Arc<Hub>,
}

impl Signaling for Route {
    fn send_signal(&self, peer: &Identity, signal: &[u8]) {
        let _ = self.hub.tx.send((peer.clone(), signal.to_vec()));
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
                hub: self.hub.clone(),
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
    /// A hub losing `loss`% and duplicating `dup`% of signals.
    pub fn start(loss: u32, dup: u32, seed: u64) -> (Arc<Hub>, Directory) {
        let (tx, rx) = mpsc::channel::<(Identity, Vec<u8>)>();
        let hub = Arc::new(Hub { tx });
        let peers: Directory = Arc::new(Mutex::new(Vec::new()));
        let (h, p) = (Arc::downgrade(&hub), peers.clone());
        std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            while let Ok((to, signal)) = rx.recv() {
                let Some(hub) = h.upgrade() else { return };
                if rng.next_u32() % 100 < loss {
                    continue;
                }
                let copies = if rng.next_u32() % 100 < dup { 2 } else { 1 };
                let target = p
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
        });
        (hub, peers)
    }
}

pub fn peer(hub: &Arc<Hub>, peers: &Mutex<Vec<(Identity, Peer)>>, policy: Policy) -> Sockets {
    // P2P on loopback only: peers are told nothing but 127.0.0.1.
    let s = Sockets::with_config(SocketsConfig {
        p2p_bind: Some("127.0.0.1:0".parse().unwrap()),
        ..SocketsConfig::default()
    })
    .unwrap();
    s.set_signaling(Arc::new(Route { hub: hub.clone() }));
    peers.lock().unwrap().push((
        s.get_identity(),
        Peer {
            sockets: s.clone(),
            policy,
        },
    ));
    s
}
