//! Identities, ed25519 keys, certificates and CA trust for punchline.
//!
//! Every punchline host has an [`Identity`]: an IP address (never authenticated), an
//! application-defined string or byte string, or an ed25519 public key. A host proves a
//! public-key identity by signing with its [`KeyPair`]; a host may also present a [`Certificate`]
//! in which a certificate authority (CA) vouches that its key speaks for an identity, for a time
//! window and optionally for some apps only. A [`CertStore`] holds the CA keys a host trusts and
//! checks certificates against them.
//!
//! Identities and certificates have a text form (for configuration files and logs) and a compact
//! binary form (for the wire). Every decoder returns a `Result` and bounds every length before
//! allocating, so hostile input cannot make it panic or allocate without limit.
//!
//! # Example
//!
//! ```
//! use punchline_identity::{CertStore, Certificate, Identity, KeyPair};
//! use rand_core::OsRng;
//!
//! // A CA, and a host that wants to be known as "game-server-1".
//! let ca = KeyPair::generate(&mut OsRng);
//! let host = KeyPair::generate(&mut OsRng);
//! let identity: Identity = "str:game-server-1".parse()?;
//!
//! // The CA certifies the host's key for that identity, for app 480, for a time window.
//! let cert = Certificate::issue(
//!     &ca,
//!     identity.clone(),
//!     host.public_key(),
//!     1_700_000_000,
//!     1_800_000_000,
//!     vec![480],
//! )?;
//!
//! // The certificate travels as text (or bytes) to a peer that trusts the CA...
//! let received = Certificate::from_base64(&cert.to_base64())?;
//! let mut store = CertStore::new();
//! store.add_trusted_ca(ca.public_key());
//!
//! // ...which checks it: trusted issuer, signature, time, identity and app.
//! store.verify(&received, 1_750_000_000, Some(&identity), Some(480))?;
//! assert_eq!(received.public_key, host.public_key());
//!
//! // The peer then checks that the host holds the certified key.
//! let signature = host.sign(b"handshake transcript");
//! received.public_key.verify(b"handshake transcript", &signature)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod cert;
pub mod codec;
mod identity;
mod keyfile;
mod keys;
mod text;

pub use cert::{CertError, CertStore, CertTextError, Certificate};
pub use codec::DecodeError;
pub use identity::{Identity, IdentityParseError, IdentityType};
pub use keyfile::{KeyFileError, KEY_FILE_HEADER, MAX_KEY_FILE_LEN};
pub use keys::{KeyError, KeyPair, PublicKey, Signature, SignatureError};
