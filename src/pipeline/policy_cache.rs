//! Policy-filter scores of things shared by several items (a row's image, asked about by each
//! of the row's tasks), kept for a while so each is scored once.

use std::collections::{HashMap, VecDeque};

/// Scores per category, or why scoring failed.
pub(crate) type Scores = std::result::Result<Vec<f64>, String>;

/// Entries kept by default; `GEMMA_BATCH_POLICY_CACHE_ENTRIES` changes it (memory: a few
/// floats per entry).
const DEFAULT_CAPACITY: usize = 4096;

/// A bounded map from key to scores; the oldest entries go first when it is full.
pub(crate) struct PolicyCache {
    capacity: usize,
    scores: HashMap<String, Scores>,
    order: VecDeque<String>,
}

impl PolicyCache {
    pub fn new(capacity: usize) -> Self {
        PolicyCache { capacity: capacity.max(1), scores: HashMap::new(), order: VecDeque::new() }
    }

    pub fn from_env() -> Self {
        let capacity = std::env::var("GEMMA_BATCH_POLICY_CACHE_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CAPACITY);
        PolicyCache::new(capacity)
    }

    /// A copy of the cached scores (a copy, so later inserts can evict freely).
    pub fn get(&self, key: &str) -> Option<Scores> {
        self.scores.get(key).cloned()
    }

    pub fn insert(&mut self, key: String, scores: Scores) {
        if self.scores.insert(key.clone(), scores).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.scores.remove(&old);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.scores.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_capacity_and_keeps_the_newest() {
        let mut c = PolicyCache::new(3);
        for i in 0..10 {
            c.insert(format!("k{i}"), Ok(vec![i as f64]));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("k6").is_none());
        assert_eq!(c.get("k9"), Some(Ok(vec![9.0])));
        // Re-inserting a present key does not grow the order queue.
        c.insert("k9".into(), Ok(vec![1.0]));
        assert_eq!(c.len(), 3);
        assert_eq!(c.order.len(), 3);
    }
}
