//! What has been collected from the probes, in user space, with a bounded size.
//!
//! The probes' kernel maps are drained every interval ([`Probes::drain`]); this store adds the
//! drained counts up, weighed by the mode into estimated objects, and keeps a copy of every
//! stack its keys refer to. It holds at most `max_keys` keys: later keys are folded into one
//! "other callsites" key per size, so a target whose stacks and sizes never stop changing
//! cannot make the tracer grow without bound.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tracer_common::{AllocKey, NO_STACK, STACKS_MAP_ENTRIES, stack_hash};

use crate::mode::Weighing;
use crate::probes::Probes;

/// [`AllocKey::return_address`] of the key that collects everything past the key limit. No
/// instruction lives at the top of the address space.
pub const OTHER_CALLSITES: u64 = u64::MAX;

/// The name shown for [`OTHER_CALLSITES`].
pub const OTHER_CALLSITES_NAME: &str = "(other callsites: gotrace's key limit reached)";

/// Cumulative, weighed counts with their stacks.
#[derive(Debug)]
pub struct Store {
    counts: HashMap<AllocKey, f64>,
    /// Stacks the keys refer to, cut to `max_frames`, by the hash of what is kept.
    stacks: HashMap<u64, Arc<[u64]>>,
    /// The probes' stack keys already read, and what they became once cut. Cleared when it
    /// grows past twice `max_keys` (a target whose stacks never repeat).
    cut: HashMap<u64, (u64, Arc<[u64]>)>,
    max_keys: usize,
    max_frames: usize,
    /// Stacks read from the kernel since copied stacks were last removed from its map.
    read_since_purge: HashSet<u64>,
    /// Stacks in the kernel's map, never read, at the last removal: removed at the next one
    /// (their keys were refused, or weighed 0), so that they cannot fill the map for good.
    unread_at_last_purge: HashSet<u64>,
    /// Keys folded into [`OTHER_CALLSITES`] so far.
    pub overflowed: u64,
    /// The last interval's weighed objects before scaling, by key as stored, kept while a duty
    /// cycle runs: for an interval in which its probes were never attached, they stand in.
    last_interval: Vec<(AllocKey, f64)>,
}

impl Store {
    /// An empty store that keeps at most `max_keys` distinct keys, and at most `max_frames`
    /// frames of each stack: stacks that differ only deeper down become one (as Go's own heap
    /// profile cuts its stacks, at 32 frames before Go 1.23 and 128 since).
    #[must_use]
    pub fn new(max_keys: usize, max_frames: usize) -> Self {
        Self {
            counts: HashMap::new(),
            stacks: HashMap::new(),
            cut: HashMap::new(),
            max_keys: max_keys.max(1),
            max_frames: max_frames.max(1),
            read_since_purge: HashSet::new(),
            unread_at_last_purge: HashSet::new(),
            overflowed: 0,
            last_interval: Vec::new(),
        }
    }

    /// Drains the probes into the store.
    pub fn collect(&mut self, probes: &mut Probes, weighing: Weighing) -> anyhow::Result<()> {
        let (drained, scale) = probes.drain()?;
        if let Some(previous) = scale.previous.filter(|&factor| factor > 0.0) {
            for (key, objects) in &self.last_interval {
                *self.counts.entry(*key).or_insert(0.0) += objects * previous;
            }
        }
        // An interval whose probes saw something is the one later `previous` factors refer to.
        let keep_interval = probes.duty_cycled() && scale.previous.is_none();
        if keep_interval {
            self.last_interval.clear();
        }
        for (key, count) in drained {
            let Some((mut key, unscaled)) = weighing.weigh(key, count) else {
                continue;
            };
            let objects = unscaled * scale.counts;
            key = self.stored_key(probes, key).unwrap_or_else(|| {
                self.overflowed = self.overflowed.saturating_add(1);
                other_key(key.size)
            });
            *self.counts.entry(key).or_insert(0.0) += objects;
            if keep_interval {
                self.last_interval.push((key, unscaled));
            }
        }
        // The kernel's stack map only grows; once a good part of it has been copied here,
        // remove the copied stacks so that new ones keep finding room. (Removing all of them
        // lost the stacks of keys counted between the drain above and the removal.)
        if self.read_since_purge.len() > STACKS_MAP_ENTRIES as usize / 4 {
            // Copied: read since the last removal, or cached here (a stack the probes stored
            // again after an earlier removal, whose keys this store reads from its cache).
            let kept = probes.forget_stacks(|id| {
                self.read_since_purge.contains(&id)
                    || self.cut.contains_key(&id)
                    || self.unread_at_last_purge.contains(&id)
            });
            self.unread_at_last_purge = kept.into_iter().collect();
            self.read_since_purge.clear();
        }
        Ok(())
    }

