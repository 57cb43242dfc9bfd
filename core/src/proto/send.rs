//! The send side of a connection: queued messages, Nagle batching, fragmentation, and the
//! bookkeeping that turns acks and losses into freed buffers or retransmissions.

use super::codec::Segment;
use super::ranges::RangeSet;
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A reliable byte range carried by a sent packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegRef {
    /// Reliable sequence number of the message.
    pub seq: u64,
    /// Start of the range in the message.
    pub offset: u64,
    /// Length of the range.
    pub len: u64,
}

#[derive(Debug)]
struct Queued {
    msg_num: u64,
    reliable_seq: Option<u64>,
    payload: Bytes,
    sent: usize,
    queued_at: Instant,
}

#[derive(Debug)]
struct Unacked {
    msg_num: u64,
    payload: Bytes,
    acked: RangeSet,
}

/// Messages waiting to be sent, and reliable messages waiting to be acknowledged.
#[derive(Debug)]
pub struct SendQueue {
    queue: VecDeque<Queued>,
    /// Reliable messages not yet fully acknowledged, by sequence number from `unacked_base`
    /// (sequence numbers are consecutive, so a deque indexes them directly).
    unacked: VecDeque<Option<Unacked>>,
    unacked_base: u64,
    unacked_count: usize,
    retx: VecDeque<SegRef>,
    next_msg_num: u64,
    next_seq: u64,
    queued_reliable: usize,
    queued_unreliable: usize,
    unacked_bytes: usize,
    flush: bool,
}

