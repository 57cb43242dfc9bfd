//! Certificates: a CA's signed statement that a public key speaks for an identity, and the store
//! of trusted CAs that checks them.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::codec::{DecodeError, Reader};
use crate::{Identity, KeyPair, PublicKey, Signature};

/// Why a certificate cannot be issued or is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The validity window ended before `now`.
    #[error("certificate expired: valid until {not_after}, now is {now} (unix seconds)")]
    Expired {
        /// Last second of validity.
        not_after: u64,
        /// The time of the check.
        now: u64,
    },
    /// The validity window starts after `now`.
    #[error("certificate not yet valid: valid from {not_before}, now is {now} (unix seconds)")]
    NotYetValid {
        /// First second of validity.
        not_before: u64,
        /// The time of the check.
        now: u64,
    },
    /// The issuer is not one of the trusted CAs.
    #[error("certificate issued by CA {issuer}, which is not trusted")]
    UntrustedCa {
        /// The issuer's public key.
        issuer: PublicKey,
    },
    /// The certificate is for another identity than the one expected.
    #[error("certificate is for identity {actual}, expected {expected}")]
    IdentityMismatch {
        /// The identity the peer was expected to have.
        expected: Identity,
        /// The identity on the certificate.
        actual: Identity,
    },
    /// The signature is not the issuer's signature over the certificate's content.
    #[error("certificate signature does not verify against its issuer's key")]
    BadSignature,
    /// The certificate is restricted to other apps.
    #[error("certificate is not valid for app {app_id} (it allows apps {allowed:?})")]
    WrongApp {
        /// The app the certificate was checked for.
        app_id: u32,
        /// The apps the certificate allows.
        allowed: Vec<u32>,
    },
    /// The validity window ends before it starts.
    #[error(
        "certificate validity window is empty: not_before {not_before} > not_after {not_after}"
    )]
    InvalidWindow {
        /// First second of validity.
        not_before: u64,
        /// Last second of validity.
        not_after: u64,
    },
    /// More app ids than a certificate may list.
    #[error("certificate lists {0} app ids, at most {max} are allowed", max = Certificate::MAX_APP_IDS)]
    TooManyApps(usize),
    /// The identity cannot be certified.
    #[error("cannot certify this identity: {reason}")]
    InvalidIdentity {
        /// What is wrong with the identity.
        reason: String,
    },
}

/// Why the base64 text form of a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertTextError {
    /// The text is longer than the text form of any certificate.
    #[error("certificate text is {len} characters long, more than the {max} of any certificate")]
    TooLong {
        /// Length of the text (without surrounding whitespace), in bytes.
        len: usize,
        /// The longest text form of a certificate.
        max: usize,
    },
    /// The text is not standard padded base64.
    #[error("certificate text is not valid base64: {0}")]
    Base64(base64::DecodeError),
    /// The bytes are not a certificate.
    #[error("certificate text does not hold a valid certificate: {0}")]
    Decode(DecodeError),
    /// Bytes follow the certificate.
    #[error("certificate text has {0} unexpected bytes after the certificate")]
    TrailingBytes(usize),
}

/// A CA's signed statement that `public_key` speaks for `identity`, between two times and
/// optionally only for some apps.
///
/// Build one with [`Certificate::issue`]; check one with [`CertStore::verify`]. Checking the
/// certificate does not prove the peer holds the secret key of `public_key`: the handshake must
/// also check the peer's signature with that key.
///
/// # Binary form
///
/// `[version u8 = 1][identity][public key 32][not_before u64][not_after u64][app count u8]`
/// `[app ids u32…][issuer 32][signature 64]`, integers big-endian, the identity in
/// [`Identity`]'s binary form. The signature covers [`Certificate::signed_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Who the certificate is for.
    pub identity: Identity,
    /// The key that speaks for `identity`.
    pub public_key: PublicKey,
    /// First second of validity (unix time, inclusive).
    pub not_before: u64,
    /// Last second of validity (unix time, inclusive).
    pub not_after: u64,
    /// The apps the certificate is valid for; empty means any app. At most
    /// [`Certificate::MAX_APP_IDS`].
    pub app_ids: Vec<u32>,
    /// The key of the CA that issued the certificate.
    pub issuer: PublicKey,
    /// The issuer's signature over [`Certificate::signed_bytes`].
    pub signature: Signature,
}

impl Certificate {
    /// The binary format version.
    pub const VERSION: u8 = 1;

