//! P2P connections in virtual time: a rendezvous through a signaling channel that may lose
//! and duplicate signals, then the handshake over the path it found; symmetric connect;
//! refusal; and a peer that is not who the rendezvous named.

mod common;

use bytes::Bytes;
use common::{drain, keyed, payload, send};
use punchline::identity::Identity;
use punchline::proto::rendezvous::{Body, Message};
use punchline::proto::{ConnId, ConnectionConfig, ConnectionState, EndReason, SendFlags};
use punchline::proto::{P2pRequest, SignalOutcome};
use punchline::sim::Sim;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::time::Duration;

/// What a node's application does with connect requests.
#[derive(Clone, Copy, PartialEq)]
enum Policy {
    Accept,
    Reject,
    Ignore,
}

/// Two P2P nodes (no listening) and the signaling channel between them.
struct Net {
    sim: Sim,
    rng: ChaCha8Rng,
    /// Percent of signals lost, and of signals delivered twice.
    loss: u32,
    dup: u32,
    policy: Policy,
    /// Requests seen, per node.
    requests: Vec<Vec<P2pRequest>>,
    /// Every signal sent, per sending node.
    sent: Vec<Vec<Message>>,
}

fn identity(sim: &Sim, node: usize) -> Identity {
    sim.nodes[node].endpoint.config().credentials.identity()
}

impl Net {
    fn new(seed: u64, loss: u32, dup: u32) -> Net {
        let mut sim = Sim::new(seed);
        for (i, addr) in ["10.0.0.1:1000", "10.0.0.2:2000"].iter().enumerate() {
            let n = sim.add_node(addr.parse().unwrap(), keyed(i as u8 + 1));
            let a = sim.nodes[n].addr;
            sim.nodes[n].endpoint.set_p2p_candidates(vec![a]);
        }
        Net {
            sim,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5151),
            loss,
            dup,
            policy: Policy::Accept,
            requests: vec![Vec::new(), Vec::new()],
            sent: vec![Vec::new(), Vec::new()],
        }
    }

    /// Node 0 connects to node 1 (virtual port 0, not symmetric).
    fn connect_0_to_1(&mut self) -> ConnId {
        let b = identity(&self.sim, 1);
        let now = self.sim.now;
        self.sim.nodes[0]
            .endpoint
            .connect_p2p(now, b, 0, 0, false, ConnectionConfig::default())
    }

    /// Moves every due signal through the lossy channel; applies the policy to requests.
    fn pump(&mut self) {
        let now = self.sim.now;
        for from in 0..2 {
            while let Some((_, to, bytes)) = self.sim.nodes[from].endpoint.poll_signal(now) {
                self.sent[from].push(Message::decode(&bytes).expect("a valid signal"));
                let Some(dest) = (0..2).find(|&n| identity(&self.sim, n) == to) else {
                    continue;
                };
                if self.rng.next_u32() % 100 < self.loss {
                    continue;
                }
                let copies = if self.rng.next_u32() % 100 < self.dup {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    self.deliver(dest, &bytes);
                }
            }
        }
    }

    fn deliver(&mut self, node: usize, bytes: &[u8]) {
        let now = self.sim.now;
        let ep = &mut self.sim.nodes[node].endpoint;
        match ep.handle_signal(now, bytes).expect("valid signal") {
            SignalOutcome::Request(req) => {
                self.requests[node].push(req.clone());
                match self.policy {
                    Policy::Accept => {
                        let id = ep.accept_p2p_request(now, req, 0, ConnectionConfig::default());
                        ep.accept(now, id).unwrap();
                    }
                    Policy::Reject => {
                        let signal = ep.reject_p2p_request(&req, EndReason(1042), "go away");
                        let back = 1 - node;
                        self.sim.nodes[back]
                            .endpoint
                            .handle_signal(now, &signal)
                            .unwrap();
                    }
                    Policy::Ignore => {}
                }
            }
            SignalOutcome::Handled | SignalOutcome::Ignored => {}
        }
    }

    /// Runs until `done` or `limit` of virtual time.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.sim.now + limit;
        while self.sim.now < end {
            self.pump();
            if done(&mut self.sim) {
                return true;
            }
            if !self.sim.step() {
                self.pump();
                if !self.sim.step() {
                    break;
                }
            }
        }
        done(&mut self.sim)
    }

    /// Node `from` connects to node `to`'s identity through the rendezvous.
    fn connect(&mut self, from: usize, to: usize, vport: u16, symmetric: bool) -> ConnId {
        let peer = identity(&self.sim, to);
        let now = self.sim.now;
        self.sim.nodes[from].endpoint.connect_p2p(
            now,
            peer,
            vport,
            vport,
            symmetric,
            ConnectionConfig::default(),
        )
    }

    fn conns(&self, node: usize) -> Vec<ConnId> {
        self.sim.nodes[node].endpoint.connection_ids().collect()
    }

    fn state(&self, node: usize, id: ConnId) -> ConnectionState {
        self.sim.state(node, id)
    }
}

