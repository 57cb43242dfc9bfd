//! The receive side of a connection: reassembly of fragments, in-order exactly-once delivery
//! of reliable messages, whole-or-nothing delivery of unreliable ones, and buffer accounting.

use super::codec::Segment;
use super::ranges::RangeSet;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// A message received from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender's message number.
    pub msg_num: u64,
    /// True for a reliable message.
    pub reliable: bool,
    /// The message.
    pub payload: Bytes,
    /// When its last piece arrived.
    pub received_at: Instant,
}

/// Why a segment could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvError {
    /// The message is larger than `RecvMaxMessageSize`.
    TooBig {
        /// The message's size.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A segment disagrees with earlier segments of the same message (dropped).
    Inconsistent,
    /// A reliable sequence number too far ahead of the next expected one (dropped).
    OutOfWindow,
}

/// A message being reassembled: its full-size buffer, which fragments are copied into.
#[derive(Debug)]
struct Partial {
    msg_num: u64,
    buf: BytesMut,
    have: RangeSet,
}

impl Partial {
    fn new(s: &Segment) -> Self {
        Self {
            msg_num: s.msg_num,
            buf: BytesMut::zeroed(s.total as usize),
            have: RangeSet::new(),
        }
    }

    /// Copies a piece into place.
    fn add(&mut self, s: &Segment) -> Result<(), RecvError> {
        if s.msg_num != self.msg_num || s.total != self.buf.len() as u64 {
            return Err(RecvError::Inconsistent);
        }
        // The decoder checked offset + len <= total.
        let start = s.offset as usize;
        self.buf[start..start + s.data.len()].copy_from_slice(&s.data);
        self.have.insert(s.offset..s.offset + s.data.len() as u64);
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.have.contains_range(0..self.buf.len() as u64)
    }

    /// What it is charged against the receive buffer: its whole size from the first piece on,
    /// so claimed sizes are paid for before any memory is committed to them.
    fn charge(&self) -> usize {
        self.buf.len() + PIECE_OVERHEAD
    }
}

/// What a message under reassembly costs beyond its data (map entry, range bookkeeping).
pub const PIECE_OVERHEAD: usize = 64;

/// Incomplete unreliable messages kept at once; the oldest is dropped past this.
pub const MAX_PARTIAL_UNRELIABLE: usize = 16;
/// How far past the next expected reliable message a peer may send.
pub const RELIABLE_WINDOW: u64 = 1 << 16;

/// Reassembly and delivery state.
#[derive(Debug, Default)]
pub struct Reassembly {
    next_seq: u64,
    partial_reliable: BTreeMap<u64, Partial>,
    complete_reliable: BTreeMap<u64, Received>,
    partial_unreliable: BTreeMap<u64, Partial>,
    ready: VecDeque<Received>,
    held_bytes: usize,
    held_messages: usize,
    ready_bytes: usize,
}

impl Reassembly {
    /// Empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held: pieces, out-of-order messages and messages waiting for the application.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Complete messages held (waiting in order or for the application).
    pub fn held_messages(&self) -> usize {
        self.held_messages
    }

    /// True when `s` belongs to the next reliable message to deliver (always accepted, so an
    /// out-of-order backlog cannot starve the message that would drain it).
    pub fn is_head(&self, s: &Segment) -> bool {
        s.reliable_seq == Some(self.next_seq)
    }

    /// Bytes taking `s` would add to [`held_bytes`](Self::held_bytes): a fragment of a
    /// message not yet under reassembly is charged the message's whole size.
    pub fn charge(&self, s: &Segment) -> usize {
        let whole = s.offset == 0 && s.data.len() as u64 == s.total;
        if whole {
            return s.data.len();
        }
        let started = match s.reliable_seq {
            Some(seq) => seq < self.next_seq || self.partial_reliable.contains_key(&seq),
            None => self.partial_unreliable.contains_key(&s.msg_num),
        };
        if started {
            0
        } else {
            s.total as usize + PIECE_OVERHEAD
        }
    }

    /// False for a reliable segment too far ahead of the next expected message.
    pub fn in_window(&self, s: &Segment) -> bool {
        s.reliable_seq
            .is_none_or(|seq| seq < self.next_seq || seq - self.next_seq < RELIABLE_WINDOW)
    }

    /// Messages ready for the application.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Bytes of messages ready for the application.
    pub fn ready_bytes(&self) -> usize {
        self.ready_bytes
    }

    /// The next message for the application, left in place.
    pub fn peek(&self) -> Option<&Received> {
        self.ready.front()
    }

    /// Takes the next message for the application.
    pub fn pop(&mut self) -> Option<Received> {
        let m = self.ready.pop_front()?;
        self.held_bytes -= m.payload.len();
        self.ready_bytes -= m.payload.len();
        self.held_messages -= 1;
        Some(m)
    }

    /// Takes in one segment.
    pub fn insert(&mut self, now: Instant, s: &Segment, max_size: usize) -> Result<(), RecvError> {
        if s.total > max_size as u64 {
            return Err(RecvError::TooBig {
                size: s.total,
                max: max_size,
            });
        }
        match s.reliable_seq {
            Some(seq) => self.insert_reliable(now, seq, s),
            None => {
                self.insert_unreliable(now, s);
                Ok(())
            }
        }
    }

