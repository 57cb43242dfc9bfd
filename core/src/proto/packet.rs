//! Packet layouts: the plaintext handshake and control packets, and the short header of data
//! packets.
//!
//! ```text
//! data:           [0x40 | 0x42 (key phase 1) | 0x41 (unencrypted)] [dst conn id u32]
//!                 [packet number low 32 bits] [frames ...]
//!                 [16-byte tag when encrypted; the 9 header bytes are its AD]
//! client hello:   [0xC1] [version] [client id u32] [ephemeral X25519 32] [unencrypted pref u8]
//!                 [flags u8] [identity] [ed25519 key 32]? [cert len u16, cert]?
//!                 [cookie len u8, cookie] [signature 64]? [zero padding to 1200 bytes]
//! server hello:   [0xC2] [version] [client id u32] [server id u32] [client hello hash 32]
//!                 [ephemeral 32]
//!                 [unencrypted u8] [flags u8] [identity] [key 32]? [cert]? [signature 64]?
//! retry:          [0xC3] [version] [client id u32] [cookie len u8, cookie]
//! reject:         [0xC4] [version] [client id u32] [end reason u32] [debug len u8, debug]
//! no connection:  [0xC5] [version] [conn id u32]
//! ```
//!
//! The client signs its hello (everything before the signature, after a domain label); the
//! server signs the hash of the client's whole hello datagram followed by its own hello, so its
//! signature covers the client's fresh ephemeral key.

use super::codec::{put_short_string, DecodeError, Reader};
use crate::proto::crypto::hash;
use punchline_identity::{Certificate, Identity, KeyPair, PublicKey, Signature};

/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u8 = 2;
/// An encrypted data packet.
pub const DATA: u8 = 0x40;
/// An unencrypted data packet (both sides allowed it).
pub const DATA_PLAIN: u8 = 0x41;
/// An encrypted data packet under an odd key generation (the key phase bit set).
pub const DATA_PHASE1: u8 = 0x42;
/// Client hello.
pub const CLIENT_HELLO: u8 = 0xC1;
/// Server hello.
pub const SERVER_HELLO: u8 = 0xC2;
/// Retry with a cookie.
pub const RETRY: u8 = 0xC3;
/// Handshake refused.
pub const REJECT: u8 = 0xC4;
/// No such connection.
pub const NO_CONNECTION: u8 = 0xC5;
/// Bytes of data-packet header.
pub const SHORT_HEADER_LEN: usize = 9;
/// A client hello is padded to at least this size, so the server's replies to an unvalidated
/// address never exceed what it received.
pub const MIN_CLIENT_HELLO: usize = 1200;
/// The longest cookie accepted.
pub const MAX_COOKIE_LEN: usize = 64;

const FLAG_KEY: u8 = 1;
const FLAG_CERT: u8 = 2;
const CLIENT_DOMAIN: &[u8] = b"punchline v1 client hello\0";
const SERVER_DOMAIN: &[u8] = b"punchline v1 server hello\0";

/// What a peer presents about itself in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The identity it claims.
    pub identity: Identity,
    /// Its ed25519 key, when it signs its hello.
    pub key: Option<PublicKey>,
    /// A CA-signed certificate binding identity and key.
    pub cert: Option<Certificate>,
}

