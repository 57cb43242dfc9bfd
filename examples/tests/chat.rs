//! Runs the chat binary as real processes: a server and two clients over loopback UDP, and
//! checks that every line reaches everyone.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("chat binary runs");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to chat client");
        stdin.flush().expect("flush");
    }

    /// Waits until a line satisfying `f` appears; returns it.
    fn wait_for(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        if let Some(l) = self.seen.iter().find(|l| f(l)) {
            return l.clone();
        }
        while Instant::now() < end {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l.clone());
                if f(&l) {
                    return l;
                }
            }
        }
        panic!("timed out waiting for {what}; saw {:?}", self.seen);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_server_and_two_clients_chat() {
    let mut server = Proc::spawn(&["server", "127.0.0.1:0"]);
    let banner = server.wait_for("the listen address", |l| l.starts_with("listening on "));
    let addr = banner.trim_start_matches("listening on ").to_string();

    let mut alice = Proc::spawn(&["client", &addr]);
    let mut bob = Proc::spawn(&["client", &addr]);
    alice.wait_for("alice connected", |l| l.starts_with("* connected"));
    bob.wait_for("bob connected", |l| l.starts_with("* connected"));
    alice.say("/nick alice");
    bob.say("/nick bob");
    alice.wait_for("bob's nick", |l| {
        l == "* guest5 is now bob" || l.ends_with(" is now bob")
    });
    let lines = ["hello from alice", "second line", "with unicode: ünïcödé ✓"];
    for l in lines {
        alice.say(l);
    }
    bob.say("hi alice");
    for l in lines {
        let want = format!("<alice> {l}");
        bob.wait_for(&want, |x| x == want);
        alice.wait_for(&want, |x| x == want);
        server.wait_for(&want, |x| x == want);
    }
    alice.wait_for("bob's line", |x| x == "<bob> hi alice");
    bob.say("/quit");
    bob.wait_for("bob's disconnect", |x| x.starts_with("* disconnected"));
    alice.wait_for("bob quit notice", |x| x == "* bob quit");
    let status = bob.child.wait().expect("bob exits");
    assert!(status.success());
}
