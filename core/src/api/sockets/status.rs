//! Connection info and status, user data and names, identity and authentication, the text report, callbacks and status events.

use super::*;

impl Sockets {
    /// Queues `event` for [`run_callbacks`](Self::run_callbacks), for the callback set in
    /// `value` (interface or global scope), if any.
    pub(crate) fn queue_callback(&self, event: Box<dyn std::any::Any + Send>, value: ConfigValue) {
        self.state().queue_callback(event, value);
    }

    // ----- info --------------------------------------------------------------------------

    /// Identity, address, state, end reason and flags of a connection.
    pub fn get_connection_info(&self, h: ConnectionHandle) -> Result<ConnectionInfo, Error> {
        self.state().info(h)
    }

    /// Real-time status: ping, quality, rates, queues.
    pub fn get_quick_connection_status(&self, h: ConnectionHandle) -> Result<QuickStatus, Error> {
        let mut st = self.state();
        st.reg.locate(h)?;
        let now = self.now();
        let (path, stats, state) = {
            let c = st.reg.conns[&h]
                .hot
                .conn
                .read()
                .ok_or(Error::NoConnection)?;
            (c.path_status(now), c.stats().clone(), c.state())
        };
        let entry = st.reg.conns.get_mut(&h).expect("located");
        let s = &mut entry.sample;
        let (since, elapsed) = match s.at {
            Some(at) => (
                *s,
                now.saturating_duration_since(at).as_secs_f32().max(0.001),
            ),
            None => (RateSample::default(), 1.0),
        };
        let rate = |now: u64, then: u64| (now.saturating_sub(then)) as f32 / elapsed;
        let status = QuickStatus {
            state,
            // To the nearest millisecond: the smoothed RTT nears a steady one from below.
            ping_ms: (path.rtt + Duration::from_micros(500)).as_millis() as i32,
            connection_quality_local: path.received_fraction,
            connection_quality_remote: path.delivered_fraction,
            out_packets_per_sec: rate(stats.packets_sent, since.packets_out),
            out_bytes_per_sec: rate(stats.bytes_sent, since.bytes_out),
            in_packets_per_sec: rate(stats.packets_received, since.packets_in),
            in_bytes_per_sec: rate(stats.bytes_received, since.bytes_in),
            send_rate_bytes_per_sec: path.send_rate as i64,
            pending_unreliable: path.pending_unreliable as i64,
            pending_reliable: path.pending_reliable as i64,
            sent_unacked_reliable: path.sent_unacked_reliable as i64,
            queue_time_usec: path.queue_time.as_micros() as i64,
        };
        if s.at
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
        {
            *s = RateSample {
                at: Some(now),
                packets_out: stats.packets_sent,
                bytes_out: stats.bytes_sent,
                packets_in: stats.packets_received,
                bytes_in: stats.bytes_received,
            };
        }
        Ok(status)
    }