impl Credentials {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.key.is_some() {
            flags |= FLAG_KEY;
        }
        if self.cert.is_some() {
            flags |= FLAG_CERT;
        }
        out.push(flags);
        self.identity.encode(out);
        if let Some(k) = &self.key {
            out.extend_from_slice(k.as_bytes());
        }
        if let Some(c) = &self.cert {
            let mut buf = Vec::new();
            c.encode(&mut buf);
            out.extend_from_slice(&(buf.len() as u16).to_be_bytes());
            out.extend_from_slice(&buf);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        if flags & !(FLAG_KEY | FLAG_CERT) != 0 {
            return Err(DecodeError::Malformed("unknown credential flags"));
        }
        let (identity, used) = Identity::decode(r.rest())?;
        r.bytes(used)?;
        let key = if flags & FLAG_KEY != 0 {
            let bytes: [u8; 32] = r.array()?;
            match &identity {
                // The usual case: the identity is the key, already checked as a curve point.
                Identity::PublicKey(k) if *k.as_bytes() == bytes => Some(*k),
                _ => Some(PublicKey::from_bytes(&bytes).map_err(|_| {
                    DecodeError::Malformed("ed25519 key is not a valid curve point")
                })?),
            }
        } else {
            None
        };
        let cert = if flags & FLAG_CERT != 0 {
            let len = r.u16()? as usize;
            let body = r.bytes(len)?;
            let (cert, used) = Certificate::decode(body)?;
            if used != len {
                return Err(DecodeError::Malformed("trailing bytes after certificate"));
            }
            Some(cert)
        } else {
            None
        };
        if cert.is_some() && key.is_none() {
            return Err(DecodeError::Malformed("certificate without a signing key"));
        }
        Ok(Self {
            identity,
            key,
            cert,
        })
    }
}

/// The first packet of a connection, from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The client's connection id (the server sends to it).
    pub client_id: u32,
    /// The client's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The client's `Unencrypted` setting (0..=3).
    pub unencrypted: u8,
    /// When the client made the hello, by its clock (unix seconds): a server takes in an
    /// unproven hello only while it is fresh.
    pub sent_at: u64,
    /// Who the client says it is.
    pub creds: Credentials,
    /// A cookie from a Retry, or empty.
    pub cookie: Vec<u8>,
    /// The client's signature, present when `creds.key` is.
    pub signature: Option<Signature>,
}

impl ClientHello {
    /// Everything the client signs: the hello up to (not including) the signature.
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MIN_CLIENT_HELLO);
        out.extend_from_slice(&[CLIENT_HELLO, PROTOCOL_VERSION]);
        out.extend_from_slice(&self.client_id.to_be_bytes());
        out.extend_from_slice(&self.ephemeral);
        out.push(self.unencrypted);
        out.extend_from_slice(&self.sent_at.to_be_bytes());
        self.creds.encode(&mut out);
        out.push(self.cookie.len() as u8);
        out.extend_from_slice(&self.cookie);
        out
    }

    /// Encodes, signs with `signer` (when the hello carries a key) and pads the hello.
    pub fn encode(&self, signer: Option<&KeyPair>) -> Vec<u8> {
        let mut out = self.body();
        if let Some(signer) = signer {
            let sig = signer.sign(&[CLIENT_DOMAIN, &out].concat());
            out.extend_from_slice(&sig.to_bytes());
        }
        if out.len() < MIN_CLIENT_HELLO {
            out.resize(MIN_CLIENT_HELLO, 0);
        }
        out
    }

    /// Decodes a hello (after the type and version bytes were checked).
    pub fn decode(datagram: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(datagram);
        r.bytes(2)?;
        let client_id = r.u32()?;
        let ephemeral = r.array()?;
        let unencrypted = r.u8()?;
        if unencrypted > 3 {
            return Err(DecodeError::Malformed("unencrypted setting above 3"));
        }
        let sent_at = r.u64()?;
        let creds = Credentials::decode(&mut r)?;
        let cookie = r.short_bytes("cookie length", MAX_COOKIE_LEN)?.to_vec();
        let signature = match creds.key {
            Some(_) => Some(Signature::from_bytes(r.array()?)),
            None => None,
        };
        Ok(Self {
            client_id,
            ephemeral,
            unencrypted,
            sent_at,
            creds,
            cookie,
            signature,
        })
    }

    /// Checks the client's signature over its hello.
    pub fn verify(&self) -> bool {
        match (&self.creds.key, &self.signature) {
            (Some(key), Some(sig)) => key
                .verify(&[CLIENT_DOMAIN, &self.body()].concat(), sig)
                .is_ok(),
            (None, None) => true,
            _ => false,
        }
    }
}

/// The server's answer to an accepted client hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The client's connection id.
    pub client_id: u32,
    /// The server's connection id (the client sends to it).
    pub server_id: u32,
    /// SHA-256 of the client hello this answers (a client may have sent several).
    pub client_hello_hash: [u8; 32],
    /// The server's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// True when data packets go unencrypted.
    pub unencrypted: bool,
    /// Who the server says it is.
    pub creds: Credentials,
    /// The server's signature, present when `creds.key` is.
    pub signature: Option<Signature>,
}

