//! Chat over punchline.
//!
//! ```text
//! chat demo                      a server and two scripted clients in one process
//! chat server [ADDR]             a chat server (default 127.0.0.1:27020; port 0 picks one)
//! chat client ADDR               a client: lines from stdin, /nick NAME, /quit
//! ```

use punchline_examples::{ChatClient, ChatServer, ClientEvent};
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("demo") => demo(),
        Some("server") => server(args.get(1).map_or("127.0.0.1:27020", String::as_str)),
        Some("client") => match args.get(1) {
            Some(addr) => client(addr),
            None => Err("usage: chat client ADDR".to_string()),
        },
        Some(other) => Err(format!(
            "unknown command {other:?}; use: chat demo | chat server [ADDR] | chat client ADDR"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))
}

fn server(addr: &str) -> Result<(), String> {
    let mut s = ChatServer::start(parse(addr)?).map_err(|e| e.to_string())?;
    println!("listening on {}", s.local_addr());
    loop {
        for line in s.poll() {
            println!("{line}");
        }
        std::thread::sleep(TICK);
    }
}

fn client(addr: &str) -> Result<(), String> {
    let mut c = ChatClient::connect(parse(addr)?).map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        while let Ok(line) = rx.try_recv() {
            c.send_line(&line).map_err(|e| e.to_string())?;
        }
        for ev in c.poll() {
            match ev {
                ClientEvent::Connected => println!("* connected to {addr}"),
                ClientEvent::Line(l) => println!("{l}"),
                ClientEvent::Closed(why) => {
                    println!("* disconnected: {why}");
                    return Ok(());
                }
            }
        }
        std::thread::sleep(TICK);
    }
}

/// A server and two scripted clients talking over loopback UDP.
fn demo() -> Result<(), String> {
    let mut server = ChatServer::start(parse("127.0.0.1:0")?).map_err(|e| e.to_string())?;
    let addr = server.local_addr();
    println!("server listening on {addr}");
    let scripts: [(&str, &[&str]); 2] = [
        (
            "alice",
            &["/nick alice", "hi everyone", "anyone up for a match?"],
        ),
        (
            "bob",
            &[
                "/nick bob",
                "hello alice",
                "sure, give me a minute",
                "/quit",
            ],
        ),
    ];
    let mut clients = Vec::new();
    for (name, _) in &scripts {
        clients.push((*name, ChatClient::connect(addr).map_err(|e| e.to_string())?));
    }
    // Every client sees every chat line of both scripts.
    let expected: Vec<String> = [
        "<alice> hi everyone",
        "<alice> anyone up for a match?",
        "<bob> hello alice",
        "<bob> sure, give me a minute",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); clients.len()];
    let mut bob_closed = false;
    let mut step = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut next_line = Instant::now();
    loop {
        for line in server.poll() {
            println!("[server] {line}");
        }
        if Instant::now() >= next_line {
            // Clients take turns, one line every 20 ms.
            let (who, script) = scripts[step % 2];
            let i = step / 2;
            if let Some(line) = script.get(i) {
                let idx = if who == "alice" { 0 } else { 1 };
                clients[idx].1.send_line(line).map_err(|e| e.to_string())?;
            }
            step += 1;
            next_line = Instant::now() + Duration::from_millis(20);
        }
        for (i, (who, c)) in clients.iter_mut().enumerate() {
            for ev in c.poll() {
                match ev {
                    ClientEvent::Connected => println!("[{who}] * connected"),
                    ClientEvent::Line(l) => {
                        println!("[{who}] {l}");
                        seen[i].push(l);
                    }
                    ClientEvent::Closed(why) => {
                        println!("[{who}] * disconnected: {why}");
                        bob_closed |= *who == "bob";
                    }
                }
            }
        }
        let alice_done = expected.iter().all(|l| seen[0].contains(l))
            && seen[0].iter().any(|l| l == "* bob quit");
        let bob_done = expected.iter().all(|l| seen[1].contains(l)) && bob_closed;
        if alice_done && bob_done {
            println!("demo ok: both clients saw all {} lines", expected.len());
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "demo timed out; alice saw {:?}, bob saw {:?}",
                seen[0], seen[1]
            ));
        }
        std::thread::sleep(TICK);
    }
}
