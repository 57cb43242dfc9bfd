//! The embedded TURN server (RFC 8656, on the `turn` crate) and its short-lived credentials.
//!
//! Credentials follow the TURN REST API convention (as coturn's `use-auth-secret`): the
//! user name is `<unix expiry>:<identity>` and the password is
//! `base64(HMAC-SHA1(secret, user name))`, so the signaling server hands out credentials
//! that the TURN server checks without a shared user table, and they stop working at the
//! expiry.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use turn::auth::{generate_auth_key, AuthHandler};
use turn::relay::relay_static::RelayAddressGeneratorStatic;
use turn::server::config::{ConnConfig, ServerConfig};

/// The realm the embedded TURN server uses.
pub const REALM: &str = "punchline";

/// A TURN user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// `<unix expiry>:<identity>`.
    pub username: String,
    /// The password for it.
    pub password: String,
    /// When they stop working (seconds since 1970).
    pub expires: u64,
}

impl std::fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn password(secret: &[u8], username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    B64.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
}

/// Credentials for `who`, valid for `ttl` from now, under `secret`.
pub fn credentials(secret: &[u8], who: &str, ttl: Duration) -> TurnCredentials {
    let expires = unix_now() + ttl.as_secs();
    let username = format!("{expires}:{who}");
    TurnCredentials {
        password: password(secret, &username),
        username,
        expires,
    }
}

/// Checks REST-style credentials: the expiry must be ahead.
struct RestAuth {
    secret: Vec<u8>,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        from: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let expiry: u64 = username
            .split(':')
            .next()
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| turn::Error::Other(format!("user name {username:?} has no expiry")))?;
        if expiry < unix_now() {
            tracing::debug!(%from, username, "expired TURN credentials");
            return Err(turn::Error::Other("expired credentials".into()));
        }
        Ok(generate_auth_key(
            username,
            realm,
            &password(&self.secret, username),
        ))
    }
}

/// A running TURN server.
pub struct TurnServer {
    server: turn::server::Server,
    addr: SocketAddr,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TurnServer {
    /// Serves TURN on UDP `listen` (on the current tokio runtime), relaying from
    /// `relay_ip` (the address peers see; for an unspecified `listen`, required to be a
    /// real address of this host). Credentials are checked against `secret`.
    pub async fn start(
        listen: SocketAddr,
        relay_ip: IpAddr,
        secret: Vec<u8>,
    ) -> std::io::Result<TurnServer> {
        let socket = tokio::net::UdpSocket::bind(listen).await?;
        let addr = socket.local_addr()?;
        let bind_ip = if listen.ip().is_unspecified() {
            listen.ip()
        } else {
            relay_ip
        };
        let server = turn::server::Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(socket),
                relay_addr_generator: Box::new(RelayAddressGeneratorStatic {
                    relay_address: relay_ip,
                    address: bind_ip.to_string(),
                    net: Arc::new(webrtc_util::vnet::net::Net::new(None)),
                }),
            }],
            realm: REALM.into(),
            auth_handler: Arc::new(RestAuth {
                secret: secret.clone(),
            }),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(TurnServer {
            server,
            addr,
            secret,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Credentials for `who`, valid for `ttl`.
    pub fn credentials(&self, who: &str, ttl: Duration) -> TurnCredentials {
        credentials(&self.secret, who, ttl)
    }

    /// Ends every allocation now (their clients must allocate again), for example after the
    /// secret changed. Returns how many there were.
    pub async fn drop_allocations(&self) -> usize {
        let infos = self
            .server
            .get_allocations_info(None)
            .await
            .unwrap_or_default();
        let users: std::collections::BTreeSet<String> =
            infos.values().map(|i| i.username.clone()).collect();
        for u in users {
            let _ = self.server.delete_allocations_by_username(u).await;
        }
        infos.len()
    }

    /// Stops serving and drops every allocation.
    pub async fn stop(self) {
        let _ = self.server.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_checked_and_expire() {
        let auth = RestAuth {
            secret: b"s3cret".to_vec(),
        };
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = credentials(b"s3cret", "ed25519:ab", Duration::from_secs(60));
        let key = auth.auth_handle(&c.username, REALM, from).unwrap();
        assert_eq!(key, generate_auth_key(&c.username, REALM, &c.password));
        // Another secret gives another password: the key does not match.
        let forged = credentials(b"other", "ed25519:ab", Duration::from_secs(60));
        assert_ne!(
            auth.auth_handle(&forged.username, REALM, from).unwrap(),
            generate_auth_key(&forged.username, REALM, &forged.password)
        );
        let old = format!("{}:ed25519:ab", unix_now() - 1);
        assert!(auth.auth_handle(&old, REALM, from).is_err());
        assert!(auth.auth_handle("nobody", REALM, from).is_err());
    }
}