impl ServerHello {
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&[SERVER_HELLO, PROTOCOL_VERSION]);
        out.extend_from_slice(&self.client_id.to_be_bytes());
        out.extend_from_slice(&self.server_id.to_be_bytes());
        out.extend_from_slice(&self.client_hello_hash);
        out.extend_from_slice(&self.ephemeral);
        out.push(u8::from(self.unencrypted));
        self.creds.encode(&mut out);
        out
    }

    /// Encodes and signs the hello; `client_hello` is the client's datagram as received.
    pub fn encode(&self, signer: Option<&KeyPair>, client_hello: &[u8]) -> Vec<u8> {
        let mut out = self.body();
        if let Some(signer) = signer {
            let sig = signer.sign(&[SERVER_DOMAIN, &hash(&[client_hello]), &out].concat());
            out.extend_from_slice(&sig.to_bytes());
        }
        out
    }

    /// Decodes a server hello.
    pub fn decode(datagram: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(datagram);
        r.bytes(2)?;
        let client_id = r.u32()?;
        let server_id = r.u32()?;
        let client_hello_hash = r.array()?;
        let ephemeral = r.array()?;
        let unencrypted = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::Malformed("unencrypted flag above 1")),
        };
        let creds = Credentials::decode(&mut r)?;
        let signature = match creds.key {
            Some(_) => Some(Signature::from_bytes(r.array()?)),
            None => None,
        };
        if r.remaining() != 0 {
            return Err(DecodeError::Malformed("trailing bytes after server hello"));
        }
        Ok(Self {
            client_id,
            server_id,
            client_hello_hash,
            ephemeral,
            unencrypted,
            creds,
            signature,
        })
    }

    /// Checks the server's signature against the client hello this client sent.
    pub fn verify(&self, client_hello: &[u8]) -> bool {
        match (&self.creds.key, &self.signature) {
            (Some(key), Some(sig)) => key
                .verify(
                    &[SERVER_DOMAIN, &hash(&[client_hello]), &self.body()].concat(),
                    sig,
                )
                .is_ok(),
            (None, None) => true,
            _ => false,
        }
    }
}

/// A plaintext control packet of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Come back with this cookie.
    Retry {
        /// The client's connection id.
        client_id: u32,
        /// The cookie to echo.
        cookie: Vec<u8>,
    },
    /// The server refused the connection.
    Reject {
        /// The client's connection id.
        client_id: u32,
        /// End reason.
        reason: u32,
        /// Debug text.
        debug: String,
    },
    /// The sender has no connection with this id.
    NoConnection {
        /// The connection id the peer sent to.
        conn_id: u32,
    },
}

impl Control {
    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Control::Retry { client_id, cookie } => {
                out.extend_from_slice(&[RETRY, PROTOCOL_VERSION]);
                out.extend_from_slice(&client_id.to_be_bytes());
                out.push(cookie.len() as u8);
                out.extend_from_slice(cookie);
            }
            Control::Reject {
                client_id,
                reason,
                debug,
            } => {
                out.extend_from_slice(&[REJECT, PROTOCOL_VERSION]);
                out.extend_from_slice(&client_id.to_be_bytes());
                out.extend_from_slice(&reason.to_be_bytes());
                let mut end = debug.len().min(super::codec::MAX_CLOSE_DEBUG);
                while !debug.is_char_boundary(end) {
                    end -= 1;
                }
                put_short_string(&mut out, &debug[..end]);
            }
            Control::NoConnection { conn_id } => {
                out.extend_from_slice(&[NO_CONNECTION, PROTOCOL_VERSION]);
                out.extend_from_slice(&conn_id.to_be_bytes());
            }
        }
        out
    }

    /// Decodes a control packet whose type byte is `datagram[0]`.
    pub fn decode(datagram: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(datagram);
        let kind = r.u8()?;
        r.u8()?;
        let out = match kind {
            RETRY => {
                let client_id = r.u32()?;
                Control::Retry {
                    client_id,
                    cookie: r.short_bytes("cookie length", MAX_COOKIE_LEN)?.to_vec(),
                }
            }
            REJECT => Control::Reject {
                client_id: r.u32()?,
                reason: r.u32()?,
                debug: r.short_string(super::codec::MAX_CLOSE_DEBUG)?,
            },
            NO_CONNECTION => Control::NoConnection { conn_id: r.u32()? },
            tag => {
                return Err(DecodeError::UnknownType {
                    what: "control packet",
                    tag,
                })
            }
        };
        Ok(out)
    }
}

