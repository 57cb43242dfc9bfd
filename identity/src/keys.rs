//! Ed25519 public keys, signatures and key pairs.
//!
//! Key files (saving and loading a [`KeyPair`]) live in the `keyfile` module.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::text::{decode_hex_into, write_hex};
use crate::Identity;

/// Why bytes or text are not a usable ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The 32 bytes do not decode to a point on the ed25519 curve.
    #[error("not a valid ed25519 public key: the bytes are not a point on the curve")]
    InvalidPoint,
    /// The point has small order, so signatures made with it prove nothing.
    #[error("not a usable ed25519 public key: the point has small order")]
    WeakKey,
    /// The hex text form does not have exactly 64 characters.
    #[error("an ed25519 public key is 64 hex digits, got {len}")]
    WrongLength {
        /// Length of the text that was given, in bytes.
        len: usize,
    },
    /// The hex text form contains a character that is not a hex digit.
    #[error("bad hex digit {found:?} at position {position}")]
    BadHex {
        /// Byte offset of the character.
        position: usize,
        /// The offending character.
        found: char,
    },
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature was not made over this message by the secret key of this public key (or is
    /// not in canonical form).
    #[error("ed25519 signature does not match the message and public key")]
    Invalid,
}

/// An ed25519 public key, known to be a valid curve point of large order.
///
/// Its text form ([`Display`](fmt::Display) / [`FromStr`]) is 64 lowercase hex digits; parsing
/// also accepts uppercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Length of a public key in bytes.
    pub const LEN: usize = 32;

    /// Checks that `bytes` are a valid ed25519 public key and wraps them.
    ///
    /// Rejects byte strings that are not a curve point ([`KeyError::InvalidPoint`]) and points
    /// of small order ([`KeyError::WeakKey`]), for which signatures prove nothing.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPoint)?;
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(PublicKey(*bytes))
    }

    /// The 32 bytes of the key (the compressed curve point).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks that `sig` is a signature of `msg` by this key.
    ///
    /// Uses strict verification: non-canonical signatures are rejected.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), SignatureError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::Invalid)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        key.verify_strict(msg, &sig)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicKey(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 2 * Self::LEN {
            return Err(KeyError::WrongLength { len: s.len() });
        }
        let mut bytes = [0u8; 32];
        decode_hex_into(s, &mut bytes).map_err(|bad| KeyError::BadHex {
            position: bad.position,
            found: bad.found,
        })?;
        PublicKey::from_bytes(&bytes)
    }
}

/// An ed25519 signature (64 bytes).
///
/// Any 64 bytes can be held; whether they are a valid signature is decided by
/// [`PublicKey::verify`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Length of a signature in bytes.
    pub const LEN: usize = 64;

    /// Wraps 64 signature bytes.
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        Signature(bytes)
    }

    /// The 64 signature bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }

    /// The 64 signature bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

/// An ed25519 secret key with its public key: what a host uses to prove its identity.
///
/// The secret is wiped from memory when the key pair is dropped. [`Debug`](fmt::Debug) shows only
/// the public key.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl KeyPair {
    /// Generates a fresh key pair from a cryptographically secure random number generator, such
    /// as `rand_core::OsRng`.
    pub fn generate<R: rand_core::CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        KeyPair {
            signing: SigningKey::generate(rng),
        }
    }

    /// Rebuilds a key pair from its 32-byte secret seed (see [`KeyPair::seed`]).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        KeyPair {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte secret seed from which the whole key pair derives.
    ///
    /// The returned copy is not wiped automatically: keep it no longer than needed.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half of the key pair.
    pub fn public_key(&self) -> PublicKey {
        // Derived from a clamped secret scalar, so always a valid point of large order.
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// The identity this key pair proves: [`Identity::PublicKey`] of its public key.
    pub fn identity(&self) -> Identity {
        Identity::PublicKey(self.public_key())
    }

    /// Signs `msg` (deterministically: the same message always gives the same signature).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.signing.sign(msg).to_bytes())
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// 32 bytes whose y coordinate has no matching x on the curve.
    const NOT_A_POINT: [u8; 32] = {
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        bytes
    };

    fn key_pair(seed: u64) -> KeyPair {
        KeyPair::generate(&mut ChaCha8Rng::seed_from_u64(seed))
    }

    #[test]
    fn sign_and_verify() {
        let pair = key_pair(1);
        let sig = pair.sign(b"hello");
        assert_eq!(pair.public_key().verify(b"hello", &sig), Ok(()));
        assert_eq!(
            pair.public_key().verify(b"hellp", &sig),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            key_pair(2).public_key().verify(b"hello", &sig),
            Err(SignatureError::Invalid)
        );
        let mut bytes = sig.to_bytes();
        bytes[10] ^= 1;
        assert_eq!(
            pair.public_key()
                .verify(b"hello", &Signature::from_bytes(bytes)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn generation_is_deterministic_for_a_seeded_rng() {
        assert_eq!(key_pair(7).public_key(), key_pair(7).public_key());
        assert_ne!(key_pair(7).public_key(), key_pair(8).public_key());
    }

    #[test]
    fn seed_round_trip() {
        let pair = key_pair(3);
        let again = KeyPair::from_seed(pair.seed());
        assert_eq!(again.public_key(), pair.public_key());
        assert_eq!(again.sign(b"m"), pair.sign(b"m"));
        assert_eq!(pair.identity(), Identity::PublicKey(pair.public_key()));
    }

    #[test]
    fn public_key_bytes_are_validated() {
        let pk = key_pair(4).public_key();
        assert_eq!(PublicKey::from_bytes(pk.as_bytes()), Ok(pk));
        assert_eq!(
            PublicKey::from_bytes(&NOT_A_POINT),
            Err(KeyError::InvalidPoint)
        );
        // The identity point (y = 1) decodes but has small order.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert_eq!(
            PublicKey::from_bytes(&identity_point),
            Err(KeyError::WeakKey)
        );
    }

    #[test]
    fn public_key_text_round_trip() {
        let pk = key_pair(5).public_key();
        let text = pk.to_string();
        assert_eq!(text.len(), 64);
        assert!(text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(text.parse(), Ok(pk));
        assert_eq!(text.to_uppercase().parse(), Ok(pk));
        assert_eq!(format!("{pk:?}"), format!("PublicKey({text})"));
    }

    #[test]
    fn public_key_text_errors() {
        assert_eq!(
            "abcd".parse::<PublicKey>(),
            Err(KeyError::WrongLength { len: 4 })
        );
        let mut text = key_pair(6).public_key().to_string();
        text.replace_range(10..11, "g");
        assert_eq!(
            text.parse::<PublicKey>(),
            Err(KeyError::BadHex {
                position: 10,
                found: 'g'
            })
        );
        let not_a_point = hex::encode(NOT_A_POINT);
        assert_eq!(
            not_a_point.parse::<PublicKey>(),
            Err(KeyError::InvalidPoint)
        );
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let pair = key_pair(9);
        let debug = format!("{pair:?}");
        assert!(debug.contains(&pair.public_key().to_string()));
        assert!(!debug.contains(&hex::encode(pair.seed())));
    }
}
