//! The relay: datagrams between two logged-in peers through the signaling server, in binary
//! websocket frames, for when no UDP path exists (UDP blocked, or symmetric NATs and no
//! TURN). The datagrams are the connection's own packets, encrypted end to end: the server
//! sees ciphertext, and neither peer learns the other's address.
//!
//! A frame is `[version 1][identity length][identity, UTF-8][session u64 BE][datagram]`.
//! A client names the peer it sends to; the server replaces that with the sender's
//! authenticated identity before passing the frame on, so a peer cannot claim to be someone
//! else. `session` is the rendezvous session of the connection (the same on both sides).

use std::fmt;

/// The relay transport's id in rendezvous messages (direct UDP is 0, ICE 1).
pub const WIRE_ID: u8 = 2;
/// The frame format's version.
pub const VERSION: u8 = 1;
/// Largest datagram a frame carries (the connection's packets are at most an MTU).
pub const MAX_DATAGRAM: usize = 1500;
/// Largest identity a frame names (as the identity's text).
pub const MAX_IDENTITY: usize = 255;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The peer: the receiver in a client's frame, the sender in the server's.
    pub peer: &'a str,
    /// The rendezvous session.
    pub session: u64,
    /// The datagram.
    pub datagram: &'a [u8],
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than its header says.
    Truncated,
    /// Another version.
    Version(u8),
    /// The identity is not UTF-8.
    Identity,
    /// The datagram is larger than [`MAX_DATAGRAM`].
    TooLarge(usize),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("relay frame is truncated"),
            FrameError::Version(v) => write!(f, "relay frame version {v}, expected {VERSION}"),
            FrameError::Identity => f.write_str("relay frame identity is not UTF-8"),
            FrameError::TooLarge(n) => {
                write!(f, "relay datagram of {n} bytes (at most {MAX_DATAGRAM})")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes a frame; `None` when the identity or the datagram is too large.
pub fn encode(peer: &str, session: u64, datagram: &[u8]) -> Option<Vec<u8>> {
    if peer.len() > MAX_IDENTITY || datagram.len() > MAX_DATAGRAM {
        return None;
    }
    let mut out = Vec::with_capacity(2 + peer.len() + 8 + datagram.len());
    out.push(VERSION);
    out.push(peer.len() as u8);
    out.extend_from_slice(peer.as_bytes());
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(datagram);
    Some(out)
}

/// Decodes a frame.
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let (&version, rest) = bytes.split_first().ok_or(FrameError::Truncated)?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let (&len, rest) = rest.split_first().ok_or(FrameError::Truncated)?;
    let len = usize::from(len);
    if rest.len() < len + 8 {
        return Err(FrameError::Truncated);
    }
    let peer = std::str::from_utf8(&rest[..len]).map_err(|_| FrameError::Identity)?;
    let mut session = [0u8; 8];
    session.copy_from_slice(&rest[len..len + 8]);
    let datagram = &rest[len + 8..];
    if datagram.len() > MAX_DATAGRAM {
        return Err(FrameError::TooLarge(datagram.len()));
    }
    Ok(Frame {
        peer,
        session: u64::from_be_bytes(session),
        datagram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_say_why() {
        let f = encode("ed25519:abcd", 42, b"ciphertext").unwrap();
        assert_eq!(
            decode(&f),
            Ok(Frame {
                peer: "ed25519:abcd",
                session: 42,
                datagram: b"ciphertext"
            })
        );
        for cut in 0..2 + 12 + 8 {
            assert_eq!(
                decode(&f[..cut]),
                Err(FrameError::Truncated),
                "cut at {cut}"
            );
        }
        let mut v2 = f.clone();
        v2[0] = 2;
        assert_eq!(decode(&v2), Err(FrameError::Version(2)));
        let mut bad = f.clone();
        bad[2] = 0xff;
        assert_eq!(decode(&bad), Err(FrameError::Identity));
        let big = [vec![1, 1, b'x'], vec![0; 8], vec![0; MAX_DATAGRAM + 1]].concat();
        assert_eq!(decode(&big), Err(FrameError::TooLarge(MAX_DATAGRAM + 1)));
        assert!(encode(&"x".repeat(256), 1, b"").is_none());
        assert!(encode("x", 1, &[0; MAX_DATAGRAM + 1]).is_none());
    }
}