    /// The most app ids a certificate may list.
    pub const MAX_APP_IDS: usize = 32;

    /// Domain-separation prefix of the signed bytes, so that a certificate signature can never
    /// be mistaken for a signature over anything else.
    pub const SIGNING_PREFIX: &'static [u8] = b"punchline-cert-v1\0";

    /// The longest binary form of a certificate, in bytes.
    pub const MAX_ENCODED_LEN: usize = 1
        + Identity::MAX_ENCODED_LEN
        + PublicKey::LEN
        + 8
        + 8
        + 1
        + 4 * Self::MAX_APP_IDS
        + PublicKey::LEN
        + Signature::LEN;

    /// The longest base64 text form of a certificate, in bytes.
    pub const MAX_BASE64_LEN: usize = Self::MAX_ENCODED_LEN.div_ceil(3) * 4;

    /// Issues a certificate signed by `ca`, stating that `public_key` speaks for `identity`
    /// from `not_before` to `not_after` (unix seconds, inclusive), for the apps in `app_ids`
    /// (empty for any app).
    ///
    /// Fails if the window is empty, if there are more than [`Certificate::MAX_APP_IDS`] apps,
    /// or if the identity is [`Identity::Invalid`] or outside its limits.
    pub fn issue(
        ca: &KeyPair,
        identity: Identity,
        public_key: PublicKey,
        not_before: u64,
        not_after: u64,
        app_ids: Vec<u32>,
    ) -> Result<Certificate, CertError> {
        let mut cert = Certificate {
            identity,
            public_key,
            not_before,
            not_after,
            app_ids,
            issuer: ca.public_key(),
            signature: Signature::from_bytes([0; 64]),
        };
        cert.check_fields()?;
        cert.signature = ca.sign(&cert.signed_bytes());
        Ok(cert)
    }