    /// A multi-line text report of a connection, for humans.
    pub fn get_detailed_connection_status(&self, h: ConnectionHandle) -> Result<String, Error> {
        let info = self.get_connection_info(h)?;
        let q = self.get_quick_connection_status(h)?;
        let st = self.state();
        let (ep, id) = st.reg.locate(h)?;
        let entry = st.reg.conns.get(&h).ok_or(Error::NoConnection)?;
        let c = entry.hot.conn.read().ok_or(Error::NoConnection)?;
        let s = c.stats();
        let p = c.path_status(self.now());
        let mut route = String::new();
        if st.p2p.endpoint == Some(ep) && st.p2p.paths.contains_key(&id) {
            let r = st.route_info(id);
            route = format!("\nroute: {:?}", r.kind);
            if let Some(a) = r.remote {
                route.push_str(&format!(" to {a}"));
            }
            if r.switches > 0 {
                route.push_str(&format!(" (switched routes {} times)", r.switches));
            }
            for line in &r.pairs {
                route.push_str("\n  ");
                route.push_str(line);
            }
        }
        Ok(format!(
            "{desc}\n\
             state: {state:?}  end: {end:?} {debug:?}\n\
             peer: {peer}  flags: {flags:?}\n\
             ping: {ping} ms  quality local {ql:.3} remote {qr:.3}\n\
             rates: out {op:.0} pkt/s {ob:.0} B/s, in {ip:.0} pkt/s {ib:.0} B/s, send rate {sr} B/s\n\
             window: {cw} B, in flight {inf} B\n\
             queues: reliable {pr} B, unreliable {pu} B, unacked {ua} B, oldest {qt} us\n\
             totals: sent {ps} pkts / {bs} B, received {pr2} pkts / {br} B, lost {lost}, \
             retransmitted {rt} segments, {sp} spurious losses\n\
             dropped: {df} failed decryption, {rd} replays, {mf} malformed, {rb} receive-buffer\n\
             messages: {ms} sent, {mr} received{route}",
            desc = info.description,
            state = info.state,
            end = info.end_reason,
            debug = info.end_debug,
            peer = info.identity_remote,
            flags = info.flags,
            ping = q.ping_ms,
            ql = q.connection_quality_local,
            qr = q.connection_quality_remote,
            op = q.out_packets_per_sec,
            ob = q.out_bytes_per_sec,
            ip = q.in_packets_per_sec,
            ib = q.in_bytes_per_sec,
            sr = q.send_rate_bytes_per_sec,
            cw = p.congestion_window,
            inf = p.bytes_in_flight,
            pr = q.pending_reliable,
            pu = q.pending_unreliable,
            ua = q.sent_unacked_reliable,
            qt = q.queue_time_usec,
            ps = s.packets_sent,
            bs = s.bytes_sent,
            pr2 = s.packets_received,
            br = s.bytes_received,
            lost = s.packets_lost,
            rt = s.segments_retransmitted,
            sp = s.spurious_losses,
            df = s.decrypt_failures,
            rd = s.replays_dropped,
            mf = s.malformed,
            rb = s.recv_buffer_drops,
            ms = s.messages_sent,
            mr = s.messages_received,
        ))
    }

    /// Sets a connection's user data (returned in messages and info).
    pub fn set_connection_user_data(&self, h: ConnectionHandle, data: i64) -> bool {
        match self.state().reg.conns.get_mut(&h) {
            Some(c) => {
                c.hot.set_user_data(data);
                true
            }
            None => false,
        }
    }

    /// A connection's user data, or -1 for an invalid handle.
    pub fn get_connection_user_data(&self, h: ConnectionHandle) -> i64 {
        self.state()
            .reg
            .conns
            .get(&h)
            .map_or(-1, |c| c.hot.user_data())
    }

    /// Names a connection (for descriptions and logs).
    pub fn set_connection_name(&self, h: ConnectionHandle, name: &str) -> bool {
        match self.state().reg.conns.get_mut(&h) {
            Some(c) => {
                c.name = name.chars().take(64).collect();
                true
            }
            None => false,
        }
    }

    /// A connection's name.
    pub fn get_connection_name(&self, h: ConnectionHandle) -> Option<String> {
        self.state().reg.conns.get(&h).map(|c| c.name.clone())
    }

    /// This instance's identity.
    pub fn get_identity(&self) -> Identity {
        self.state().credentials.identity()
    }

    /// Makes sure this instance can authenticate: it always holds a key, so this reports
    /// `Current` at once.
    pub fn init_authentication(&self) -> Availability {
        self.get_authentication_status().0
    }

    /// Whether this instance can prove its identity, and a sentence saying how.
    pub fn get_authentication_status(&self) -> (Availability, String) {
        let st = self.state();
        let c = &st.credentials;
        let how = match (&c.cert, &c.key) {
            (Some(_), _) => format!("certificate for {}", c.identity()),
            (None, Some(_)) => format!("self-certifying key identity {}", c.identity()),
            (None, None) => "no key: connections are unauthenticated".to_string(),
        };
        let a = if c.key.is_some() {
            Availability::Current
        } else {
            Availability::CannotTry
        };
        (a, how)
    }

    // ----- events ------------------------------------------------------------------------

    /// Delivers queued status changes to the callbacks set through
    /// `Callback_ConnectionStatusChanged`, on the calling thread.
    pub fn run_callbacks(&self) {
        loop {
            let next = self.state().callbacks.pop_front();
            let Some((event, cb)) = next else {
                return;
            };
            (cb.0)(&*event);
        }
    }

    /// Every status change from now on, as an async stream.
    pub fn status_events(&self) -> StatusEvents {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().subscribers.push(tx);
        StatusEvents::new(rx)
    }
}
