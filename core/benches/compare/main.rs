//! Side-by-side benchmark on loopback: punchline, quinn doing the same jobs, and raw UDP as the
//! ceiling, all in one run. Prints a table, then one JSON object as the last line.
//!
//! `cargo bench -p punchline --bench compare` (full) or `-- --quick` (under two minutes);
//! `-- --only bulk,small,threads,pingpong,handshakes,memory,wan,loss,fairness` runs some parts (`loss0`: the relay
//! with no loss), `-- --repeat 5` runs them five times and reports medians (and the spread of
//! `bulk_vs_quinn` as `bulk_spread`), and `BENCH_DETAIL=1`
//! prints the detailed connection status after each impaired transfer and the percentiles of
//! each ping-pong run (punchline, quinn, raw UDP in that order).

mod proxy;
mod quinn_peer;

use bytes::Bytes;
use proxy::{Bottleneck, Impair, Proxy};
use punchline::api::config::{ConfigData, ConfigValue};
use punchline::api::{ConfigTarget, StatusEvents};
use punchline::{ConnectionHandle, ConnectionState, Error, SendFlags, Sockets};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const BULK_MSG: usize = 256 * 1024;
const DATAGRAM: usize = 1300;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only bulk,pingpong` runs just those parts (for development).
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    // `--repeat 5` runs the parts five times: the JSON gives each key's median, and the
    // table each figure's median, least and most.
    let repeat: usize = std::env::args()
        .skip_while(|a| a != "--repeat")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let runs: Vec<Measured> = (0..repeat)
        .map(|i| {
            if repeat > 1 {
                eprintln!("run {} of {repeat}", i + 1);
            }
            measure(quick, only.as_deref())
        })
        .collect();
    let (rows, _) = &runs[runs.len() - 1];
    println!();
    println!(
        "{:<44} {:>14} {:>14} {:>20}",
        "measure", "punchline", "quinn", "raw UDP / note"
    );
    for (a, b, c, d) in rows {
        println!("{a:<44} {b:>14} {c:>14} {d:>20}");
    }
    // Each key's figures across the runs, in the first run's order.
    let keys: Vec<String> = runs[0].1.iter().map(|(k, _)| k.clone()).collect();
    let mut body = Vec::new();
    if repeat > 1 {
        println!();
        println!("{repeat} runs: median (least .. most)");
    }
    for k in &keys {
        let mut v: Vec<f64> = runs
            .iter()
            .filter_map(|(_, j)| j.iter().find(|(kk, _)| kk == k).map(|(_, x)| *x))
            .collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 0 {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        } else {
            v[n / 2]
        };
        if repeat > 1 {
            println!(
                "{k:<36} {median:>14.3} ({:.3} .. {:.3})",
                v[0],
                v[v.len() - 1]
            );
        }
        body.push(format!("\"{k}\": {median:.3}"));
        if k == "bulk_vs_quinn" {
            // How far the runs spread, relative to their median.
            let spread = (v[v.len() - 1] - v[0]) / median.max(f64::MIN_POSITIVE);
            body.push(format!("\"bulk_spread\": {spread:.3}"));
        }
    }
    println!("{{{}}}", body.join(", "));
}

/// One run's table rows and JSON figures.
type Measured = (Vec<(String, String, String, String)>, Vec<(String, f64)>);

/// Runs the parts `only` names (all when `None`) once.
fn measure(quick: bool, only: Option<&str>) -> Measured {
    let run = |part: &str| only.is_none_or(|o| o.split(',').any(|p| p == part));
    let bulk_total = if quick { 256 * MIB } else { 1024 * MIB };
    let small_count = 1_000_000;
    let rounds = 10_000;
    let idle_conns = 10_000;
    let loss_total = if quick { 2 * MIB } else { 8 * MIB };

    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut json: Vec<(String, f64)> = Vec::new();
    let mut num = |k: &str, v: f64| json.push((k.to_string(), v));

    if run("bulk") {
        eprintln!(
            "bulk: {} MiB of {} KiB reliable messages",
            bulk_total / MIB,
            BULK_MSG / 1024
        );
        let pl = mb_s(bulk_total, punchline_bulk(bulk_total, BULK_MSG, None, 1));
        let qn = mb_s(bulk_total, quinn_peer::bulk(bulk_total, BULK_MSG, None, 1));
        let udp = raw_udp_blast(bulk_total);
        rows.push(row("bulk MB/s", pl, qn, Some(udp)));
        num("bulk_mb_s", pl);
        num("bulk_vs_quinn", pl / qn);
        num("bulk_vs_udp", pl / udp);
    }

    if run("small") {
        eprintln!("small: {small_count} reliable 64-byte messages");
        let pl = small_count as f64 / punchline_small(small_count, 64).as_secs_f64();
        let qn = small_count as f64 / quinn_peer::small_messages(small_count, 64).as_secs_f64();
        rows.push(row("small msgs/s", pl, qn, None));
        num("small_msgs_s", pl);
        num("small_vs_quinn", pl / qn);
    }

    if run("threads") {
        eprintln!("threads: {small_count} reliable 64-byte messages, 4 threads vs 1");
        let one = small_count as f64 / punchline_small_conns(1, small_count).as_secs_f64();
        let four = small_count as f64 / punchline_small_conns(4, small_count / 4).as_secs_f64();
        rows.push((
            "small msgs/s, 4 threads on 4 connections".into(),
            format!("{four:.0}"),
            "-".into(),
            format!("1 thread: {one:.0}"),
        ));
        num("small_threads_msgs_s", four);
        num("small_threads_vs_single", four / one);
    }

    if run("pingpong") {
        eprintln!("ping-pong: {rounds} round trips of 64 bytes");
        let pl = percentiles(punchline_pingpong(rounds, 64));
        let qn = percentiles(quinn_peer::pingpong(rounds, 64));
        let udp = percentiles(raw_udp_pingpong(rounds, 64));
        rows.push(row("ping-pong p50 us", pl.0, qn.0, Some(udp.0)));
        rows.push(row("ping-pong p99 us", pl.1, qn.1, Some(udp.1)));
        num("pingpong_p50_us", pl.0);
        num("pingpong_p99_us", pl.1);
        num("pingpong_p99_over_p50", pl.1 / pl.0);
        num("pingpong_vs_udp", pl.0 / udp.0);
        num("pingpong_vs_quinn", pl.0 / qn.0);
    }

    if run("handshakes") {
        eprintln!("handshakes");
        let (hs, hs_again, rtts, rtts_again) = punchline_handshakes(if quick { 500 } else { 2000 });
        rows.push((
            "handshakes/s, first contact".into(),
            format!("{hs:.0}"),
            "-".into(),
            format!("{rtts:.1} round trips each"),
        ));
        rows.push((
            "handshakes/s, returning (address token)".into(),
            format!("{hs_again:.0}"),
            "-".into(),
            format!("{rtts_again:.1} round trips each"),
        ));
        num("handshakes_s", hs);
        num("handshake_rtts", rtts);
        num("handshakes_returning_s", hs_again);
        num("handshake_rtts_returning", rtts_again);
    }

    if run("memory") {
        eprintln!("memory: {idle_conns} idle connections");
        let (per_conn, opened) = punchline_idle_memory(idle_conns);
        rows.push((
            format!("bytes per idle connection ({opened} open)"),
            format!("{per_conn:.0}"),
            "-".into(),
            "-".into(),
        ));
        num("idle_conn_bytes", per_conn);
        num("idle_conns_opened", opened as f64);
    }

    if run("wan") {
        // A long path without loss: what the congestion window (not the send buffer) allows.
        let total = if quick { 32 * MIB } else { 128 * MIB };
        eprintln!("wan: {} MiB through a 50 ms RTT relay", total / MIB);
        let imp = Impair {
            loss: 0.0,
            delay: Duration::from_millis(25),
        };
        let pl = mb_s(total, punchline_bulk(total, BULK_MSG, Some(imp), 7));
        let qn = mb_s(total, quinn_peer::bulk(total, BULK_MSG, Some(imp), 7));
        rows.push(row("bulk at 50 ms RTT, no loss, MB/s", pl, qn, None));
        num("wan_bulk_mb_s", pl);
        num("wan_bulk_vs_quinn", pl / qn);
    }

    // The same relay without loss too, for `loss5_vs_loss0` (also alone: `--only loss0`).
    let loss0 = only.is_some_and(|o| o.split(',').any(|p| p == "loss0"));
    let losses: &[f64] = if loss0 && !run("loss") {
        &[0.0]
    } else {
        &[0.0, 0.01, 0.05]
    };
    let mut goodput = Vec::new();
    for &loss in losses.iter().filter(|_| run("loss") || loss0) {
        eprintln!(
            "loss {}%: {} MiB through a 20 ms RTT relay",
            loss * 100.0,
            loss_total / MIB
        );
        let imp = Impair {
            loss,
            delay: Duration::from_millis(10),
        };
        let pl = mb_s(
            loss_total,
            punchline_bulk(loss_total, BULK_MSG, Some(imp), 7),
        );
        let qn = mb_s(
            loss_total,
            quinn_peer::bulk(loss_total, BULK_MSG, Some(imp), 7),
        );
        let name = format!("goodput at {}% loss, 20 ms RTT, MB/s", loss * 100.0);
        rows.push(row(&name, pl, qn, None));
        let key = format!("loss{}", (loss * 100.0) as u32);
        num(&format!("{key}_goodput_mb_s"), pl);
        num(&format!("{key}_goodput_vs_quinn"), pl / qn);
        goodput.push((loss, pl));
    }
    if run("fairness") {
        // A punchline flow and a quinn flow at once through one bottleneck with a router's
        // queue: each should get about half.
        let secs = if quick { 4 } else { 10 };
        let b = Bottleneck {
            rate: 4_000_000,
            queue: 80_000,
        };
        eprintln!(
            "fairness: punchline and quinn together through {} MB/s with a {} KB queue, 20 ms RTT, {secs} s",
            b.rate / 1_000_000,
            b.queue / 1000
        );
        let (pl, qn) = fairness(b, Duration::from_secs(secs));
        rows.push(row(
            "fairness: shared 4 MB/s bottleneck, MB/s",
            pl,
            qn,
            None,
        ));
        num("fairness_punchline_mb_s", pl);
        num("fairness_quinn_mb_s", qn);
        num("fairness_vs_quinn", pl / qn);
    }
    let at = |l: f64| goodput.iter().find(|(x, _)| *x == l).map(|(_, g)| *g);
    if let (Some(g5), Some(g0)) = (at(0.05), at(0.0)) {
        // Loss that is not congestion should not collapse the rate.
        num("loss5_vs_loss0", g5 / g0);
    }

    (rows, json)
}

/// Runs a punchline flow and a quinn flow at the same time through one relay with
/// bottleneck `b` (and 10 ms each way), for `window` after a second of warm-up; returns each
/// one's goodput in MB/s over the window.
fn fairness(b: Bottleneck, window: Duration) -> (f64, f64) {
    let from = Instant::now() + Duration::from_secs(2);
    let until = from + window;
    let (q_server_tx, q_server_rx) = std::sync::mpsc::channel();
    let (q_target_tx, q_target_rx) = std::sync::mpsc::channel();
    let quinn = std::thread::spawn(move || {
        quinn_peer::timed_flow(BULK_MSG, q_server_tx, q_target_rx, from, until)
    });
    let (server, client, mut events, addr) = listening_pair();
    let q_addr = q_server_rx.recv().expect("quinn server address");
    let imp = Impair {
        loss: 0.0,
        delay: Duration::from_millis(10),
    };
    let proxy = Proxy::start_shared(&[addr, q_addr], imp, Some(b), 11);
    q_target_tx.send(proxy.addrs[1]).expect("quinn target");
    let c = client
        .connect_by_ip_address(proxy.addrs[0], &[])
        .expect("connect");
    let s = accept_one(&server, &mut events);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (client, stop) = (client.clone(), stop.clone());
        let payload = Bytes::from(vec![0xAB; BULK_MSG]);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.send_message_to_connection(c, payload.clone(), SendFlags::RELIABLE) {
                    Ok(_) => {}
                    Err(Error::LimitExceeded) => std::thread::sleep(Duration::from_micros(200)),
                    Err(_) => return,
                }
            }
        })
    };
    let (mut got, mut base) = (0u64, None);
    while Instant::now() < until {
        for m in server
            .receive_messages_on_connection(s, 4096)
            .expect("receive")
        {
            got += m.payload.len() as u64;
        }
        if Instant::now() >= from && base.is_none() {
            base = Some(got);
        }
        server.wait_for_activity(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("sender");
    let pl = got - base.unwrap_or(got);
    let qn = quinn.join().expect("quinn flow");
    drop(proxy);
    let secs = window.as_secs_f64();
    (pl as f64 / 1e6 / secs, qn as f64 / 1e6 / secs)
}

fn row(name: &str, pl: f64, qn: f64, udp: Option<f64>) -> (String, String, String, String) {
    (
        name.to_string(),
        format!("{pl:.1}"),
        format!("{qn:.1}"),
        udp.map_or("-".into(), |u| format!("{u:.1}")),
    )
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    if std::env::var_os("BENCH_DETAIL").is_some() {
        let qs = [0.1, 0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999];
        let shown: Vec<String> = qs
            .iter()
            .map(|q| format!("p{}={:.0}", q * 100.0, at(*q)))
            .collect();
        eprintln!("  latency us: {}", shown.join(" "));
    }
    (at(0.50), at(0.99))
}

// ----- punchline ---------------------------------------------------------------------------

/// A server and a client `Sockets`, connected, with buffers sized for bulk transfer.
struct Pair {
    server: Sockets,
    client: Sockets,
    s: ConnectionHandle,
    c: ConnectionHandle,
    _proxy: Option<Proxy>,
}

fn big_buffers(s: &Sockets) {
    for (v, n) in [
        (ConfigValue::SendBufferSize, 32 * MIB as i32),
        (ConfigValue::RecvBufferSize, 64 * MIB as i32),
        (ConfigValue::RecvBufferMessages, 1_000_000),
    ] {
        s.set_config_value(v, ConfigTarget::Interface, Some(ConfigData::Int32(n)))
            .expect("valid config");
    }
}

fn accept_one(server: &Sockets, events: &mut StatusEvents) -> ConnectionHandle {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(ev) = events.try_recv() {
            if ev.info.state == ConnectionState::Connecting && ev.info.listen_socket.is_some() {
                server.accept_connection(ev.connection).expect("accept");
                return ev.connection;
            }
        }
        assert!(Instant::now() < end, "no incoming connection");
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn connected(s: &Sockets, h: ConnectionHandle) -> bool {
    s.get_connection_info(h)
        .is_ok_and(|i| i.state == ConnectionState::Connected)
}

/// A server `Sockets` listening on loopback (and its status events and address), and a
/// client `Sockets`, both with buffers sized for bulk transfer.
fn listening_pair() -> (Sockets, Sockets, StatusEvents, SocketAddr) {
    let server = Sockets::new().expect("sockets");
    let client = Sockets::new().expect("sockets");
    big_buffers(&server);
    big_buffers(&client);
    let events = server.status_events();
    let listen = server
        .create_listen_socket_ip("127.0.0.1:0".parse().expect("addr"), &[])
        .expect("listen");
    let addr = server.get_listen_socket_address(listen).expect("addr");
    (server, client, events, addr)
}

fn pair(impair: Option<Impair>, seed: u64) -> Pair {
    let (server, client, mut events, addr) = listening_pair();
    let proxy = impair.map(|imp| Proxy::start(addr, imp, seed));
    let target = proxy.as_ref().map_or(addr, |p| p.addr);
    let c = client.connect_by_ip_address(target, &[]).expect("connect");
    let s = accept_one(&server, &mut events);
    let end = Instant::now() + Duration::from_secs(10);
    while !(connected(&client, c) && connected(&server, s)) {
        assert!(Instant::now() < end, "handshake did not finish");
        std::thread::sleep(Duration::from_micros(100));
    }
    Pair {
        server,
        client,
        s,
        c,
        _proxy: proxy,
    }
}

/// Sends `payload` until accepted, waiting while the send buffer is full.
fn send_blocking(s: &Sockets, h: ConnectionHandle, payload: Bytes, flags: SendFlags) {
    loop {
        match s.send_message_to_connection(h, payload.clone(), flags) {
            Ok(_) => return,
            Err(Error::LimitExceeded) => std::thread::sleep(Duration::from_micros(50)),
            Err(e) => panic!("send failed: {e}"),
        }
    }
}

/// Receives until `done(bytes, messages)`; returns when it was satisfied.
fn receive_until(s: &Sockets, h: ConnectionHandle, done: impl Fn(u64, u64) -> bool) -> Instant {
    let (mut bytes, mut msgs) = (0u64, 0u64);
    loop {
        let got = s.receive_messages_on_connection(h, 4096).expect("receive");
        if got.is_empty() {
            s.wait_for_activity(Duration::from_millis(10));
            continue;
        }
        for m in &got {
            bytes += m.payload.len() as u64;
            msgs += 1;
        }
        if done(bytes, msgs) {
            return Instant::now();
        }
    }
}

fn punchline_bulk(total: u64, msg: usize, impair: Option<Impair>, seed: u64) -> Duration {
    let p = pair(impair, seed);
    let payload = Bytes::from(vec![0xAB; msg]);
    let (client, c) = (p.client.clone(), p.c);
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < total {
            send_blocking(&client, c, payload.clone(), SendFlags::RELIABLE);
            sent += msg as u64;
        }
    });
    let end = receive_until(&p.server, p.s, |b, _| b >= total);
    sender.join().expect("sender");
    if impair.is_some() && std::env::var_os("BENCH_DETAIL").is_some() {
        eprintln!(
            "{}",
            p.client
                .get_detailed_connection_status(p.c)
                .expect("status")
        );
    }
    end - start
}

fn punchline_small(count: usize, size: usize) -> Duration {
    let p = pair(None, 0);
    let payload = Bytes::from(vec![0x5A; size]);
    let (client, c) = (p.client.clone(), p.c);
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        for _ in 0..count {
            send_blocking(&client, c, payload.clone(), SendFlags::RELIABLE);
        }
    });
    let end = receive_until(&p.server, p.s, |_, m| m >= count as u64);
    sender.join().expect("sender");
    end - start
}

/// `conns` connections between one client and one server `Sockets`, one sender thread on
/// each sending `per_conn` reliable 64-byte messages, one thread receiving them all through a
/// poll group. Returns the time until the last message arrived.
fn punchline_small_conns(conns: usize, per_conn: usize) -> Duration {
    let (server, client, mut events, addr) = listening_pair();
    let group = server.create_poll_group();
    let mut handles = Vec::new();
    for _ in 0..conns {
        let c = client.connect_by_ip_address(addr, &[]).expect("connect");
        let s = accept_one(&server, &mut events);
        server
            .set_connection_poll_group(s, group)
            .expect("poll group");
        handles.push((c, s));
    }
    let end = Instant::now() + Duration::from_secs(10);
    while !handles
        .iter()
        .all(|&(c, s)| connected(&client, c) && connected(&server, s))
    {
        assert!(Instant::now() < end, "handshakes did not finish");
        std::thread::sleep(Duration::from_micros(100));
    }
    let payload = Bytes::from(vec![0x5A; 64]);
    let start = Instant::now();
    let senders: Vec<_> = handles
        .iter()
        .map(|&(c, _)| {
            let (client, payload) = (client.clone(), payload.clone());
            std::thread::spawn(move || {
                for _ in 0..per_conn {
                    send_blocking(&client, c, payload.clone(), SendFlags::RELIABLE);
                }
            })
        })
        .collect();
    let total = (conns * per_conn) as u64;
    let mut got = 0u64;
    while got < total {
        let msgs = server
            .receive_messages_on_poll_group(group, 4096)
            .expect("receive");
        if msgs.is_empty() {
            server.wait_for_activity(Duration::from_millis(10));
        }
        got += msgs.len() as u64;
    }
    let end = Instant::now();
    for s in senders {
        s.join().expect("sender");
    }
    end - start
}

fn punchline_pingpong(rounds: usize, size: usize) -> Vec<Duration> {
    let p = pair(None, 0);
    let (server, s) = (p.server.clone(), p.s);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let got = server
                .receive_messages_on_connection(s, 64)
                .expect("receive");
            if got.is_empty() {
                server.wait_for_activity(Duration::from_millis(10));
            }
            for m in got {
                let _ =
                    server.send_message_to_connection(s, m.payload, SendFlags::RELIABLE_NO_NAGLE);
            }
        }
    });
    let payload = Bytes::from(vec![1u8; size]);
    let mut out = Vec::with_capacity(rounds);
    for i in 0..rounds + 100 {
        let t = Instant::now();
        send_blocking(
            &p.client,
            p.c,
            payload.clone(),
            SendFlags::RELIABLE_NO_NAGLE,
        );
        loop {
            if !p
                .client
                .receive_messages_on_connection(p.c, 1)
                .expect("receive")
                .is_empty()
            {
                break;
            }
            p.client.wait_for_activity(Duration::from_millis(10));
        }
        if i >= 100 {
            out.push(t.elapsed());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo.join().expect("echo");
    out
}

/// Connections per second with `n` concurrent handshakes from one client instance: first
/// contact (a burst of `n` is a server under load: the first `UnprovenHandshakesMax` in
/// flight are answered at once, the rest with a cookie first) and again once the client
/// holds the server's address token (one round trip each). Returns (first-contact rate, returning
/// rate, round trips first, round trips returning), round trips measured in the virtual-time
/// simulation, where the link delay is exact.
fn punchline_handshakes(n: usize) -> (f64, f64, f64, f64) {
    let server = Sockets::new().expect("sockets");
    let client = Sockets::new().expect("sockets");
    let mut events = server.status_events();
    let mut client_events = client.status_events();
    let listen = server
        .create_listen_socket_ip("127.0.0.1:0".parse().expect("addr"), &[])
        .expect("listen");
    let addr = server.get_listen_socket_address(listen).expect("addr");
    let mut burst = || {
        let start = Instant::now();
        for _ in 0..n {
            client.connect_by_ip_address(addr, &[]).expect("connect");
        }
        let (mut accepted, mut server_up, mut client_up) = (0, 0, 0);
        let end = Instant::now() + Duration::from_secs(60);
        while server_up < n || client_up < n {
            let mut idle = true;
            while let Some(ev) = events.try_recv() {
                idle = false;
                match ev.info.state {
                    ConnectionState::Connecting => {
                        server.accept_connection(ev.connection).expect("accept");
                        accepted += 1;
                    }
                    ConnectionState::Connected => server_up += 1,
                    _ => {}
                }
            }
            while let Some(ev) = client_events.try_recv() {
                idle = false;
                if ev.info.state == ConnectionState::Connected {
                    client_up += 1;
                }
            }
            assert!(
                Instant::now() < end,
                "handshakes did not finish ({accepted} accepted)"
            );
            if idle {
                server.wait_for_activity(Duration::from_millis(1));
            }
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let first = burst();
    // By now the client holds an address token from the server.
    std::thread::sleep(Duration::from_millis(50));
    let returning = burst();
    let (rtt_first, rtt_again) = handshake_round_trips();
    (first, returning, rtt_first, rtt_again)
}

/// Round trips to Connected for a client's first connection to a server, and for its next.
fn handshake_round_trips() -> (f64, f64) {
    use punchline::identity::KeyPair;
    use punchline::proto::{ConnectionConfig, Credentials, EndpointConfig};
    use punchline::sim::Sim;
    let key = |s| EndpointConfig {
        credentials: Credentials::with_key(KeyPair::from_seed([s; 32])),
        ..EndpointConfig::default()
    };
    let mut sim = Sim::pair(1, key(1), key(2));
    let rtt = sim.link.lag * 2;
    let connect = |sim: &mut Sim| {
        let start = sim.now;
        let c = sim.connect(0, 1, ConnectionConfig::default());
        sim.run_until(Duration::from_secs(5), |s| {
            s.state(0, c) == ConnectionState::Connected
        });
        let rtts = (sim.now - start).as_secs_f64() / rtt.as_secs_f64();
        // Let the server's reply (with the address token) arrive.
        sim.run_for(rtt);
        rtts
    };
    let first = connect(&mut sim);
    (first, connect(&mut sim))
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Resident bytes per connection (both ends live in this process, so each connection counts
/// twice: the figure is per end), with `n` idle connections open.
fn punchline_idle_memory(n: usize) -> (f64, usize) {
    let server = Sockets::new().expect("sockets");
    let client = Sockets::new().expect("sockets");
    let mut events = server.status_events();
    let listen = server
        .create_listen_socket_ip("127.0.0.1:0".parse().expect("addr"), &[])
        .expect("listen");
    let addr = server.get_listen_socket_address(listen).expect("addr");
    std::thread::sleep(Duration::from_millis(100));
    let before = rss_bytes();
    let mut handles = Vec::new();
    for _ in 0..n {
        match client.connect_by_ip_address(addr, &[]) {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("stopped at {} connections: {e}", handles.len());
                break;
            }
        }
    }
    let opened = handles.len();
    let mut accepted = 0;
    let end = Instant::now() + Duration::from_secs(120);
    while accepted < opened && Instant::now() < end {
        while let Some(ev) = events.try_recv() {
            if ev.info.state == ConnectionState::Connecting {
                let _ = server.accept_connection(ev.connection);
                accepted += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_bytes();
    let per_end = after.saturating_sub(before) as f64 / (2 * opened.max(1)) as f64;
    (per_end, opened)
}

// ----- raw UDP -----------------------------------------------------------------------------

/// Blasts `total` bytes in `DATAGRAM`-byte datagrams at a receiver; returns the receiver's
/// MB/s (kernel drops count against it).
fn raw_udp_blast(total: u64) -> f64 {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let to: SocketAddr = rx.local_addr().expect("addr");
    let sender = std::thread::spawn(move || {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let buf = vec![0u8; DATAGRAM];
        let mut sent = 0;
        while sent < total {
            if tx.send_to(&buf, to).is_ok() {
                sent += DATAGRAM as u64;
            }
        }
    });
    let mut buf = vec![0u8; 65_536];
    let mut got = 0u64;
    let (mut first, mut last) = (None, Instant::now());
    while let Ok(n) = rx.recv(&mut buf) {
        first.get_or_insert_with(Instant::now);
        got += n as u64;
        last = Instant::now();
    }
    sender.join().expect("sender");
    got as f64 / 1e6 / (last - first.unwrap_or(last)).as_secs_f64().max(1e-9)
}

fn raw_udp_pingpong(rounds: usize, size: usize) -> Vec<Duration> {
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    let total = rounds + 100;
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        for _ in 0..total {
            let (n, from) = server.recv_from(&mut buf).expect("recv");
            server.send_to(&buf[..n], from).expect("send");
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client.connect(addr).expect("connect");
    let payload = vec![1u8; size];
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(rounds);
    for i in 0..total {
        let t = Instant::now();
        client.send(&payload).expect("send");
        client.recv(&mut buf).expect("recv");
        if i >= 100 {
            out.push(t.elapsed());
        }
    }
    echo.join().expect("echo");
    out
}