    /// The bytes the issuer signs: [`Certificate::SIGNING_PREFIX`], then the binary form of
    /// every field but the signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIGNING_PREFIX.len() + Self::MAX_ENCODED_LEN);
        out.extend_from_slice(Self::SIGNING_PREFIX);
        self.encode_unsigned(&mut out);
        out
    }

    /// Checks that the signature is the issuer's over [`Certificate::signed_bytes`].
    ///
    /// This says nothing about whether the issuer is trusted: use [`CertStore::verify`] for
    /// that.
    pub fn verify_signature(&self) -> Result<(), CertError> {
        self.issuer
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| CertError::BadSignature)
    }

    /// Appends the binary form to `out` (at most [`Certificate::MAX_ENCODED_LEN`] bytes).
    ///
    /// A certificate whose fields break the limits that [`Certificate::issue`] enforces cannot
    /// be represented faithfully: only its first [`Certificate::MAX_APP_IDS`] app ids are written
    /// and an out-of-limits identity is written as invalid, so it will not decode.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_unsigned(out);
        out.extend_from_slice(self.signature.as_bytes());
    }

    /// Appends every field but the signature.
    fn encode_unsigned(&self, out: &mut Vec<u8>) {
        let app_ids = &self.app_ids[..self.app_ids.len().min(Self::MAX_APP_IDS)];
        out.push(Self::VERSION);
        self.identity.encode(out);
        out.extend_from_slice(self.public_key.as_bytes());
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.not_after.to_be_bytes());
        // At most MAX_APP_IDS (32), so it fits in a byte.
        out.push(app_ids.len() as u8);
        for app_id in app_ids {
            out.extend_from_slice(&app_id.to_be_bytes());
        }
        out.extend_from_slice(self.issuer.as_bytes());
    }

    /// Decodes the binary form at the start of `input`, returning the certificate and the number
    /// of bytes it took. Bytes after it are left alone.
    ///
    /// Only the structure is checked (including that the keys are valid, the identity is not
    /// invalid and the window is not empty); use [`CertStore::verify`] to check the signature,
    /// issuer, times, identity and app.
    pub fn decode(input: &[u8]) -> Result<(Certificate, usize), DecodeError> {
        let mut reader = Reader::new(input);
        let version = reader.u8()?;
        if version != Self::VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let identity = Identity::decode_from(&mut reader)?;
        if identity.is_invalid() {
            return Err(DecodeError::Malformed("certificate identity is invalid"));
        }
        let public_key = read_key(&mut reader)?;
        let not_before = reader.u64()?;
        let not_after = reader.u64()?;
        if not_before > not_after {
            return Err(DecodeError::Malformed(
                "certificate validity window ends before it starts",
            ));
        }
        let app_count = usize::from(reader.u8()?);
        if app_count > Self::MAX_APP_IDS {
            return Err(DecodeError::TooLong {
                what: "certificate app id list",
                len: app_count,
                max: Self::MAX_APP_IDS,
            });
        }
        let mut app_ids = Vec::with_capacity(app_count);
        for _ in 0..app_count {
            app_ids.push(reader.u32()?);
        }
        let issuer = read_key(&mut reader)?;
        let signature = Signature::from_bytes(reader.array()?);
        let cert = Certificate {
            identity,
            public_key,
            not_before,
            not_after,
            app_ids,
            issuer,
            signature,
        };
        Ok((cert, reader.position()))
    }

    /// The text form for configuration files: the binary form in standard padded base64.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::with_capacity(Self::MAX_ENCODED_LEN);
        self.encode(&mut bytes);
        BASE64.encode(bytes)
    }

    /// Reads the text form made by [`Certificate::to_base64`], ignoring surrounding whitespace.
    ///
    /// Only the structure is checked, as with [`Certificate::decode`].
    pub fn from_base64(text: &str) -> Result<Certificate, CertTextError> {
        let text = text.trim();
        if text.len() > Self::MAX_BASE64_LEN {
            return Err(CertTextError::TooLong {
                len: text.len(),
                max: Self::MAX_BASE64_LEN,
            });
        }
        let bytes = BASE64.decode(text).map_err(CertTextError::Base64)?;
        let (cert, used) = Certificate::decode(&bytes).map_err(CertTextError::Decode)?;
        if used != bytes.len() {
            return Err(CertTextError::TrailingBytes(bytes.len() - used));
        }
        Ok(cert)
    }

    /// Checks the limits that every certificate must respect, signed or not.
    fn check_fields(&self) -> Result<(), CertError> {
        if self.not_before > self.not_after {
            return Err(CertError::InvalidWindow {
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        if self.app_ids.len() > Self::MAX_APP_IDS {
            return Err(CertError::TooManyApps(self.app_ids.len()));
        }
        if self.identity.is_invalid() {
            return Err(CertError::InvalidIdentity {
                reason: "it is the invalid identity".to_owned(),
            });
        }
        self.identity
            .validate()
            .map_err(|error| CertError::InvalidIdentity {
                reason: error.to_string(),
            })
    }
}

/// Reads a 32-byte public key and checks that it is valid.
fn read_key(reader: &mut Reader<'_>) -> Result<PublicKey, DecodeError> {
    PublicKey::from_bytes(&reader.array()?).map_err(|_| DecodeError::InvalidKey)
}

/// The set of CA keys whose certificates are trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertStore {
    trusted: BTreeSet<PublicKey>,
}

impl CertStore {
    /// An empty store, which trusts no certificate.
    pub fn new() -> Self {
        CertStore::default()
    }

    /// Trusts certificates issued by `ca`.
    pub fn add_trusted_ca(&mut self, ca: PublicKey) {
        self.trusted.insert(ca);
    }

    /// Stops trusting certificates issued by `ca`; returns whether it was trusted.
    pub fn remove_trusted_ca(&mut self, ca: &PublicKey) -> bool {
        self.trusted.remove(ca)
    }

    /// Whether no CA is trusted.
    pub fn is_empty(&self) -> bool {
        self.trusted.is_empty()
    }

    /// How many CAs are trusted.
    pub fn len(&self) -> usize {
        self.trusted.len()
    }

    /// Whether certificates issued by `ca` are trusted.
    pub fn is_trusted(&self, ca: &PublicKey) -> bool {
        self.trusted.contains(ca)
    }

    /// The trusted CA keys, in order.
    pub fn trusted_cas(&self) -> impl Iterator<Item = &PublicKey> + '_ {
        self.trusted.iter()
    }

    /// Checks that `cert` is acceptable at `now_unix` (unix seconds): issued by a trusted CA,
    /// within its limits, correctly signed, within its validity window, for
    /// `expected_identity` (if given) and valid for `app_id` (if given).
    ///
    /// The checks run in that order and the first failure is returned: [`CertError::UntrustedCa`],
    /// then [`CertError::TooManyApps`], [`CertError::InvalidWindow`] or
    /// [`CertError::InvalidIdentity`] (only for certificates built by hand), then
    /// [`CertError::BadSignature`], [`CertError::NotYetValid`], [`CertError::Expired`],
    /// [`CertError::IdentityMismatch`] and [`CertError::WrongApp`].
    pub fn verify(
        &self,
        cert: &Certificate,
        now_unix: u64,
        expected_identity: Option<&Identity>,
        app_id: Option<u32>,
    ) -> Result<(), CertError> {
        if !self.is_trusted(&cert.issuer) {
            return Err(CertError::UntrustedCa {
                issuer: cert.issuer,
            });
        }
        cert.check_fields()?;
        cert.verify_signature()?;
        if now_unix < cert.not_before {
            return Err(CertError::NotYetValid {
                not_before: cert.not_before,
                now: now_unix,
            });
        }
        if now_unix > cert.not_after {
            return Err(CertError::Expired {
                not_after: cert.not_after,
                now: now_unix,
            });
        }
        if let Some(expected) = expected_identity {
            if *expected != cert.identity {
                return Err(CertError::IdentityMismatch {
                    expected: expected.clone(),
                    actual: cert.identity.clone(),
                });
            }
        }
        if let Some(app_id) = app_id {
            if !cert.app_ids.is_empty() && !cert.app_ids.contains(&app_id) {
                return Err(CertError::WrongApp {
                    app_id,
                    allowed: cert.app_ids.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const NOT_BEFORE: u64 = 1_700_000_000;
    const NOT_AFTER: u64 = 1_800_000_000;
    const NOW: u64 = 1_750_000_000;
    const APP: u32 = 480;

    /// A CA, a host key, a certificate for the host and a store trusting the CA.
    struct Fixture {
        ca: KeyPair,
        host: KeyPair,
        identity: Identity,
        cert: Certificate,
        store: CertStore,
    }

    fn key_pair(seed: u64) -> KeyPair {
        KeyPair::generate(&mut ChaCha8Rng::seed_from_u64(seed))
    }

    fn fixture() -> Fixture {
        let ca = key_pair(1);
        let host = key_pair(2);
        let identity = Identity::GenericString("game-server-1".into());
        let cert = Certificate::issue(
            &ca,
            identity.clone(),
            host.public_key(),
            NOT_BEFORE,
            NOT_AFTER,
            vec![APP, 730],
        )
        .unwrap();
        let mut store = CertStore::new();
        store.add_trusted_ca(ca.public_key());
        Fixture {
            ca,
            host,
            identity,
            cert,
            store,
        }
    }

    fn encoded(cert: &Certificate) -> Vec<u8> {
        let mut out = Vec::new();
        cert.encode(&mut out);
        out
    }

    /// The largest certificate there can be.
    fn largest_cert() -> Certificate {
        Certificate::issue(
            &key_pair(3),
            Identity::Unknown(format!("x:{}", "y".repeat(253))),
            key_pair(4).public_key(),
            0,
            u64::MAX,
            (0..32).collect(),
        )
        .unwrap()
    }

    #[test]
    fn issue_and_verify() {
        let f = fixture();
        assert_eq!(f.cert.issuer, f.ca.public_key());
        assert_eq!(f.cert.public_key, f.host.public_key());
        assert_eq!(f.store.verify(&f.cert, NOW, None, None), Ok(()));
        assert_eq!(
            f.store.verify(&f.cert, NOW, Some(&f.identity), Some(APP)),
            Ok(())
        );
        // The window is inclusive at both ends.
        assert_eq!(f.store.verify(&f.cert, NOT_BEFORE, None, None), Ok(()));
        assert_eq!(f.store.verify(&f.cert, NOT_AFTER, None, None), Ok(()));
        assert_eq!(f.cert.verify_signature(), Ok(()));
    }

    #[test]
    fn an_empty_app_list_allows_any_app() {
        let f = fixture();
        let cert = Certificate::issue(
            &f.ca,
            f.host.identity(),
            f.host.public_key(),
            NOT_BEFORE,
            NOT_AFTER,
            Vec::new(),
        )
        .unwrap();
        assert_eq!(
            f.store
                .verify(&cert, NOW, Some(&f.host.identity()), Some(12345)),
            Ok(())
        );
    }

    #[test]
    fn issue_rejects_bad_parameters() {
        let ca = key_pair(1);
        let pk = key_pair(2).public_key();
        let id = Identity::GenericString("a".into());
        assert_eq!(
            Certificate::issue(&ca, id.clone(), pk, 10, 9, vec![]),
            Err(CertError::InvalidWindow {
                not_before: 10,
                not_after: 9
            })
        );
        assert_eq!(
            Certificate::issue(&ca, id.clone(), pk, 0, 1, (0..33).collect()),
            Err(CertError::TooManyApps(33))
        );
        assert!(Certificate::issue(&ca, id, pk, 5, 5, (0..32).collect()).is_ok());
        assert!(matches!(
            Certificate::issue(&ca, Identity::Invalid, pk, 0, 1, vec![]),
            Err(CertError::InvalidIdentity { .. })
        ));
        let err =
            Certificate::issue(&ca, Identity::GenericBytes(vec![]), pk, 0, 1, vec![]).unwrap_err();
        assert!(matches!(err, CertError::InvalidIdentity { .. }));
        assert!(err.to_string().contains("empty value"), "{err}");
    }

    #[test]
    fn expired() {
        let f = fixture();
        let err = f.store.verify(&f.cert, NOT_AFTER + 1, None, None);
        assert_eq!(
            err,
            Err(CertError::Expired {
                not_after: NOT_AFTER,
                now: NOT_AFTER + 1
            })
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "certificate expired: valid until 1800000000, now is 1800000001 (unix seconds)"
        );
    }

    #[test]
    fn not_yet_valid() {
        let f = fixture();
        assert_eq!(
            f.store.verify(&f.cert, NOT_BEFORE - 1, None, None),
            Err(CertError::NotYetValid {
                not_before: NOT_BEFORE,
                now: NOT_BEFORE - 1
            })
        );
    }

    #[test]
    fn untrusted_ca() {
        let f = fixture();
        let err = CertStore::new().verify(&f.cert, NOW, None, None);
        assert_eq!(
            err,
            Err(CertError::UntrustedCa {
                issuer: f.ca.public_key()
            })
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains(&f.ca.public_key().to_string()));
        // A certificate signed by another key that claims a trusted issuer fails the signature.
        let mut forged = Certificate::issue(
            &key_pair(9),
            f.identity.clone(),
            f.host.public_key(),
            NOT_BEFORE,
            NOT_AFTER,
            vec![],
        )
        .unwrap();
        forged.issuer = f.ca.public_key();
        assert_eq!(
            f.store.verify(&forged, NOW, None, None),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn identity_mismatch() {
        let f = fixture();
        let other = Identity::GenericString("game-server-2".into());
        let err = f.store.verify(&f.cert, NOW, Some(&other), None);
        assert_eq!(
            err,
            Err(CertError::IdentityMismatch {
                expected: other,
                actual: f.identity.clone()
            })
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "certificate is for identity str:game-server-1, expected str:game-server-2"
        );
    }

    #[test]
    fn bad_signature() {
        let f = fixture();
        let mut bytes = f.cert.signature.to_bytes();
        bytes[0] ^= 0x01;
        let mut cert = f.cert.clone();
        cert.signature = Signature::from_bytes(bytes);
        assert_eq!(
            f.store.verify(&cert, NOW, None, None),
            Err(CertError::BadSignature)
        );
        // Changing any signed field also breaks the signature.
        let mut cert = f.cert.clone();
        cert.not_after += 1;
        assert_eq!(
            f.store.verify(&cert, NOW, None, None),
            Err(CertError::BadSignature)
        );
        let mut cert = f.cert.clone();
        cert.public_key = f.ca.public_key();
        assert_eq!(
            f.store.verify(&cert, NOW, None, None),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn wrong_app() {
        let f = fixture();
        let err = f.store.verify(&f.cert, NOW, None, Some(1));
        assert_eq!(
            err,
            Err(CertError::WrongApp {
                app_id: 1,
                allowed: vec![APP, 730]
            })
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "certificate is not valid for app 1 (it allows apps [480, 730])"
        );
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let f = fixture();
        let other = Identity::GenericString("other".into());
        let late = NOT_AFTER + 1;
        let mut bad_sig = f.cert.clone();
        bad_sig.signature = Signature::from_bytes([7; 64]);
        // Everything wrong: the untrusted CA is reported first.
        assert!(matches!(
            CertStore::new().verify(&bad_sig, late, Some(&other), Some(1)),
            Err(CertError::UntrustedCa { .. })
        ));
        assert_eq!(
            f.store.verify(&bad_sig, late, Some(&other), Some(1)),
            Err(CertError::BadSignature)
        );
        assert!(matches!(
            f.store.verify(&f.cert, 0, Some(&other), Some(1)),
            Err(CertError::NotYetValid { .. })
        ));
        assert!(matches!(
            f.store.verify(&f.cert, late, Some(&other), Some(1)),
            Err(CertError::Expired { .. })
        ));
        assert!(matches!(
            f.store.verify(&f.cert, NOW, Some(&other), Some(1)),
            Err(CertError::IdentityMismatch { .. })
        ));
    }

    #[test]
    fn hand_built_certificates_out_of_limits_are_rejected() {
        let f = fixture();
        let mut cert = f.cert.clone();
        cert.app_ids = (0..40).collect();
        assert_eq!(
            f.store.verify(&cert, NOW, None, None),
            Err(CertError::TooManyApps(40))
        );
        let mut cert = f.cert.clone();
        cert.identity = Identity::GenericString(String::new());
        assert!(matches!(
            f.store.verify(&cert, NOW, None, None),
            Err(CertError::InvalidIdentity { .. })
        ));
        // Its encoding does not decode into something that verifies.
        let mut cert = f.cert.clone();
        cert.app_ids = (0..40).collect();
        let (decoded, _) = Certificate::decode(&encoded(&cert)).unwrap();
        assert_eq!(decoded.app_ids.len(), 32);
        assert_eq!(
            f.store.verify(&decoded, NOW, None, None),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn store_membership() {
        let mut store = CertStore::new();
        assert!(store.is_empty());
        let a = key_pair(1).public_key();
        let b = key_pair(2).public_key();
        store.add_trusted_ca(a);
        store.add_trusted_ca(a);
        store.add_trusted_ca(b);
        assert_eq!(store.len(), 2);
        assert!(store.is_trusted(&a) && store.is_trusted(&b));
        assert_eq!(store.trusted_cas().count(), 2);
        assert!(store.remove_trusted_ca(&a));
        assert!(!store.remove_trusted_ca(&a));
        assert!(!store.is_trusted(&a));
        assert!(!store.is_empty());
    }

    #[test]
    fn signed_bytes_are_the_prefix_and_everything_but_the_signature() {
        let f = fixture();
        let bytes = encoded(&f.cert);
        let mut expected = Certificate::SIGNING_PREFIX.to_vec();
        expected.extend_from_slice(&bytes[..bytes.len() - Signature::LEN]);
        assert_eq!(f.cert.signed_bytes(), expected);
        assert_eq!(
            bytes[bytes.len() - Signature::LEN..],
            f.cert.signature.to_bytes()
        );
    }

    #[test]
    fn binary_round_trip() {
        for cert in [fixture().cert, largest_cert()] {
            let mut bytes = encoded(&cert);
            let len = bytes.len();
            assert!(len <= Certificate::MAX_ENCODED_LEN);
            bytes.extend_from_slice(b"more");
            assert_eq!(Certificate::decode(&bytes), Ok((cert, len)));
        }
        assert_eq!(encoded(&largest_cert()).len(), Certificate::MAX_ENCODED_LEN);
    }

    #[test]
    fn binary_layout() {
        let f = fixture();
        let bytes = encoded(&f.cert);
        let id_len = {
            let mut out = Vec::new();
            f.identity.encode(&mut out);
            assert_eq!(bytes[1..1 + out.len()], out);
            out.len()
        };
        let mut at = 1 + id_len;
        assert_eq!(bytes[at..at + 32], f.host.public_key().as_bytes()[..]);
        at += 32;
        assert_eq!(bytes[at..at + 8], NOT_BEFORE.to_be_bytes());
        assert_eq!(bytes[at + 8..at + 16], NOT_AFTER.to_be_bytes());
        at += 16;
        assert_eq!(bytes[at], 2);
        assert_eq!(bytes[at + 1..at + 5], APP.to_be_bytes());
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes.len(), at + 1 + 8 + 32 + 64);
    }

    #[test]
    fn decode_errors() {
        let f = fixture();
        let good = encoded(&f.cert);
        let id_len = 3 + "game-server-1".len();
        let app_count_at = 1 + id_len + 32 + 16;

        let mut bytes = good.clone();
        bytes[0] = 2;
        assert_eq!(
            Certificate::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(2))
        );

        let mut bytes = good.clone();
        bytes[app_count_at] = 33;
        assert_eq!(
            Certificate::decode(&bytes),
            Err(DecodeError::TooLong {
                what: "certificate app id list",
                len: 33,
                max: 32
            })
        );

        let mut bytes = good.clone();
        bytes[1 + id_len..1 + id_len + 32].copy_from_slice(&{
            let mut not_a_point = [0u8; 32];
            not_a_point[0] = 2;
            not_a_point
        });
        assert_eq!(Certificate::decode(&bytes), Err(DecodeError::InvalidKey));

        let mut bytes = good.clone();
        // not_before = u64::MAX > not_after.
        bytes[1 + id_len + 32..1 + id_len + 40].fill(0xff);
        assert_eq!(
            Certificate::decode(&bytes),
            Err(DecodeError::Malformed(
                "certificate validity window ends before it starts"
            ))
        );

        let mut bytes = vec![1, 0, 0, 0];
        bytes.extend_from_slice(&good[1 + id_len..]);
        assert_eq!(
            Certificate::decode(&bytes),
            Err(DecodeError::Malformed("certificate identity is invalid"))
        );
    }

    #[test]
    fn decoding_every_truncation_fails() {
        for cert in [fixture().cert, largest_cert()] {
            let bytes = encoded(&cert);
            for len in 0..bytes.len() {
                assert!(
                    matches!(
                        Certificate::decode(&bytes[..len]),
                        Err(DecodeError::Truncated { .. })
                    ),
                    "cut to {len} bytes"
                );
            }
        }
    }

    #[test]
    fn no_single_bit_flip_yields_an_acceptable_certificate() {
        let f = fixture();
        let good = encoded(&f.cert);
        for at in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bytes = good.clone();
                bytes[at] ^= bit;
                if let Ok((cert, _)) = Certificate::decode(&bytes) {
                    assert!(
                        f.store
                            .verify(&cert, NOW, Some(&f.identity), Some(APP))
                            .is_err(),
                        "flipping bit {bit:#x} of byte {at} was accepted"
                    );
                }
            }
        }
    }

    #[test]
    fn decoding_random_bytes_never_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(0xce);
        let template = encoded(&fixture().cert);
        for i in 0..3000 {
            let mut bytes = if i % 2 == 0 {
                // Random garbage with a plausible version and identity header.
                let mut bytes = vec![0u8; (rng.next_u32() % 600) as usize];
                rng.fill_bytes(&mut bytes);
                if bytes.len() > 3 {
                    bytes[..4].copy_from_slice(&[1, 2, 0, (rng.next_u32() % 20) as u8]);
                }
                bytes
            } else {
                // A real certificate with a few random bytes changed.
                template.clone()
            };
            for _ in 0..(rng.next_u32() % 4) {
                if !bytes.is_empty() {
                    let at = (rng.next_u32() as usize) % bytes.len();
                    bytes[at] = rng.next_u32() as u8;
                }
            }
            if let Ok((cert, used)) = Certificate::decode(&bytes) {
                assert_eq!(encoded(&cert), bytes[..used]);
            }
        }
    }

    #[test]
    fn base64_round_trip() {
        for cert in [fixture().cert, largest_cert()] {
            let text = cert.to_base64();
            assert!(text.len() <= Certificate::MAX_BASE64_LEN);
            assert_eq!(Certificate::from_base64(&text), Ok(cert.clone()));
            assert_eq!(Certificate::from_base64(&format!("  {text}\n")), Ok(cert));
        }
    }

    #[test]
    fn base64_errors() {
        let f = fixture();
        let text = f.cert.to_base64();
        assert!(matches!(
            Certificate::from_base64("not base64!"),
            Err(CertTextError::Base64(_))
        ));
        assert_eq!(
            Certificate::from_base64(&"A".repeat(5000)),
            Err(CertTextError::TooLong {
                len: 5000,
                max: Certificate::MAX_BASE64_LEN
            })
        );
        assert_eq!(
            Certificate::from_base64(&text[..text.len() - 8])
                .map_err(|e| matches!(e, CertTextError::Decode(DecodeError::Truncated { .. }))),
            Err(true)
        );
        let mut bytes = encoded(&f.cert);
        bytes.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            Certificate::from_base64(&BASE64.encode(&bytes)),
            Err(CertTextError::TrailingBytes(3))
        );
        let err = Certificate::from_base64("AAAA").unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate text does not hold a valid certificate: unsupported format version 0"
        );
    }
}
