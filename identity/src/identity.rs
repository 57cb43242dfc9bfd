//! [`Identity`]: who a network host is, with its text and binary forms.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::str::FromStr;

use crate::codec::{DecodeError, Reader};
use crate::text::{decode_hex_into, snippet, write_hex};
use crate::PublicKey;

/// Text prefix of [`Identity::IpAddress`].
const IP_PREFIX: &str = "ip";
/// Text prefix of [`Identity::GenericString`].
const STRING_PREFIX: &str = "str";
/// Text prefix of [`Identity::GenericBytes`].
const BYTES_PREFIX: &str = "gen";
/// Text prefix of [`Identity::PublicKey`].
const ED25519_PREFIX: &str = "ed25519";
/// Text form of [`Identity::Invalid`].
const INVALID_TEXT: &str = "invalid";
/// Length of an IP address body on the wire: 16 address bytes and a port.
const IP_BODY_LEN: usize = 18;

/// The kinds of identity, with the numeric values used on the wire.
///
/// The values below 32 are those of the reference API; [`IdentityType::Ed25519`] is this crate's
/// own. Only some kinds have an [`Identity`] variant: the others are listed so that their numbers
/// stay reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum IdentityType {
    /// Empty or unknown identity.
    Invalid = 0,
    /// An IP address and port (always unauthenticated).
    IpAddress = 1,
    /// An application-defined string.
    GenericString = 2,
    /// An application-defined byte string.
    GenericBytes = 3,
    /// A well-formed identity of a type this crate does not recognise, kept as text.
    UnknownType = 4,
    /// A 64-bit Steam ID (reserved; not supported by this crate).
    SteamId = 16,
    /// A publisher-specific Xbox user id (reserved; not supported by this crate).
    XboxPairwiseId = 17,
    /// A 64-bit PlayStation Network id (reserved; not supported by this crate).
    SonyPsn = 18,
    /// An ed25519 public key.
    Ed25519 = 32,
}

impl IdentityType {
    /// The numeric value of this type.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The type with numeric value `value`, if there is one.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(IdentityType::Invalid),
            1 => Some(IdentityType::IpAddress),
            2 => Some(IdentityType::GenericString),
            3 => Some(IdentityType::GenericBytes),
            4 => Some(IdentityType::UnknownType),
            16 => Some(IdentityType::SteamId),
            17 => Some(IdentityType::XboxPairwiseId),
            18 => Some(IdentityType::SonyPsn),
            32 => Some(IdentityType::Ed25519),
            _ => None,
        }
    }
}

