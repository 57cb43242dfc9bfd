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

/// Packets sealed under one key before the sender moves to the next (RFC 9001 §6.6 puts
/// AES-GCM's confidentiality limit at 2^23 packets per key; this is half of it).
pub const KEY_UPDATE_PACKETS: u64 = 1 << 22;

/// One direction's key of one generation, and the secret the next generation comes from.
struct Generation {
    key: DirectionKey,
    secret: [u8; 32],
}

/// HKDF-Expand of the 32-byte pseudorandom key `prk` under `label`, filling `out`.
fn expand(prk: &[u8; 32], label: &[u8], out: &mut [u8]) {
    // A 32-byte PRK is valid, and every output here is far under 255 hash lengths.
    Hkdf::<Sha256>::from_prk(prk)
        .expect("a 32-byte PRK")
        .expand(label, out)
        .expect("a valid HKDF output length");
}

impl Generation {
    /// The generation after this one: its secret is HKDF-Expand of this one's.
    fn next(&self) -> Generation {
        let mut secret = [0u8; 32];
        expand(&self.secret, b"punchline v1 key update", &mut secret);
        let (mut key, mut iv) = ([0u8; 32], [0u8; 12]);
        expand(&secret, b"punchline v1 key", &mut key);
        expand(&secret, b"punchline v1 iv", &mut iv);
        Generation {
            key: DirectionKey::new(&key, iv),
            secret,
        }
    }
}

/// What opening a packet did to the receiving keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Opened with a key already in use.
    Known,
    /// The peer moved to its next key generation (the first packet under it).
    PeerUpdated,
}

/// The keys of an established connection, in generations: each direction's sender moves to
/// the next key after [`KEY_UPDATE_PACKETS`], and flips the key phase bit of its packets.
/// The receiver tries the next generation on a flipped bit, keeps the previous one for
/// packets reordered across the change, and answers in kind.
pub struct Keys {
    send: Generation,
    /// The send key's generation (0 from the handshake); its low bit is the phase bit.
    send_gen: u64,
    /// The first packet number sealed under the current send key.
    send_phase_start: u64,
    recv: Generation,
    recv_gen: u64,
    /// The first packet number opened under the current receive key: below it, a flipped
    /// bit means the previous key.
    recv_phase_start: u64,
    recv_next: Generation,
    recv_prev: Option<DirectionKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("send_gen", &self.send_gen)
            .field("recv_gen", &self.recv_gen)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Derives both directions' keys with HKDF-SHA256 from the X25519 shared secret, salted with
    /// the hash of the whole handshake transcript.
    pub fn derive(shared_secret: &[u8; 32], transcript_hash: &[u8; 32], is_client: bool) -> Keys {
        let hk = Hkdf::<Sha256>::new(Some(transcript_hash), shared_secret);
        let expand = |label: &[u8]| {
            let mut key = [0u8; 32];
            let mut iv = [0u8; 12];
            let mut secret = [0u8; 32];
            // HKDF expand only fails for outputs over 255 hash lengths.
            hk.expand_multi_info(&[label, b" key"], &mut key)
                .expect("32 bytes is a valid HKDF output length");
            hk.expand_multi_info(&[label, b" iv"], &mut iv)
                .expect("12 bytes is a valid HKDF output length");
            hk.expand_multi_info(&[label, b" update"], &mut secret)
                .expect("32 bytes is a valid HKDF output length");
            Generation {
                key: DirectionKey::new(&key, iv),
                secret,
            }
        };
        let c2s = expand(b"punchline v1 client to server");
        let s2c = expand(b"punchline v1 server to client");
        let (send, recv) = if is_client { (c2s, s2c) } else { (s2c, c2s) };
        Keys {
            send,
            send_gen: 0,
            send_phase_start: 0,
            recv_next: recv.next(),
            recv,
            recv_gen: 0,
            recv_phase_start: 0,
            recv_prev: None,
        }
    }

    /// The key phase bit of the packets this side sends now.
    pub fn send_phase(&self) -> bool {
        self.send_gen & 1 == 1
    }

    /// Times this side moved its send key on (its send key's generation).
    pub fn updates(&self) -> u64 {
        self.send_gen
    }

    /// Moves the send key on when `interval` packets went out under the current one, before
    /// packet `next_pn`, and the peer has acknowledged one of them (so it holds this
    /// generation and can follow to the next). True when it moved.
    pub fn update_if_due(
        &mut self,
        next_pn: u64,
        largest_acked: Option<u64>,
        interval: u64,
    ) -> bool {
        let due = next_pn.saturating_sub(self.send_phase_start) >= interval.max(1);
        let confirmed = largest_acked.is_some_and(|a| a >= self.send_phase_start);
        if due && confirmed {
            self.update_send(next_pn);
            true
        } else {
            false
        }
    }

    /// Follows the peer to its key generation (after [`Opened::PeerUpdated`]) from packet
    /// `next_pn` on, unless this side is there (or ahead) already.
    pub fn follow_peer(&mut self, next_pn: u64) {
        if self.send_gen < self.recv_gen {
            self.update_send(next_pn);
        }
    }

