//! The `punchline-signaling` server binary.

use clap::Parser;
use punchline_identity::{CertStore, PublicKey};
use punchline_signaling::server::{Config, Server};
use std::net::SocketAddr;
use std::time::Duration;

/// The punchline signaling server: introduces peers by identity, forwards their rendezvous
/// signals, allocates FakeIPs. Every flag can also be set as PUNCHLINE_SIGNALING_<FLAG>.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
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

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let trusted = match trusted(args.trusted_ca.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("punchline-signaling: trusted CA file: {e}");
            std::process::exit(2);
        }
    };
    let config = Config {
        max_clients: args.max_clients,
        max_frame: args.max_frame,
        rate: args.rate,
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        login_timeout: Duration::from_secs(args.login_timeout.max(1)),
        trusted,
        quiet_undeliverable: args.quiet_undeliverable,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let server = match Server::start(args.listen, config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("punchline-signaling: cannot listen on {}: {e}", args.listen);
                std::process::exit(1);
            }
        };
        tracing::info!(addr = %server.addr(), "serving");
        // Tests and scripts read this line to learn the port.
        println!("listening on {}", server.addr());
        server.run_until(shutdown_signal()).await;
        tracing::info!("stopped");
    });
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
