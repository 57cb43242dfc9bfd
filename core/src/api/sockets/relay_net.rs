//! The relay network and ping locations (the Utils calls).

use super::*;

impl Sockets {
    // ----- relay network (Utils) ------------------------------------------------------------

    /// Sets the relay network: its POPs and how to ping them (the signaling crate's
    /// `PopPinger`). Status changes go to the `Callback_RelayNetworkStatusChanged` callback
    /// through [`run_callbacks`](Self::run_callbacks), as a [`RelayNetworkStatus`].
    pub fn set_relay_network(&self, pinger: Arc<dyn PopPinger>) {
        let weak = Arc::downgrade(&self.shared);
        let runtime = self.state().runtime.clone();
        let net = RelayNetwork::new(
            pinger,
            runtime,
            Box::new(move |status| {
                if let Some(shared) = weak.upgrade() {
                    lock(&shared.state).queue_callback(
                        Box::new(status),
                        ConfigValue::CallbackRelayNetworkStatusChanged,
                    );
                    shared.activity.notify();
                }
            }),
        );
        *lock(&self.shared.relay_net) = Some(net);
    }

    pub(super) fn relay_net(&self) -> Option<Arc<RelayNetwork>> {
        lock(&self.shared.relay_net).clone()
    }

    /// Starts measuring pings to every POP, or retries after a failure
    /// (`InitRelayNetworkAccess`). Without a relay network set it does nothing.
    pub fn init_relay_network_access(&self) {
        if let Some(net) = self.relay_net() {
            net.measure();
        }
    }

    /// The relay network's status (`GetRelayNetworkStatus`): `CannotTry` without one.
    pub fn get_relay_network_status(&self) -> RelayNetworkStatus {
        match self.relay_net() {
            Some(net) => net.status(),
            None => RelayNetworkStatus {
                available: Availability::CannotTry,
                ping_measurement_in_progress: false,
                available_network_config: Availability::CannotTry,
                available_any_relay: Availability::CannotTry,
                debug_message: "no relay network set".into(),
            },
        }
    }

    /// How many POPs the relay network has (`GetPOPCount`).
    pub fn get_pop_count(&self) -> usize {
        self.get_pop_list().len()
    }

    /// The relay network's POPs (`GetPOPList`).
    pub fn get_pop_list(&self) -> Vec<PopId> {
        self.relay_net().map(|n| n.pops()).unwrap_or_default()
    }

    /// The measured round trip to `pop` in milliseconds, or [`relay::PING_FAILED`] /
    /// [`relay::PING_UNKNOWN`] (`GetDirectPingToPOP`).
    pub fn get_direct_ping_to_pop(&self, pop: PopId) -> i32 {
        self.relay_net()
            .map_or(relay::PING_UNKNOWN, |n| n.ping_to(pop))
    }

    /// The best relayed route to the data center at `pop`: its ping and the POP it goes
    /// through (`GetPingToDataCenter`). A POP is reached directly, so through itself.
    pub fn get_ping_to_data_center(&self, pop: PopId) -> (i32, PopId) {
        (self.get_direct_ping_to_pop(pop), pop)
    }

    /// This host's ping location and the age of its data (`GetLocalPingLocation`); `None`
    /// until some POP answered. Asking also refreshes data older than five minutes.
    pub fn get_local_ping_location(&self) -> Option<(PingLocation, Duration)> {
        let net = self.relay_net()?;
        net.refresh_if_stale();
        net.local_location()
    }

    /// The estimated round trip from this host to `location` (`EstimatePingTimeFromLocalHost`);
    /// [`relay::PING_UNKNOWN`] before this host's pings are measured.
    pub fn estimate_ping_time_from_local_host(&self, location: &PingLocation) -> i32 {
        match self.get_local_ping_location() {
            Some((local, _)) => relay::estimate_ping_time_between_two_locations(&local, location),
            None => relay::PING_UNKNOWN,
        }
    }

    /// True when ping data no older than `max_age` is there; otherwise starts measuring and
    /// answers false (`CheckPingDataUpToDate`).
    pub fn check_ping_data_up_to_date(&self, max_age: Duration) -> bool {
        self.relay_net()
            .is_some_and(|n| n.check_up_to_date(max_age))
    }
}
