//! Socket pairs (two connected connections in one process) and waiting for activity.

use super::*;

impl Sockets {
    // ----- socket pairs ------------------------------------------------------------------

    /// Two connections joined to each other, for tests and in-process use. With
    /// `use_network_loopback` they talk over real loopback UDP (encrypted, subject to the
    /// fake network conditions); otherwise over in-process buffers. Each side takes the given
    /// identity (or "localhost"). Returns once both are connected: the handshake is local, so
    /// this takes well under a millisecond (unless fake network conditions are in force; it
    /// then waits up to `TimeoutInitial`).
    pub fn create_socket_pair(
        &self,
        use_network_loopback: bool,
        identity1: Option<Identity>,
        identity2: Option<Identity>,
    ) -> Result<(ConnectionHandle, ConnectionHandle), Error> {
        let (io1, io2) = if use_network_loopback {
            let lo: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
            (self.bind(lo)?, self.bind(lo)?)
        } else {
            let n = self.shared.world.seed() as u16 | 1;
            Io::pipe_pair(
                (Ipv4Addr::new(127, 0, 0, 1), n).into(),
                (Ipv4Addr::new(127, 0, 0, 2), n).into(),
            )
            .map_err(io_err)?
        };
        let addr1 = io1.local_addr().map_err(io_err)?;
        let addr2 = io2.local_addr().map_err(io_err)?;
        let mut st = self.state();
        let mut cfg = st.connection_config(&[]);
        cfg.allow_without_auth = 2;
        let creds = |id: Option<Identity>, key: &Credentials| Credentials {
            identity: Some(id.unwrap_or_else(Identity::localhost)),
            key: key.key.clone(),
            ..Credentials::default()
        };
        let c1 = creds(identity1, &st.credentials);
        let c2 = creds(identity2, &st.credentials);
        // Side 2 listens and accepts on its own; side 1 connects to it.
        let ep2 = st.reg.add_endpoint(
            EndpointConfig {
                credentials: c2,
                listen: true,
                incoming: cfg.clone(),
                ..EndpointConfig::default()
            },
            addr2,
            None,
        );
        let ep1 = st.reg.add_endpoint(
            EndpointConfig {
                credentials: c1,
                ..EndpointConfig::default()
            },
            addr1,
            None,
        );
        for ep in [ep1, ep2] {
            let e = st.reg.endpoints.get_mut(&ep).expect("just added");
            e.loopback_buffers = !use_network_loopback;
        }
        // Side 1 lives as long as its connection; side 2 from when it has accepted one.
        st.reg
            .endpoints
            .get_mut(&ep1)
            .expect("just added")
            .close_when_empty();
        st.reg
            .endpoints
            .get_mut(&ep2)
            .expect("just added")
            .auto_accept = true;
        let timeout_initial = cfg.timeout_initial;
        let id1 = st
            .reg
            .endpoints
            .get_mut(&ep1)
            .expect("just added")
            .ep()
            .connect(self.now(), addr2, cfg);
        let h1 = st
            .add_connection(ep1, id1, None, ConfigStore::default())
            .ok_or(Error::NoConnection)?;
        st.pump(ep1);
        drop(st);
        self.spawn_driver(ep1, io1);
        self.spawn_driver(ep2, io2);
        // Wait for the local handshake: quick, unless fake loss and lag are in force; then up
        // to the usual time allowed for connecting.
        let deadline = self.now() + timeout_initial;
        let mut pair = None;
        let wake = Notify::new();
        let wake = self.shared.world.wake.as_deref().unwrap_or(&wake);
        self.rt
            .wait_until(deadline, wake, Duration::from_micros(200), || {
                let st = self.state();
                let h2 = st
                    .reg
                    .conns
                    .iter()
                    .find(|(_, c)| c.ep == ep2)
                    .map(|(h, _)| *h);
                let connected = |h: ConnectionHandle| {
                    st.info(h)
                        .is_ok_and(|i| i.state == ConnectionState::Connected)
                };
                pair = h2
                    .filter(|h2| connected(h1) && connected(*h2))
                    .map(|h2| (h1, h2));
                pair.is_some()
            });
        pair.ok_or(Error::InvalidState)
    }

    /// Blocks the calling thread until there has been activity on this instance since the
    /// thread's previous wait (datagrams handled, so messages or status changes may be
    /// waiting; or a callback queued), or until `timeout` passes. May return early. For
    /// threads that would otherwise poll in a loop; tokio code can use
    /// [`status_events`](Self::status_events) instead.
    ///
    /// While it waits, the thread sleeps on the sockets themselves: a datagram that arrives
    /// wakes it and is handled on this thread, which saves a thread hand-off on every reply
    /// (unless fake network conditions are in force: those apply in the service thread).
    pub fn wait_for_activity(&self, timeout: Duration) {
        let read = self.shared.world.fake().is_clean();
        self.shared
            .activity
            .wait(&self.shared, &self.rt, timeout, read);
    }

    /// Like [`wait_for_activity`](Self::wait_for_activity), but first reads the sockets on
    /// this thread for up to `spin` (busy, burning this core). Rarely worth it now that the
    /// plain wait sleeps on the sockets; kept for loops that measured a gain.
    pub fn wait_for_activity_spinning(&self, timeout: Duration, spin: Duration) {
        let read = self.shared.world.fake().is_clean();
        // In a virtual world nothing arrives while time stands still: no spinning there.
        if read && !self.rt.is_virtual() {
            let spin_until = Instant::now() + spin.min(timeout);
            while Instant::now() < spin_until {
                if self.shared.activity.read_sockets(&self.shared) {
                    return;
                }
                std::hint::spin_loop();
            }
        }
        self.shared
            .activity
            .wait(&self.shared, &self.rt, timeout, read);
    }
}
