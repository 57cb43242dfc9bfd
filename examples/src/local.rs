//! What the one-process examples share: a signaling server on its own runtime, and peers
//! logged in to it with ICE on loopback.

use punchline::identity::KeyPair;
use punchline::{Sockets, SocketsConfig};
use punchline_ice::IceTransport;
use punchline_signaling::{Config, Server, SignalingClient};
use std::sync::Arc;

/// A signaling server on 127.0.0.1 with its own runtime; stops when dropped.
pub struct LocalServer {
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    /// Where clients reach it (`ws://…/`).
    pub url: String,
}

impl LocalServer {
    /// Starts one with `config`.
    pub fn start(config: Config) -> Result<LocalServer, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let server = rt
            .block_on(Server::start("127.0.0.1:0".parse().expect("valid"), config))
            .map_err(|e| e.to_string())?;
        Ok(LocalServer {
            url: format!("ws://{}/", server.addr()),
            rt,
            server: Some(server),
        })
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
    }
}

/// A peer with a fresh identity, ICE on loopback, logged in to `server`; logs out when
/// dropped.
pub struct LocalPeer {
    /// Its sockets.
    pub sockets: Sockets,
    /// Its key.
    pub key: KeyPair,
    signaling: Arc<SignalingClient>,
}

impl LocalPeer {
    /// Logs a new peer in.
    pub fn join(server: &LocalServer) -> Result<LocalPeer, String> {
        let key = KeyPair::generate(&mut rand_core::OsRng);
        let sockets = Sockets::with_config(SocketsConfig {
            key: Some(key.clone()),
            ..SocketsConfig::default()
        })
        .map_err(|e| e.to_string())?;
        sockets.set_p2p_transport(IceTransport::loopback_only().into_arc());
        let signaling = SignalingClient::connect(&server.url, &key, None, &sockets)
            .map_err(|e| e.to_string())?;
        Ok(LocalPeer {
            sockets,
            key,
            signaling,
        })
    }
}

impl Drop for LocalPeer {
    fn drop(&mut self) {
        self.signaling.disconnect();
    }
}

/// Polls `f` until it gives something, for up to 10 s.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if std::time::Instant::now() > end {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
