//! The `punchline-signaling` command line: the server, and `nat-check`. The binary is
//! [`run`] on its arguments; other programs (the namespace tests' host tool) start the same
//! server through it.

use crate::server::{Config, Server, TurnAdvert};
use crate::stun::StunServer;
use crate::turn_server::{TurnConfig, TurnServer};
use clap::{Parser, Subcommand};
use punchline_identity::{CertStore, PublicKey};
use rand_core::{OsRng, RngCore};
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The punchline signaling server: introduces peers by identity, forwards their rendezvous
/// signals, allocates FakeIPs, and (with --stun / --turn) serves STUN and TURN for ICE.
/// Every flag can also be set as PUNCHLINE_SIGNALING_<FLAG>.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where to serve websockets (at /), /healthz and /metrics.
    #[arg(
        long,
        env = "PUNCHLINE_SIGNALING_LISTEN",
        default_value = "127.0.0.1:7373"
    )]
    listen: SocketAddr,
    /// Most clients at once (logged in or logging in).
    #[arg(
        long,
        env = "PUNCHLINE_SIGNALING_MAX_CLIENTS",
        default_value_t = 10_000
    )]
    max_clients: usize,
    /// Largest websocket frame accepted, in bytes.
    #[arg(long, env = "PUNCHLINE_SIGNALING_MAX_FRAME", default_value_t = 16_384)]
    max_frame: usize,
    /// Messages per second per client (burst: twice this).
    #[arg(long, env = "PUNCHLINE_SIGNALING_RATE", default_value_t = 200)]
    rate: u32,
    /// Seconds a client may stay silent (pings count).
    #[arg(long, env = "PUNCHLINE_SIGNALING_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
    /// Seconds a new client has to log in.
    #[arg(long, env = "PUNCHLINE_SIGNALING_LOGIN_TIMEOUT", default_value_t = 10)]
    login_timeout: u64,
    /// A file of trusted CA keys (one `ed25519:<hex>` per line) for certificate logins.
    #[arg(long, env = "PUNCHLINE_SIGNALING_TRUSTED_CA")]
    trusted_ca: Option<std::path::PathBuf>,
    /// Drop signals to offline identities silently instead of answering "undeliverable".
    #[arg(long, env = "PUNCHLINE_SIGNALING_QUIET_UNDELIVERABLE")]
    quiet_undeliverable: bool,
    /// Serve STUN on this UDP address (e.g. 0.0.0.0:3478); clients learn of it at login.
    #[arg(long, env = "PUNCHLINE_SIGNALING_STUN")]
    stun: Option<SocketAddr>,
    /// A second IP of this host: STUN then also answers RFC 5780 NAT behaviour discovery
    /// (on both IPs, at the STUN port and the one above it), which `nat-check` uses.
    #[arg(long, env = "PUNCHLINE_SIGNALING_STUN_ALT_IP", requires = "stun")]
    stun_alt_ip: Option<IpAddr>,
    /// Serve TURN on this UDP address (e.g. 0.0.0.0:3479); clients get short-lived
    /// credentials for it at login.
    #[arg(long, env = "PUNCHLINE_SIGNALING_TURN")]
    turn: Option<SocketAddr>,
    /// The address relayed traffic leaves from (default: the --turn IP; needed when that
    /// is unspecified).
    #[arg(long, env = "PUNCHLINE_SIGNALING_TURN_RELAY_IP", requires = "turn")]
    turn_relay_ip: Option<IpAddr>,
    /// The secret TURN credentials are made with (TURN REST API style, as coturn's
    /// static-auth-secret). Default: random at each start.
    #[arg(long, env = "PUNCHLINE_SIGNALING_TURN_SECRET", requires = "turn")]
    turn_secret: Option<String>,
    /// A peer range TURN may relay to although it refuses it by default (loopback,
    /// private, link-local, shared, multicast and reserved addresses), as CIDR; repeat for
    /// more. For a lab on loopback: 127.0.0.0/8.
    #[arg(
        long,
        env = "PUNCHLINE_SIGNALING_TURN_ALLOW_PEER",
        value_delimiter = ',',
        requires = "turn"
    )]
    turn_allow_peer: Vec<ipnet::IpNet>,
    /// TURN allocations one user (one login) may hold at once.
    #[arg(long, env = "PUNCHLINE_SIGNALING_TURN_USER_QUOTA", default_value_t = TurnConfig::USER_QUOTA)]
    turn_user_quota: usize,
    /// TURN allocations in all (each holds a UDP socket: keep it under the descriptor limit).
    #[arg(long, env = "PUNCHLINE_SIGNALING_TURN_TOTAL_QUOTA", default_value_t = TurnConfig::TOTAL_QUOTA)]
    turn_total_quota: usize,
    /// TURN allocations from one source (an IPv4 address or an IPv6 /64), whatever its logins.
    #[arg(long, env = "PUNCHLINE_SIGNALING_TURN_SOURCE_QUOTA", default_value_t = TurnConfig::SOURCE_QUOTA)]
    turn_source_quota: usize,
    /// Bytes per second one TURN allocation relays each way (0: no limit); more is dropped.
    #[arg(long, env = "PUNCHLINE_SIGNALING_TURN_MAX_BPS", default_value_t = TurnConfig::MAX_BPS)]
    turn_max_bps: u32,
    /// Bytes per second each client may send through the relay (datagrams in binary
    /// websocket frames, for peers with no UDP path); 0 turns the relay off.
    #[arg(
        long,
        env = "PUNCHLINE_SIGNALING_RELAY_RATE",
        default_value_t = 1_000_000
    )]
    relay_rate: u32,
    /// Seconds the TURN credentials given at login stay valid.
    #[arg(long, env = "PUNCHLINE_SIGNALING_TURN_TTL", default_value_t = 3600)]
    turn_ttl: u64,
    /// Most bytes queued toward one client (its websocket write buffer and the server's
    /// queues together; at least 65536). A client that does not keep up is disconnected.
    #[arg(
        long,
        env = "PUNCHLINE_SIGNALING_CLIENT_QUEUE",
        default_value_t = 256 * 1024,
        value_parser = clap::value_parser!(u64).range(crate::server::MIN_CLIENT_QUEUE as u64..)
    )]
    client_queue: u64,
    /// Seconds a write to a client may take before the client is disconnected.
    #[arg(long, env = "PUNCHLINE_SIGNALING_WRITE_TIMEOUT", default_value_t = 10)]
    write_timeout: u64,
    /// Signals per second one client may send to one other (burst: twice this).
    #[arg(long, env = "PUNCHLINE_SIGNALING_PAIR_RATE", default_value_t = 100)]
    pair_rate: u32,
    /// Connections not yet logged in from one source (an IPv4 address or an IPv6 /64).
    #[arg(
        long,
        env = "PUNCHLINE_SIGNALING_MAX_PENDING_PER_SOURCE",
        default_value_t = 32
    )]
    max_pending_per_source: usize,
    /// Logged-in clients from one source (an IPv4 address or an IPv6 /64).
    #[arg(
        long,
        env = "PUNCHLINE_SIGNALING_MAX_CLIENTS_PER_SOURCE",
        default_value_t = 1024
    )]
    max_clients_per_source: usize,
    /// Unfinished HTTP requests and websocket upgrades, from everyone together.
    #[arg(long, env = "PUNCHLINE_SIGNALING_MAX_UPGRADES", default_value_t = 512)]
    max_upgrades: usize,
    /// Serve wss:// (TLS) with this certificate chain (PEM, the server's own first).
    #[arg(long, env = "PUNCHLINE_SIGNALING_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "PUNCHLINE_SIGNALING_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// A host name clients reach this server by (repeat, or separate with commas): login
    /// proofs must name it, or the address the client reached. Needed behind a DNS name or
    /// a proxy.
    #[arg(long, env = "PUNCHLINE_SIGNALING_NAME", value_delimiter = ',')]
    name: Vec<String>,
    /// The server's key file (as the peers' `--key`): its identity goes in every challenge
    /// and every login proof.
    #[arg(long, env = "PUNCHLINE_SIGNALING_KEY")]
    key: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tells this host's NAT mapping and filtering behaviour (RFC 5780), against a STUN
    /// server started with --stun-alt-ip.
    NatCheck {
        /// The STUN server (host:port).
        #[arg(long)]
        stun: String,
        /// The local address to test from.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
    },
}

