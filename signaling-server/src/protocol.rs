//! The JSON messages of the signaling protocol (docs/SIGNALING.md), one per websocket text
//! frame, and the login proof.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use punchline_identity::{Identity, KeyPair, PublicKey, Signature};
use serde::{Deserialize, Serialize};

/// What the server says it is, in the challenge.
pub const SERVER_NAME: &str = concat!("punchline-signaling/", env!("CARGO_PKG_VERSION"));
/// Largest signal payload, in bytes (before base64).
pub const MAX_SIGNAL: usize = 4096;
/// Fake ports one identity may hold.
pub const MAX_FAKE_PORTS: usize = 4;
const LOGIN_LABEL: &[u8] = b"punchline-signaling login v2\0";

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// Proves the identity (answer to the challenge).
    Login {
        /// The identity claimed, in text form.
        identity: String,
        /// The ed25519 key, base64.
        public_key: String,
        /// The signature of the login proof, base64.
        signature: String,
        /// A CA certificate binding identity and key, base64 (for non-key identities).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate: Option<String>,
        /// The server's host as the client dialled it (see [`url_host`]), which the
        /// signature covers. `None` from an old client, which is refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<String>,
    },
    /// A signal for another identity.
    Signal {
        /// The recipient.
        to: String,
        /// The signal, base64.
        data: String,
        /// The sender's number for it, echoed in `undeliverable`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Asks for a FakeIP address (and one more fake port on it).
    FakeipRequest {
        /// Echoed in the answer.
        id: u64,
    },
    /// Asks who holds a FakeIP address.
    FakeipResolve {
        /// Echoed in the answer.
        id: u64,
        /// The address.
        ip: String,
    },
}

/// The STUN and TURN servers a client should use for ICE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceSettings {
    /// STUN servers, as `stun:host:port`.
    #[serde(default)]
    pub stun: Vec<String>,
    /// TURN servers with credentials.
    #[serde(default)]
    pub turn: Vec<TurnSettings>,
}

/// A TURN server and short-lived credentials for it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnSettings {
    /// `turn:host:port`.
    pub url: String,
    /// The user name (`<unix expiry>:<identity>`).
    pub username: String,
    /// The password.
    pub credential: String,
    /// When the credentials stop working (seconds since 1970).
    pub expires: u64,
}

impl std::fmt::Debug for TurnSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnSettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The first message: sign this.
    Challenge {
        /// 32 random bytes, base64.
        nonce: String,
        /// The server's name and version.
        server: String,
        /// The server's identity, when it has a key: the login proof covers it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_key: Option<String>,
    },
    /// Logged in.
    Welcome {
        /// The identity proven.
        identity: String,
        /// STUN and TURN servers for ICE, with this client's TURN credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice: Option<IceSettings>,
        /// Messages per second the server takes from a client (twice that in a burst);
        /// beyond, it answers `rate_limited` and at last disconnects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<u32>,
    },
    /// A signal from another identity.
    Signal {
        /// Its proven sender.
        from: String,
        /// The signal, base64.
        data: String,
    },
    /// The recipient of a signal is not online.
    Undeliverable {
        /// The recipient.
        to: String,
        /// The sender's number for the signal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A FakeIP allocation.
    Fakeip {
        /// The request's id.
        id: u64,
        /// The fake IPv4 address.
        ip: String,
        /// Its fake ports so far.
        ports: Vec<u16>,
    },
    /// Who holds a FakeIP address (`None`: nobody online).
    FakeipIdentity {
        /// The request's id.
        id: u64,
        /// The address asked about.
        ip: String,
        /// The holder.
        identity: Option<String>,
    },
    /// Something was wrong.
    Error {
        /// A stable code (see docs/SIGNALING.md).
        code: String,
        /// A sentence for people.
        message: String,
    },
}