fn both_connected(sim: &mut Sim) -> bool {
    (0..2).all(|n| {
        let ids: Vec<ConnId> = sim.nodes[n].endpoint.connection_ids().collect();
        !ids.is_empty()
            && ids
                .iter()
                .all(|id| sim.state(n, *id) == ConnectionState::Connected)
    })
}

#[test]
fn peers_connect_by_identity_through_the_rendezvous_and_talk() {
    let mut net = Net::new(1, 0, 0);
    let b = identity(&net.sim, 1);
    let now = net.sim.now;
    let c = net.sim.nodes[0].endpoint.connect_p2p(
        now,
        b.clone(),
        0,
        0,
        false,
        ConnectionConfig::default(),
    );
    let ok = net.run_until(Duration::from_secs(10), both_connected);
    assert!(ok, "client {:?}", net.state(0, c));
    // The client waited for a route before its hello went out.
    let states: Vec<ConnectionState> = net.sim.nodes[0]
        .events
        .iter()
        .map(|(_, e)| match e {
            punchline::proto::Event::StateChanged { new, .. } => *new,
        })
        .collect();
    assert_eq!(
        states,
        [
            ConnectionState::Connecting,
            ConnectionState::FindingRoute,
            ConnectionState::Connected
        ]
    );
    let s = net.conns(1)[0];
    let client = net.sim.nodes[0].endpoint.connection(c).unwrap();
    assert_eq!(client.peer_identity(), Some(&b));
    assert_eq!(client.remote_addr(), net.sim.nodes[1].addr);
    drop(client);
    // Messages both ways, reliable and unreliable.
    for i in 0..20u64 {
        send(&mut net.sim, 0, c, payload(i, 300), SendFlags::RELIABLE).unwrap();
        send(&mut net.sim, 1, s, payload(i, 200), SendFlags::UNRELIABLE).unwrap();
    }
    let (mut at_b, mut at_a) = (Vec::new(), Vec::new());
    assert!(net.sim.run_until(Duration::from_secs(10), |sim| {
        at_b.extend(drain(sim, 1, s));
        at_a.extend(drain(sim, 0, c));
        at_b.len() == 20 && at_a.len() == 20
    }));
    for (i, m) in at_b.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64, 300));
    }
    // A close reaches the peer over the path.
    let now = net.sim.now;
    net.sim.nodes[0].endpoint.connection_mut(c).unwrap().close(
        now,
        EndReason::APP_GENERIC,
        "bye",
        false,
    );
    net.sim.run_for(Duration::from_secs(1));
    assert_eq!(net.state(1, s), ConnectionState::ClosedByPeer);
}

#[test]
fn the_rendezvous_survives_30_percent_signal_loss_and_50_percent_duplication() {
    for seed in 0..40 {
        let mut net = Net::new(100 + seed, 30, 50);
        let c = net.connect_0_to_1();
        let ok = net.run_until(Duration::from_secs(20), both_connected);
        assert!(ok, "seed {seed}: client {:?}", net.state(0, c));
        assert_eq!(
            net.conns(1).len(),
            1,
            "seed {seed}: one connection, despite duplicates"
        );
    }
}

