//! The relay network, in the model of ISteamNetworkingUtils' relay calls: points of presence
//! (POPs, each a relay somewhere, named by up to four letters such as `fra`), the measured
//! round trip to each, and *ping locations*: a host's pings to its nearest POPs, which two
//! hosts exchange to estimate the ping between them without sending a packet to each other.
//!
//! The estimate between two locations is the best relayed route through one POP they share:
//! `min over shared POPs (ping_a + ping_b)`, which is what a connection through that relay
//! would see. The core knows nothing of how a POP is reached: a [`PopPinger`] (the signaling
//! crate's websocket pinger) lists the POPs and measures one round trip; a
//! [`RelayNetwork`] measures them all, keeps the results and their age, and reports its
//! status.

use super::Availability;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A POP's id: its name's bytes, big-endian, as the reference API packs `"fra"`.
pub type PopId = u32;

/// A ping that could not be measured (the reference API's `k_nSteamNetworkingPing_Failed`).
pub const PING_FAILED: i32 = -1;
/// A ping that cannot be answered now (`k_nSteamNetworkingPing_Unknown`).
pub const PING_UNKNOWN: i32 = -2;
/// Longest ping location string (`k_cchMaxSteamNetworkingPingLocationString`).
pub const MAX_PING_LOCATION_STRING: usize = 1024;
/// Most POPs a ping location names (the nearest ones).
pub const MAX_LOCATION_POPS: usize = 16;
/// Round trips measured to each POP per measurement (the least counts).
const PINGS_PER_POP: usize = 3;
/// How long one round trip may take before the POP counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Data older than this is measured again when asked for.
const REFRESH_AFTER: Duration = Duration::from_secs(300);

/// The id of the POP named `name` (1 to 4 ASCII letters or digits), or `None`.
pub fn pop_id(name: &str) -> Option<PopId> {
    if name.is_empty() || name.len() > 4 || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(name.bytes().fold(0u32, |id, b| id << 8 | u32::from(b)))
}

/// The name of POP `id` (the inverse of [`pop_id`]).
pub fn pop_name(id: PopId) -> String {
    id.to_be_bytes()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| char::from(*b))
        .collect()
}

/// Measures round trips to POPs. Implemented outside the core (the signaling crate pings
/// each relay over its websocket).
pub trait PopPinger: Send + Sync + fmt::Debug + 'static {
    /// Every POP in the configuration.
    fn pops(&self) -> Vec<PopId>;
    /// One round trip to `pop`, or why it failed.
    fn ping(&self, pop: PopId) -> Pin<Box<dyn Future<Output = Result<Duration, String>> + Send>>;
}

/// Where a host is, as its pings to its nearest POPs (the reference API's
/// `SteamNetworkPingLocation_t`). Its text form ([`fmt::Display`], [`FromStr`]) is
/// `fra=12,iad=95`: POP names and round trips in milliseconds, nearest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingLocation {
    pops: Vec<(PopId, u32)>,
}

impl PingLocation {
    /// A location from pings (milliseconds) to POPs; it keeps the nearest
    /// [`MAX_LOCATION_POPS`].
    pub fn new(mut pops: Vec<(PopId, u32)>) -> Self {
        // One entry per POP (its least ping), nearest first.
        pops.sort_by_key(|&(id, ms)| (id, ms));
        pops.dedup_by_key(|p| p.0);
        pops.sort_by_key(|&(id, ms)| (ms, id));
        pops.truncate(MAX_LOCATION_POPS);
        Self { pops }
    }

    /// The POPs and pings, nearest first.
    pub fn pops(&self) -> &[(PopId, u32)] {
        &self.pops
    }

    /// True when it names no POP (nothing was measured).
    pub fn is_empty(&self) -> bool {
        self.pops.is_empty()
    }

    /// This location's ping to `pop`, if it names it.
    pub fn ping_to(&self, pop: PopId) -> Option<u32> {
        self.pops.iter().find(|p| p.0 == pop).map(|p| p.1)
    }
}

impl fmt::Display for PingLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (id, ms)) in self.pops.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={ms}", pop_name(*id))?;
        }
        Ok(())
    }
}

