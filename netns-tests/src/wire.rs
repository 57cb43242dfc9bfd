//! A link with delay and loss, for kernels without `sch_netem` (this project's test
//! machines have none: `tc qdisc add … netem` answers "Specified qdisc kind is unknown").
//!
//! `netns-host wire --a NAME --b NAME --delay-ms D --loss P --seed S` creates two TAP
//! devices in its namespace, prints `ready`, and copies Ethernet frames between them: each
//! frame, in each direction, is dropped with probability `P` or delivered `D` ms later, in
//! order: each direction is a [`Conditioner`], the impairment model of the fake network and
//! the simulator too, seeded so that a run's loss pattern repeats. The harness moves one device
//! into the router's namespace and bridges the other into the internet, so the link is a
//! real interface on both ends. A direction holds at most [`QUEUE`] frames (more are
//! dropped, as a router's queue would).

use punchline::netcond::{Conditioner, Impairment};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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

/// One direction of the link: the frames on the way, and what wakes its sender.
struct Direction {
    held: Mutex<Conditioner<Vec<u8>>>,
    arrived: Condvar,
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
    let impairment = Impairment {
        loss_pct: (o.loss * 100.0) as f32,
        lag: o.delay,
        ..Impairment::NONE
    };
    let seeds = [o.seed, o.seed ^ 0x9E37_79B9_7F4A_7C15];
    let directions = [(a.clone(), b.clone()), (b, a)];
    let mut threads = Vec::new();
    for ((from, to), seed) in directions.into_iter().zip(seeds) {
        let dir = Arc::new(Direction {
            held: Mutex::new(Conditioner::new(impairment, seed)),
            arrived: Condvar::new(),
        });
        let out = dir.clone();
        std::thread::spawn(move || deliver(&out, &to));
        threads.push(std::thread::spawn(move || receive(&from, &dir)));
    }
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
    1
}

fn lock(d: &Direction) -> MutexGuard<'_, Conditioner<Vec<u8>>> {
    d.held.lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts the frames from `from` on the way, until `from` fails.
fn receive(from: &Iface, dir: &Direction) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = from.recv(&mut buf) {
        let mut held = lock(dir);
        // A full queue drops the frame, as a router's would.
        if held.len() < QUEUE {
            held.push(Instant::now(), buf[..n].to_vec(), n);
        }
        drop(held);
        dir.arrived.notify_one();
    }
}

/// Hands frames to `to` as they fall due.
fn deliver(dir: &Direction, to: &Iface) {
    let mut due = Vec::new();
    let mut held = lock(dir);
    loop {
        let now = Instant::now();
        while let Some(frame) = held.pop_due(now) {
            due.push(frame);
        }
        if !due.is_empty() {
            drop(held);
            for frame in due.drain(..) {
                let _ = to.send(&frame);
            }
            held = lock(dir);
            continue;
        }
        // Asleep until the next frame is due or one arrives.
        let wait = held
            .next_due()
            .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
        held = dir
            .arrived
            .wait_timeout(held, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}
