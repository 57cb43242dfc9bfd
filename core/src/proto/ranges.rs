//! A set of `u64` values stored as sorted, disjoint, non-adjacent half-open ranges. Used for
//! received packet numbers, acknowledged message bytes and reassembly coverage.

use std::collections::BTreeMap;
use std::ops::Range;

/// Sorted disjoint ranges; `start -> end` (exclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of disjoint ranges.
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is in the set.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts `r`, merging neighbours. Returns the number of values that were new.
    pub fn insert(&mut self, r: Range<u64>) -> u64 {
        if r.start >= r.end {
            return 0;
        }
        let (mut start, mut end) = (r.start, r.end);
        let mut covered = 0;
        // Merge with a range that starts before and reaches `start`.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                covered += e.min(end).saturating_sub(start);
                start = s;
                end = end.max(e);
                self.map.remove(&s);
            }
        }
        // Merge with every range that starts inside [start, end].
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            covered += e.min(r.end).saturating_sub(s.max(r.start));
            end = end.max(e);
            self.map.remove(&s);
        }
        self.map.insert(start, end);
        (r.end - r.start) - covered
    }

    /// True when every value of `r` is in the set.
    pub fn contains_range(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return true;
        }
        self.map
            .range(..=r.start)
            .next_back()
            .is_some_and(|(_, &e)| e >= r.end)
    }

    #[cfg(test)]
    /// True when `v` is in the set.
    pub fn contains(&self, v: u64) -> bool {
        self.contains_range(v..v + 1)
    }

    #[cfg(test)]
    /// The smallest value, if any.
    pub fn min(&self) -> Option<u64> {
        self.map.keys().next().copied()
    }

    /// The largest value, if any.
    pub fn max(&self) -> Option<u64> {
        self.map.values().next_back().map(|e| e - 1)
    }

    /// Removes the oldest (lowest) range.
    pub fn pop_min(&mut self) -> Option<Range<u64>> {
        self.map.pop_first().map(|(s, e)| s..e)
    }

    #[cfg(test)]
    /// Removes every value below `v`.
    pub fn remove_below(&mut self, v: u64) {
        while let Some((&s, &e)) = self.map.iter().next() {
            if s >= v {
                break;
            }
            self.map.remove(&s);
            if e > v {
                self.map.insert(v, e);
                break;
            }
        }
    }

    /// The ranges, highest first.
    pub fn iter_rev(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().rev().map(|(&s, &e)| s..e)
    }

    #[cfg(test)]
    /// The ranges, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_and_counts_new_values() {
        let mut s = RangeSet::new();
        assert_eq!(s.insert(10..20), 10);
        assert_eq!(s.insert(30..40), 10);
        assert_eq!(s.insert(15..35), 10);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![10..40]);
        assert_eq!(s.insert(40..41), 1);
        assert_eq!(s.insert(5..50), 14);
        assert_eq!(s.insert(5..50), 0);
        assert!(s.contains_range(5..50));
        assert!(!s.contains(50));
        s.remove_below(20);
        assert_eq!(s.min(), Some(20));
        assert_eq!(s.max(), Some(49));
    }

    #[test]
    fn matches_a_plain_set_on_random_inserts() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        let mut s = RangeSet::new();
        let mut plain = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let a = next() % 500;
            let b = a + next() % 8;
            let new = (a..b).filter(|v| plain.insert(*v)).count() as u64;
            assert_eq!(s.insert(a..b), new);
        }
        for v in 0..520 {
            assert_eq!(s.contains(v), plain.contains(&v), "value {v}");
        }
        let ranges: Vec<_> = s.iter().collect();
        for w in ranges.windows(2) {
            assert!(
                w[0].end < w[1].start,
                "ranges must be disjoint and non-adjacent"
            );
        }
    }
}
