//! Deciding whether a peer's credentials are acceptable, and whether data goes encrypted.

use super::config::{ConnectionConfig, Credentials};
use super::packet;
use super::types::EndReason;
use punchline_identity::Identity;
use std::net::SocketAddr;

/// What is known of an accepted peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The identity the peer claimed (proven unless `authenticated` is false).
    pub identity: Identity,
    /// True when the identity is proven by a signature (and certificate, where required).
    pub authenticated: bool,
}

/// Why a handshake was refused: an end reason and a sentence for the debug text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The end reason.
    pub reason: EndReason,
    /// What went wrong.
    pub debug: String,
}

impl Refusal {
    fn cert(debug: String) -> Self {
        Self {
            reason: EndReason::REMOTE_BAD_CERT,
            debug,
        }
    }
}

/// Checks a peer's credentials (whose hello signature the caller has verified) against local
/// trust and policy.
///
/// A peer is authenticated when it signed its hello and either presents a certificate from a
/// CA we trust for (identity, key), or — when we trust no CA — its identity is its own key.
/// When we trust any CA, a certificate is required. A peer that proves nothing is accepted
/// only when `IP_AllowWithoutAuth` (or, for loopback peers, `IPLocalHost_AllowWithoutAuth`)
/// allows it.
pub fn check_peer(
    local: &Credentials,
    config: &ConnectionConfig,
    peer: &packet::Credentials,
    peer_addr: SocketAddr,
    now_unix: u64,
) -> Result<PeerInfo, Refusal> {
    let authenticated = match (&peer.key, &peer.cert) {
        (Some(key), Some(cert)) if !local.trusted.is_empty() => {
            if cert.public_key != *key {
                return Err(Refusal::cert(format!(
                    "certificate is for key {}, but the peer signed with key {key}",
                    cert.public_key
                )));
            }
            local
                .trusted
                .verify(cert, now_unix, Some(&peer.identity), local.app_id)
                .map_err(|e| Refusal::cert(format!("peer certificate refused: {e}")))?;
            true
        }
        (Some(_), None) if !local.trusted.is_empty() => {
            return Err(Refusal::cert(
                "peer presented no certificate, and one is required because trusted CAs are set"
                    .into(),
            ));
        }
        (Some(key), _) => match &peer.identity {
            Identity::PublicKey(claimed) if claimed == key => true,
            Identity::PublicKey(claimed) => {
                return Err(Refusal::cert(format!(
                    "peer claims identity ed25519:{claimed} but signed with key {key}"
                )));
            }
            _ => false,
        },
        (None, _) => false,
    };
    if let Some(expected) = &config.expected_peer {
        if *expected != peer.identity {
            return Err(Refusal::cert(format!(
                "expected peer {expected}, but it identified as {}",
                peer.identity
            )));
        }
        if !authenticated {
            return Err(Refusal::cert(format!(
                "peer {expected} did not prove its identity"
            )));
        }
    }
    if !authenticated {
        let mut allow = config.allow_without_auth;
        if peer_addr.ip().is_loopback() {
            allow = allow.max(config.localhost_allow_without_auth);
        }
        if allow == 0 {
            return Err(Refusal::cert(format!(
                "peer {} is unauthenticated and IP_AllowWithoutAuth is 0",
                peer.identity
            )));
        }
        if allow == 1 {
            tracing::warn!(peer = %peer.identity, %peer_addr, "accepting an unauthenticated peer");
        }
    }
    Ok(PeerInfo {
        identity: peer.identity.clone(),
        authenticated,
    })
}

/// Decides (server side) whether data goes unencrypted, from both `Unencrypted` settings.
pub fn negotiate_encryption(client: u8, server: u8) -> Result<bool, Refusal> {
    let bad = |debug: &str| Refusal {
        reason: EndReason::REMOTE_BAD_CRYPT,
        debug: debug.into(),
    };
    match (client, server) {
        (3, 0) => Err(bad(
            "client requires unencrypted data; server requires encryption",
        )),
        (0, 3) => Err(bad(
            "server requires unencrypted data; client requires encryption",
        )),
        (0, _) | (_, 0) => Ok(false),
        (c, s) => Ok(c >= 2 || s >= 2),
    }
}

/// Checks (client side) that the server's decision fits our own setting.
pub fn accept_encryption_decision(ours: u8, unencrypted: bool) -> Result<(), Refusal> {
    let bad = |debug: &str| Refusal {
        reason: EndReason::REMOTE_BAD_CRYPT,
        debug: debug.into(),
    };
    match (ours, unencrypted) {
        (0, true) => Err(bad("server chose unencrypted data, which we do not allow")),
        (3, false) => Err(bad(
            "server chose encryption, but we require unencrypted data",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_is_off_only_when_both_allow_and_one_prefers() {
        assert_eq!(negotiate_encryption(0, 0), Ok(false));
        assert_eq!(negotiate_encryption(1, 1), Ok(false));
        assert_eq!(negotiate_encryption(1, 2), Ok(true));
        assert_eq!(negotiate_encryption(2, 0), Ok(false));
        assert_eq!(negotiate_encryption(3, 3), Ok(true));
        assert!(negotiate_encryption(3, 0).is_err());
    }
}
