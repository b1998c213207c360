//! A count-min sketch with conservative update, the textbook way: `depth` rows of `width`
//! counters, a source's estimate is the least of its counters, and adding raises each of its
//! counters only as far as the new estimate. The kernel's sketch rules keep such counters per
//! window (`rein_common::window`); within one window they are these counts.
use rein_common::net::{ADDR_BYTES, sketch_column};

#[derive(Debug, Clone)]
pub struct CountMinModel {
    rule: u32,
    width: u32,
    rows: Vec<Vec<u64>>,
}

impl CountMinModel {
    /// The sketch of rule `rule` (its id seeds the hashes, as in the kernel).
    pub fn new(rule: u32, width: u32, depth: u32) -> Self {
        Self {
            rule,
            width,
            rows: vec![vec![0; width as usize]; depth as usize],
        }
    }

    fn cells(&self, addr: &[u8; ADDR_BYTES]) -> Vec<(usize, usize)> {
        (0..self.rows.len())
            .map(|row| {
                let column = sketch_column(self.rule, row as u32, addr, self.width);
                (row, column as usize)
            })
            .collect()
    }

    /// The source's estimated count: never below its true count.
    pub fn estimate(&self, addr: &[u8; ADDR_BYTES]) -> u64 {
        self.cells(addr)
            .into_iter()
            .map(|(row, column)| self.rows[row][column])
            .min()
            .unwrap_or(0)
    }

    /// Adds `amount` to the source, raising each of its counters to the new estimate at most.
    pub fn add(&mut self, addr: &[u8; ADDR_BYTES], amount: u64) {
        let target = self.estimate(addr) + amount;
        for (row, column) in self.cells(addr) {
            let cell = &mut self.rows[row][column];
            *cell = (*cell).max(target);
        }
    }

    /// A window limit of `capacity` per source: passes (and counts) `cost` when the estimate
    /// leaves room for it.
    pub fn offer(&mut self, addr: &[u8; ADDR_BYTES], cost: u64, capacity: u64) -> bool {
        if self.estimate(addr) + cost > capacity {
            return false;
        }
        self.add(addr, cost);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::Xorshift;

    fn addr(n: u64) -> [u8; ADDR_BYTES] {
        let mut bytes = [0u8; ADDR_BYTES];
        bytes[..2].copy_from_slice(&[0x20, 0x01]);
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        bytes
    }

    #[test]
    fn estimates_never_fall_below_the_truth_and_stay_close_for_heavy_sources() {
        let mut sketch = CountMinModel::new(1, 1024, 4);
        let mut truth: HashMap<u64, u64> = HashMap::new();
        let mut random = Xorshift(0x5eed);
        // 20,000 sources, a few of them heavy: every tenth packet comes from one of 10.
        for i in 0..200_000u64 {
            let source = if i % 10 == 0 {
                random.next_u64() % 10
            } else {
                10 + random.next_u64() % 20_000
            };
            sketch.add(&addr(source), 1);
            *truth.entry(source).or_default() += 1;
        }
        for (&source, &count) in &truth {
            assert!(sketch.estimate(&addr(source)) >= count);
        }
        for heavy in 0..10 {
            let (estimate, count) = (sketch.estimate(&addr(heavy)), truth[&heavy]);
            assert!(
                (estimate - count) * 10 < count,
                "source {heavy}: {estimate} for {count}"
            );
        }
    }
}
