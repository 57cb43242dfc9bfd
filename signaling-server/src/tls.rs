//! TLS for the signaling websocket (`wss://`), on rustls: the server's certificate chain and
//! key from PEM files, and what a client trusts: the system's root certificates, and for a
//! self-hosted server the CA certificates of a PEM file.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// The environment variable naming a PEM file of CA certificates a client trusts besides
/// the system's roots.
pub const CA_FILE_ENV: &str = "PUNCHLINE_SIGNALING_CA_FILE";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The server's TLS settings: the certificate chain in `cert` (PEM, the server's own
/// first) and its private key in `key` (PEM: PKCS #8, PKCS #1 or SEC 1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a client trusts when it dials `wss://`.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

impl TlsClient {
    fn with_roots(roots: rustls::RootCertStore) -> Result<TlsClient, String> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsClient {
            config: Arc::new(config),
        })
    }

    fn system_roots() -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "a system root certificate could not be read");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system root certificates");
        roots
    }

    /// Trusts the system's root certificates (read once per process).
    pub fn system() -> Result<TlsClient, String> {
        static SYSTEM: OnceLock<Result<TlsClient, String>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| TlsClient::with_roots(Self::system_roots()))
            .clone()
    }

    /// Trusts the CA certificates in the PEM file at `path`, besides the system's roots.
    pub fn with_ca_file(path: &Path) -> Result<TlsClient, String> {
        let mut roots = Self::system_roots();
        for cert in certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        TlsClient::with_roots(roots)
    }

    /// [`with_ca_file`](Self::with_ca_file) of the file named by [`CA_FILE_ENV`] when it is
    /// set, else [`system`](Self::system).
    pub fn from_env() -> Result<TlsClient, String> {
        match std::env::var_os(CA_FILE_ENV) {
            Some(path) => TlsClient::with_ca_file(Path::new(&path)),
            None => TlsClient::system(),
        }
    }
}

/// A client's websocket to a server.
pub type ClientWs = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Why dialling failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The TLS trust could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection, the TLS handshake (a certificate refused, say) or the websocket
    /// upgrade failed.
    #[error("{0}")]
    Websocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// Opens a websocket to `url` (`ws://` or `wss://`); a `wss://` server's certificate is
/// checked against `tls` (or, when `None`, [`TlsClient::from_env`]).
pub async fn dial(url: &str, tls: Option<&TlsClient>) -> Result<ClientWs, DialError> {
    let connector = if url.starts_with("wss://") {
        let tls = match tls {
            Some(t) => t.clone(),
            None => TlsClient::from_env().map_err(DialError::Tls)?,
        };
        Some(Connector::Rustls(tls.config))
    } else {
        None
    };
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector).await?;
    Ok(ws)
}