/// Why a string is not an identity, or an identity value breaks its variant's limits.
///
/// Positions are byte offsets in the string that was parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityParseError {
    /// The string is empty.
    #[error("empty identity string")]
    Empty,
    /// The string is not `invalid` and has no `<type>:` prefix.
    #[error(
        "identity has no type prefix: expected `invalid` or `<type>:<value>`, e.g. \
         `ip:1.2.3.4:27015`, `str:name`, `gen:0a0b` or `ed25519:<64 hex digits>`"
    )]
    MissingPrefix,
    /// The text before the first `:` is not a type name.
    #[error(
        "invalid identity type prefix {0:?}: a type prefix is ASCII letters, digits, '_' or '-'"
    )]
    InvalidPrefix(String),
    /// An unknown-type identity uses the prefix of a type this crate knows.
    #[error("type prefix {0:?} belongs to a known identity type, not an unknown one")]
    ReservedPrefix(String),
    /// Nothing follows the `<type>:` prefix.
    #[error("identity of type {prefix:?} has an empty value")]
    EmptyBody {
        /// The type prefix.
        prefix: String,
    },
    /// The value of an `ip:` identity is not an IP address with an optional port.
    #[error("bad IP address {0:?}: expected e.g. 1.2.3.4:27015 or [::1]:27015")]
    BadIpAddress(String),
    /// A string, byte string or unknown-type identity is longer than allowed.
    #[error("identity value too long ({len} > {max} bytes)")]
    TooLong {
        /// Length of the value in bytes.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// The hex value of a `gen:` identity has an odd number of digits.
    #[error("hex value has an odd number of digits ({len})")]
    OddHexLength {
        /// Number of characters in the hex value, in bytes.
        len: usize,
    },
    /// A hex value contains a character that is not a hex digit.
    #[error("bad hex digit {found:?} at position {position}")]
    BadHex {
        /// Byte offset of the character.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// The value of an `ed25519:` identity does not have 64 hex digits.
    #[error("an ed25519 key is 64 hex digits, got {len}")]
    WrongKeyLength {
        /// Length of the value in bytes.
        len: usize,
    },
    /// The value of an `ed25519:` identity is not a usable ed25519 public key.
    #[error("not a valid ed25519 public key (not a curve point, or a point of small order)")]
    InvalidKey,
    /// A string identity contains a control character.
    #[error("control character {found:?} at position {position}")]
    ControlCharacter {
        /// Byte offset of the character.
        position: usize,
        /// The offending character.
        found: char,
    },
}

/// Who a network host is.
///
/// # Text form
///
/// [`Display`](fmt::Display) and [`FromStr`] use these forms, and parsing what was displayed gives
/// back the same identity:
///
/// | variant | text |
/// |---|---|
/// | [`Invalid`](Identity::Invalid) | `invalid` |
/// | [`IpAddress`](Identity::IpAddress) | `ip:1.2.3.4:27015`, `ip:[::1]:27015` (parsing also accepts no port, meaning 0) |
/// | [`GenericString`](Identity::GenericString) | `str:hello` |
/// | [`GenericBytes`](Identity::GenericBytes) | `gen:0a0b` (lowercase hex; parsing accepts uppercase) |
/// | [`PublicKey`](Identity::PublicKey) | `ed25519:<64 lowercase hex digits>` |
/// | [`Unknown`](Identity::Unknown) | any other `<type>:<value>`, kept whole |
///
/// # Binary form
///
/// `[type u8][body length u16 big-endian][body]`, where the type is [`IdentityType`]'s value and
/// the body is: nothing for `Invalid`; 16 bytes of IPv6 address (IPv4 as v4-mapped) and a
/// big-endian port for `IpAddress`; the raw bytes for strings, byte strings and unknown types;
/// the 32 key bytes for `PublicKey`.
///
/// # Limits and canonical IP addresses
///
/// String, byte-string and unknown-type values are 1 to 255 bytes; strings contain no control
/// characters. The variants can be built directly, so [`Identity::validate`] checks these limits;
/// the parser, the decoder and the constructors [`Identity::generic_string`],
/// [`Identity::generic_bytes`] and [`Identity::unknown`] only produce values within them.
///
/// IP addresses are canonical when IPv4 addresses are [`SocketAddr::V4`] (not v4-mapped IPv6) and
/// IPv6 addresses have no flow info or scope id. The text and binary forms carry only the canonical
/// form, so build IP identities with [`Identity::ip`] (or `From<SocketAddr>`) to compare them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Identity {
    /// No identity: unknown, or not set yet.
    #[default]
    Invalid,
    /// A host identified by its IP address and port. Never authenticated.
    IpAddress(SocketAddr),
    /// An application-defined string: 1 to 255 bytes of UTF-8 without control characters.
    GenericString(String),
    /// An application-defined byte string of 1 to 255 bytes.
    GenericBytes(Vec<u8>),
    /// A host identified by an ed25519 public key, proven by signing with its secret key.
    PublicKey(PublicKey),
    /// A well-formed `<type>:<value>` identity of a type this crate does not recognise, kept
    /// whole (at most 255 bytes), so it can still be compared and passed on.
    Unknown(String),
}

impl Identity {
    /// The longest value of a string, byte string or unknown-type identity, in bytes.
    pub const MAX_BODY_LEN: usize = 255;

    /// The longest binary encoding of an identity, in bytes.
    pub const MAX_ENCODED_LEN: usize = 3 + Self::MAX_BODY_LEN;