impl ServerMsg {
    /// An error message.
    pub fn error(code: &str, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Error {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What a login proof is bound to besides the identity: the challenge, and the server it
/// came from, so a server that passes on another server's challenge cannot log in there
/// with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginContext<'a> {
    /// The challenge's nonce.
    pub nonce: &'a [u8],
    /// The server's host as the client dialled it ([`url_host`]).
    pub host: &'a str,
    /// The server's identity from the challenge, when it has a key.
    pub server_key: Option<&'a str>,
}

/// The bytes a client signs to log in: the label, the nonce, the host and the server's
/// key (each after its length in one byte), then the identity.
pub fn login_proof(ctx: &LoginContext<'_>, identity: &str) -> Option<Vec<u8>> {
    let key = ctx.server_key.unwrap_or("");
    let host = u8::try_from(ctx.host.len()).ok()?;
    let key_len = u8::try_from(key.len()).ok()?;
    let mut m = Vec::with_capacity(
        LOGIN_LABEL.len() + ctx.nonce.len() + 2 + ctx.host.len() + key.len() + identity.len(),
    );
    m.extend_from_slice(LOGIN_LABEL);
    m.extend_from_slice(ctx.nonce);
    m.push(host);
    m.extend_from_slice(ctx.host.as_bytes());
    m.push(key_len);
    m.extend_from_slice(key.as_bytes());
    m.extend_from_slice(identity.as_bytes());
    Some(m)
}

/// A `login` answering the challenge of `ctx`, signed by `key` for `identity`; `None` when
/// the host or the server key is too long (over 255 bytes) to sign.
pub fn login(
    key: &KeyPair,
    identity: &Identity,
    ctx: &LoginContext<'_>,
    cert: Option<String>,
) -> Option<ClientMsg> {
    let identity = identity.to_string();
    let signature = key.sign(&login_proof(ctx, &identity)?);
    Some(ClientMsg::Login {
        public_key: B64.encode(key.public_key().as_bytes()),
        signature: B64.encode(signature.as_bytes()),
        identity,
        certificate: cert,
        server: Some(ctx.host.to_string()),
    })
}

/// The host of a `ws://` or `wss://` URL, as a login proof names it: lower case, without
/// port, brackets (IPv6) or user name. `None` when there is none.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Decodes base64, refusing anything longer than `max` bytes decoded.
pub fn unbase64(text: &str, max: usize) -> Option<Vec<u8>> {
    if text.len() > max.div_ceil(3) * 4 {
        return None;
    }
    B64.decode(text).ok().filter(|b| b.len() <= max)
}

/// Base64.
pub fn base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A key from base64.
pub fn public_key(text: &str) -> Option<PublicKey> {
    let b: [u8; 32] = unbase64(text, 32)?.try_into().ok()?;
    PublicKey::from_bytes(&b).ok()
}

/// A signature from base64.
pub fn signature(text: &str) -> Option<Signature> {
    let b: [u8; 64] = unbase64(text, 64)?.try_into().ok()?;
    Some(Signature::from_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_json_shape() {
        let m = ClientMsg::Signal {
            to: "str:bob".into(),
            data: base64(b"hi"),
            id: Some(7),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"type":"signal","to":"str:bob","data":"aGk=","id":7}"#
        );
        assert_eq!(serde_json::from_str::<ClientMsg>(&text).unwrap(), m);
        let e = serde_json::to_string(&ServerMsg::error("malformed", "bad")).unwrap();
        assert_eq!(e, r#"{"type":"error","code":"malformed","message":"bad"}"#);
        assert!(serde_json::from_str::<ClientMsg>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ClientMsg>(r#"{"type":"signal","to":"x"}"#).is_err());
    }

    #[test]
    fn base64_is_bounded_before_decoding() {
        assert_eq!(unbase64(&base64(&[1; 32]), 32), Some(vec![1; 32]));
        assert_eq!(unbase64(&base64(&[1; 33]), 32), None);
        assert_eq!(unbase64("!!!!", 32), None);
    }

    #[test]
    fn url_hosts_are_the_host_alone() {
        for (url, host) in [
            ("ws://127.0.0.1:7373/", "127.0.0.1"),
            ("wss://Signal.Example.NET./path?x#y", "signal.example.net"),
            ("wss://user@example.net:443/", "example.net"),
            ("ws://[::1]:7373/", "::1"),
            ("ws://example.net", "example.net"),
        ] {
            assert_eq!(url_host(url).as_deref(), Some(host), "{url}");
        }
        assert_eq!(url_host("example.net"), None);
        assert_eq!(url_host("ws:///x"), None);
    }

    #[test]
    fn a_login_proof_names_its_server() {
        let nonce = [9u8; 32];
        let at = |host, server_key| LoginContext {
            nonce: &nonce,
            host,
            server_key,
        };
        let proof = |c| login_proof(&c, "str:alice").unwrap();
        assert_ne!(proof(at("a.example", None)), proof(at("b.example", None)));
        assert_ne!(
            proof(at("a.example", None)),
            proof(at("a.example", Some("ed25519:00")))
        );
        // Lengths keep the fields apart: no two splits of the same bytes sign alike.
        assert_ne!(proof(at("ab", Some("c"))), proof(at("a", Some("bc"))));
        assert!(login_proof(&at(&"h".repeat(256), None), "str:alice").is_none());
    }
}
