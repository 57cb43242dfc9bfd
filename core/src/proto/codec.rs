//! Bounded byte reading, QUIC-style variable-length integers, and the frames carried inside a
//! data packet. Every decoder returns a typed value or a [`DecodeError`]; none panics and none
//! allocates by an unchecked length.

use bytes::Bytes;

pub use punchline_identity::codec::{DecodeError, Reader};

/// The largest value a varint can carry.
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Appends `v` (at most [`VARINT_MAX`]; larger values are clamped) as a varint.
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    let v = v.min(VARINT_MAX);
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

/// The encoded size of a varint.
pub fn varint_len(v: u64) -> usize {
    match v {
        0..=63 => 1,
        64..=16383 => 2,
        16384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends a string of at most 255 bytes (cut at a character boundary) with a length byte.
pub fn put_short_string(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// The most ack ranges one ACK frame carries (the rest are dropped, oldest first).
pub const MAX_ACK_RANGES: usize = 64;
/// The longest debug string a CLOSE frame carries.
pub const MAX_CLOSE_DEBUG: usize = 127;
/// The largest message size the protocol can express (a hard cap above any configured limit).
pub const MAX_MESSAGE_SIZE_CAP: u64 = 64 * 1024 * 1024;

const FRAME_PADDING: u8 = 0x00;
const FRAME_PING: u8 = 0x01;
const FRAME_ACK: u8 = 0x02;
const FRAME_CLOSE: u8 = 0x05;
const FRAME_CLOSED: u8 = 0x06;
const FRAME_ADDRESS_TOKEN: u8 = 0x07;
/// The longest address token accepted.
pub const MAX_TOKEN_LEN: usize = 64;
const FRAME_SEGMENT: u8 = 0x10; // | RELIABLE | FRAGMENT
const SEG_RELIABLE: u8 = 0x01;
const SEG_FRAGMENT: u8 = 0x02;

/// A piece of a message: the whole of it, or a fragment at `offset` of `total` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Reliable sequence number (`Some` for reliable messages), which orders delivery.
    pub reliable_seq: Option<u64>,
    /// The message number the application saw when sending.
    pub msg_num: u64,
    /// Offset of this piece in the message.
    pub offset: u64,
    /// The message's total length.
    pub total: u64,
    /// The piece's bytes.
    pub data: Bytes,
}

impl Segment {
    #[cfg(test)]
    /// Bytes this segment takes in a packet.
    pub fn encoded_len(&self) -> usize {
        Self::header_len(
            self.reliable_seq,
            self.msg_num,
            self.offset,
            self.total,
            self.data.len(),
        ) + self.data.len()
    }

    /// Bytes of frame header for a segment with these fields (`len` at most).
    pub fn header_len(
        reliable_seq: Option<u64>,
        msg_num: u64,
        offset: u64,
        total: u64,
        len: usize,
    ) -> usize {
        let whole = offset == 0 && total == len as u64;
        Self::header_len_as(whole, reliable_seq, msg_num, offset, total, len)
    }

    /// Bytes of frame header for a whole message or a fragment with these fields.
    pub fn header_len_as(
        whole: bool,
        reliable_seq: Option<u64>,
        msg_num: u64,
        offset: u64,
        total: u64,
        len: usize,
    ) -> usize {
        1 + reliable_seq.map_or(0, varint_len)
            + varint_len(msg_num)
            + if whole {
                0
            } else {
                varint_len(offset) + varint_len(total)
            }
            + varint_len(len as u64)
    }
}

/// One acknowledged range of packet numbers, inclusive.
pub type AckRange = std::ops::RangeInclusive<u64>;

/// A frame inside a data packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Elicits an ack; used for keepalives, probes and address validation.
    Ping,
    /// Acknowledges packet-number ranges, newest first.
    Ack {
        /// Microseconds between receiving the newest packet and sending this ack.
        delay_micros: u64,
        /// Ranges, newest (highest) first, disjoint and descending.
        ranges: Vec<AckRange>,
    },
    /// A piece of a message.
    Segment(Segment),
    /// The sender closed the connection.
    Close {
        /// End reason code.
        reason: u32,
        /// Debug text.
        debug: String,
    },
    /// Acknowledges a CLOSE.
    Closed,
    /// From the server: proof of the client's address to put in its next hellos, so later
    /// connections skip the cookie round trip.
    AddressToken(Vec<u8>),
}

impl Frame {
    /// True when receiving this frame obliges the receiver to send an ack.
    pub fn is_ack_eliciting(&self) -> bool {
        matches!(self, Frame::Ping | Frame::Segment(_))
    }

    /// Appends the frame's encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Ping => out.push(FRAME_PING),
            Frame::Ack {
                delay_micros,
                ranges,
            } => {
                out.push(FRAME_ACK);
                let (Some(first), n) = (ranges.first(), ranges.len().min(MAX_ACK_RANGES)) else {
                    // An empty ack carries nothing; encode a ping-less no-op as padding.
                    out.pop();
                    return;
                };
                put_varint(out, *first.end());
                put_varint(out, *delay_micros);
                put_varint(out, (n - 1) as u64);
                put_varint(out, first.end() - first.start());
                let mut prev_start = *first.start();
                for r in &ranges[1..n] {
                    // gap: packets between this range's end and the previous start, minus one.
                    put_varint(out, prev_start - r.end() - 2);
                    put_varint(out, r.end() - r.start());
                    prev_start = *r.start();
                }
            }
            Frame::Segment(s) => {
                let whole = s.offset == 0 && s.total == s.data.len() as u64;
                let mut tag = FRAME_SEGMENT;
                if s.reliable_seq.is_some() {
                    tag |= SEG_RELIABLE;
                }
                if !whole {
                    tag |= SEG_FRAGMENT;
                }
                out.push(tag);
                if let Some(seq) = s.reliable_seq {
                    put_varint(out, seq);
                }
                put_varint(out, s.msg_num);
                if !whole {
                    put_varint(out, s.offset);
                    put_varint(out, s.total);
                }
                put_varint(out, s.data.len() as u64);
                out.extend_from_slice(&s.data);
            }
            Frame::Close { reason, debug } => {
                out.push(FRAME_CLOSE);
                out.extend_from_slice(&reason.to_be_bytes());
                let mut end = debug.len().min(MAX_CLOSE_DEBUG);
                while !debug.is_char_boundary(end) {
                    end -= 1;
                }
                put_short_string(out, &debug[..end]);
            }
            Frame::Closed => out.push(FRAME_CLOSED),
            Frame::AddressToken(t) => {
                out.push(FRAME_ADDRESS_TOKEN);
                let t = &t[..t.len().min(MAX_TOKEN_LEN)];
                out.push(t.len() as u8);
                out.extend_from_slice(t);
            }
        }
    }

    /// Decodes one frame; `payload` is the packet's decrypted payload, so segment data can be
    /// sliced from it without copying. Returns `Ok(None)` for padding.
    pub fn decode(r: &mut Reader<'_>, payload: &Bytes) -> Result<Option<Frame>, DecodeError> {
        let tag = r.u8()?;
        let frame = match tag {
            FRAME_PADDING => return Ok(None),
            FRAME_PING => Frame::Ping,
            FRAME_ACK => {
                let largest = r.varint()?;
                let delay_micros = r.varint()?;
                let extra = r.varint_max("ack range count", MAX_ACK_RANGES as u64 - 1)? as usize;
                let first_len = r.varint()?;
                let start = largest
                    .checked_sub(first_len)
                    .ok_or(DecodeError::Malformed("ack range below packet zero"))?;
                let mut ranges = Vec::with_capacity(extra + 1);
                ranges.push(start..=largest);
                let mut prev_start = start;
                for _ in 0..extra {
                    let gap = r.varint()?;
                    let len = r.varint()?;
                    let end = prev_start
                        .checked_sub(gap)
                        .and_then(|v| v.checked_sub(2))
                        .ok_or(DecodeError::Malformed("ack gap below packet zero"))?;
                    let start = end
                        .checked_sub(len)
                        .ok_or(DecodeError::Malformed("ack range below packet zero"))?;
                    ranges.push(start..=end);
                    prev_start = start;
                }
                Frame::Ack {
                    delay_micros,
                    ranges,
                }
            }
            t if t & !(SEG_RELIABLE | SEG_FRAGMENT) == FRAME_SEGMENT => {
                let reliable_seq = if t & SEG_RELIABLE != 0 {
                    Some(r.varint()?)
                } else {
                    None
                };
                let msg_num = r.varint()?;
                let (offset, total) = if t & SEG_FRAGMENT != 0 {
                    let offset = r.varint()?;
                    let total = r.varint_max("message size", MAX_MESSAGE_SIZE_CAP)?;
                    (offset, total)
                } else {
                    (0, u64::MAX)
                };
                let len = r.varint_max("segment length", r.remaining() as u64)? as usize;
                let start = r.position();
                r.bytes(len)?;
                let total = if total == u64::MAX { len as u64 } else { total };
                if offset.checked_add(len as u64).is_none_or(|end| end > total) {
                    return Err(DecodeError::Malformed("segment extends past its message"));
                }
                if len == 0 && total != 0 {
                    return Err(DecodeError::Malformed("empty fragment"));
                }
                Frame::Segment(Segment {
                    reliable_seq,
                    msg_num,
                    offset,
                    total,
                    data: payload.slice(start..start + len),
                })
            }
            FRAME_CLOSE => {
                let reason = r.u32()?;
                let debug = r.short_string(MAX_CLOSE_DEBUG)?;
                Frame::Close { reason, debug }
            }
            FRAME_CLOSED => Frame::Closed,
            FRAME_ADDRESS_TOKEN => {
                Frame::AddressToken(r.short_bytes("address token", MAX_TOKEN_LEN)?.to_vec())
            }
            tag => return Err(DecodeError::UnknownType { what: "frame", tag }),
        };
        Ok(Some(frame))
    }
}

