//! Sending and receiving messages, lanes, poll groups.

use super::*;

impl Sockets {
    /// Connection `h` for the data path (no state lock taken).
    fn hot(&self, h: ConnectionHandle) -> Result<Arc<link::HotConn>, Error> {
        self.shared
            .hot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
            .cloned()
            .ok_or_else(|| bad_handle("connection", h.0))
    }

    // ----- messages ----------------------------------------------------------------------

    /// Sends a message; returns its message number.
    pub fn send_message_to_connection(
        &self,
        h: ConnectionHandle,
        data: impl Into<Bytes>,
        flags: SendFlags,
    ) -> Result<u64, Error> {
        self.hot(h)?.send(h, data.into(), flags, 0)
    }

    /// Sends a batch; payloads are shared, not copied. One result per message. A run of
    /// messages to one connection is queued in one go: its lanes' priorities and weights
    /// decide what goes first, not the order within the run.
    pub fn send_messages(&self, messages: Vec<OutMessage>) -> Vec<Result<u64, Error>> {
        let mut out = Vec::with_capacity(messages.len());
        let mut rest = messages.into_iter().peekable();
        while let Some(first) = rest.next() {
            let h = first.connection;
            let mut run = vec![(first.payload, first.flags, first.lane)];
            while let Some(m) = rest.next_if(|m| m.connection == h) {
                run.push((m.payload, m.flags, m.lane));
            }
            match self.hot(h) {
                Ok(hot) => hot.send_all(h, run, |r| out.push(r)),
                Err(_) => out.extend(run.iter().map(|_| Err(bad_handle("connection", h.0)))),
            }
        }
        out
    }

    /// Sets up a connection's outgoing lanes (the reference API's
    /// `ConfigureConnectionLanes`): one priority and one weight per lane. A lane is served
    /// only when every lane of a lower priority number is empty; lanes of equal priority
    /// share the bandwidth in proportion to their weights (an idle lane saves no credit).
    /// Messages keep their order within a lane; across lanes they go (and arrive) in the
    /// order they are sent. Lanes may be added later, not removed. Messages choose their
    /// lane with [`OutMessage::lane`]; `send_message_to_connection` uses lane 0.
    pub fn configure_connection_lanes(
        &self,
        h: ConnectionHandle,
        priorities: &[i32],
        weights: &[u16],
    ) -> Result<(), Error> {
        let hot = self.hot(h)?;
        let r = hot
            .conn
            .lock()
            .ok_or(Error::NoConnection)?
            .configure_lanes(priorities, weights);
        r
    }

    /// Sends everything queued on a connection without waiting for Nagle.
    pub fn flush_messages_on_connection(&self, h: ConnectionHandle) -> Result<(), Error> {
        let hot = self.hot(h)?;
        let r = hot.conn.lock().ok_or(Error::NoConnection)?.flush();
        hot.link.nudge.notify_one();
        r
    }

    /// Takes up to `max` messages received on a connection.
    pub fn receive_messages_on_connection(
        &self,
        h: ConnectionHandle,
        max: usize,
    ) -> Result<Vec<Message>, Error> {
        let mut out = Vec::new();
        self.hot(h)?.receive(h, max, &mut out);
        Ok(out)
    }

    // ----- poll groups -------------------------------------------------------------------

    /// A new, empty poll group.
    pub fn create_poll_group(&self) -> PollGroupHandle {
        let mut st = self.state();
        let g = PollGroupHandle(st.reg.fresh_handle());
        st.reg.groups.insert(g, Vec::new());
        g
    }

    /// Destroys a poll group; its connections stay open, in no group.
    pub fn destroy_poll_group(&self, g: PollGroupHandle) -> bool {
        self.state().reg.remove_poll_group(g)
    }

    /// Puts a connection in a poll group (or in none, with [`PollGroupHandle::INVALID`]).
    pub fn set_connection_poll_group(
        &self,
        h: ConnectionHandle,
        g: PollGroupHandle,
    ) -> Result<(), Error> {
        self.state().reg.set_poll_group(h, g)
    }

    /// Takes up to `max` messages from the connections of a poll group, in arrival order.
    pub fn receive_messages_on_poll_group(
        &self,
        g: PollGroupHandle,
        max: usize,
    ) -> Result<Vec<Message>, Error> {
        let members: Vec<(ConnectionHandle, Arc<link::HotConn>)> = {
            let st = self.state();
            st.reg
                .groups
                .get(&g)
                .ok_or_else(|| bad_handle("poll group", g.0))?
                .iter()
                .filter_map(|h| Some((*h, st.reg.conns.get(h)?.hot.clone())))
                .collect()
        };
        let mut out = Vec::new();
        // A merge by arrival time: each round looks at every member once, then takes from
        // the one whose next message came first everything that came before the others'
        // next ones (and before the look, so later arrivals wait for the next round).
        loop {
            let looked = self.now();
            let mut heads: Vec<(Option<Instant>, ConnectionHandle, &link::HotConn)> = members
                .iter()
                .map(|(h, c)| (c.peek_time(), *h, &**c))
                .collect();
            let mut took_any = false;
            while out.len() < max {
                let Some(first) = (0..heads.len())
                    .filter(|&i| heads[i].0.is_some_and(|t| t <= looked))
                    .min_by_key(|&i| (heads[i].0, heads[i].1))
                else {
                    break;
                };
                let others = (0..heads.len())
                    .filter(|&i| i != first)
                    .filter_map(|i| heads[i].0)
                    .min();
                let until = others.map_or(looked, |t| t.min(looked));
                let (_, h, c) = heads[first];
                let before = out.len();
                heads[first].0 = c.receive_until(h, max - out.len(), Some(until), &mut out);
                took_any |= out.len() > before;
            }
            if out.len() >= max || !took_any {
                break;
            }
        }
        Ok(out)
    }
}