    /// The "localhost" identity, `[::1]:0`, used when a host has no other identity.
    pub fn localhost() -> Self {
        Identity::IpAddress(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0))
    }

    /// An IP address identity, with the address in canonical form (see the type docs).
    pub fn ip(addr: SocketAddr) -> Self {
        Identity::IpAddress(canonical_addr(addr))
    }

    /// A generic string identity, checked against the limits: 1 to 255 bytes, no control
    /// characters.
    pub fn generic_string(s: impl Into<String>) -> Result<Self, IdentityParseError> {
        let s = s.into();
        check_generic_string(&s, 0)?;
        Ok(Identity::GenericString(s))
    }

    /// A generic byte-string identity, checked against the limits: 1 to 255 bytes.
    pub fn generic_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, IdentityParseError> {
        let bytes = bytes.into();
        check_generic_bytes(&bytes)?;
        Ok(Identity::GenericBytes(bytes))
    }

    /// An identity of a type this crate does not recognise, from its whole text
    /// `<type>:<value>`, checked against the limits.
    pub fn unknown(text: impl Into<String>) -> Result<Self, IdentityParseError> {
        let text = text.into();
        check_unknown(&text)?;
        Ok(Identity::Unknown(text))
    }

    /// The kind of this identity.
    pub fn identity_type(&self) -> IdentityType {
        match self {
            Identity::Invalid => IdentityType::Invalid,
            Identity::IpAddress(_) => IdentityType::IpAddress,
            Identity::GenericString(_) => IdentityType::GenericString,
            Identity::GenericBytes(_) => IdentityType::GenericBytes,
            Identity::PublicKey(_) => IdentityType::Ed25519,
            Identity::Unknown(_) => IdentityType::UnknownType,
        }
    }

    /// Whether this is [`Identity::Invalid`].
    pub fn is_invalid(&self) -> bool {
        matches!(self, Identity::Invalid)
    }

    /// Whether this is an IP address identity on a loopback address (`::1` or `127.0.0.0/8`),
    /// whatever the port: the "localhost" identity, possibly bound to a real port.
    pub fn is_localhost(&self) -> bool {
        match self {
            Identity::IpAddress(addr) => canonical_addr(*addr).ip().is_loopback(),
            _ => false,
        }
    }

    /// The address of an IP address identity.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Identity::IpAddress(addr) => Some(*addr),
            _ => None,
        }
    }

    /// The key of a public-key identity.
    pub fn public_key(&self) -> Option<&PublicKey> {
        match self {
            Identity::PublicKey(key) => Some(key),
            _ => None,
        }
    }

    /// Checks that the value is within its variant's limits (see the type docs).
    pub fn validate(&self) -> Result<(), IdentityParseError> {
        match self {
            Identity::Invalid | Identity::IpAddress(_) | Identity::PublicKey(_) => Ok(()),
            Identity::GenericString(s) => check_generic_string(s, 0),
            Identity::GenericBytes(bytes) => check_generic_bytes(bytes),
            Identity::Unknown(text) => check_unknown(text),
        }
    }

    /// Appends the binary form to `out` (at most [`Identity::MAX_ENCODED_LEN`] bytes).
    ///
    /// An identity that fails [`Identity::validate`] cannot be represented and is written as
    /// [`Identity::Invalid`]. IP addresses are written in canonical form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if self.validate().is_err() {
            Identity::Invalid.encode(out);
            return;
        }
        let ip_body;
        let body: &[u8] = match self {
            Identity::Invalid => &[],
            Identity::IpAddress(addr) => {
                ip_body = encode_ip(*addr);
                &ip_body
            }
            Identity::GenericString(s) => s.as_bytes(),
            Identity::GenericBytes(bytes) => bytes,
            Identity::PublicKey(key) => key.as_bytes(),
            Identity::Unknown(text) => text.as_bytes(),
        };
        out.push(self.identity_type().as_u8());
        // Validated above: every body is at most MAX_BODY_LEN bytes.
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }

    /// Decodes the binary form at the start of `input`, returning the identity and the number of
    /// bytes it took. Bytes after it are left alone.
    pub fn decode(input: &[u8]) -> Result<(Identity, usize), DecodeError> {
        let mut reader = Reader::new(input);
        let identity = Self::decode_from(&mut reader)?;
        Ok((identity, reader.position()))
    }

    /// Decodes one identity from `reader` (shared with the certificate decoder).
    pub(crate) fn decode_from(reader: &mut Reader<'_>) -> Result<Identity, DecodeError> {
        let tag = reader.u8()?;
        let identity_type = IdentityType::from_u8(tag).ok_or(DecodeError::UnknownTag(tag))?;
        let len = usize::from(reader.u16()?);
        if len > Self::MAX_BODY_LEN {
            return Err(DecodeError::TooLong {
                what: "identity body",
                len,
                max: Self::MAX_BODY_LEN,
            });
        }
        let body = reader.bytes(len)?;
        match identity_type {
            IdentityType::Invalid => {
                expect_len("invalid identity body", body, 0)?;
                Ok(Identity::Invalid)
            }
            IdentityType::IpAddress => {
                let body: &[u8; IP_BODY_LEN] =
                    body.try_into().map_err(|_| DecodeError::BadLength {
                        what: "IP address identity body",
                        len,
                        expected: IP_BODY_LEN,
                    })?;
                Ok(Identity::IpAddress(decode_ip(body)))
            }
            IdentityType::GenericString => {
                let s = std::str::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8)?;
                match check_generic_string(s, 0) {
                    Ok(()) => Ok(Identity::GenericString(s.to_owned())),
                    Err(IdentityParseError::ControlCharacter { .. }) => Err(
                        DecodeError::Malformed("control character in generic string identity"),
                    ),
                    Err(_) => Err(DecodeError::Malformed("empty generic string identity")),
                }
            }
            IdentityType::GenericBytes => {
                if body.is_empty() {
                    return Err(DecodeError::Malformed("empty generic bytes identity"));
                }
                Ok(Identity::GenericBytes(body.to_vec()))
            }
            IdentityType::UnknownType => {
                let text = std::str::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8)?;
                check_unknown(text).map_err(|_| {
                    DecodeError::Malformed(
                        "unknown-type identity is not a `<type>:<value>` string of an unknown type",
                    )
                })?;
                Ok(Identity::Unknown(text.to_owned()))
            }
            IdentityType::Ed25519 => {
                let bytes: [u8; 32] = body.try_into().map_err(|_| DecodeError::BadLength {
                    what: "ed25519 identity body",
                    len,
                    expected: PublicKey::LEN,
                })?;
                let key = PublicKey::from_bytes(&bytes).map_err(|_| DecodeError::InvalidKey)?;
                Ok(Identity::PublicKey(key))
            }
            IdentityType::SteamId | IdentityType::XboxPairwiseId | IdentityType::SonyPsn => {
                Err(DecodeError::UnknownTag(tag))
            }
        }
    }
}

