//! Sending and receiving messages, lanes, poll groups.

use super::*;

impl Sockets {
    // ----- messages ----------------------------------------------------------------------

    /// Sends a message; returns its message number.
    pub fn send_message_to_connection(
        &self,
        h: ConnectionHandle,
        data: impl Into<Bytes>,
        flags: SendFlags,
    ) -> Result<u64, Error> {
        let mut st = self.state();
        st.send(h, data.into(), flags, 0)
    }

    /// Sends a batch; payloads are shared, not copied. One result per message.
    pub fn send_messages(&self, messages: Vec<OutMessage>) -> Vec<Result<u64, Error>> {
        let mut st = self.state();
        messages
            .into_iter()
            .map(|m| st.send(m.connection, m.payload, m.flags, m.lane))
            .collect()
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
        let mut st = self.state();
        let (ep, id) = st.reg.locate(h)?;
        let e = st.reg.endpoints.get_mut(&ep).ok_or(Error::NoConnection)?;
        e.endpoint
            .connection_mut(id)
            .ok_or(Error::NoConnection)?
            .configure_lanes(priorities, weights)
    }

    /// Sends everything queued on a connection without waiting for Nagle.
    pub fn flush_messages_on_connection(&self, h: ConnectionHandle) -> Result<(), Error> {
        let mut st = self.state();
        let (ep, id) = st.reg.locate(h)?;
        let e = st.reg.endpoints.get_mut(&ep).ok_or(Error::NoConnection)?;
        let r = e
            .endpoint
            .connection_mut(id)
            .ok_or(Error::NoConnection)?
            .flush();
        e.nudge.notify_one();
        r
    }

    /// Takes up to `max` messages received on a connection.
    pub fn receive_messages_on_connection(
        &self,
        h: ConnectionHandle,
        max: usize,
    ) -> Result<Vec<Message>, Error> {
        let mut st = self.state();
        st.reg.locate(h)?;
        let mut out = Vec::new();
        while out.len() < max {
            match st.take_message(h) {
                Some(m) => out.push(m),
                None => break,
            }
        }
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
        let mut st = self.state();
        let members = st
            .reg
            .groups
            .get(&g)
            .ok_or_else(|| bad_handle("poll group", g.0))?
            .clone();
        let mut out = Vec::new();
        while out.len() < max {
            // The member whose next message arrived first.
            let next = members
                .iter()
                .filter_map(|h| st.peek_time(*h).map(|t| (t, *h)))
                .min();
            match next.and_then(|(_, h)| st.take_message(h)) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        Ok(out)
    }
}