impl Default for SendQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl SendQueue {
    /// An empty queue; the first message number is 1.
    pub fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            unacked: VecDeque::new(),
            unacked_base: 0,
            unacked_count: 0,
            retx: VecDeque::new(),
            next_msg_num: 1,
            next_seq: 0,
            queued_reliable: 0,
            queued_unreliable: 0,
            unacked_bytes: 0,
            flush: false,
        }
    }

    /// Queues a message and returns its message number.
    pub fn push(&mut self, now: Instant, payload: Bytes, reliable: bool) -> u64 {
        let msg_num = self.next_msg_num;
        self.next_msg_num += 1;
        let reliable_seq = reliable.then(|| {
            let seq = self.next_seq;
            self.next_seq += 1;
            if self.unacked.is_empty() {
                self.unacked_base = seq;
            }
            self.unacked.push_back(Some(Unacked {
                msg_num,
                payload: payload.clone(),
                acked: RangeSet::new(),
            }));
            self.unacked_count += 1;
            self.unacked_bytes += payload.len();
            self.queued_reliable += payload.len();
            seq
        });
        if !reliable {
            self.queued_unreliable += payload.len();
        }
        self.queue.push_back(Queued {
            msg_num,
            reliable_seq,
            payload,
            sent: 0,
            queued_at: now,
        });
        msg_num
    }

    /// Bytes held against the send buffer: unsent unreliable plus unacknowledged reliable.
    pub fn buffered(&self) -> usize {
        self.queued_unreliable + self.unacked_bytes
    }

    /// Reliable bytes not yet sent once.
    pub fn queued_reliable(&self) -> usize {
        self.queued_reliable
    }

    /// Unreliable bytes not yet sent.
    pub fn queued_unreliable(&self) -> usize {
        self.queued_unreliable
    }

    /// Reliable bytes sent or queued but not acknowledged.
    pub fn unacked_reliable(&self) -> usize {
        self.unacked_bytes
    }

    /// When the oldest queued message was queued.
    pub fn oldest_queued(&self) -> Option<Instant> {
        self.queue.front().map(|q| q.queued_at)
    }

    /// Asks for everything queued to go out without waiting for Nagle.
    pub fn request_flush(&mut self) {
        if !self.queue.is_empty() {
            self.flush = true;
        }
    }

    /// True when nothing reliable is queued, unacknowledged or due for retransmission.
    pub fn reliable_done(&self) -> bool {
        self.unacked_count == 0
    }

    fn unacked(&self, seq: u64) -> Option<&Unacked> {
        let i = usize::try_from(seq.checked_sub(self.unacked_base)?).ok()?;
        self.unacked.get(i)?.as_ref()
    }

    fn unacked_mut(&mut self, seq: u64) -> Option<&mut Unacked> {
        let i = usize::try_from(seq.checked_sub(self.unacked_base)?).ok()?;
        self.unacked.get_mut(i)?.as_mut()
    }

    fn forget_unacked(&mut self, seq: u64) {
        let Some(i) = seq
            .checked_sub(self.unacked_base)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if let Some(slot) = self.unacked.get_mut(i) {
            if slot.take().is_some() {
                self.unacked_count -= 1;
            }
        }
        while matches!(self.unacked.front(), Some(None)) {
            self.unacked.pop_front();
            self.unacked_base += 1;
        }
    }

    /// True when there is something to send now: a retransmission, or queued data that
    /// Nagle lets go (flushed, a full packet's worth, or waiting `nagle` already).
    pub fn has_sendable(&self, now: Instant, nagle: Duration, packet_payload: usize) -> bool {
        !self.retx.is_empty() || self.nagle_ready(now, nagle, packet_payload)
    }

    fn nagle_ready(&self, now: Instant, nagle: Duration, packet_payload: usize) -> bool {
        let Some(front) = self.queue.front() else {
            return false;
        };
        self.flush
            || front.queued_at + nagle <= now
            || self.queued_reliable + self.queued_unreliable >= packet_payload
    }

    /// When Nagle will let the queue go, if it is holding it back.
    pub fn nagle_deadline(&self, nagle: Duration) -> Option<Instant> {
        if self.flush {
            return None;
        }
        self.oldest_queued().map(|t| t + nagle)
    }

    /// Drops every unsent unreliable message (a lingering close sends only reliable data).
    pub fn drop_unreliable(&mut self) {
        self.queue.retain(|q| q.reliable_seq.is_some());
        self.queued_unreliable = 0;
    }

    /// Drops everything (a close without linger).
    pub fn clear(&mut self) {
        *self = Self {
            next_msg_num: self.next_msg_num,
            next_seq: self.next_seq,
            ..Self::new()
        };
    }

    /// The next segment that fits in `space` bytes of packet; `packet_payload` is an empty
    /// packet's capacity, so a message that would fit a fresh packet is not split.
    pub fn next_segment(
        &mut self,
        now: Instant,
        nagle: Duration,
        space: usize,
        packet_payload: usize,
    ) -> Option<(Segment, Option<SegRef>)> {
        while let Some(r) = self.retx.front().copied() {
            let Some(u) = self.unacked(r.seq) else {
                self.retx.pop_front();
                continue;
            };
            if r.len > 0 && u.acked.contains_range(r.offset..r.offset + r.len) {
                self.retx.pop_front();
                continue;
            }
            let (msg_num, payload) = (u.msg_num, u.payload.clone());
            let total = payload.len() as u64;
            let whole = Segment::header_len(Some(r.seq), msg_num, r.offset, total, r.len as usize);
            let len = if whole + r.len as usize <= space {
                r.len
            } else {
                let frag =
                    Segment::header_len_as(false, Some(r.seq), msg_num, r.offset, total, space);
                if frag + 1 > space {
                    return None;
                }
                r.len.min((space - frag) as u64)
            };
            self.retx.pop_front();
            if len < r.len {
                self.retx.push_front(SegRef {
                    seq: r.seq,
                    offset: r.offset + len,
                    len: r.len - len,
                });
            }
            let seg = Segment {
                reliable_seq: Some(r.seq),
                msg_num,
                offset: r.offset,
                total,
                data: payload.slice(r.offset as usize..(r.offset + len) as usize),
            };
            let rf = SegRef {
                seq: r.seq,
                offset: r.offset,
                len,
            };
            return Some((seg, Some(rf)));
        }
        if !self.nagle_ready(now, nagle, packet_payload) {
            return None;
        }
        let q = self.queue.front_mut()?;
        let total = q.payload.len();
        let left = total - q.sent;
        let header =
            Segment::header_len(q.reliable_seq, q.msg_num, q.sent as u64, total as u64, left);
        let len = if header + left <= space {
            left
        } else {
            let frag = Segment::header_len_as(
                false,
                q.reliable_seq,
                q.msg_num,
                q.sent as u64,
                total as u64,
                space,
            );
            if header + left <= packet_payload || space < frag + 64.min(left) {
                // Fits a fresh packet whole, or too little room to be worth a fragment.
                return None;
            }
            space - frag
        };
        let seg = Segment {
            reliable_seq: q.reliable_seq,
            msg_num: q.msg_num,
            offset: q.sent as u64,
            total: total as u64,
            data: q.payload.slice(q.sent..q.sent + len),
        };
        let rf = q.reliable_seq.map(|seq| SegRef {
            seq,
            offset: q.sent as u64,
            len: len as u64,
        });
        q.sent += len;
        if q.reliable_seq.is_some() {
            self.queued_reliable -= len;
        } else {
            self.queued_unreliable -= len;
        }
        if q.sent == total {
            self.queue.pop_front();
            if self.queue.is_empty() {
                self.flush = false;
            }
        }
        Some((seg, rf))
    }

    /// Records that the peer received `r`; frees the message once all of it is acknowledged.
    pub fn on_acked(&mut self, r: SegRef) {
        // Only the front of the queue can be partly sent.
        let sent_whole = self
            .queue
            .front()
            .is_none_or(|q| q.reliable_seq != Some(r.seq));
        let Some(u) = self.unacked_mut(r.seq) else {
            return;
        };
        u.acked.insert(r.offset..r.offset + r.len);
        let total = u.payload.len() as u64;
        if sent_whole && (total == 0 || u.acked.contains_range(0..total)) {
            self.unacked_bytes -= total as usize;
            self.forget_unacked(r.seq);
        }
    }

    /// Queues `r` for retransmission, unless it was acknowledged meanwhile.
    pub fn on_lost(&mut self, r: SegRef) {
        if let Some(u) = self.unacked(r.seq) {
            if r.len == 0 || !u.acked.contains_range(r.offset..r.offset + r.len) {
                self.retx.push_back(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_message_fragments_and_frees_when_acked() {
        let t = Instant::now();
        let mut q = SendQueue::new();
        q.push(t, Bytes::from(vec![7u8; 3000]), true);
        assert_eq!(q.buffered(), 3000);
        let mut refs = Vec::new();
        while let Some((seg, r)) = q.next_segment(t, Duration::ZERO, 1200, 1200) {
            assert!(seg.encoded_len() <= 1200);
            refs.push(r.unwrap());
        }
        assert_eq!(refs.iter().map(|r| r.len).sum::<u64>(), 3000);
        q.on_lost(refs[1]);
        for r in &refs {
            q.on_acked(*r);
        }
        assert_eq!(q.buffered(), 0);
        // The retransmission of an acknowledged range is skipped.
        assert!(q.next_segment(t, Duration::ZERO, 1200, 1200).is_none());
    }

    #[test]
    fn nagle_holds_small_messages_until_the_timer_or_a_flush() {
        let t = Instant::now();
        let nagle = Duration::from_millis(5);
        let mut q = SendQueue::new();
        q.push(t, Bytes::from_static(b"hi"), false);
        assert!(!q.has_sendable(t, nagle, 1200));
        assert!(q.has_sendable(t + nagle, nagle, 1200));
        q.request_flush();
        assert!(q.has_sendable(t, nagle, 1200));
        assert!(q.next_segment(t, nagle, 1200, 1200).is_some());
        assert_eq!(q.buffered(), 0);
    }
}
