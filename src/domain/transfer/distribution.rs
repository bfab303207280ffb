//! How a rule shares items among its targets: plain arithmetic over the items' positions
//! in the oldest-first order.

/// How items are shared among targets, by position in the oldest-first order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Distribution<T> {
    /// Every item to one user.
    Single(T),
    /// Each user takes up to its weight in turn; the cycle repeats until no item is left.
    /// Round robin is all weights 1. Weights are not all zero.
    Ratio(Vec<(T, u64)>),
    /// Each user takes up to its count, in order; what is left stays with the offboarded user.
    Hardcoded(Vec<(T, u64)>),
}

impl<T: Copy + Eq> Distribution<T> {
    pub fn mode(&self) -> &'static str {
        match self {
            Distribution::Single(_) => "single",
            Distribution::Ratio(_) => "ratio",
            Distribution::Hardcoded(_) => "hardcoded",
        }
    }

    pub fn targets(&self) -> Vec<T> {
        match self {
            Distribution::Single(t) => vec![*t],
            Distribution::Ratio(v) | Distribution::Hardcoded(v) => {
                v.iter().map(|(t, _)| *t).collect()
            }
        }
    }

    /// The new owner of the item at `position` (0-based, oldest first), or `None` when it
    /// stays with the offboarded user.
    pub fn recipient_at(&self, position: u64) -> Option<T> {
        match self {
            Distribution::Single(t) => Some(*t),
            Distribution::Ratio(weights) => {
                let cycle: u64 = weights.iter().map(|(_, w)| w).sum();
                let mut offset = position % cycle;
                for (target, weight) in weights {
                    if offset < *weight {
                        return Some(*target);
                    }
                    offset -= weight;
                }
                unreachable!("offset is below the cycle length")
            }
            Distribution::Hardcoded(counts) => {
                let mut offset = position;
                for (target, count) in counts {
                    if offset < *count {
                        return Some(*target);
                    }
                    offset -= count;
                }
                None
            }
        }
    }

    /// How many items a plan over `limit` items moves at most: everything, except that
    /// hardcoded counts stop at their sum.
    pub fn moves_at_most(&self, items: u64) -> u64 {
        match self {
            Distribution::Hardcoded(counts) => items.min(counts.iter().map(|(_, c)| c).sum()),
            _ => items,
        }
    }

    /// How `items` items are split: per target (in plan order) and what stays.
    pub fn split(&self, items: u64) -> Split<T> {
        match self {
            Distribution::Single(t) => Split { targets: vec![(*t, items)], stays: 0 },
            Distribution::Ratio(weights) => {
                let cycle: u64 = weights.iter().map(|(_, w)| w).sum();
                let (full, mut rest) = (items / cycle, items % cycle);
                let targets = weights
                    .iter()
                    .map(|(t, w)| {
                        let extra = rest.min(*w);
                        rest -= extra;
                        (*t, full * w + extra)
                    })
                    .collect();
                Split { targets, stays: 0 }
            }
            Distribution::Hardcoded(counts) => {
                let mut rest = items;
                let targets = counts
                    .iter()
                    .map(|(t, c)| {
                        let take = rest.min(*c);
                        rest -= take;
                        (*t, take)
                    })
                    .collect();
                Split { targets, stays: rest }
            }
        }
    }

    pub(super) fn map<U>(self, f: &impl Fn(T) -> U) -> Distribution<U> {
        match self {
            Distribution::Single(t) => Distribution::Single(f(t)),
            Distribution::Ratio(v) => {
                Distribution::Ratio(v.into_iter().map(|(t, w)| (f(t), w)).collect())
            }
            Distribution::Hardcoded(v) => {
                Distribution::Hardcoded(v.into_iter().map(|(t, c)| (f(t), c)).collect())
            }
        }
    }
}

/// The outcome of a distribution over a number of items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split<T> {
    pub targets: Vec<(T, u64)>,
    pub stays: u64,
}
