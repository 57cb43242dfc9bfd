//! FakeIP: the provider, requests, this host's fake IP and ports, fake addresses of peers.

use super::*;

/// What a `Sockets` knows of FakeIP.
#[derive(Default)]
pub(super) struct FakeIpState {
    /// Where global fake IPs come from (the signaling client).
    pub(super) provider: Option<Arc<dyn FakeIpProvider>>,
    /// Our fake IP and ports, once allocated; whether a request is under way.
    pub(super) ip: Option<(Ipv4Addr, Vec<u16>)>,
    pub(super) pending: bool,
    /// Fake IPs known to stand for identities.
    pub(super) identities: HashMap<Ipv4Addr, Identity>,
    /// Connections made to a fake IP and port, with that address.
    pub(super) remotes: HashMap<ConnectionHandle, SocketAddrV4>,
}

impl Sockets {
    // ----- FakeIP ------------------------------------------------------------------------

    /// Sets where global fake IPs come from (the signaling client does this).
    pub fn set_fake_ip_provider(&self, provider: Arc<dyn FakeIpProvider>) {
        self.state().fake.provider = Some(provider);
    }

    /// Starts allocating a fake IP with `num_ports` ports (1 to 4) for this identity: global
    /// from the signaling server when one is set, else local to this process. The result goes
    /// to the `Callback_FakeIPResult` callback (see [`run_callbacks`](Self::run_callbacks))
    /// and to [`get_fake_ip`](Self::get_fake_ip). False when a request is under way already or
    /// `num_ports` is out of range.
    pub fn begin_async_request_fake_ip(&self, num_ports: usize) -> bool {
        if !(1..=MAX_FAKE_PORTS).contains(&num_ports) {
            return false;
        }
        let mut st = self.state();
        if st.fake.pending {
            return false;
        }
        st.fake.pending = true;
        if let Some(p) = st.fake.provider.clone() {
            drop(st);
            p.request_fake_ip(num_ports);
            return true;
        }
        drop(st);
        let result = allocate_local_fake_ip(num_ports);
        self.complete_fake_ip_request(result);
        true
    }

    /// Our fake IP and its ports, once allocated.
    pub fn get_fake_ip(&self) -> Option<(Ipv4Addr, Vec<u16>)> {
        self.state().fake.ip.clone()
    }

    /// The identity a fake IP stands for, when known: ours, one the signaling server told us
    /// about, or one asked for before (this call asks the server in the background when it
    /// does not know; ask again later).
    pub fn get_real_identity_for_fake_ip(&self, ip: Ipv4Addr) -> Option<Identity> {
        let st = self.state();
        if st.fake.ip.as_ref().is_some_and(|(own, _)| *own == ip) {
            return Some(st.credentials.identity());
        }
        if let Some(id) = st.fake.identities.get(&ip) {
            return Some(id.clone());
        }
        if get_ipv4_fake_ip_type(ip) == FakeIpType::LocalIpv4 {
            return lock(&LOCAL_FAKE_OWNERS).get(&ip).cloned();
        }
        if let Some(p) = st.fake.provider.clone() {
            if get_ipv4_fake_ip_type(ip) == FakeIpType::GlobalIpv4 {
                drop(st);
                p.resolve_fake_ip(ip);
            }
        }
        None
    }

