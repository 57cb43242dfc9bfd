//! Packet protection: key derivation from the handshake, AEAD sealing with the header as
//! associated data, the replay window, and stateless cookies.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

/// Bytes of authentication tag added to every encrypted packet.
pub const TAG_LEN: usize = 16;

/// One direction's AES-256-GCM key and IV (ring's implementation: AES-NI and carry-less
/// multiply where the CPU has them, which is several times faster than a portable cipher).
pub struct DirectionKey {
    key: LessSafeKey,
    iv: [u8; 12],
}

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectionKey(..)")
    }
}

impl DirectionKey {
    fn new(key: &[u8; 32], iv: [u8; 12]) -> Self {
        // A 32-byte key is always valid for AES-256-GCM.
        let key = UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(key),
            iv,
        }
    }

    /// The nonce for packet `pn`: the IV with the packet number XORed into its low 8 bytes.
    /// Packet numbers never repeat within a direction, so neither do nonces.
    fn nonce(&self, pn: u64) -> Nonce {
        let mut n = self.iv;
        for (b, p) in n[4..].iter_mut().zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `payload` in place and returns the tag.
    pub fn seal_in_place(&self, pn: u64, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        // Sealing fails only for inputs over the AEAD's size limit (64 GiB), far above a packet.
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(pn), Aad::from(header), payload)
            .expect("packet far below the AEAD size limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts ciphertext-and-tag in place; returns the plaintext length.
    pub fn open_in_place(
        &self,
        pn: u64,
        header: &[u8],
        payload: &mut [u8],
    ) -> Result<usize, CryptoError> {
        if payload.len() < TAG_LEN {
            return Err(CryptoError);
        }
        self.key
            .open_in_place(self.nonce(pn), Aad::from(header), payload)
            .map(|plain| plain.len())
            .map_err(|_| CryptoError)
    }
}

/// A packet failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoError;

/// The keys of an established connection.
#[derive(Debug)]
pub struct Keys {
    /// Seals what this side sends.
    pub send: DirectionKey,
    /// Opens what this side receives.
    pub recv: DirectionKey,
}

impl Keys {
    /// Derives both directions' keys with HKDF-SHA256 from the X25519 shared secret, salted with
    /// the hash of the whole handshake transcript.
    pub fn derive(shared_secret: &[u8; 32], transcript_hash: &[u8; 32], is_client: bool) -> Keys {
        let hk = Hkdf::<Sha256>::new(Some(transcript_hash), shared_secret);
        let expand = |label: &[u8]| {
            let mut key = [0u8; 32];
            let mut iv = [0u8; 12];
            // HKDF expand only fails for outputs over 255 hash lengths.
            hk.expand_multi_info(&[label, b" key"], &mut key)
                .expect("32 bytes is a valid HKDF output length");
            hk.expand_multi_info(&[label, b" iv"], &mut iv)
                .expect("12 bytes is a valid HKDF output length");
            DirectionKey::new(&key, iv)
        };
        let c2s = expand(b"punchline v1 client to server");
        let s2c = expand(b"punchline v1 server to client");
        if is_client {
            Keys {
                send: c2s,
                recv: s2c,
            }
        } else {
            Keys {
                send: s2c,
                recv: c2s,
            }
        }
    }
}

/// SHA-256 of the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Tracks which recent packet numbers were seen, so a replayed or duplicated packet is dropped.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// The highest packet number seen plus one (0: none yet).
    next: u64,
    /// Bit `i` set: packet `next - 1 - i` was seen.
    seen: u128,
}

impl ReplayWindow {
    /// How far behind the newest packet a packet may arrive and still be accepted.
    pub const WIDTH: u64 = 128;

    /// The highest packet number seen, if any.
    pub fn largest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// True when `pn` is new and inside the window (check before decrypting, record after).
    pub fn is_fresh(&self, pn: u64) -> bool {
        if pn >= self.next {
            return true;
        }
        let back = self.next - 1 - pn;
        back < Self::WIDTH && self.seen & (1u128 << back) == 0
    }