impl From<PublicKey> for Identity {
    fn from(key: PublicKey) -> Self {
        Identity::PublicKey(key)
    }
}

impl From<SocketAddr> for Identity {
    /// Same as [`Identity::ip`]: the address is made canonical.
    fn from(addr: SocketAddr) -> Self {
        Identity::ip(addr)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Invalid => f.write_str(INVALID_TEXT),
            Identity::IpAddress(addr) => write!(f, "{IP_PREFIX}:{}", canonical_addr(*addr)),
            Identity::GenericString(s) => write!(f, "{STRING_PREFIX}:{s}"),
            Identity::GenericBytes(bytes) => {
                write!(f, "{BYTES_PREFIX}:")?;
                write_hex(f, bytes)
            }
            Identity::PublicKey(key) => write!(f, "{ED25519_PREFIX}:{key}"),
            Identity::Unknown(text) => f.write_str(text),
        }
    }
}

impl FromStr for Identity {
    type Err = IdentityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(IdentityParseError::Empty);
        }
        if s == INVALID_TEXT {
            return Ok(Identity::Invalid);
        }
        let (prefix, body) = split_prefix(s)?;
        let body_start = prefix.len() + 1;
        match prefix {
            IP_PREFIX => parse_ip(body).map(Identity::IpAddress),
            STRING_PREFIX => {
                check_generic_string(body, body_start)?;
                Ok(Identity::GenericString(body.to_owned()))
            }
            BYTES_PREFIX => parse_hex_bytes(body, body_start).map(Identity::GenericBytes),
            ED25519_PREFIX => parse_key(body, body_start).map(Identity::PublicKey),
            _ => {
                check_unknown(s)?;
                Ok(Identity::Unknown(s.to_owned()))
            }
        }
    }
}

/// Splits `<type>:<value>` into a valid type prefix and a non-empty value.
fn split_prefix(s: &str) -> Result<(&str, &str), IdentityParseError> {
    let (prefix, body) = s.split_once(':').ok_or(IdentityParseError::MissingPrefix)?;
    let is_type_name = !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !is_type_name {
        return Err(IdentityParseError::InvalidPrefix(snippet(prefix)));
    }
    if body.is_empty() {
        return Err(IdentityParseError::EmptyBody {
            prefix: snippet(prefix),
        });
    }
    Ok((prefix, body))
}

/// Parses the value of an `ip:` identity: a socket address, or an IP address meaning port 0.
fn parse_ip(body: &str) -> Result<SocketAddr, IdentityParseError> {
    let addr = match body.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => match body.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, 0),
            Err(_) => return Err(IdentityParseError::BadIpAddress(snippet(body))),
        },
    };
    Ok(canonical_addr(addr))
}

/// Parses the hex value of a `gen:` identity starting at byte `start` of the parsed string.
fn parse_hex_bytes(body: &str, start: usize) -> Result<Vec<u8>, IdentityParseError> {
    if body.len() % 2 != 0 {
        return Err(IdentityParseError::OddHexLength { len: body.len() });
    }
    let len = body.len() / 2;
    if len > Identity::MAX_BODY_LEN {
        return Err(IdentityParseError::TooLong {
            len,
            max: Identity::MAX_BODY_LEN,
        });
    }
    let mut bytes = vec![0u8; len];
    decode_hex_into(body, &mut bytes).map_err(|bad| IdentityParseError::BadHex {
        position: start + bad.position,
        found: bad.found,
    })?;
    Ok(bytes)
}

/// Parses the value of an `ed25519:` identity starting at byte `start` of the parsed string.
fn parse_key(body: &str, start: usize) -> Result<PublicKey, IdentityParseError> {
    if body.len() != 2 * PublicKey::LEN {
        return Err(IdentityParseError::WrongKeyLength { len: body.len() });
    }
    let mut bytes = [0u8; 32];
    decode_hex_into(body, &mut bytes).map_err(|bad| IdentityParseError::BadHex {
        position: start + bad.position,
        found: bad.found,
    })?;
    PublicKey::from_bytes(&bytes).map_err(|_| IdentityParseError::InvalidKey)
}