/// The short header of a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortHeader {
    /// False for an unencrypted packet.
    pub encrypted: bool,
    /// The key phase bit: the low bit of the sender's key generation.
    pub key_phase: bool,
    /// The receiver's connection id.
    pub dst_id: u32,
    /// The low 32 bits of the packet number.
    pub pn_low: u32,
}

impl ShortHeader {
    /// Decodes the header from the front of a datagram.
    pub fn decode(datagram: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(datagram);
        let (encrypted, key_phase) = match r.u8()? {
            DATA => (true, false),
            DATA_PHASE1 => (true, true),
            DATA_PLAIN => (false, false),
            tag => {
                return Err(DecodeError::UnknownType {
                    what: "packet",
                    tag,
                })
            }
        };
        Ok(Self {
            encrypted,
            key_phase,
            dst_id: r.u32()?,
            pn_low: r.u32()?,
        })
    }

    /// Appends the header.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(match (self.encrypted, self.key_phase) {
            (false, _) => DATA_PLAIN,
            (true, false) => DATA,
            (true, true) => DATA_PHASE1,
        });
        out.extend_from_slice(&self.dst_id.to_be_bytes());
        out.extend_from_slice(&self.pn_low.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> KeyPair {
        KeyPair::from_seed([seed; 32])
    }

    #[test]
    fn client_hello_round_trips_signed_and_padded() {
        let k = key(1);
        let h = ClientHello {
            client_id: 77,
            ephemeral: [3; 32],
            unencrypted: 1,
            sent_at: 1_767_225_600,
            creds: Credentials {
                identity: k.identity(),
                key: Some(k.public_key()),
                cert: None,
            },
            cookie: vec![9; 24],
            signature: None,
        };
        let bytes = h.encode(Some(&k));
        assert_eq!(bytes.len(), MIN_CLIENT_HELLO);
        let d = ClientHello::decode(&bytes).unwrap();
        assert_eq!(d.client_id, 77);
        assert_eq!(d.sent_at, 1_767_225_600);
        assert!(d.verify());
        let mut tampered = bytes.clone();
        tampered[10] ^= 1;
        let t = ClientHello::decode(&tampered).unwrap();
        assert!(!t.verify());
        for n in 0..bytes.len() {
            let _ = ClientHello::decode(&bytes[..n]);
        }
    }

    #[test]
    fn server_hello_signature_covers_the_client_hello() {
        let k = key(2);
        let s = ServerHello {
            client_id: 1,
            server_id: 2,
            client_hello_hash: [5; 32],
            ephemeral: [4; 32],
            unencrypted: false,
            creds: Credentials {
                identity: k.identity(),
                key: Some(k.public_key()),
                cert: None,
            },
            signature: None,
        };
        let bytes = s.encode(Some(&k), b"client hello A");
        let d = ServerHello::decode(&bytes).unwrap();
        assert!(d.verify(b"client hello A"));
        assert!(!d.verify(b"client hello B"));
    }

    #[test]
    fn control_packets_round_trip() {
        for c in [
            Control::Retry {
                client_id: 5,
                cookie: vec![1, 2, 3],
            },
            Control::Reject {
                client_id: 6,
                reason: 4003,
                debug: "untrusted".into(),
            },
            Control::NoConnection { conn_id: 7 },
        ] {
            let b = c.encode();
            assert_eq!(Control::decode(&b).unwrap(), c);
            for n in 0..b.len() {
                assert!(Control::decode(&b[..n]).is_err());
            }
        }
    }
}
