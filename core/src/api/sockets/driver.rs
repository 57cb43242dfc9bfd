//! The glue the runtime drives: an endpoint's state, the per-turn work on `State`, and the driver of one endpoint.

use super::*;
use std::sync::atomic::Ordering;

impl State {
    pub(super) fn add_connection(
        &mut self,
        ep: EpId,
        id: ConnId,
        listen: Option<ListenSocketHandle>,
        config: ConfigStore,
    ) -> Option<ConnectionHandle> {
        // Gone already if a waiting thread forgot it (dead, nothing left to send) meanwhile.
        let conn = self.reg.endpoints.get(&ep)?.ep().share(id)?;
        let user_data = self
            .conn_value(&config, listen, ConfigValue::ConnectionUserData)
            .as_i64()
            .unwrap_or(-1);
        let e = self.reg.endpoints.get(&ep)?;
        let hot = Arc::new(link::HotConn {
            conn,
            link: e.link.clone(),
            user_data: std::sync::atomic::AtomicI64::new(user_data),
        });
        let h = ConnectionHandle(self.reg.fresh_handle());
        self.reg.insert_connection(
            h,
            ConnEntry {
                ep,
                id,
                hot,
                name: String::new(),
                poll_group: None,
                listen,
                config,
                sample: RateSample::default(),
            },
        );
        Some(h)
    }

    /// The protocol settings for a connection whose own values are `own` (most specific
    /// first), above which the interface and global values apply.
    pub(super) fn connection_config(&self, own: &[&ConfigStore]) -> ConnectionConfig {
        let global = lock(&self.world.config);
        let mut chain: Vec<&ConfigStore> = own.to_vec();
        chain.push(&self.interface);
        chain.push(&global);
        let mut cfg = ConnectionConfig::default();
        apply_to_connection(&chain, &mut cfg);
        cfg
    }

    /// Re-resolves settings of every live connection and listen socket after a change.
    pub(super) fn reapply_config(&mut self) {
        let listen_cfgs: Vec<(EpId, ConnectionConfig, i32)> = self
            .reg
            .listens
            .values()
            .map(|l| {
                let threshold = resolve_int(self, &l.config, ConfigValue::UnprovenHandshakesMax);
                (l.ep, self.connection_config(&[&l.config]), threshold)
            })
            .collect();
        for (ep, cfg, threshold) in listen_cfgs {
            if let Some(e) = self.reg.endpoints.get_mut(&ep) {
                let mut endpoint = e.ep();
                endpoint.set_incoming(cfg);
                endpoint.set_cookie_threshold(threshold.max(0) as usize);
            }
        }
        let conn_cfgs: Vec<(EpId, ConnId, ConnectionConfig)> = self
            .reg
            .conns
            .values()
            .map(|c| {
                let mut own = vec![&c.config];
                if let Some(l) = c.listen.and_then(|l| self.reg.listens.get(&l)) {
                    own.push(&l.config);
                }
                (c.ep, c.id, self.connection_config(&own))
            })
            .collect();
        for (ep, id, mut cfg) in conn_cfgs {
            if let Some(e) = self.reg.endpoints.get(&ep) {
                e.with_conn_mut(id, |c| {
                    cfg.expected_peer = c.config().expected_peer.clone();
                    cfg.allow_without_auth =
                        cfg.allow_without_auth.max(c.config().allow_without_auth);
                    c.set_config(cfg);
                });
            }
        }
        for e in self.reg.endpoints.values() {
            e.link.nudge.notify_one();
        }
    }

