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
const LOGIN_LABEL: &[u8] = b"punchline-signaling login v1\0";

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

/// The bytes a client signs to log in.
pub fn login_proof(nonce: &[u8], identity: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(LOGIN_LABEL.len() + nonce.len() + identity.len());
    m.extend_from_slice(LOGIN_LABEL);
    m.extend_from_slice(nonce);
    m.extend_from_slice(identity.as_bytes());
    m
}

/// A `login` answering `nonce`, signed by `key` for `identity`.
pub fn login(key: &KeyPair, identity: &Identity, nonce: &[u8], cert: Option<String>) -> ClientMsg {
    let identity = identity.to_string();
    let signature = key.sign(&login_proof(nonce, &identity));
    ClientMsg::Login {
        public_key: B64.encode(key.public_key().as_bytes()),
        signature: B64.encode(signature.as_bytes()),
        identity,
        certificate: cert,
    }
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
}