#[test]
fn a_refused_request_ends_the_connection_with_the_reason() {
    let mut net = Net::new(2, 0, 0);
    net.policy = Policy::Reject;
    let c = net.connect(0, 1, 0, false);
    net.run_until(Duration::from_secs(5), |sim| {
        sim.state(0, c) != ConnectionState::Connecting
    });
    let conn = net.sim.nodes[0].endpoint.connection(c).unwrap();
    assert_eq!(conn.state(), ConnectionState::ClosedByPeer);
    assert_eq!(conn.end_reason(), EndReason(1042));
    assert_eq!(conn.end_debug(), "go away");
    assert!(net.conns(1).is_empty(), "the refusing side kept nothing");
}

#[test]
fn an_ignored_request_times_out() {
    let mut net = Net::new(3, 0, 0);
    net.policy = Policy::Ignore;
    let c = net.connect(0, 1, 0, false);
    net.run_until(Duration::from_secs(30), |sim| {
        sim.state(0, c) != ConnectionState::Connecting
    });
    assert_eq!(net.state(0, c), ConnectionState::ProblemDetectedLocally);
    assert!(net.requests[1].len() > 1, "the request was sent again");
    // Its close goes unanswered too; the session gives up after a while.
    net.run_until(Duration::from_secs(40), |_| false);
    assert_eq!(
        net.sim.nodes[0].endpoint.poll_signal_timeout(),
        None,
        "no session left retransmitting"
    );
}

#[test]
fn symmetric_connect_always_ends_with_exactly_one_connection() {
    for seed in 0..100 {
        let (loss, dup) = if seed % 2 == 0 { (0, 0) } else { (30, 50) };
        let mut net = Net::new(1000 + seed, loss, dup);
        // Requests that are not merged would be accepted as usual: none may be.
        net.policy = Policy::Accept;
        let (a, b) = (identity(&net.sim, 0), identity(&net.sim, 1));
        let now = net.sim.now;
        let ca =
            net.sim.nodes[0]
                .endpoint
                .connect_p2p(now, b, 5, 5, true, ConnectionConfig::default());
        let cb =
            net.sim.nodes[1]
                .endpoint
                .connect_p2p(now, a, 5, 5, true, ConnectionConfig::default());
        let ok = net.run_until(Duration::from_secs(20), both_connected);
        assert!(
            ok,
            "seed {seed}: {:?} / {:?}",
            net.state(0, ca),
            net.state(1, cb)
        );
        assert_eq!(
            net.conns(0),
            vec![ca],
            "seed {seed}: node 0 keeps its handle"
        );
        assert_eq!(
            net.conns(1),
            vec![cb],
            "seed {seed}: node 1 keeps its handle"
        );
        assert!(
            net.requests.iter().all(Vec::is_empty),
            "seed {seed}: no request reached the application"
        );
        // And they are connected to each other.
        send(
            &mut net.sim,
            0,
            ca,
            Bytes::from_static(b"hi"),
            SendFlags::RELIABLE,
        )
        .unwrap();
        let mut got = Vec::new();
        assert!(net.sim.run_until(Duration::from_secs(5), |sim| {
            got.extend(drain(sim, 1, cb));
            !got.is_empty()
        }));
    }
}

#[test]
fn a_peer_that_is_not_who_the_rendezvous_named_is_refused() {
    // Node 2 listens at its own address with its own key; a forged accept "from B" sends
    // the client there. The handshake proves node 2's key, not B's.
    let mut net = Net::new(4, 0, 0);
    let mut impostor = keyed(9);
    impostor.listen = true;
    let i = net.sim.add_node("10.0.0.9:9000".parse().unwrap(), impostor);
    net.sim.nodes[i].auto_accept = true;
    let (a, b) = (identity(&net.sim, 0), identity(&net.sim, 1));
    let now = net.sim.now;
    let c = net.sim.nodes[0].endpoint.connect_p2p(
        now,
        b.clone(),
        0,
        0,
        false,
        ConnectionConfig::default(),
    );
    let (_, _, request) = net.sim.nodes[0].endpoint.poll_signal(now).unwrap();
    let request = Message::decode(&request).unwrap();
    let forged = Message {
        session: request.session,
        seq: 1,
        ack: request.seq,
        from: b,
        to: a,
        body: Body::ConnectAccept {
            transport: 0,
            candidates: vec![net.sim.nodes[i].addr],
        },
    };
    net.sim.nodes[0]
        .endpoint
        .handle_signal(now, &forged.encode())
        .unwrap();
    net.sim.run_until(Duration::from_secs(5), |sim| {
        !matches!(
            sim.state(0, c),
            ConnectionState::Connecting | ConnectionState::FindingRoute
        )
    });
    let conn = net.sim.nodes[0].endpoint.connection(c).unwrap();
    assert_eq!(conn.state(), ConnectionState::ProblemDetectedLocally);
    assert_eq!(conn.end_reason(), EndReason::REMOTE_BAD_CERT);
}