    /// Listens for P2P connections to our fake IP at its port number `fake_port_index`
    /// (peers connect with `connect_by_ip_address(fake_ip:port)`). Needs the fake IP
    /// allocated ([`begin_async_request_fake_ip`](Self::begin_async_request_fake_ip)); the
    /// fake port is the virtual port, so it shares their numbers.
    pub fn create_listen_socket_p2p_fake_ip(
        &self,
        fake_port_index: usize,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ListenSocketHandle, Error> {
        let (_, port) = self.fake_port(fake_port_index)?;
        self.create_listen_socket_p2p(port, options)
    }

    /// Our fake IP and its port number `index`.
    pub(crate) fn fake_port(&self, index: usize) -> Result<(Ipv4Addr, u16), Error> {
        let (ip, ports) = self.get_fake_ip().ok_or_else(|| {
            Error::InvalidParam("no fake IP yet: call begin_async_request_fake_ip first".into())
        })?;
        let port = *ports.get(index).ok_or_else(|| {
            Error::InvalidParam(format!(
                "fake port index {index}: the fake IP has {} ports",
                ports.len()
            ))
        })?;
        Ok((ip, port))
    }

    /// The fake IP `identity` holds, when known.
    pub(crate) fn fake_ip_of(&self, identity: &Identity) -> Option<Ipv4Addr> {
        let st = self.state();
        if &st.credentials.identity() == identity {
            return st.fake.ip.as_ref().map(|(ip, _)| *ip);
        }
        let known = st
            .fake
            .identities
            .iter()
            .find(|(_, id)| *id == identity)
            .map(|(ip, _)| *ip);
        drop(st);
        known.or_else(|| {
            lock(&LOCAL_FAKE_OWNERS)
                .iter()
                .find(|(_, id)| *id == identity)
                .map(|(ip, _)| *ip)
        })
    }

    /// The peer's fake address on a connection: the fake IP and port it was made to (by
    /// `connect_by_ip_address` with a fake IP); for other P2P connections, the peer's fake
    /// IP when known, with port 0 (the peer connects from no particular fake port). `None`
    /// otherwise.
    pub fn get_remote_fake_ip_for_connection(&self, h: ConnectionHandle) -> Option<SocketAddrV4> {
        let peer = {
            let st = self.state();
            if let Some(a) = st.fake.remotes.get(&h) {
                return Some(*a);
            }
            let entry = st.reg.conns.get(&h)?;
            let e = st.reg.endpoints.get(&entry.ep)?;
            let peer = e.ep().connection(entry.id)?.p2p()?.peer.clone();
            peer
        };
        self.fake_ip_of(&peer).map(|ip| SocketAddrV4::new(ip, 0))
    }

    /// `connect_by_ip_address` to a fake IP: a P2P connection to the identity holding it, on
    /// the virtual port of the fake port.
    pub(super) fn connect_fake_ip(
        &self,
        addr: SocketAddrV4,
        options: &[(ConfigValue, ConfigData)],
    ) -> Result<ConnectionHandle, Error> {
        let identity = self
            .get_real_identity_for_fake_ip(*addr.ip())
            .ok_or(Error::InvalidState)?;
        let h = self.connect_p2p(&identity, addr.port(), options)?;
        self.state().fake.remotes.insert(h, addr);
        Ok(h)
    }

    /// Completes a fake-IP request (the provider calls this with the server's answer).
    pub fn complete_fake_ip_request(&self, result: Result<(Ipv4Addr, Vec<u16>), String>) {
        let mut st = self.state();
        st.fake.pending = false;
        let identity = st.credentials.identity();
        let event = match result {
            Ok((ip, ports)) => {
                st.fake.ip = Some((ip, ports.clone()));
                if get_ipv4_fake_ip_type(ip) == FakeIpType::LocalIpv4 {
                    // Other `Sockets` of this process may look it up.
                    lock(&LOCAL_FAKE_OWNERS).insert(ip, identity.clone());
                }
                FakeIpResult {
                    result: Ok(()),
                    identity,
                    ip,
                    ports,
                }
            }
            Err(why) => FakeIpResult {
                result: Err(why),
                identity,
                ip: Ipv4Addr::UNSPECIFIED,
                ports: Vec::new(),
            },
        };
        st.queue_callback(Box::new(event), ConfigValue::CallbackFakeIpResult);
    }

    /// Records that `ip` stands for `identity` (or for nobody) (the provider calls this).
    pub fn learn_fake_ip(&self, ip: Ipv4Addr, identity: Option<Identity>) {
        let mut st = self.state();
        match identity {
            Some(id) => {
                if st.fake.identities.len() >= 4096 {
                    st.fake.identities.clear();
                }
                st.fake.identities.insert(ip, id);
            }
            None => {
                st.fake.identities.remove(&ip);
            }
        }
    }
}
