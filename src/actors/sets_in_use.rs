//! The file sets a partner works on here now: each set stream it opened
//! and each `Release` it asked, by set, counted while they run. The sweep
//! of sets never released (`retention::abandon_unreleased`) passes over a
//! set in use, under the same lock as its count: a stream or a `Release`
//! takes its place before it reads the set's record, so either the sweep
//! sees it and keeps the set, or it finds the set cancelled and is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::RequestId;

/// How many streams and releases work on each set now.
#[derive(Debug, Default)]
pub struct SetsInUse {
    counts: Mutex<HashMap<RequestId, u32>>,
}

/// One stream's or release's place on its set, given back when dropped.
#[derive(Debug)]
pub struct InUse {
    sets: Arc<SetsInUse>,
    set: RequestId,
}

impl SetsInUse {
    fn counts(&self) -> MutexGuard<'_, HashMap<RequestId, u32>> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks `set` in use until the returned place is dropped.
    pub fn take(self: &Arc<Self>, set: &RequestId) -> InUse {
        *self.counts().entry(set.clone()).or_default() += 1;
        InUse { sets: self.clone(), set: set.clone() }
    }

    /// Runs `f` if `set` is not in use, with the count locked (nothing
    /// takes the set meanwhile); `None` if it is in use.
    pub fn unless_in_use<T>(&self, set: &RequestId, f: impl FnOnce() -> T) -> Option<T> {
        let counts = self.counts();
        (!counts.contains_key(set)).then(f)
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut counts = self.sets.counts();
        if let Some(n) = counts.get_mut(&self.set) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.set);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_in_use_until_its_last_place_is_given_back() {
        let sets = Arc::new(SetsInUse::default());
        let (one, two) = (RequestId::generate(), RequestId::generate());
        assert_eq!(sets.unless_in_use(&one, || 1), Some(1));
        let first = sets.take(&one);
        let second = sets.take(&one);
        assert_eq!(sets.unless_in_use(&one, || 1), None);
        assert_eq!(sets.unless_in_use(&two, || 2), Some(2), "another set is apart");
        drop(first);
        assert_eq!(sets.unless_in_use(&one, || 1), None, "an older stream ending leaves the newer one's place");
        drop(second);
        assert_eq!(sets.unless_in_use(&one, || 1), Some(1));
    }
}