    fn insert_reliable(&mut self, now: Instant, seq: u64, s: &Segment) -> Result<(), RecvError> {
        if seq < self.next_seq || self.complete_reliable.contains_key(&seq) {
            return Ok(()); // a duplicate of something delivered or complete
        }
        if seq - self.next_seq >= RELIABLE_WINDOW {
            return Err(RecvError::OutOfWindow);
        }
        let whole = s.offset == 0 && s.data.len() as u64 == s.total;
        if whole && seq == self.next_seq && !self.partial_reliable.contains_key(&seq) {
            // The common case: the next message, whole, straight to the application.
            self.held_bytes += s.data.len();
            self.held_messages += 1;
            self.ready_bytes += s.data.len();
            self.ready.push_back(Received {
                msg_num: s.msg_num,
                reliable: true,
                payload: s.data.clone(),
                received_at: now,
            });
            self.next_seq += 1;
            self.release_in_order();
            return Ok(());
        }
        let payload = if whole && !self.partial_reliable.contains_key(&seq) {
            self.held_bytes += s.data.len();
            s.data.clone()
        } else {
            let p = match self.partial_reliable.entry(seq) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let p = e.insert(Partial::new(s));
                    self.held_bytes += p.charge();
                    p
                }
            };
            p.add(s)?;
            if !p.is_complete() {
                return Ok(());
            }
            // Just checked that the entry exists and is complete.
            let p = self.partial_reliable.remove(&seq).expect("entry present");
            self.held_bytes -= PIECE_OVERHEAD;
            p.buf.freeze()
        };
        self.held_messages += 1;
        self.complete_reliable.insert(
            seq,
            Received {
                msg_num: s.msg_num,
                reliable: true,
                payload,
                received_at: now,
            },
        );
        self.release_in_order();
        Ok(())
    }

    /// Moves messages that are now in order from the reorder map to the application.
    fn release_in_order(&mut self) {
        while let Some(m) = self.complete_reliable.remove(&self.next_seq) {
            self.ready_bytes += m.payload.len();
            self.ready.push_back(m);
            self.next_seq += 1;
        }
    }

    fn insert_unreliable(&mut self, now: Instant, s: &Segment) {
        let whole = s.offset == 0 && s.data.len() as u64 == s.total;
        let payload = if whole {
            self.held_bytes += s.data.len();
            s.data.clone()
        } else {
            if !self.partial_unreliable.contains_key(&s.msg_num)
                && self.partial_unreliable.len() >= MAX_PARTIAL_UNRELIABLE
            {
                if let Some((_, old)) = self.partial_unreliable.pop_first() {
                    self.held_bytes -= old.charge();
                }
            }
            let p = match self.partial_unreliable.entry(s.msg_num) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let p = e.insert(Partial::new(s));
                    self.held_bytes += p.charge();
                    p
                }
            };
            if p.add(s).is_err() || !p.is_complete() {
                return; // an inconsistent piece is dropped; an incomplete message waits
            }
            let p = self
                .partial_unreliable
                .remove(&s.msg_num)
                .expect("entry present");
            self.held_bytes -= PIECE_OVERHEAD;
            p.buf.freeze()
        };
        self.ready_bytes += payload.len();
        self.held_messages += 1;
        self.ready.push_back(Received {
            msg_num: s.msg_num,
            reliable: false,
            payload,
            received_at: now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: Option<u64>, msg: u64, off: u64, total: u64, data: &[u8]) -> Segment {
        Segment {
            reliable_seq: seq,
            msg_num: msg,
            offset: off,
            total,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn reliable_messages_come_out_in_order_once() {
        let t = Instant::now();
        let mut r = Reassembly::new();
        r.insert(t, &seg(Some(1), 2, 0, 1, b"b"), 100).unwrap();
        assert!(r.pop().is_none());
        r.insert(t, &seg(Some(0), 1, 2, 4, b"cd"), 100).unwrap();
        r.insert(t, &seg(Some(0), 1, 0, 4, b"ab"), 100).unwrap();
        r.insert(t, &seg(Some(0), 1, 0, 4, b"ab"), 100).unwrap();
        assert_eq!(r.pop().unwrap().payload, Bytes::from_static(b"abcd"));
        assert_eq!(r.pop().unwrap().payload, Bytes::from_static(b"b"));
        assert!(r.pop().is_none());
        assert_eq!(r.held_bytes(), 0);
        assert_eq!(r.held_messages(), 0);
    }

    #[test]
    fn unreliable_fragments_are_all_or_nothing_and_bounded() {
        let t = Instant::now();
        let mut r = Reassembly::new();
        for m in 0..100 {
            r.insert(t, &seg(None, m, 0, 4, b"ab"), 100).unwrap();
        }
        assert!(r.pop().is_none());
        assert_eq!(
            r.held_bytes(),
            (4 + PIECE_OVERHEAD) * MAX_PARTIAL_UNRELIABLE
        );
        r.insert(t, &seg(None, 99, 2, 4, b"cd"), 100).unwrap();
        assert_eq!(r.pop().unwrap().payload, Bytes::from_static(b"abcd"));
    }

    #[test]
    fn oversized_messages_are_refused() {
        let t = Instant::now();
        let mut r = Reassembly::new();
        assert_eq!(
            r.insert(t, &seg(Some(0), 1, 0, 1000, b"x"), 100),
            Err(RecvError::TooBig {
                size: 1000,
                max: 100
            })
        );
    }
}