    /// Records `pn` as seen (call only after the packet authenticated).
    pub fn record(&mut self, pn: u64) {
        if pn >= self.next {
            let shift = pn + 1 - self.next;
            self.seen = if shift >= Self::WIDTH {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.next = pn + 1;
        } else {
            let back = self.next - 1 - pn;
            if back < Self::WIDTH {
                self.seen |= 1u128 << back;
            }
        }
    }
}

/// Expands a truncated 32-bit packet number to the full number nearest the expected next one.
pub fn expand_packet_number(largest: Option<u64>, truncated: u32) -> u64 {
    let expected = largest.map_or(0, |l| l + 1);
    const WIN: u64 = 1 << 32;
    const HALF: u64 = WIN / 2;
    let candidate = (expected & !(WIN - 1)) | u64::from(truncated);
    if candidate + HALF <= expected && candidate < u64::MAX - WIN {
        candidate + WIN
    } else if candidate > expected + HALF && candidate >= WIN {
        candidate - WIN
    } else {
        candidate
    }
}

/// Makes and checks the stateless cookies a server demands under load: an expiry and an HMAC
/// over the client's address, connection id and that expiry.
#[derive(Clone)]
pub struct CookieKey([u8; 32]);

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

/// Length of a cookie on the wire.
pub const COOKIE_LEN: usize = 8 + 16;

impl CookieKey {
    /// A key from secret bytes.
    pub fn new(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    /// The MAC of a cookie (`Some(conn id)`: bound to the address, port and handshake) or of
    /// an address token (`None`: bound to the IP address only, for later connections).
    fn mac(&self, addr: SocketAddr, conn_id: Option<u32>, expiry_ms: u64) -> [u8; 16] {
        // HMAC accepts keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        match conn_id {
            Some(id) => {
                m.update(b"cookie");
                m.update(&ip.octets());
                m.update(&addr.port().to_be_bytes());
                m.update(&id.to_be_bytes());
            }
            None => {
                m.update(b"token");
                m.update(&ip.octets());
            }
        }
        m.update(&expiry_ms.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    fn seal(&self, addr: SocketAddr, conn_id: Option<u32>, expiry_ms: u64) -> [u8; COOKIE_LEN] {
        let mut out = [0u8; COOKIE_LEN];
        out[..8].copy_from_slice(&expiry_ms.to_be_bytes());
        out[8..].copy_from_slice(&self.mac(addr, conn_id, expiry_ms));
        out
    }

    /// A cookie valid until `expiry_ms` (milliseconds on the endpoint's clock).
    pub fn make(&self, addr: SocketAddr, conn_id: u32, expiry_ms: u64) -> [u8; COOKIE_LEN] {
        self.seal(addr, Some(conn_id), expiry_ms)
    }

    /// An address token: proof, for later handshakes until `expiry_ms`, that a client at
    /// `addr`'s IP address receives what is sent there (any port).
    pub fn make_token(&self, addr: SocketAddr, expiry_ms: u64) -> [u8; COOKIE_LEN] {
        self.seal(addr, None, expiry_ms)
    }

    /// True when `cookie` was made by this key for this client and has not expired.
    pub fn check(&self, cookie: &[u8], addr: SocketAddr, conn_id: u32, now_ms: u64) -> bool {
        self.verify(cookie, addr, Some(conn_id), now_ms)
    }

    /// True when `token` is an unexpired address token for `addr`'s IP address.
    pub fn check_token(&self, token: &[u8], addr: SocketAddr, now_ms: u64) -> bool {
        self.verify(token, addr, None, now_ms)
    }

    fn verify(&self, cookie: &[u8], addr: SocketAddr, conn_id: Option<u32>, now_ms: u64) -> bool {
        let Ok(c) = <[u8; COOKIE_LEN]>::try_from(cookie) else {
            return false;
        };
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&c[..8]);
        let expiry_ms = u64::from_be_bytes(expiry);
        let expected = self.mac(addr, conn_id, expiry_ms);
        // Compare without an early exit, so timing does not reveal a matching prefix.
        let equal = expected
            .iter()
            .zip(&c[8..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        equal && now_ms <= expiry_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let ck = Keys::derive(&[7; 32], &[9; 32], true);
        let sk = Keys::derive(&[7; 32], &[9; 32], false);
        let mut p = b"hello".to_vec();
        let tag = ck.send.seal_in_place(5, b"hdr", &mut p);
        p.extend_from_slice(&tag);
        let open = |pn: u64, hdr: &[u8], mut c: Vec<u8>| {
            sk.recv
                .open_in_place(pn, hdr, &mut c)
                .map(|n| c[..n].to_vec())
        };
        assert_eq!(open(5, b"hdr", p.clone()).unwrap(), b"hello");
        let mut bad = p.clone();
        bad[0] ^= 1;
        assert!(open(5, b"hdr", bad).is_err());
        assert!(open(5, b"hdX", p.clone()).is_err());
        assert!(open(6, b"hdr", p).is_err());
    }

    #[test]
    fn replay_window_refuses_repeats_and_ancient_packets() {
        let mut w = ReplayWindow::default();
        for pn in [0, 1, 5, 3] {
            assert!(w.is_fresh(pn));
            w.record(pn);
            assert!(!w.is_fresh(pn));
        }
        assert!(w.is_fresh(2));
        w.record(1000);
        assert!(!w.is_fresh(5));
        assert!(w.is_fresh(999));
    }

    #[test]
    fn packet_numbers_expand_across_the_32_bit_boundary() {
        assert_eq!(expand_packet_number(None, 0), 0);
        assert_eq!(expand_packet_number(Some(10), 11), 11);
        assert_eq!(expand_packet_number(Some(0xffff_fff0), 2), 0x1_0000_0002);
        assert_eq!(
            expand_packet_number(Some(0x1_0000_0002), 0xffff_fff0),
            0xffff_fff0
        );
    }

    #[test]
    fn cookies_bind_address_id_and_expiry() {
        let k = CookieKey::new([1; 32]);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let c = k.make(a, 42, 1000);
        assert!(k.check(&c, a, 42, 999));
        assert!(!k.check(&c, a, 42, 1001));
        assert!(!k.check(&c, a, 43, 999));
        assert!(!k.check(&c, "127.0.0.1:5001".parse().unwrap(), 42, 999));
        // An address token binds the IP address only, and is no cookie (nor the reverse).
        let t = k.make_token(a, 1000);
        assert!(k.check_token(&t, "127.0.0.1:6000".parse().unwrap(), 999));
        assert!(!k.check_token(&t, "127.0.0.2:5000".parse().unwrap(), 999));
        assert!(!k.check_token(&t, a, 1001));
        assert!(!k.check(&t, a, 42, 999));
        assert!(!k.check_token(&c, a, 999));
        assert!(!k.check(&c[..10], a, 42, 999));
    }
}