/// Checks a generic string value that starts at byte `start` of the text being checked.
fn check_generic_string(s: &str, start: usize) -> Result<(), IdentityParseError> {
    if s.is_empty() {
        return Err(IdentityParseError::EmptyBody {
            prefix: STRING_PREFIX.to_owned(),
        });
    }
    check_len(s.len())?;
    check_no_control(s, start)
}

/// Checks a generic byte-string value.
fn check_generic_bytes(bytes: &[u8]) -> Result<(), IdentityParseError> {
    if bytes.is_empty() {
        return Err(IdentityParseError::EmptyBody {
            prefix: BYTES_PREFIX.to_owned(),
        });
    }
    check_len(bytes.len())
}

/// Checks the whole text of an unknown-type identity.
fn check_unknown(text: &str) -> Result<(), IdentityParseError> {
    let (prefix, _) = split_prefix(text)?;
    if [
        IP_PREFIX,
        STRING_PREFIX,
        BYTES_PREFIX,
        ED25519_PREFIX,
        INVALID_TEXT,
    ]
    .contains(&prefix)
    {
        return Err(IdentityParseError::ReservedPrefix(prefix.to_owned()));
    }
    check_len(text.len())?;
    check_no_control(text, 0)
}

/// Checks that a value of `len` bytes is not too long.
fn check_len(len: usize) -> Result<(), IdentityParseError> {
    if len > Identity::MAX_BODY_LEN {
        return Err(IdentityParseError::TooLong {
            len,
            max: Identity::MAX_BODY_LEN,
        });
    }
    Ok(())
}

/// Checks that `s`, which starts at byte `start` of the text being checked, has no control
/// characters.
fn check_no_control(s: &str, start: usize) -> Result<(), IdentityParseError> {
    match s.char_indices().find(|&(_, c)| c.is_control()) {
        Some((position, found)) => Err(IdentityParseError::ControlCharacter {
            position: start + position,
            found,
        }),
        None => Ok(()),
    }
}

/// The canonical form of an address: IPv4 as `V4`, IPv6 without flow info or scope id.
fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => addr,
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0)),
        },
    }
}

/// The wire body of an IP address: 16 bytes of IPv6 (IPv4 v4-mapped), then the port.
fn encode_ip(addr: SocketAddr) -> [u8; IP_BODY_LEN] {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut body = [0u8; IP_BODY_LEN];
    body[..16].copy_from_slice(&ip.octets());
    body[16..].copy_from_slice(&addr.port().to_be_bytes());
    body
}

/// Decodes an IP address body.
fn decode_ip(body: &[u8; IP_BODY_LEN]) -> SocketAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&body[..16]);
    let port = u16::from_be_bytes([body[16], body[17]]);
    canonical_addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
}