    pub(super) fn info(&self, h: ConnectionHandle) -> Result<ConnectionInfo, Error> {
        let entry = self
            .reg
            .conns
            .get(&h)
            .ok_or_else(|| bad_handle("connection", h.0))?;
        let e = self
            .reg
            .endpoints
            .get(&entry.ep)
            .ok_or(Error::NoConnection)?;
        let c = entry.hot.conn.read().ok_or(Error::NoConnection)?;
        let mut flags = c.info_flags();
        if e.loopback_buffers {
            flags |= ConnectionInfoFlags::LOOPBACK_BUFFERS | ConnectionInfoFlags::FAST;
        }
        let mut remote = c.remote_addr();
        let mut route = RouteKind::None;
        let on_path = self.p2p.endpoint == Some(entry.ep) && self.p2p.paths.contains_key(&entry.id);
        if is_path_addr(&remote) || on_path {
            // A transport's path: its own route, not the stand-in address.
            let r = self.route_info(entry.id);
            route = r.kind;
            remote = r
                .remote
                .unwrap_or_else(|| SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)));
            match r.kind {
                RouteKind::Relayed => flags |= ConnectionInfoFlags::RELAYED,
                RouteKind::DirectLocal => flags |= ConnectionInfoFlags::FAST,
                _ => {}
            }
        }
        let name = if entry.name.is_empty() {
            String::new()
        } else {
            format!(" '{}'", entry.name)
        };
        Ok(ConnectionInfo {
            identity_remote: c
                .peer_identity()
                .or(c.p2p().map(|p| &p.peer))
                .cloned()
                .unwrap_or_else(|| Identity::ip(remote)),
            user_data: entry.hot.user_data(),
            listen_socket: entry.listen,
            address_remote: remote,
            state: c.state(),
            end_reason: c.end_reason(),
            end_debug: c.end_debug().to_string(),
            description: format!("#{}{name} {remote}", h.0),
            flags,
            route,
        })
    }

    /// Queues `event` for the callback set in `value` (interface or global scope), if any.
    pub(super) fn queue_callback(
        &mut self,
        event: Box<dyn std::any::Any + Send>,
        value: ConfigValue,
    ) {
        let global = lock(&self.world.config);
        let cb = resolve(value, &[&self.interface, &global])
            .0
            .as_callback()
            .cloned();
        drop(global);
        if let Some(cb) = cb {
            self.callbacks.push_back((event, cb));
        }
    }

    /// The route of a P2P connection's transport path.
    pub(super) fn route_info(&self, id: ConnId) -> RouteInfo {
        self.p2p
            .paths
            .get(&id)
            .map(|p| p.path.route())
            .unwrap_or_default()
    }

    /// Moves things between the P2P endpoint and its connections' transport paths: what
    /// the paths said (signals, readiness, failure), paths to start, signals from the peers'
    /// paths; and closes the paths of connections that are gone.
    pub(super) fn service_paths(&mut self, ep: EpId) {
        if self.p2p.endpoint != Some(ep) || !self.reg.endpoints.contains_key(&ep) {
            return;
        }
        let now = self.world.clock.now();
        let Some(e) = self.reg.endpoints.get_mut(&ep) else {
            return;
        };
        // Paths start first, so what a path says as it starts (a failure at once, say) is
        // heard in this same call, before any signal the caller hands on next.
        let starts: Vec<ConnId> = std::iter::from_fn(|| e.ep().poll_path_start()).collect();
        for id in starts {
            if let Err(why) = self.start_path(ep, id) {
                tracing::debug!(conn = id.0, why, "no transport path started");
            }
        }
        let Some(e) = self.reg.endpoints.get_mut(&ep) else {
            return;
        };
        for (id, p) in &self.p2p.paths {
            let notes: Vec<PathNote> = lock(&p.notes).drain(..).collect();
            for n in notes {
                match n {
                    PathNote::Signal(data) => {
                        if !e.ep().send_path_signal(now, *id, data) {
                            tracing::debug!(conn = id.0, "path signal not sent");
                        }
                    }
                    PathNote::Ready => e.ep().path_ready(*id, p.addr),
                    PathNote::Failed(reason, debug) => e.ep().path_failed(*id, reason, &debug),
                }
            }
        }
        while let Some((id, signal)) = e.ep().poll_path_signal() {
            if let Some(p) = self.p2p.paths.get(&id) {
                p.path.handle_signal(&signal);
            }
        }
        let gone: Vec<ConnId> = self
            .p2p
            .paths
            .keys()
            .filter(|id| e.ep().connection(**id).is_none())
            .copied()
            .collect();
        if !gone.is_empty() {
            let mut table = self
                .p2p
                .path_table
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for id in gone {
                if let Some(p) = self.p2p.paths.remove(&id) {
                    table.remove(&p.addr);
                    p.path.close();
                }
            }
        }
    }

    /// Starts the transport path of P2P connection `id` on endpoint `ep`.
    pub(super) fn start_path(&mut self, ep: EpId, id: ConnId) -> Result<(), &'static str> {
        let transport = self.p2p.transport.clone().ok_or("no transport set")?;
        let tx = self.p2p.path_tx.clone().ok_or("no path input")?;
        let h = self.reg.by_proto.get(&(ep, id)).ok_or("handle released")?;
        let entry = self.reg.conns.get(h).ok_or("handle released")?;
        let e = self.reg.endpoints.get(&ep).ok_or("endpoint gone")?;
        let c = entry.hot.conn.read().ok_or("connection gone")?;
        let p2p = c.p2p().ok_or("not a P2P connection")?;
        let text = |v| {
            self.conn_value(&entry.config, entry.listen, v)
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let int = |v| {
            self.conn_value(&entry.config, entry.listen, v)
                .as_i32()
                .unwrap_or(0)
        };
        let config = PathConfig {
            ice_penalty: int(ConfigValue::P2pTransportIcePenalty),
            ice_implementation: int(ConfigValue::P2pTransportIceImplementation),
            sdr_penalty: int(ConfigValue::P2pTransportSdrPenalty),
            ..PathConfig::from_values(
                &text(ConfigValue::P2pStunServerList),
                &text(ConfigValue::P2pTurnServerList),
                &text(ConfigValue::P2pTurnUserList),
                &text(ConfigValue::P2pTurnPassList),
                int(ConfigValue::P2pTransportIceEnable),
            )
        };
        let addr = path_addr(self.p2p.paths_made.wrapping_add(1));
        let notes = Arc::new(Mutex::new(VecDeque::new()));
        let sink = PathSink::new(
            addr,
            tx,
            notes.clone(),
            e.link.path_notes.clone(),
            e.link.nudge.clone(),
        );
        let params = PathParams {
            local: self.credentials.identity(),
            peer: p2p.peer.clone(),
            session: p2p.session,
            controlling: c.side() == crate::proto::Side::Client,
            config,
            runtime: self.runtime.clone(),
        };
        let path = transport.start_path(params, sink);
        self.p2p.paths_made = self.p2p.paths_made.wrapping_add(1);
        self.p2p
            .path_table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, path.clone());
        if let Some(old) = self.p2p.paths.insert(id, PathEntry { path, addr, notes }) {
            old.path.close();
        }
        Ok(())
    }

    /// A config value as it applies to a connection with its own values `config`, accepted
    /// by `listen`.
    pub(super) fn conn_value(
        &self,
        config: &ConfigStore,
        listen: Option<ListenSocketHandle>,
        value: ConfigValue,
    ) -> ConfigData {
        let global = lock(&self.world.config);
        let mut chain = vec![config];
        if let Some(l) = listen.and_then(|l| self.reg.listens.get(&l)) {
            chain.push(&l.config);
        }
        chain.push(&self.interface);
        chain.push(&global);
        resolve(value, &chain).0
    }

    /// Turns an endpoint's protocol events into status changes for the application.
    pub(super) fn pump(&mut self, ep: EpId) {
        self.service_paths(ep);
        // Events that handling one event causes (an automatic accept) queue behind it.
        while let Some((id, Event::StateChanged { old, new })) = self
            .reg
            .endpoints
            .get_mut(&ep)
            .and_then(|e| e.ep().poll_event())
        {
            let handle = match self.reg.by_proto.get(&(ep, id)) {
                Some(h) => *h,
                None if old == ConnectionState::None && new == ConnectionState::Connecting => {
                    let Some(e) = self.reg.endpoints.get(&ep) else {
                        continue;
                    };
                    if e.auto_accept {
                        if self
                            .add_connection(ep, id, None, ConfigStore::default())
                            .is_none()
                        {
                            continue; // removed already
                        }
                        if let Some(e) = self.reg.endpoints.get_mut(&ep) {
                            let mut endpoint = e.ep();
                            let _ = endpoint.accept(self.world.clock.now(), id);
                            endpoint.set_listen(false);
                            drop(endpoint);
                            e.close_when_empty();
                            e.link.nudge.notify_one();
                        }
                        continue;
                    }
                    let listen = e.listen;
                    match self.add_connection(ep, id, listen, ConfigStore::default()) {
                        Some(h) => h,
                        None => continue, // removed already (an ignored P2P request)
                    }
                }
                None => continue, // closed by the application: no more reports
            };
            if let Some(waiting) = self.p2p.undecided.get_mut(&handle) {
                waiting.deferred.push(old);
                continue;
            }
            self.report(handle, old);
        }
    }

    /// Tells subscribers and the status callback that `handle` left state `old`.
    pub(super) fn report(&mut self, handle: ConnectionHandle, old: ConnectionState) {
        let Ok(info) = self.info(handle) else {
            return;
        };
        let level = match info.state {
            ConnectionState::Connected
            | ConnectionState::ClosedByPeer
            | ConnectionState::ProblemDetectedLocally => DebugOutputType::Important,
            _ => DebugOutputType::Msg,
        };
        crate::debug::emit(level, None, || {
            format!(
                "{} ({}): {old:?} -> {:?} {:?} {}",
                info.description, info.identity_remote, info.state, info.end_reason, info.end_debug
            )
        });
        let event = ConnectionStatusChanged {
            connection: handle,
            info,
            old_state: old,
        };
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
        if let Some(cb) = self.status_callback(handle) {
            self.callbacks.push_back((Box::new(event), cb));
        }
    }

    /// The status-change callback in effect for a connection.
    pub(super) fn status_callback(&self, h: ConnectionHandle) -> Option<CallbackFn> {
        let c = self.reg.conns.get(&h)?;
        self.conn_value(
            &c.config,
            c.listen,
            ConfigValue::CallbackConnectionStatusChanged,
        )
        .as_callback()
        .cloned()
    }
}

