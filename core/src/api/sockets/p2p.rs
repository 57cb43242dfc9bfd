//! P2P: signaling and transport, P2P listen sockets and connections, incoming signals, the P2P endpoint.

use super::*;

/// What a `Sockets` keeps for P2P.
#[derive(Default)]
pub(super) struct P2pState {
    /// The endpoint P2P connections use (created when first needed).
    pub(super) endpoint: Option<EpId>,
    /// The signaling `connect_p2p` uses.
    pub(super) signaling: Option<Arc<dyn Signaling>>,
    /// Where the P2P socket binds (`None`: every interface).
    pub(super) bind: Option<SocketAddr>,
    /// The transport P2P connections find their paths with (`None`: direct UDP).
    pub(super) transport: Option<Arc<dyn Transport>>,
    /// Paths of P2P connections, by their id on the P2P endpoint.
    pub(super) paths: FxHashMap<ConnId, PathEntry>,
    /// Where received path datagrams go (to the P2P endpoint's driver).
    pub(super) path_tx: Option<mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    /// Paths numbered so far (for their stand-in addresses).
    pub(super) paths_made: u32,
    /// The paths again, by stand-in address, for the driver.
    pub(super) path_table: PathTable,
    /// P2P connect requests the application is deciding on: their status changes wait here,
    /// reported once accepted, dropped if not.
    pub(super) undecided: FxHashMap<ConnectionHandle, Undecided>,
    /// Signaling for particular P2P connections (custom signaling, or accepted requests), by
    /// their id on the P2P endpoint (it outlives the handle: a close is signaled after).
    pub(super) conn_signaling: FxHashMap<ConnId, Arc<dyn Signaling>>,
}

impl Sockets {
    // ----- P2P -----------------------------------------------------------------------------

    /// Sets the signaling [`connect_p2p`](Self::connect_p2p) sends rendezvous messages
    /// through (the seeds' `CreateConnectionSignaling` callback). Signals from peers come back
    /// through [`received_p2p_custom_signal`](Self::received_p2p_custom_signal).
    pub fn set_signaling(&self, signaling: Arc<dyn Signaling>) {
        self.state().p2p.signaling = Some(signaling);
    }

    /// Sets the transport P2P connections find their paths with (ICE: see the
    /// `punchline-ice` crate). Without one, peers send to the first address the other
    /// gives in the rendezvous: enough on one host or a LAN, not through NATs. Both peers
    /// need the same transport: a peer with a transport never falls back to direct UDP
    /// (nor sends its addresses in the rendezvous), so a request for another transport, or
    /// for none, is answered with a close once accepted. A peer without one answers with
    /// direct UDP, which a peer that asked for a transport refuses.
    pub fn set_p2p_transport(&self, transport: Arc<dyn Transport>) {
        let mut st = self.state();
        let id = transport.wire_id();
        st.p2p.transport = Some(transport);
        if let Some(e) = st.p2p.endpoint.and_then(|ep| st.reg.endpoints.get_mut(&ep)) {
            e.ep().set_p2p_transport(id);
        }
    }