    /// The key a probe's key is stored under (its stack cut, or the overflow key), as
    /// [`Self::collect`] would store it, without counting anything: for the keys of in-use
    /// objects, which were counted when they were sampled. Keeps the key's stack.
    pub fn resolve(&mut self, probes: &mut Probes, key: AllocKey) -> AllocKey {
        self.stored_key(probes, key).unwrap_or_else(|| other_key(key.size))
    }

    /// The probe's key with its stack cut to `max_frames`, the stack kept; `None` when the key
    /// is new and the store holds `max_keys` keys already (it belongs under [`other_key`]).
    fn stored_key(&mut self, probes: &mut Probes, mut key: AllocKey) -> Option<AllocKey> {
        let mut frames = None;
        if key.stack != NO_STACK {
            match self.cut_stack(probes, key.stack) {
                Some((id, f)) => {
                    key.stack = id;
                    frames = Some(f);
                }
                // Gone from the kernel (emptied by a purge right after the probe used it):
                // the caller's return address still names the callsite.
                None => key.stack = NO_STACK,
            }
        }
        if !self.counts.contains_key(&key) && self.counts.len() >= self.max_keys {
            return None;
        }
        if let Some(frames) = frames {
            self.stacks.entry(key.stack).or_insert(frames);
        }
        Some(key)
    }

    /// The probes' stack `id`, cut to `max_frames`, and its key in this store.
    fn cut_stack(&mut self, probes: &mut Probes, id: u64) -> Option<(u64, Arc<[u64]>)> {
        if let Some((cut_id, frames)) = self.cut.get(&id) {
            return Some((*cut_id, frames.clone()));
        }
        self.read_since_purge.insert(id);
        let mut frames = probes.stack(id)?;
        let cut_id = if frames.len() > self.max_frames {
            frames.truncate(self.max_frames);
            stack_hash(&frames)
        } else {
            id
        };
        // The same stack may be in the store already, under the same key.
        let frames: Arc<[u64]> = self.stacks.get(&cut_id).cloned().unwrap_or_else(|| frames.into());
        if self.cut.len() >= self.max_keys.saturating_mul(2) {
            self.cut.clear();
        }
        self.cut.insert(id, (cut_id, frames.clone()));
        Some((cut_id, frames))
    }

    /// The counts now, rounded to whole objects.
    #[must_use]
    pub fn counts(&self) -> Vec<(AllocKey, u64)> {
        round(self.counts.iter().map(|(k, v)| (*k, *v)))
    }

    /// The stack with this key, if the store has it.
    #[must_use]
    pub fn stack(&self, key: u64) -> Option<Vec<u64>> {
        self.stacks.get(&key).map(|s| s.to_vec())
    }

    /// Whether the store holds nothing yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Distinct keys held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Distinct stacks held.
    #[must_use]
    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }
}

/// The overflow key for an allocation of `size` bytes: sizes are coarsened to powers of two,
/// so the overflow keys stay few.
fn other_key(size: u64) -> AllocKey {
    AllocKey {
        stack: NO_STACK,
        return_address: OTHER_CALLSITES,
        type_address: 0,
        size: size.checked_next_power_of_two().unwrap_or(size),
    }
}

fn round(counts: impl Iterator<Item = (AllocKey, f64)>) -> Vec<(AllocKey, u64)> {
    counts
        .filter_map(|(k, v)| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a positive estimate, far below 2^64"
            )]
            let n = v.round() as u64;
            (n > 0).then_some((k, n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_keys_are_few() {
        assert_eq!(other_key(24).size, 32);
        assert_eq!(other_key(33).size, 64);
        assert_eq!(other_key(u64::MAX).size, u64::MAX);
        assert_eq!(other_key(5).return_address, OTHER_CALLSITES);
    }

    #[test]
    fn rounding_drops_nothing_but_zeros() {
        let key = AllocKey::default();
        assert_eq!(round([(key, 2.6)].into_iter()), vec![(key, 3)]);
        assert!(round([(key, 0.2)].into_iter()).is_empty());
    }
}