/// Why a ping location string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PingLocationError {
    /// Longer than [`MAX_PING_LOCATION_STRING`].
    #[error("ping location of {0} bytes (at most {MAX_PING_LOCATION_STRING})")]
    TooLong(usize),
    /// An entry is not `name=milliseconds`.
    #[error("ping location entry {0:?} is not POP=MILLISECONDS")]
    Entry(String),
    /// A POP name is not 1 to 4 letters or digits.
    #[error("ping location names POP {0:?}, not 1 to 4 letters or digits")]
    Pop(String),
    /// A ping is not a number of milliseconds up to 65,535.
    #[error("ping location gives {0:?} for a ping, not milliseconds up to 65535")]
    Ping(String),
    /// More than [`MAX_LOCATION_POPS`] POPs.
    #[error("ping location names more than {MAX_LOCATION_POPS} POPs")]
    TooMany,
}

impl FromStr for PingLocation {
    type Err = PingLocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_PING_LOCATION_STRING {
            return Err(PingLocationError::TooLong(s.len()));
        }
        let mut pops = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if pops.len() == MAX_LOCATION_POPS {
                return Err(PingLocationError::TooMany);
            }
            let (name, ms) = entry
                .split_once('=')
                .ok_or_else(|| PingLocationError::Entry(entry.into()))?;
            let id = pop_id(name).ok_or_else(|| PingLocationError::Pop(name.into()))?;
            let ms = ms
                .parse::<u16>()
                .map_err(|_| PingLocationError::Ping(ms.into()))?;
            pops.push((id, u32::from(ms)));
        }
        Ok(Self::new(pops))
    }
}

/// The location's text form (`ConvertPingLocationToString`).
pub fn convert_ping_location_to_string(location: &PingLocation) -> String {
    location.to_string()
}

/// A location from its text form (`ParsePingLocationString`).
pub fn parse_ping_location_string(s: &str) -> Result<PingLocation, PingLocationError> {
    s.parse()
}

/// The estimated round trip between two locations in milliseconds: the best route through
/// one relay both measured ([`PING_UNKNOWN`] when they share none).
pub fn estimate_ping_time_between_two_locations(a: &PingLocation, b: &PingLocation) -> i32 {
    a.pops
        .iter()
        .filter_map(|(id, pa)| b.ping_to(*id).map(|pb| pa + pb))
        .min()
        .map_or(PING_UNKNOWN, |ms| i32::try_from(ms).unwrap_or(i32::MAX))
}

/// The relay network's state (`SteamRelayNetworkStatus_t`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayNetworkStatus {
    /// Summary: `Current` once pings are measured to at least one POP.
    pub available: Availability,
    /// True while a measurement is under way.
    pub ping_measurement_in_progress: bool,
    /// Whether there is a POP list (`CannotTry` without a relay network configured).
    pub available_network_config: Availability,
    /// Whether any relay answered.
    pub available_any_relay: Availability,
    /// What is going on, in English.
    pub debug_message: String,
}

/// What is known of one POP.
#[derive(Debug, Clone)]
enum PopPing {
    Measured(Duration),
    Failed(String),
}

#[derive(Debug)]
struct NetState {
    pings: HashMap<PopId, PopPing>,
    measured_at: Option<Instant>,
    measuring: bool,
    /// Some relay answered at some time.
    ever_reached: bool,
    attempts: u32,
}

/// Called with the new status whenever it changes.
pub type StatusListener = Box<dyn Fn(RelayNetworkStatus) + Send + Sync>;

/// A relay network: its POPs (from a [`PopPinger`]), the pings measured to them, and the
/// ping location they make.
pub struct RelayNetwork {
    pinger: Arc<dyn PopPinger>,
    runtime: tokio::runtime::Handle,
    state: Mutex<NetState>,
    listener: StatusListener,
}

impl fmt::Debug for RelayNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayNetwork")
            .field("pinger", &self.pinger)
            .finish_non_exhaustive()
    }
}