fn nat_check(stun: &str, bind: SocketAddr) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let server = match tokio::net::lookup_host(stun)
            .await
            .map(|mut a| a.find(|a| a.is_ipv4() == bind.is_ipv4()))
        {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => {
                eprintln!("nat-check: cannot resolve {stun}");
                return 2;
            }
        };
        match crate::stun::nat_check(server, bind).await {
            Ok(report) => {
                println!("{report}");
                0
            }
            Err(e) => {
                eprintln!("nat-check: {e}");
                1
            }
        }
    })
}

fn trusted(path: Option<&std::path::Path>) -> Result<CertStore, String> {
    let mut store = CertStore::new();
    let Some(path) = path else {
        return Ok(store);
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line
            .strip_prefix("ed25519:")
            .unwrap_or(line)
            .parse::<PublicKey>()
            .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        store.add_trusted_ca(key);
    }
    Ok(store)
}

/// Runs the command line `args` (the first is the program name) to the end: serves until
/// SIGINT or SIGTERM, or runs `nat-check`. Returns the process exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    if let Some(Command::NatCheck { stun, bind }) = &args.command {
        return nat_check(stun, *bind);
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let trusted = match trusted(args.trusted_ca.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("punchline-signaling: trusted CA file: {e}");
            return 2;
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match crate::tls::server_config(cert, key) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("punchline-signaling: TLS: {e}");
                return 2;
            }
        },
        _ => None,
    };
    let identity = match &args.key {
        Some(path) => match punchline_identity::KeyPair::load(path) {
            Ok(k) => Some(k.identity()),
            Err(e) => {
                eprintln!("punchline-signaling: key {}: {e}", path.display());
                return 2;
            }
        },
        None => None,
    };
    let names = args
        .name
        .iter()
        .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let tls_on = tls.is_some();
    let config = Config {
        names,
        identity,
        tls,
        max_clients: args.max_clients,
        max_frame: args.max_frame,
        rate: args.rate,
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        login_timeout: Duration::from_secs(args.login_timeout.max(1)),
        trusted,
        quiet_undeliverable: args.quiet_undeliverable,
        stun: None,
        turn: None,
        relay_rate: args.relay_rate,
        client_queue: usize::try_from(args.client_queue).unwrap_or(usize::MAX),
        write_timeout: Duration::from_secs(args.write_timeout.max(1)),
        pair_rate: args.pair_rate.max(1),
        max_pending_per_source: args.max_pending_per_source.max(1),
        max_clients_per_source: args.max_clients_per_source.max(1),
        max_upgrades: args.max_upgrades.max(1),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let mut config = config;
        let _stun = match args.stun {
            Some(addr) => match StunServer::start(addr, args.stun_alt_ip).await {
                Ok(s) => {
                    println!("stun on {}", s.addr());
                    if let Some(o) = s.other_addr() {
                        println!("stun behaviour discovery: other address {o}");
                    }
                    config.stun = Some(s.addr());
                    Some(s)
                }
                Err(e) => {
                    eprintln!("punchline-signaling: cannot serve STUN on {addr}: {e}");
                    std::process::exit(1);
                }
            },
            None => None,
        };
        let turn = match args.turn {
            Some(addr) => {
                let relay_ip = match args.turn_relay_ip.or((!addr.ip().is_unspecified()).then(|| addr.ip())) {
                    Some(ip) => ip,
                    None => {
                        eprintln!("punchline-signaling: --turn on an unspecified address needs --turn-relay-ip");
                        std::process::exit(2);
                    }
                };
                let secret = match &args.turn_secret {
                    Some(s) => s.as_bytes().to_vec(),
                    None => {
                        let mut s = vec![0u8; 32];
                        OsRng.fill_bytes(&mut s);
                        s
                    }
                };
                let turn_config = TurnConfig {
                    allow_peers: args.turn_allow_peer.clone(),
                    user_quota: args.turn_user_quota,
                    total_quota: args.turn_total_quota,
                    source_quota: args.turn_source_quota,
                    max_bps: args.turn_max_bps,
                    ..TurnConfig::new(addr, relay_ip, secret.clone())
                };
                match TurnServer::start(turn_config).await {
                    Ok(t) => {
                        println!("turn on {} relaying from {relay_ip}", t.addr());
                        config.turn = Some(TurnAdvert {
                            addr: t.addr(),
                            secret,
                            ttl: Duration::from_secs(args.turn_ttl.max(60)),
                            sessions: Some(t.sessions()),
                        });
                        Some(t)
                    }
                    Err(e) => {
                        eprintln!("punchline-signaling: cannot serve TURN on {addr}: {e}");
                        std::process::exit(1);
                    }
                }
            }
            None => None,
        };
        let server = match Server::start(args.listen, config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("punchline-signaling: cannot listen on {}: {e}", args.listen);
                std::process::exit(1);
            }
        };
        tracing::info!(addr = %server.addr(), tls = tls_on, "serving");
        // Tests and scripts read this line to learn the port.
        println!("listening on {}", server.addr());
        server.run_until(shutdown_signal()).await;
        if let Some(t) = turn {
            t.stop().await;
        }
        tracing::info!("stopped");
    });
    0
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