impl Shared {
    /// Feeds datagrams received on endpoint `ep`'s socket (on the service thread or a
    /// waiting one) and wakes the threads waiting for activity. Only the endpoint is locked
    /// while they are decrypted and handled; the state lock is taken after, and only when
    /// the endpoint has news for the layer above (status changes, paths to start).
    ///
    /// On a waiting thread (`waiter`) what the datagrams call for (acks, mostly) is left to
    /// the service thread, which is nudged: one thread sends each endpoint's packets. When
    /// the waiting thread sent them too (until 2026-12-04), acks built on two threads reached
    /// the socket out of order, the peer took the gaps for losses (150-700 spurious ones per
    /// 32 MiB on the 50 ms bench row) and the extra acks cost CPU: without them the row went
    /// from 0.84x to 1.02x quinn and the ping-pong p99 from 113 to 58 us in one A/B run.
    /// (A message the application sends with `NoNagle` still goes out on its own thread.)
    pub(super) fn handle_datagrams(
        &self,
        ep: EpId,
        link: &link::EpLink,
        now: Instant,
        inbox: &Inbox,
        waiter: bool,
    ) {
        let mut e = link.endpoint();
        for (from, data) in inbox.iter() {
            e.handle_datagram(now, from, data);
        }
        // On the service thread the driver sends what these datagrams call for at once; a
        // waiting thread wakes it only if it must run before it planned to.
        let due = waiter.then(|| e.next_due(now)).flatten();
        let news = link.has_news(&mut e);
        drop(e);
        if waiter {
            link.wake_if_needed(due, true);
        }
        if news {
            lock(&self.state).pump(ep);
        }
        self.activity.notify();
    }
}