    /// Listens for P2P connections on virtual port `vport` (peers name it in `connect_p2p`).
    pub fn create_listen_socket_p2p(
        &self,
        vport: u16,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ListenSocketHandle, Error> {
        let store = options_store(options, ConfigScope::ListenSocket)?;
        let ep = self.p2p_endpoint()?;
        let mut st = self.state();
        if st.reg.listens.values().any(|l| l.vport == Some(vport)) {
            return Err(Error::InvalidParam(format!(
                "virtual port {vport} is already listened on"
            )));
        }
        let handle = ListenSocketHandle(st.reg.fresh_handle());
        st.reg.listens.insert(
            handle,
            ListenEntry {
                ep,
                config: store,
                vport: Some(vport),
            },
        );
        Ok(handle)
    }

    /// Connects to the peer with identity `peer` on its virtual port `vport`, through the
    /// signaling set with [`set_signaling`](Self::set_signaling). The connection is in
    /// Connecting until the peer answers, FindingRoute while the path and handshake are
    /// made, then Connected. With `SymmetricConnect` set in `options` and a matching incoming
    /// connection already waiting, that one is accepted and returned instead.
    pub fn connect_p2p(
        &self,
        peer: &Identity,
        vport: u16,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ConnectionHandle, Error> {
        let signaling = self
            .state()
            .p2p
            .signaling
            .clone()
            .ok_or_else(|| Error::InvalidParam("no signaling set (set_signaling)".into()))?;
        self.connect_p2p_custom_signaling(signaling, peer, vport, options)
    }

    /// Like [`connect_p2p`](Self::connect_p2p), with this connection's signals sent through
    /// `signaling`.
    pub fn connect_p2p_custom_signaling(
        &self,
        signaling: Arc<dyn Signaling>,
        peer: &Identity,
        vport: u16,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ConnectionHandle, Error> {
        if peer.is_invalid() {
            return Err(Error::InvalidParam("invalid peer identity".into()));
        }
        let store = options_store(options, ConfigScope::Connection)?;
        let ep = self.p2p_endpoint()?;
        let mut st = self.state();
        let symmetric = resolve_int(&st, &store, ConfigValue::SymmetricConnect) != 0;
        let local_vport = match resolve_int(&st, &store, ConfigValue::LocalVirtualPort) {
            v if (0..=i32::from(u16::MAX)).contains(&v) => v as u16,
            _ => vport,
        };
        if symmetric {
            // A matching incoming connection already waiting is accepted instead.
            let waiting = st.reg.conns.iter().find_map(|(h, c)| {
                let conn = c.hot.conn.read()?;
                let p = conn.p2p()?;
                (c.ep == ep
                    && p.symmetric
                    && &p.peer == peer
                    && p.local_vport == local_vport
                    && conn.state() == ConnectionState::Connecting
                    && conn.side() == crate::proto::Side::Server)
                    .then_some(*h)
            });
            if let Some(h) = waiting {
                drop(st);
                self.accept_connection(h)?;
                return Ok(h);
            }
        }
        let cfg = st.connection_config(&[&store]);
        let e = st.reg.endpoints.get_mut(&ep).ok_or(Error::InvalidState)?;
        let id = e
            .ep()
            .connect_p2p(self.now(), peer.clone(), local_vport, vport, symmetric, cfg);
        e.link.nudge.notify_one();
        let h = st
            .add_connection(ep, id, None, store)
            .ok_or(Error::NoConnection)?;
        st.p2p.conn_signaling.insert(id, signaling);
        st.pump(ep);
        Ok(h)
    }

    /// Hands punchline a rendezvous signal that arrived from a peer. Connect requests go to
    /// `ctx` to decide on. Returns false for a signal that is malformed or not for us.
    pub fn received_p2p_custom_signal(
        &self,
        signal: &[u8],
        ctx: &mut dyn SignalingRecvContext,
    ) -> bool {
        self.received_signal(signal, None, ctx)
    }

    /// [`received_p2p_custom_signal`](Self::received_p2p_custom_signal) for a signal whose
    /// sender the signaling channel authenticated (a signaling server stamps it): a signal
    /// that claims to come from anyone else is dropped.
    pub fn received_p2p_custom_signal_from(
        &self,
        signal: &[u8],
        sender: &Identity,
        ctx: &mut dyn SignalingRecvContext,
    ) -> bool {
        self.received_signal(signal, Some(sender), ctx)
    }

    pub(super) fn received_signal(
        &self,
        signal: &[u8],
        sender: Option<&Identity>,
        ctx: &mut dyn SignalingRecvContext,
    ) -> bool {
        let Ok(ep) = self.p2p_endpoint() else {
            return false;
        };
        let now = self.now();
        let mut st = self.state();
        // What the paths said comes first: a path that failed before this signal arrived
        // decides how its connection ends, whatever the peer says now (its close counts only
        // while this side still had a way forward).
        st.service_paths(ep);
        let Some(e) = st.reg.endpoints.get_mut(&ep) else {
            return false;
        };
        let outcome = match e.ep().handle_signal_from(now, signal, sender) {
            Ok(o) => o,
            Err(err) => {
                tracing::debug!(error = %err, "malformed rendezvous signal");
                crate::debug::emit(
                    DebugOutputType::Warning,
                    Some(Subsystem::P2pRendezvous),
                    || {
                        format!(
                            "malformed rendezvous signal of {} bytes: {err}",
                            signal.len()
                        )
                    },
                );
                return false;
            }
        };
        crate::debug::emit(
            DebugOutputType::Verbose,
            Some(Subsystem::P2pRendezvous),
            || format!("rendezvous signal of {} bytes: {outcome:?}", signal.len()),
        );
        e.link.nudge.notify_one();
        let request = match outcome {
            SignalOutcome::Handled => {
                st.pump(ep);
                return true;
            }
            SignalOutcome::Ignored => return false,
            SignalOutcome::Request(r) => r,
        };
        // The connection exists while the application decides (it may close it to refuse).
        let listen = st
            .reg
            .listens
            .iter()
            .find(|(_, l)| l.vport == Some(request.to_vport))
            .map(|(h, _)| *h);
        let store = ConfigStore::default();
        let cfg = match listen.and_then(|l| st.reg.listens.get(&l)) {
            Some(l) => st.connection_config(&[&l.config]),
            None => st.connection_config(&[]),
        };
        let peer = request.from.clone();
        let vport = request.to_vport;
        let e = st.reg.endpoints.get_mut(&ep).expect("checked above");
        let id = e.ep().accept_p2p_request(now, request.clone(), vport, cfg);
        let Some(h) = st.add_connection(ep, id, listen, store) else {
            return false;
        };
        // Nobody hears of it until the application has decided.
        st.p2p.undecided.insert(h, Undecided::default());
        drop(st);
        let answer = ctx.on_connect_request(h, &peer, vport);
        let mut st = self.state();
        let Undecided { deferred, refusal } = st.p2p.undecided.remove(&h).unwrap_or_default();
        match answer {
            Some(signaling) if st.reg.conns.contains_key(&h) => {
                st.p2p.conn_signaling.insert(id, signaling);
                for old in deferred {
                    st.report(h, old);
                }
                st.pump(ep);
            }
            _ => {
                st.reg.remove_connection(h);
                if let Some(e) = st.reg.endpoints.get_mut(&ep) {
                    e.ep().forget_p2p_request(id);
                    if let Some((reason, debug)) = refusal {
                        let signal = e.ep().reject_p2p_request(&request, reason, &debug);
                        drop(st);
                        ctx.send_rejection_signal(&peer, &signal);
                    }
                }
            }
        }
        true
    }

    /// The endpoint (and socket) P2P connections use, created when first needed.
    pub(super) fn p2p_endpoint(&self) -> Result<EpId, Error> {
        if let Some(ep) = self.state().p2p.endpoint {
            return Ok(ep);
        }
        let bind = self
            .state()
            .p2p
            .bind
            .unwrap_or((Ipv4Addr::UNSPECIFIED, 0).into());
        let io = self.bind(bind)?;
        let local = io.local_addr().map_err(io_err)?;
        let mut st = self.state();
        if let Some(ep) = st.p2p.endpoint {
            return Ok(ep); // another thread made it meanwhile
        }
        let credentials = st.credentials.clone();
        let ep = st.reg.add_endpoint(
            EndpointConfig {
                credentials,
                ..EndpointConfig::default()
            },
            local,
            None,
        );
        let candidates = p2p_candidates(local, st.world.is_virtual());
        let wire_id = st
            .p2p
            .transport
            .as_ref()
            .map_or(transport::DIRECT, |t| t.wire_id());
        if let Some(e) = st.reg.endpoints.get_mut(&ep) {
            let mut endpoint = e.ep();
            endpoint.set_p2p_candidates(candidates);
            endpoint.set_p2p_transport(wire_id);
            drop(endpoint);
            e.link.p2p.store(true, std::sync::atomic::Ordering::Release);
        }
        st.p2p.endpoint = Some(ep);
        let (tx, rx) = mpsc::channel(transport::PATH_INBOX);
        st.p2p.path_tx = Some(tx);
        drop(st);
        self.spawn_driver_with(ep, io, Some(rx));
        Ok(ep)
    }
}
