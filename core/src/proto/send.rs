//! The send side of a connection: queued messages in lanes, Nagle batching, fragmentation,
//! and the bookkeeping that turns acks and losses into freed buffers or retransmissions.
//!
//! Lanes (the reference API's `ConfigureConnectionLanes`): each lane is a FIFO queue with a
//! priority and a weight. The next segment comes from the lane with the lowest priority
//! number that has something queued (strict priority); among lanes of equal priority, from
//! the one with the least bytes sent per unit of weight (weighted fair sharing), where a lane
//! that was idle joins at the current level instead of spending saved-up credit. A reliable
//! message takes its sequence number when its first byte goes out, so the peer receives
//! messages in the order they were sent, which follows the lanes.

use super::codec::Segment;
use super::ranges::RangeSet;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
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
    reliable: bool,
    /// Assigned when the first segment goes out.
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

/// One lane's queue and its share.
#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Queued>,
    priority: i32,
    weight: u16,
    /// Bytes sent divided by weight: the lane with the least goes next among equals.
    served: f64,
}

/// Most lanes a connection may have.
pub const MAX_LANES: usize = 255;

/// Messages waiting to be sent, and reliable messages waiting to be acknowledged.
#[derive(Debug)]
pub struct SendQueue {
    lanes: Vec<Lane>,
    /// Reliable messages queued and not yet begun.
    unsent_reliable: usize,
    /// Reliable messages not yet fully acknowledged, by sequence number from `unacked_base`
    /// (sequence numbers are consecutive, so a deque indexes them directly).
    unacked: VecDeque<Option<Unacked>>,
    unacked_base: u64,
    unacked_count: usize,
    /// Lost ranges to send again, lowest first (by message sequence, then offset): the
    /// lowest is what the receiver waits on to deliver anything more, so it goes first
    /// (a receiver whose buffer is full admits only that one).
    retx: BTreeMap<(u64, u64), u64>,
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
            lanes: vec![Lane {
                weight: 1,
                ..Lane::default()
            }],
            unsent_reliable: 0,
            unacked: VecDeque::new(),
            unacked_base: 0,
            unacked_count: 0,
            retx: BTreeMap::new(),
            next_msg_num: 1,
            next_seq: 0,
            queued_reliable: 0,
            queued_unreliable: 0,
            unacked_bytes: 0,
            flush: false,
        }
    }

    #[cfg(test)]
    /// Queues a message on lane 0 and returns its message number.
    pub fn push(&mut self, now: Instant, payload: Bytes, reliable: bool) -> u64 {
        self.push_on_lane(now, payload, reliable, 0)
    }

    /// How many lanes there are.
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// Sets the lanes' priorities (lower numbers first) and weights; there may be more
    /// lanes than before, never fewer.
    pub fn configure_lanes(&mut self, priorities: &[i32], weights: &[u16]) -> Result<(), String> {
        let n = priorities.len();
        if n == 0 || n > MAX_LANES || weights.len() != n {
            return Err(format!(
                "{n} priorities and {} weights: give 1 to {MAX_LANES} lanes, a weight each",
                weights.len()
            ));
        }
        if n < self.lanes.len() {
            return Err(format!("cannot go from {} lanes to {n}", self.lanes.len()));
        }
        if weights.contains(&0) {
            return Err("lane weights must be positive".into());
        }
        self.lanes.resize_with(n, Lane::default);
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            lane.priority = priorities[i];
            lane.weight = weights[i];
            lane.served = 0.0;
        }
        Ok(())
    }

    /// Queues a message on `lane` (which must exist) and returns its message number.
    pub fn push_on_lane(
        &mut self,
        now: Instant,
        payload: Bytes,
        reliable: bool,
        lane: usize,
    ) -> u64 {
        let msg_num = self.next_msg_num;
        self.next_msg_num += 1;
        if reliable {
            self.unsent_reliable += 1;
            self.unacked_bytes += payload.len();
            self.queued_reliable += payload.len();
        } else {
            self.queued_unreliable += payload.len();
        }
        let lane = lane.min(self.lanes.len() - 1);
        if self.lanes[lane].queue.is_empty() {
            // An idle lane joins its peers where they are: no saved-up credit.
            let priority = self.lanes[lane].priority;
            let level = self
                .lanes
                .iter()
                .filter(|l| l.priority == priority && !l.queue.is_empty())
                .map(|l| l.served)
                .fold(f64::INFINITY, f64::min);
            if level.is_finite() {
                self.lanes[lane].served = self.lanes[lane].served.max(level);
            }
        }
        self.lanes[lane].queue.push_back(Queued {
            msg_num,
            reliable,
            reliable_seq: None,
            payload,
            sent: 0,
            queued_at: now,
        });
        msg_num
    }

    /// The lane the next segment comes from: the lowest priority number with something
    /// queued; among those, the least served for its weight.
    fn pick_lane(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, l) in self.lanes.iter().enumerate() {
            if l.queue.is_empty() {
                continue;
            }
            best = match best {
                Some(b)
                    if (self.lanes[b].priority, self.lanes[b].served) <= (l.priority, l.served) =>
                {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        best
    }

    fn is_queue_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.queue.is_empty())
    }

    /// Bytes held against the send buffer: those not yet sent once, reliable or not, as the
    /// reference API counts them. Reliable bytes sent and awaiting their ack are the
    /// congestion window's to limit, up to [`MAX_WINDOW`](super::recovery::MAX_WINDOW);
    /// beyond it (messages kept whole until every piece is acknowledged, pieces declared lost
    /// and waiting to go again) they count too, so a connection never holds more than its
    /// send buffer plus that.
    pub fn buffered(&self) -> usize {
        let sent_unacked = self.unacked_bytes.saturating_sub(self.queued_reliable);
        let beyond_window = sent_unacked.saturating_sub(super::recovery::MAX_WINDOW as usize);
        self.queued_unreliable + self.queued_reliable + beyond_window
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
        self.lanes
            .iter()
            .filter_map(|l| l.queue.front().map(|q| q.queued_at))
            .min()
    }

    /// Asks for everything queued to go out without waiting for Nagle.
    pub fn request_flush(&mut self) {
        if !self.is_queue_empty() {
            self.flush = true;
        }
    }

    /// True when nothing reliable is queued, unacknowledged or due for retransmission.
    pub fn reliable_done(&self) -> bool {
        self.unacked_count == 0 && self.unsent_reliable == 0
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
        let Some(oldest) = self.oldest_queued() else {
            return false;
        };
        self.flush
            || oldest + nagle <= now
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
        for l in &mut self.lanes {
            l.queue.retain(|q| q.reliable);
        }
        self.queued_unreliable = 0;
    }

    /// Drops everything (a close without linger); the lanes stay configured.
    pub fn clear(&mut self) {
        let mut lanes = std::mem::take(&mut self.lanes);
        for l in &mut lanes {
            l.queue.clear();
            l.served = 0.0;
        }
        *self = Self {
            lanes,
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
        while let Some((&(seq, offset), &len)) = self.retx.first_key_value() {
            let r = SegRef { seq, offset, len };
            let Some(u) = self.unacked(r.seq) else {
                self.retx.pop_first();
                continue;
            };
            if r.len > 0 && u.acked.contains_range(r.offset..r.offset + r.len) {
                self.retx.pop_first();
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
            self.retx.pop_first();
            if len < r.len {
                self.retx.insert((r.seq, r.offset + len), r.len - len);
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
        let lane = self.pick_lane()?;
        let q = self.lanes[lane].queue.front_mut()?;
        let total = q.payload.len();
        let left = total - q.sent;
        // The sequence number it has, or will take if this segment goes.
        let seq = q.reliable_seq.or(q.reliable.then_some(self.next_seq));
        let header = Segment::header_len(seq, q.msg_num, q.sent as u64, total as u64, left);
        let len = if header + left <= space {
            left
        } else {
            let frag =
                Segment::header_len_as(false, seq, q.msg_num, q.sent as u64, total as u64, space);
            if header + left <= packet_payload || space < frag + 64.min(left) {
                // Fits a fresh packet whole, or too little room to be worth a fragment.
                return None;
            }
            space - frag
        };
        if q.reliable && q.reliable_seq.is_none() {
            // First byte out: the message takes its place in the reliable stream.
            let seq = self.next_seq;
            self.next_seq += 1;
            q.reliable_seq = Some(seq);
            if self.unacked.is_empty() {
                self.unacked_base = seq;
            }
            self.unacked.push_back(Some(Unacked {
                msg_num: q.msg_num,
                payload: q.payload.clone(),
                acked: RangeSet::new(),
            }));
            self.unacked_count += 1;
            self.unsent_reliable -= 1;
        }
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
        if q.reliable {
            self.queued_reliable -= len;
        } else {
            self.queued_unreliable -= len;
        }
        let done = q.sent == total;
        let l = &mut self.lanes[lane];
        l.served += len.max(1) as f64 / f64::from(l.weight.max(1));
        if done {
            l.queue.pop_front();
            if self.is_queue_empty() {
                self.flush = false;
            }
        }
        Some((seg, rf))
    }

    /// Records that the peer received `r`; frees the message once all of it is acknowledged.
    pub fn on_acked(&mut self, r: SegRef) {
        // Only the front of a lane can be partly sent.
        let sent_whole = self.lanes.iter().all(|l| {
            l.queue
                .front()
                .is_none_or(|q| q.reliable_seq != Some(r.seq))
        });
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
                let len = self.retx.entry((r.seq, r.offset)).or_insert(r.len);
                *len = (*len).max(r.len);
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
        // Sent: no longer held against the send buffer, but kept until acknowledged.
        assert_eq!(q.buffered(), 0);
        assert_eq!(q.unacked_reliable(), 3000);
        q.on_lost(refs[1]);
        for r in &refs {
            q.on_acked(*r);
        }
        assert_eq!(q.buffered(), 0);
        // The retransmission of an acknowledged range is skipped.
        assert!(q.next_segment(t, Duration::ZERO, 1200, 1200).is_none());
    }

    #[test]
    fn sent_bytes_beyond_the_largest_window_count_against_the_buffer() {
        let t = Instant::now();
        let mut q = SendQueue::new();
        let max = crate::proto::recovery::MAX_WINDOW as usize;
        let total = max + 1024 * 1024;
        for _ in 0..total / 65_536 {
            q.push(t, Bytes::from(vec![1u8; 65_536]), true);
        }
        assert_eq!(q.buffered(), total, "unsent: all of it");
        while q.next_segment(t, Duration::ZERO, 1200, 1200).is_some() {}
        // Sent, none acknowledged: what the window may hold is free, the rest is not.
        assert_eq!(q.unacked_reliable(), total);
        assert_eq!(q.buffered(), total - max);
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