impl Drop for EpDriver {
    fn drop(&mut self) {
        // The endpoint is gone: waiting threads no longer read its socket.
        self.shared.activity.unwatch(self.ep);
    }
}

/// Drives one endpoint from the service thread.
pub(super) struct EpDriver {
    pub(super) shared: Arc<Shared>,
    pub(super) ep: EpId,
    pub(super) link: Arc<link::EpLink>,
}

impl Driven for EpDriver {
    fn divert(&self, to: SocketAddr, data: &[u8]) -> bool {
        if !is_path_addr(&to) {
            return false;
        }
        if let Some(p) = self
            .link
            .paths
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&to)
        {
            p.send(data);
        }
        true
    }

    fn claim_read(&self) -> bool {
        self.link.claim_read()
    }

    fn release_read(&self) {
        self.link.release_read();
    }

    fn read_requested(&self) -> bool {
        // Both taken: neither request is left for a later turn.
        let asked = self.shared.activity.take_read_request(self.ep);
        self.link.take_read_wanted() || asked
    }

    fn fake(&self) -> FakeConditions {
        self.shared.world.fake()
    }

    fn on_datagrams(&self, now: Instant, inbox: &Inbox) {
        self.shared
            .handle_datagrams(self.ep, &self.link, now, inbox, false);
    }

    fn poll(&self, now: Instant, out: &mut Outbox) -> Wake {
        if self.shared.stopped.load(Ordering::Acquire) {
            // The application let go of its `Sockets`: as if its process ended.
            lock(&self.shared.state).reg.endpoints.remove(&self.ep);
            return Wake::Stop;
        }
        // While this turn runs the driver plans no wake-up: a thread that moves a
        // connection's deadline meanwhile (after the touched list was read below) nudges it,
        // and the nudge runs another turn.
        *lock(&self.link.next_wake) = None;
        let p2p = self.link.p2p.load(Ordering::Acquire);
        // Read before the endpoint is found empty: set after, it finds a connection there.
        let closing = self.link.closing.load(Ordering::Acquire);
        // What paths said (a route found, say) may have packets to send now. Taken before
        // the notes are read: one queued after is seen next turn.
        let noted = p2p && self.link.path_notes.swap(false, Ordering::AcqRel);
        if noted {
            lock(&self.shared.state).service_paths(self.ep);
        }
        let mut e = self.link.endpoint();
        e.handle_timeout(now);
        out.fill(|buf| e.poll_transmit(now, buf).map(|t| (t.destination, t.len)));
        let mut signals = Vec::new();
        while let Some(s) = e.poll_signal(now) {
            signals.push(s);
        }
        let wake = e.poll_timeout();
        *lock(&self.link.next_wake) = wake;
        let news = self.link.has_news(&mut e);
        let empty = e.connection_ids().next().is_none();
        drop(e);
        if !signals.is_empty() {
            let st = lock(&self.shared.state);
            let signals: Vec<(Arc<dyn Signaling>, Identity, Vec<u8>)> = signals
                .into_iter()
                .filter_map(|(id, peer, bytes)| {
                    let via = st
                        .p2p
                        .conn_signaling
                        .get(&id)
                        .or(st.p2p.signaling.as_ref())?;
                    Some((via.clone(), peer, bytes))
                })
                .collect();
            // Sent without the lock held: the signaling may call back into `Sockets`.
            drop(st);
            for (via, peer, bytes) in &signals {
                via.send_signal(peer, bytes);
            }
        }
        let done = empty && closing;
        if news || done {
            let mut st = lock(&self.shared.state);
            st.pump(self.ep);
            // Still empty now that the state is locked (a waiting thread may have let a
            // connection in since).
            let done = done && self.link.endpoint().connection_ids().next().is_none();
            if done && out.is_empty() {
                st.reg.endpoints.remove(&self.ep);
                return Wake::Stop;
            }
        }
        wake.map_or(Wake::Idle, Wake::At)
    }
}