    fn update_send(&mut self, next_pn: u64) {
        self.send = self.send.next();
        self.send_gen += 1;
        self.send_phase_start = next_pn;
    }

    /// Seals packet `pn` under the current send key.
    pub fn seal_in_place(&self, pn: u64, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        self.send.key.seal_in_place(pn, header, payload)
    }

    /// Opens packet `pn`, whose header carries key phase bit `phase`.
    pub fn open_in_place(
        &mut self,
        pn: u64,
        phase: bool,
        header: &[u8],
        payload: &mut [u8],
    ) -> Result<(usize, Opened), CryptoError> {
        if phase == (self.recv_gen & 1 == 1) {
            let n = self.recv.key.open_in_place(pn, header, payload)?;
            return Ok((n, Opened::Known));
        }
        if pn < self.recv_phase_start {
            // Sent before the peer's last change, and reordered past it.
            let prev = self.recv_prev.as_ref().ok_or(CryptoError)?;
            return Ok((prev.open_in_place(pn, header, payload)?, Opened::Known));
        }
        let n = self.recv_next.key.open_in_place(pn, header, payload)?;
        let next = self.recv_next.next();
        let current = std::mem::replace(&mut self.recv_next, next);
        let old = std::mem::replace(&mut self.recv, current);
        self.recv_prev = Some(old.key);
        self.recv_gen += 1;
        self.recv_phase_start = pn;
        Ok((n, Opened::PeerUpdated))
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
        let mut sk = Keys::derive(&[7; 32], &[9; 32], false);
        let mut p = b"hello".to_vec();
        let tag = ck.seal_in_place(5, b"hdr", &mut p);
        p.extend_from_slice(&tag);
        let mut open = |pn: u64, hdr: &[u8], mut c: Vec<u8>| {
            sk.open_in_place(pn, false, hdr, &mut c)
                .map(|(n, _)| c[..n].to_vec())
        };
        assert_eq!(open(5, b"hdr", p.clone()).unwrap(), b"hello");
        let mut bad = p.clone();
        bad[0] ^= 1;
        assert!(open(5, b"hdr", bad).is_err());
        assert!(open(5, b"hdX", p.clone()).is_err());
        assert!(open(6, b"hdr", p).is_err());
    }

    /// Seals `pn` with `k`'s current key; (phase bit, ciphertext and tag).
    fn sealed(k: &Keys, pn: u64) -> (bool, Vec<u8>) {
        let mut p = pn.to_be_bytes().to_vec();
        let tag = k.seal_in_place(pn, b"h", &mut p);
        p.extend_from_slice(&tag);
        (k.send_phase(), p)
    }

    #[test]
    fn keys_move_on_in_generations_and_reordered_packets_still_open() {
        let mut ck = Keys::derive(&[1; 32], &[2; 32], true);
        let mut sk = Keys::derive(&[1; 32], &[2; 32], false);
        // Not before the interval, nor before the peer acknowledged the current key.
        assert!(!ck.update_if_due(9, Some(0), 10));
        assert!(!ck.update_if_due(10, None, 10));
        let old = sealed(&ck, 9);
        assert!(ck.update_if_due(10, Some(3), 10));
        assert!(ck.send_phase());
        let new = sealed(&ck, 10);
        assert_ne!(old.1[..8], new.1[..8], "another key");
        let open = |k: &mut Keys, pn: u64, (phase, mut c): (bool, Vec<u8>)| {
            k.open_in_place(pn, phase, b"h", &mut c).map(|(_, o)| o)
        };
        // The new generation is tried on a flipped bit and taken; the server follows.
        assert_eq!(open(&mut sk, 10, new.clone()), Ok(Opened::PeerUpdated));
        sk.follow_peer(50);
        assert!(sk.send_phase());
        // A packet of the old key, reordered past the change, still opens.
        assert_eq!(open(&mut sk, 9, old), Ok(Opened::Known));
        // The client's next update: generation 2, phase bit back to 0.
        assert!(
            !ck.update_if_due(30, Some(9), 10),
            "not acknowledged under key 1"
        );
        assert!(ck.update_if_due(30, Some(12), 10));
        let third = sealed(&ck, 30);
        assert!(!third.0);
        assert_eq!(open(&mut sk, 30, third), Ok(Opened::PeerUpdated));
        // The server's packets under its generation 1 open at the client, which then knows
        // the server followed; the client, ahead already, does not move on for it.
        let from_server = sealed(&sk, 50);
        assert!(from_server.0);
        assert_eq!(open(&mut ck, 50, from_server), Ok(Opened::PeerUpdated));
        ck.follow_peer(32);
        assert_eq!(ck.updates(), 2);
        sk.follow_peer(51);
        assert_eq!(sk.updates(), 2, "the server follows to generation 2");
        // A forged flip opens under no key.
        let mut forged = sealed(&ck, 31);
        forged.0 = !forged.0;
        forged.1[0] ^= 1;
        assert!(open(&mut sk, 31, forged).is_err());
        assert_eq!(ck.updates(), 2);
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