impl RelayNetwork {
    /// A network measured with `pinger`, on `runtime`; `listener` hears every status change.
    pub fn new(
        pinger: Arc<dyn PopPinger>,
        runtime: tokio::runtime::Handle,
        listener: StatusListener,
    ) -> Arc<Self> {
        Arc::new(Self {
            pinger,
            runtime,
            state: Mutex::new(NetState {
                pings: HashMap::new(),
                measured_at: None,
                measuring: false,
                ever_reached: false,
                attempts: 0,
            }),
            listener,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts measuring every POP unless a measurement is under way
    /// (`InitRelayNetworkAccess`; also a retry after a failure).
    pub fn measure(self: &Arc<Self>) {
        {
            let mut st = self.state();
            if st.measuring {
                return;
            }
            st.measuring = true;
            st.attempts += 1;
        }
        (self.listener)(self.status());
        let net = self.clone();
        self.runtime.spawn(async move {
            let pops = net.pinger.pops();
            let mut tasks = tokio::task::JoinSet::new();
            for pop in pops {
                let pinger = net.pinger.clone();
                tasks.spawn(async move {
                    let mut best: Option<Duration> = None;
                    let mut why = String::new();
                    for _ in 0..PINGS_PER_POP {
                        match tokio::time::timeout(PING_TIMEOUT, pinger.ping(pop)).await {
                            Ok(Ok(rtt)) => best = Some(best.map_or(rtt, |b| b.min(rtt))),
                            Ok(Err(e)) => why = e,
                            Err(_) => why = format!("no answer within {PING_TIMEOUT:?}"),
                        }
                    }
                    (pop, best.map_or(PopPing::Failed(why), PopPing::Measured))
                });
            }
            let mut pings = HashMap::new();
            while let Some(done) = tasks.join_next().await {
                if let Ok((pop, ping)) = done {
                    pings.insert(pop, ping);
                }
            }
            {
                let mut st = net.state();
                st.measuring = false;
                st.measured_at = Some(Instant::now());
                if pings.values().any(|p| matches!(p, PopPing::Measured(_))) {
                    st.ever_reached = true;
                }
                st.pings = pings;
            }
            (net.listener)(net.status());
        });
    }

    /// The network's status (`GetRelayNetworkStatus`).
    pub fn status(&self) -> RelayNetworkStatus {
        let st = self.state();
        let pops = self.pinger.pops().len();
        let reached = st
            .pings
            .values()
            .filter(|p| matches!(p, PopPing::Measured(_)))
            .count();
        let config = if pops == 0 {
            Availability::CannotTry
        } else {
            Availability::Current
        };
        let relay = match (st.measured_at, reached, st.measuring) {
            _ if pops == 0 => Availability::CannotTry,
            (None, _, false) => Availability::NeverTried,
            (None, _, true) => Availability::Attempting,
            (Some(_), n, _) if n > 0 => Availability::Current,
            (Some(_), _, true) => Availability::Retrying,
            (Some(_), _, false) if st.ever_reached => Availability::Previously,
            (Some(_), _, false) => Availability::Failed,
        };
        let debug_message = match relay {
            Availability::CannotTry => "no relay network configured".to_string(),
            Availability::NeverTried => "not measured yet".to_string(),
            Availability::Attempting => format!("measuring pings to {pops} POPs"),
            Availability::Current => format!("{reached} of {pops} POPs answered"),
            _ => {
                let mut why: Vec<String> = st
                    .pings
                    .iter()
                    .filter_map(|(id, p)| match p {
                        PopPing::Failed(w) => Some(format!("{}: {w}", pop_name(*id))),
                        PopPing::Measured(_) => None,
                    })
                    .collect();
                why.sort();
                format!("no POP answered ({})", why.join("; "))
            }
        };
        RelayNetworkStatus {
            available: relay,
            ping_measurement_in_progress: st.measuring,
            available_network_config: config,
            available_any_relay: relay,
            debug_message,
        }
    }

    /// Every POP (`GetPOPList`).
    pub fn pops(&self) -> Vec<PopId> {
        self.pinger.pops()
    }

    /// The measured round trip to `pop` in milliseconds, [`PING_FAILED`] if it did not
    /// answer, [`PING_UNKNOWN`] if not measured (`GetDirectPingToPOP`).
    pub fn ping_to(&self, pop: PopId) -> i32 {
        match self.state().pings.get(&pop) {
            Some(PopPing::Measured(d)) => millis(*d),
            Some(PopPing::Failed(_)) => PING_FAILED,
            None => PING_UNKNOWN,
        }
    }

    /// This host's location and the data's age (`GetLocalPingLocation`); `None` before any
    /// POP answered.
    pub fn local_location(&self) -> Option<(PingLocation, Duration)> {
        let st = self.state();
        let age = st.measured_at?.elapsed();
        let pops: Vec<(PopId, u32)> = st
            .pings
            .iter()
            .filter_map(|(id, p)| match p {
                PopPing::Measured(d) => Some((*id, millis(*d) as u32)),
                PopPing::Failed(_) => None,
            })
            .collect();
        (!pops.is_empty()).then(|| (PingLocation::new(pops), age))
    }

    /// True when data no older than `max_age` is there; otherwise starts a measurement
    /// (unless one is under way) and answers false (`CheckPingDataUpToDate`).
    pub fn check_up_to_date(self: &Arc<Self>, max_age: Duration) -> bool {
        let fresh = {
            let st = self.state();
            st.measured_at.is_some_and(|t| t.elapsed() <= max_age)
                && st.pings.values().any(|p| matches!(p, PopPing::Measured(_)))
        };
        if !fresh {
            self.measure();
        }
        fresh
    }

    /// Measures again when the data is older than five minutes (or missing).
    pub fn refresh_if_stale(self: &Arc<Self>) {
        self.check_up_to_date(REFRESH_AFTER);
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> PingLocation {
        s.parse().unwrap()
    }

    #[test]
    fn pop_ids_pack_names_as_the_reference_api_does() {
        assert_eq!(pop_id("fra"), Some(0x0066_7261));
        assert_eq!(pop_name(0x0066_7261), "fra");
        assert_eq!(pop_name(pop_id("sgp1").unwrap()), "sgp1");
        for bad in ["", "abcde", "fr-a", "fré"] {
            assert_eq!(pop_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn locations_round_trip_through_text_nearest_first() {
        let l = loc("iad=95, fra=12,sgp=180,iad=90");
        assert_eq!(l.to_string(), "fra=12,iad=90,sgp=180");
        assert_eq!(loc(&l.to_string()), l);
        assert_eq!(loc(""), PingLocation::default());
    }

    #[test]
    fn bad_location_strings_say_what_is_wrong() {
        let err = |s: &str| s.parse::<PingLocation>().unwrap_err();
        assert_eq!(err("fra"), PingLocationError::Entry("fra".into()));
        assert_eq!(err("toolong=3"), PingLocationError::Pop("toolong".into()));
        assert_eq!(err("fra=-3"), PingLocationError::Ping("-3".into()));
        assert_eq!(err("fra=70000"), PingLocationError::Ping("70000".into()));
        assert_eq!(err(&"a=1,".repeat(400)), PingLocationError::TooLong(1600));
        let many: Vec<String> = (0..17).map(|i| format!("p{i}=1")).collect();
        assert_eq!(err(&many.join(",")), PingLocationError::TooMany);
        assert!(err("fra").to_string().contains("POP=MILLISECONDS"));
    }

    #[test]
    fn the_estimate_is_the_best_route_through_a_shared_pop() {
        let a = loc("fra=12,iad=95");
        let b = loc("fra=30,iad=40,sgp=5");
        assert_eq!(estimate_ping_time_between_two_locations(&a, &b), 42);
        assert_eq!(estimate_ping_time_between_two_locations(&b, &a), 42);
        let c = loc("sgp=5");
        assert_eq!(
            estimate_ping_time_between_two_locations(&a, &c),
            PING_UNKNOWN
        );
        assert_eq!(
            estimate_ping_time_between_two_locations(&a, &PingLocation::default()),
            PING_UNKNOWN
        );
    }

    /// POPs with fixed round trips; `None` never answers.
    #[derive(Debug)]
    struct Fixed(Vec<(PopId, Option<Duration>)>);

    impl PopPinger for Fixed {
        fn pops(&self) -> Vec<PopId> {
            self.0.iter().map(|p| p.0).collect()
        }
        fn ping(
            &self,
            pop: PopId,
        ) -> Pin<Box<dyn Future<Output = Result<Duration, String>> + Send>> {
            let rtt = self.0.iter().find(|p| p.0 == pop).and_then(|p| p.1);
            Box::pin(async move { rtt.ok_or_else(|| "refused".to_string()) })
        }
    }

    #[test]
    fn measuring_fills_the_location_and_reports_status_changes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fra = pop_id("fra").unwrap();
        let iad = pop_id("iad").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let net = RelayNetwork::new(
            Arc::new(Fixed(vec![
                (fra, Some(Duration::from_millis(12))),
                (iad, None),
            ])),
            rt.handle().clone(),
            Box::new(move |s| seen2.lock().unwrap().push(s.available)),
        );
        assert_eq!(net.status().available, Availability::NeverTried);
        assert!(net.local_location().is_none());
        assert_eq!(net.ping_to(fra), PING_UNKNOWN);
        assert!(!net.check_up_to_date(Duration::from_secs(60)));
        assert_eq!(net.status().available, Availability::Attempting);
        rt.block_on(async {
            for _ in 0..100 {
                if !net.status().ping_measurement_in_progress {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let status = net.status();
        assert_eq!(status.available, Availability::Current, "{status:?}");
        assert_eq!(net.ping_to(fra), 12);
        assert_eq!(net.ping_to(iad), PING_FAILED);
        let (l, age) = net.local_location().unwrap();
        assert_eq!(l.to_string(), "fra=12");
        assert!(age < Duration::from_secs(5));
        assert!(net.check_up_to_date(Duration::from_secs(60)));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Availability::Attempting, Availability::Current]
        );
    }
}