#[test]
fn a_signal_the_channel_vouches_for_must_name_its_sender() {
    // A signaling server stamps who sent each signal; a signal that claims inside to be from
    // someone else (here: an accept "from B" sent by node 2) is dropped, B's own is taken.
    let mut net = Net::new(5, 0, 0);
    let i = net.sim.add_node("10.0.0.9:9000".parse().unwrap(), keyed(9));
    let (a, b, c) = (
        identity(&net.sim, 0),
        identity(&net.sim, 1),
        identity(&net.sim, i),
    );
    let now = net.sim.now;
    net.sim.nodes[0]
        .endpoint
        .connect_p2p(now, b.clone(), 0, 0, false, ConnectionConfig::default());
    let (_, _, request) = net.sim.nodes[0].endpoint.poll_signal(now).unwrap();
    let request = Message::decode(&request).unwrap();
    let accept = Message {
        session: request.session,
        seq: 1,
        ack: request.seq,
        from: b.clone(),
        to: a,
        body: Body::ConnectAccept {
            transport: 0,
            candidates: vec![net.sim.nodes[1].addr],
        },
    }
    .encode();
    let ep = &mut net.sim.nodes[0].endpoint;
    assert!(matches!(
        ep.handle_signal_from(now, &accept, Some(&c)).unwrap(),
        SignalOutcome::Ignored
    ));
    assert!(matches!(
        ep.handle_signal_from(now, &accept, Some(&b)).unwrap(),
        SignalOutcome::Handled
    ));
}

#[test]
fn a_peer_with_a_transport_never_sends_its_addresses_nor_falls_back_to_direct() {
    // Node 1 listens with a transport (wire id 9: say relay, which hides addresses). Node 0
    // asks for none, then for another one (7): each time node 1, accepting, answers with a
    // close and no address, and node 0's connection ends.
    for asked in [None, Some(7)] {
        let mut net = Net::new(6, 0, 0);
        net.sim.nodes[1].endpoint.set_p2p_transport(9);
        if let Some(t) = asked {
            net.sim.nodes[0].endpoint.set_p2p_transport(t);
        }
        let c = net.connect_0_to_1();
        assert!(net.run_until(Duration::from_secs(10), |sim| !matches!(
            sim.state(0, c),
            ConnectionState::Connecting | ConnectionState::FindingRoute
        )));
        assert_eq!(
            net.sim.state(0, c),
            ConnectionState::ClosedByPeer,
            "{asked:?}"
        );
        let addresses: Vec<&Message> = net.sent[1]
            .iter()
            .filter(|m| match &m.body {
                Body::ConnectAccept { candidates, .. } => !candidates.is_empty(),
                Body::ConnectRequest { candidates, .. } => !candidates.is_empty(),
                _ => false,
            })
            .collect();
        assert!(addresses.is_empty(), "{asked:?}: node 1 sent {addresses:?}");
        assert!(
            net.sent[1].iter().any(
                |m| matches!(&m.body, Body::Close { debug, .. } if debug.contains("must match"))
            ),
            "{asked:?}: node 1 said why"
        );
        if asked.is_some() {
            assert!(
                net.sent[0].iter().all(|m| !matches!(&m.body,
                    Body::ConnectRequest { candidates, .. } if !candidates.is_empty())),
                "a requester with a transport names no address"
            );
        }
    }
}

