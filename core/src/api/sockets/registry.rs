//! The registry: every endpoint and connection of a `Sockets`, the handles the application
//! holds for them, listen sockets and poll groups. It owns the lookup tables and keeps them
//! consistent (a connection is in `conns` and `by_proto` together, and in its poll group's
//! member list while it has one); the facade and the driver glue go through it.

use super::*;

pub(super) struct Registry {
    pub(super) endpoints: FxHashMap<EpId, EpState>,
    pub(super) conns: FxHashMap<ConnectionHandle, ConnEntry>,
    pub(super) by_proto: FxHashMap<(EpId, ConnId), ConnectionHandle>,
    pub(super) listens: FxHashMap<ListenSocketHandle, ListenEntry>,
    pub(super) groups: FxHashMap<PollGroupHandle, Vec<ConnectionHandle>>,
    /// The shared endpoint for outgoing connections, per address family (true: IPv6).
    pub(super) client_endpoints: FxHashMap<bool, EpId>,
    /// Live connections by handle for the data path: kept with `conns`.
    pub(super) hot: link::HotTable,
    /// The P2P transport paths, for endpoints' links.
    paths: PathTable,
    /// The world, for endpoints' links and seeds.
    world: Arc<World>,
    /// The next handle number: endpoints, connections, listen sockets and poll groups share
    /// one sequence, so no two live handles of any kind are equal. Never 0.
    next_handle: u32,
}

impl Registry {
    pub(super) fn new(paths: PathTable, world: Arc<World>) -> Self {
        Self {
            endpoints: FxHashMap::default(),
            conns: FxHashMap::default(),
            by_proto: FxHashMap::default(),
            listens: FxHashMap::default(),
            groups: FxHashMap::default(),
            client_endpoints: FxHashMap::default(),
            hot: link::HotTable::default(),
            paths,
            world,
            next_handle: 1,
        }
    }

    pub(super) fn fresh_handle(&mut self) -> u32 {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }

    pub(super) fn add_endpoint(
        &mut self,
        config: EndpointConfig,
        local_addr: SocketAddr,
        listen: Option<ListenSocketHandle>,
    ) -> EpId {
        let id = self.fresh_handle();
        // 256 bits: the seed makes the ephemeral key-exchange secrets and the cookie key.
        let mut seed = [0u8; 32];
        self.world.rng().fill_bytes(&mut seed);
        let endpoint =
            Endpoint::with_seed(config, seed, self.world.clock.now(), self.world.unix_now());
        let link = link::EpLink::new(endpoint, self.paths.clone(), self.world.clone());
        self.endpoints.insert(
            id,
            EpState {
                link: Arc::new(link),
                local_addr,
                listen,
                loopback_buffers: false,
                auto_accept: false,
            },
        );
        id
    }

    /// Takes a released connection out of every table; its entry, if it was there.
    pub(super) fn remove_connection(&mut self, h: ConnectionHandle) -> Option<ConnEntry> {
        let entry = self.conns.remove(&h)?;
        self.by_proto.remove(&(entry.ep, entry.id));
        self.hot
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&h);
        if let Some(g) = entry.poll_group {
            if let Some(m) = self.groups.get_mut(&g) {
                m.retain(|x| *x != h);
            }
        }
        Some(entry)
    }

    pub(super) fn locate(&self, h: ConnectionHandle) -> Result<(EpId, ConnId), Error> {
        let c = self
            .conns
            .get(&h)
            .ok_or_else(|| bad_handle("connection", h.0))?;
        Ok((c.ep, c.id))
    }

    /// Files a new connection under handle `h` and its endpoint's id.
    pub(super) fn insert_connection(&mut self, h: ConnectionHandle, entry: ConnEntry) {
        self.by_proto.insert((entry.ep, entry.id), h);
        self.hot
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(h, entry.hot.clone());
        self.conns.insert(h, entry);
    }

    /// Moves connection `h` into poll group `g` (out of any, for `INVALID`).
    pub(super) fn set_poll_group(
        &mut self,
        h: ConnectionHandle,
        g: PollGroupHandle,
    ) -> Result<(), Error> {
        let new = (g != PollGroupHandle::INVALID).then_some(g);
        if new.is_some_and(|g| !self.groups.contains_key(&g)) {
            return Err(bad_handle("poll group", g.0));
        }
        let c = self
            .conns
            .get_mut(&h)
            .ok_or_else(|| bad_handle("connection", h.0))?;
        let old = std::mem::replace(&mut c.poll_group, new);
        if let Some(m) = old.and_then(|old| self.groups.get_mut(&old)) {
            m.retain(|x| *x != h);
        }
        if let Some(m) = new.and_then(|g| self.groups.get_mut(&g)) {
            m.push(h);
        }
        Ok(())
    }

    /// Destroys poll group `g`; its connections stay, in no group. False if there was none.
    pub(super) fn remove_poll_group(&mut self, g: PollGroupHandle) -> bool {
        let Some(members) = self.groups.remove(&g) else {
            return false;
        };
        for h in members {
            if let Some(c) = self.conns.get_mut(&h) {
                c.poll_group = None;
            }
        }
        true
    }
}