/// Checks that a fixed-size body has the expected length.
fn expect_len(what: &'static str, body: &[u8], expected: usize) -> Result<(), DecodeError> {
    if body.len() != expected {
        return Err(DecodeError::BadLength {
            what,
            len: body.len(),
            expected,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn key(seed: u64) -> PublicKey {
        KeyPair::generate(&mut ChaCha8Rng::seed_from_u64(seed)).public_key()
    }

    /// One identity of every variant, and some edge cases, all valid and canonical.
    fn samples() -> Vec<Identity> {
        vec![
            Identity::Invalid,
            Identity::localhost(),
            Identity::ip("1.2.3.4:27015".parse().unwrap()),
            Identity::ip("[2001:db8::7]:443".parse().unwrap()),
            Identity::ip("0.0.0.0:0".parse().unwrap()),
            Identity::GenericString("hello".into()),
            Identity::GenericString("a:b with spaces, ünïcödé ✓".into()),
            Identity::GenericString("x".repeat(255)),
            Identity::GenericBytes(vec![0x0a, 0x0b]),
            Identity::GenericBytes(vec![0xff; 255]),
            Identity::PublicKey(key(1)),
            Identity::Unknown("steamid:76561197960287930".into()),
            Identity::Unknown("xboxpwid:Some_Id-42".into()),
        ]
    }

    fn encoded(identity: &Identity) -> Vec<u8> {
        let mut out = Vec::new();
        identity.encode(&mut out);
        out
    }

    #[test]
    fn identity_type_values_match_the_reference() {
        let expected = [
            (IdentityType::Invalid, 0),
            (IdentityType::IpAddress, 1),
            (IdentityType::GenericString, 2),
            (IdentityType::GenericBytes, 3),
            (IdentityType::UnknownType, 4),
            (IdentityType::SteamId, 16),
            (IdentityType::XboxPairwiseId, 17),
            (IdentityType::SonyPsn, 18),
            (IdentityType::Ed25519, 32),
        ];
        for (ty, value) in expected {
            assert_eq!(ty.as_u8(), value);
            assert_eq!(IdentityType::from_u8(value), Some(ty));
        }
        assert_eq!(IdentityType::from_u8(5), None);
        assert_eq!(
            Identity::PublicKey(key(1)).identity_type(),
            IdentityType::Ed25519
        );
        assert_eq!(
            Identity::Unknown("a:b".into()).identity_type(),
            IdentityType::UnknownType
        );
    }

    #[test]
    fn text_forms() {
        assert_eq!(Identity::Invalid.to_string(), "invalid");
        assert_eq!(Identity::localhost().to_string(), "ip:[::1]:0");
        assert_eq!(
            Identity::ip("1.2.3.4:27015".parse().unwrap()).to_string(),
            "ip:1.2.3.4:27015"
        );
        assert_eq!(
            Identity::GenericString("hello".into()).to_string(),
            "str:hello"
        );
        assert_eq!(
            Identity::GenericBytes(vec![0x0a, 0x0b]).to_string(),
            "gen:0a0b"
        );
        let k = key(2);
        assert_eq!(Identity::PublicKey(k).to_string(), format!("ed25519:{k}"));
        assert_eq!(Identity::Unknown("psn:123".into()).to_string(), "psn:123");
    }

    #[test]
    fn every_variant_round_trips_through_text() {
        for identity in samples() {
            let text = identity.to_string();
            assert_eq!(text.parse::<Identity>(), Ok(identity), "{text}");
        }
    }

    #[test]
    fn every_variant_round_trips_through_binary() {
        for identity in samples() {
            let mut bytes = encoded(&identity);
            assert!(bytes.len() <= Identity::MAX_ENCODED_LEN);
            let len = bytes.len();
            bytes.extend_from_slice(b"trailing");
            assert_eq!(Identity::decode(&bytes), Ok((identity, len)));
        }
    }

    #[test]
    fn binary_layout() {
        assert_eq!(encoded(&Identity::Invalid), [0, 0, 0]);
        assert_eq!(
            encoded(&Identity::GenericString("hi".into())),
            [2, 0, 2, b'h', b'i']
        );
        let ip = encoded(&Identity::ip("1.2.3.4:258".parse().unwrap()));
        assert_eq!(
            ip,
            [1, 0, 18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4, 1, 2]
        );
        let k = key(3);
        let pk = encoded(&Identity::PublicKey(k));
        assert_eq!(pk[..3], [32, 0, 32]);
        assert_eq!(pk[3..], k.as_bytes()[..]);
    }

    #[test]
    fn ip_addresses_are_canonical() {
        let mapped: SocketAddr = "[::ffff:1.2.3.4]:5".parse().unwrap();
        let v4: SocketAddr = "1.2.3.4:5".parse().unwrap();
        assert_eq!(Identity::ip(mapped), Identity::IpAddress(v4));
        assert_eq!("ip:[::ffff:1.2.3.4]:5".parse(), Ok(Identity::IpAddress(v4)));
        // A non-canonical value is written in canonical form.
        let raw_mapped = Identity::IpAddress(mapped);
        assert_eq!(raw_mapped.to_string(), "ip:1.2.3.4:5");
        assert_eq!(
            Identity::decode(&encoded(&raw_mapped)),
            Ok((Identity::IpAddress(v4), 21))
        );
        let scoped = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 7, 3));
        assert_eq!(
            Identity::ip(scoped),
            Identity::ip("[::1]:9".parse().unwrap())
        );
        // No port means port 0.
        assert_eq!("ip:::1".parse(), Ok(Identity::localhost()));
        assert_eq!(
            "ip:10.0.0.1".parse(),
            Ok(Identity::ip("10.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(Identity::from(mapped), Identity::IpAddress(v4));
    }

    #[test]
    fn localhost() {
        assert!(Identity::localhost().is_localhost());
        assert_eq!(Identity::localhost(), "ip:[::1]:0".parse().unwrap());
        let v4 = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 27015));
        assert!(Identity::IpAddress(v4).is_localhost());
        assert!(!Identity::ip("10.0.0.1:0".parse().unwrap()).is_localhost());
        assert!(!Identity::GenericString("localhost".into()).is_localhost());
        assert!(!Identity::localhost().is_invalid());
        assert!(Identity::Invalid.is_invalid());
        assert!(Identity::default().is_invalid());
    }

    #[test]
    fn accessors() {
        let k = key(4);
        assert_eq!(Identity::from(k).public_key(), Some(&k));
        assert_eq!(Identity::localhost().public_key(), None);
        assert_eq!(
            Identity::localhost().socket_addr(),
            Some("[::1]:0".parse().unwrap())
        );
        assert_eq!(Identity::Invalid.socket_addr(), None);
    }

    #[test]
    fn parse_accepts_uppercase_hex() {
        assert_eq!(
            "gen:0A0b".parse(),
            Ok(Identity::GenericBytes(vec![0x0a, 0x0b]))
        );
        let k = key(5);
        let upper = format!("ed25519:{}", k.to_string().to_uppercase());
        assert_eq!(upper.parse(), Ok(Identity::PublicKey(k)));
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        use IdentityParseError as E;
        let cases: Vec<(String, IdentityParseError)> = vec![
            ("".into(), E::Empty),
            ("hello".into(), E::MissingPrefix),
            ("1.2.3.4:27015".into(), E::InvalidPrefix("1.2.3.4".into())),
            (":x".into(), E::InvalidPrefix("".into())),
            (
                "str:".into(),
                E::EmptyBody {
                    prefix: "str".into(),
                },
            ),
            (
                "foo:".into(),
                E::EmptyBody {
                    prefix: "foo".into(),
                },
            ),
            ("ip:1.2.3".into(), E::BadIpAddress("1.2.3".into())),
            ("ip:[::1]".into(), E::BadIpAddress("[::1]".into())),
            (
                format!("str:{}", "x".repeat(256)),
                E::TooLong { len: 256, max: 255 },
            ),
            (
                format!("gen:{}", "00".repeat(256)),
                E::TooLong { len: 256, max: 255 },
            ),
            (
                format!("other:{}", "x".repeat(250)),
                E::TooLong { len: 256, max: 255 },
            ),
            ("gen:abc".into(), E::OddHexLength { len: 3 }),
            (
                "gen:0x".into(),
                E::BadHex {
                    position: 5,
                    found: 'x',
                },
            ),
            ("ed25519:abcd".into(), E::WrongKeyLength { len: 4 }),
            (
                format!("ed25519:{}z", "0".repeat(63)),
                E::BadHex {
                    position: 71,
                    found: 'z',
                },
            ),
            (
                // y = 2 is not the y coordinate of any curve point.
                format!("ed25519:02{}", "0".repeat(62)),
                E::InvalidKey,
            ),
            (
                // The identity point: valid encoding, but of small order.
                format!("ed25519:01{}", "0".repeat(62)),
                E::InvalidKey,
            ),
            (
                "str:a\tb".into(),
                E::ControlCharacter {
                    position: 5,
                    found: '\t',
                },
            ),
            (
                "psn:1\n".into(),
                E::ControlCharacter {
                    position: 5,
                    found: '\n',
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Identity>(), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn parse_error_messages_name_the_problem() {
        let err = format!("str:{}", "x".repeat(300))
            .parse::<Identity>()
            .unwrap_err();
        assert_eq!(err.to_string(), "identity value too long (300 > 255 bytes)");
        let err = "ip:nope".parse::<Identity>().unwrap_err();
        assert!(err.to_string().contains("bad IP address \"nope\""), "{err}");
        let long_prefix = format!("{}:x", ".".repeat(1000));
        let err = long_prefix.parse::<Identity>().unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn validating_constructors() {
        assert_eq!(
            Identity::generic_string("ok"),
            Ok(Identity::GenericString("ok".into()))
        );
        assert_eq!(
            Identity::generic_string(""),
            Err(IdentityParseError::EmptyBody {
                prefix: "str".into()
            })
        );
        assert_eq!(
            Identity::generic_string("a\u{7f}"),
            Err(IdentityParseError::ControlCharacter {
                position: 1,
                found: '\u{7f}'
            })
        );
        assert_eq!(
            Identity::generic_bytes(vec![0u8; 256]),
            Err(IdentityParseError::TooLong { len: 256, max: 255 })
        );
        assert_eq!(
            Identity::generic_bytes(Vec::new()),
            Err(IdentityParseError::EmptyBody {
                prefix: "gen".into()
            })
        );
        assert_eq!(
            Identity::unknown("steamid:1"),
            Ok(Identity::Unknown("steamid:1".into()))
        );
        assert_eq!(
            Identity::unknown("str:1"),
            Err(IdentityParseError::ReservedPrefix("str".into()))
        );
        assert_eq!(
            Identity::unknown("no prefix"),
            Err(IdentityParseError::MissingPrefix)
        );
    }

    #[test]
    fn out_of_limits_values_encode_as_invalid() {
        for bad in [
            Identity::GenericString(String::new()),
            Identity::GenericString("y".repeat(70_000)),
            Identity::GenericBytes(vec![1; 256]),
            Identity::Unknown("ip:1.2.3.4:5".into()),
        ] {
            assert!(bad.validate().is_err());
            assert_eq!(encoded(&bad), encoded(&Identity::Invalid));
        }
    }

    #[test]
    fn decode_errors() {
        use DecodeError as E;
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (
                vec![],
                E::Truncated {
                    needed: 1,
                    available: 0,
                },
            ),
            (vec![5, 0, 0], E::UnknownTag(5)),
            (vec![16, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1], E::UnknownTag(16)),
            (
                vec![2, 1, 0],
                E::TooLong {
                    what: "identity body",
                    len: 256,
                    max: 255,
                },
            ),
            (
                vec![2, 0, 3, b'a'],
                E::Truncated {
                    needed: 6,
                    available: 4,
                },
            ),
            (
                vec![0, 0, 1, 0],
                E::BadLength {
                    what: "invalid identity body",
                    len: 1,
                    expected: 0,
                },
            ),
            (
                vec![1, 0, 4, 1, 2, 3, 4],
                E::BadLength {
                    what: "IP address identity body",
                    len: 4,
                    expected: 18,
                },
            ),
            (vec![2, 0, 1, 0xff], E::InvalidUtf8),
            (vec![2, 0, 0], E::Malformed("empty generic string identity")),
            (
                vec![2, 0, 2, b'a', 0],
                E::Malformed("control character in generic string identity"),
            ),
            (vec![3, 0, 0], E::Malformed("empty generic bytes identity")),
            (vec![4, 0, 2, 0xc3, 0x28], E::InvalidUtf8),
            (
                vec![4, 0, 3, b'a', b'b', b'c'],
                E::Malformed(
                    "unknown-type identity is not a `<type>:<value>` string of an unknown type",
                ),
            ),
            (
                vec![32, 0, 2, 1, 2],
                E::BadLength {
                    what: "ed25519 identity body",
                    len: 2,
                    expected: 32,
                },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(Identity::decode(&bytes), Err(expected), "{bytes:?}");
        }
        let mut not_a_point = vec![32, 0, 32, 2];
        not_a_point.extend_from_slice(&[0; 31]);
        assert_eq!(Identity::decode(&not_a_point), Err(E::InvalidKey));
    }

    #[test]
    fn decoding_every_truncation_fails() {
        for identity in samples() {
            let bytes = encoded(&identity);
            for len in 0..bytes.len() {
                assert!(
                    matches!(
                        Identity::decode(&bytes[..len]),
                        Err(DecodeError::Truncated { .. })
                    ),
                    "{identity} cut to {len} bytes"
                );
            }
        }
    }

    /// Whatever decodes successfully re-encodes to the same bytes and round-trips through text.
    /// Returns whether it decoded.
    fn check_decoded(input: &[u8]) -> bool {
        match Identity::decode(input) {
            Ok((identity, used)) => {
                assert_eq!(encoded(&identity), input[..used]);
                assert_eq!(identity.to_string().parse(), Ok(identity));
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn decoding_random_bytes_never_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x1d);
        let tags = [0u8, 1, 2, 3, 4, 16, 32, 200];
        let mut decoded = 0;
        for i in 0..5000 {
            let len = (rng.next_u32() % 300) as usize;
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            // Half of the inputs get a plausible header so the body decoders are exercised.
            if i % 2 == 0 && len >= 3 {
                bytes[0] = tags[(rng.next_u32() as usize) % tags.len()];
                let body_len = (rng.next_u32() % 40) as u16;
                bytes[1..3].copy_from_slice(&body_len.to_be_bytes());
                if rng.next_u32() % 2 == 0 {
                    // Mostly printable ASCII, with some ':' to reach the unknown-type checks.
                    for b in &mut bytes[3..] {
                        *b = b"ab:1 Z-_\x7f"[(*b as usize) % 9];
                    }
                }
            }
            if check_decoded(&bytes) {
                decoded += 1;
            }
        }
        // The plausible headers make a fair share of the inputs decode.
        assert!(decoded > 200, "only {decoded} inputs decoded");
    }

    #[test]
    fn parsing_random_text_never_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x2e);
        let alphabet: Vec<char> = "ipstrgened25519:0aF.[]%\t é✓-_x".chars().collect();
        let prefixes = ["", "ip:", "str:", "gen:", "ed25519:", "foo:"];
        let mut parsed = 0;
        for _ in 0..5000 {
            let mut text = prefixes[(rng.next_u32() as usize) % prefixes.len()].to_owned();
            for _ in 0..rng.next_u32() % 80 {
                text.push(alphabet[(rng.next_u32() as usize) % alphabet.len()]);
            }
            if let Ok(identity) = text.parse::<Identity>() {
                assert_eq!(identity.validate(), Ok(()));
                assert_eq!(identity.to_string().parse(), Ok(identity));
                parsed += 1;
            }
        }
        assert!(parsed > 200, "only {parsed} strings parsed");
    }
}