/// Node 0 connects to node 1 over a transport (wire id 9, standing for ICE) whose paths
/// the test makes fail; returns both connections once both paths have started.
fn finding_routes(seed: u64) -> (Net, ConnId, ConnId) {
    let mut net = Net::new(seed, 0, 0);
    for n in 0..2 {
        net.sim.nodes[n].endpoint.set_p2p_transport(9);
    }
    let a = net.connect(0, 1, 0, false);
    let mut started: [Option<ConnId>; 2] = [None, None];
    assert!(net.run_until(Duration::from_secs(5), |sim| {
        for (n, s) in started.iter_mut().enumerate() {
            if let Some(id) = sim.nodes[n].endpoint.poll_path_start() {
                *s = Some(id);
            }
        }
        started.iter().all(Option::is_some)
    }));
    assert_eq!(started[0], Some(a));
    let b = started[1].unwrap();
    for (n, id) in [(0, a), (1, b)] {
        assert_eq!(net.state(n, id), ConnectionState::FindingRoute);
    }
    (net, a, b)
}

fn ended(net: &Net, node: usize, id: ConnId) -> (ConnectionState, EndReason, String) {
    let c = net.sim.nodes[node].endpoint.connection(id).unwrap();
    (c.state(), c.end_reason(), c.end_debug().to_string())
}

const NO_RELAY: &str = "no relayed candidate: TURN allocation failed (wrong password)";
/// How node 0 ends in both tests: by its own failure.
fn no_relay_here() -> (ConnectionState, EndReason, String) {
    (
        ConnectionState::ProblemDetectedLocally,
        EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES,
        NO_RELAY.into(),
    )
}

const NO_PAIR: &str = "NAT punch failed: no ICE candidate pair answered";

#[test]
fn a_side_that_failed_first_keeps_its_own_reason_when_the_peers_close_arrives() {
    let (mut net, a, b) = finding_routes(21);
    // Both paths fail before either side hears of the other's failure: the closes cross.
    let now = net.sim.now;
    net.sim.nodes[0].endpoint.path_failed(
        a,
        EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES,
        NO_RELAY,
    );
    net.sim.nodes[1]
        .endpoint
        .path_failed(b, EndReason::MISC_P2P_NAT_FIREWALL, NO_PAIR);
    let mut closes = 0;
    for from in 0..2 {
        while let Some((_, _, bytes)) = net.sim.nodes[from].endpoint.poll_signal(now) {
            closes += matches!(Message::decode(&bytes).unwrap().body, Body::Close { .. }) as u32;
            net.deliver(1 - from, &bytes);
        }
    }
    assert_eq!(closes, 2, "each side told the other");
    net.run_until(Duration::from_secs(5), |_| false);
    assert_eq!(ended(&net, 0, a), no_relay_here());
    assert_eq!(
        ended(&net, 1, b),
        (
            ConnectionState::ProblemDetectedLocally,
            EndReason::MISC_P2P_NAT_FIREWALL,
            NO_PAIR.into()
        )
    );
}

#[test]
fn a_peers_close_that_arrives_first_ends_the_connection_as_closed_by_peer() {
    let (mut net, a, b) = finding_routes(22);
    // Node 0 fails; its close reaches node 1 while node 1 still has a way forward.
    net.sim.nodes[0].endpoint.path_failed(
        a,
        EndReason::LOCAL_P2P_ICE_NO_PUBLIC_ADDRESSES,
        NO_RELAY,
    );
    net.pump();
    assert_eq!(net.state(1, b), ConnectionState::ClosedByPeer);
    // Node 1's own failure, reported after, changes nothing and sends no close back.
    net.sim.nodes[1]
        .endpoint
        .path_failed(b, EndReason::MISC_P2P_NAT_FIREWALL, NO_PAIR);
    net.run_until(Duration::from_secs(5), |_| false);
    assert_eq!(ended(&net, 0, a), no_relay_here());
    // The peer's "no address to offer" is, from here, "the peer gave us none".
    assert_eq!(
        ended(&net, 1, b),
        (
            ConnectionState::ClosedByPeer,
            EndReason::REMOTE_P2P_ICE_NO_PUBLIC_ADDRESSES,
            NO_RELAY.into()
        )
    );
}