/// Decodes every frame of a decrypted payload, stopping at `max_segments` segments.
pub fn decode_frames(payload: &Bytes, max_segments: usize) -> Result<Vec<Frame>, DecodeError> {
    let mut r = Reader::new(payload);
    let mut frames = Vec::new();
    let mut segments = 0usize;
    while r.remaining() > 0 {
        if let Some(f) = Frame::decode(&mut r, payload)? {
            if matches!(f, Frame::Segment(_)) {
                segments += 1;
                if segments > max_segments {
                    return Err(DecodeError::TooLarge {
                        what: "segments in one packet",
                        value: segments as u64,
                        max: max_segments as u64,
                    });
                }
            }
            frames.push(f);
        }
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_at_every_boundary() {
        for v in [0, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, VARINT_MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(Reader::new(&out).varint().unwrap(), v);
        }
    }

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::Ping,
            Frame::Ack {
                delay_micros: 1234,
                ranges: vec![100..=120, 50..=97, 3..=3],
            },
            Frame::Segment(Segment {
                reliable_seq: Some(7),
                msg_num: 9,
                offset: 0,
                total: 3,
                data: Bytes::from_static(b"abc"),
            }),
            Frame::Segment(Segment {
                reliable_seq: None,
                msg_num: 10,
                offset: 1000,
                total: 5000,
                data: Bytes::from_static(b"xyz"),
            }),
            Frame::Close {
                reason: 1000,
                debug: "bye".into(),
            },
            Frame::Closed,
            Frame::AddressToken(vec![7; 24]),
        ];
        let mut out = Vec::new();
        for f in &frames {
            f.encode(&mut out);
        }
        let payload = Bytes::from(out);
        assert_eq!(decode_frames(&payload, 100).unwrap(), frames);
        // Every strict prefix either decodes fewer frames or fails; it never panics.
        for n in 0..payload.len() {
            let _ = decode_frames(&payload.slice(..n), 100);
        }
    }

    #[test]
    fn segment_past_its_message_is_refused() {
        let mut out = vec![FRAME_SEGMENT | SEG_FRAGMENT];
        put_varint(&mut out, 1);
        put_varint(&mut out, 10);
        put_varint(&mut out, 11);
        put_varint(&mut out, 2);
        out.extend_from_slice(b"ab");
        let payload = Bytes::from(out);
        assert_eq!(
            decode_frames(&payload, 10),
            Err(DecodeError::Malformed("segment extends past its message"))
        );
    }
}
