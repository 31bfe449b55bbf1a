//! A concurrency limit whose size can change while permits are out: more
//! slots at once, fewer as holders give theirs back. Per-webhook lanes
//! follow a reloaded cap with it, and the upstream client follows its share
//! of the request budget when instances come and go.
//!
//! May call: nothing of taskhook's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A semaphore of `size` permits, resizable.
#[derive(Debug, Clone)]
pub struct Limit {
    slots: Arc<Semaphore>,
    size: Arc<Mutex<usize>>,
    /// Slots taken out while held: the next ones given back are dropped
    /// by whoever acquires them, so a shrunk limit is never exceeded once
    /// the holders of the removed slots are done.
    owed: Arc<AtomicUsize>,
}

impl Limit {
    pub fn new(size: usize) -> Self {
        Limit {
            slots: Arc::new(Semaphore::new(size)),
            size: Arc::new(Mutex::new(size)),
            owed: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The size in force.
    pub fn size(&self) -> usize {
        *self.size.lock().expect("limit lock")
    }

    /// Sets the size: added slots are free at once; removed ones are taken
    /// out of the free ones at once, the rest as their holders give them
    /// back.
    pub fn resize(&self, size: usize) {
        let mut current = self.size.lock().expect("limit lock");
        if size > *current {
            let add = size - *current;
            // Growing first cancels what a shrink still owed (in one step:
            // an acquirer may be paying it down meanwhile).
            let owed = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                    Some(o - o.min(add))
                })
                .expect("always updates");
            self.slots.add_permits(add - owed.min(add));
        } else if size < *current {
            let mut excess = *current - size;
            while excess > 0 {
                match self.slots.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        excess -= 1;
                    }
                    Err(_) => break,
                }
            }
            self.owed.fetch_add(excess, Ordering::AcqRel);
        }
        *current = size;
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        loop {
            let p = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            // A slot a shrink took out while it was held: drop it.
            let owed = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1));
            if owed.is_ok() {
                p.forget();
                continue;
            }
            return p;
        }
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.slots
            .available_permits()
            .saturating_sub(self.owed.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn growing_frees_slots_at_once_and_shrinking_waits_for_holders() {
        let l = Limit::new(1);
        let held = l.acquire().await;
        l.resize(3);
        assert_eq!(l.available(), 2);
        let a = l.acquire().await;
        let b = l.acquire().await;
        l.resize(1);
        assert_eq!(l.available(), 0);
        drop((held, a, b));
        assert_eq!((l.size(), l.available()), (1, 1));
        let one = l.acquire().await;
        assert_eq!(l.available(), 0, "the given-back slots paid what was owed");
        drop(one);
        assert_eq!(l.available(), 1);
    }

    /// A shrink takes free slots out at once (nobody may take them after
    /// it), and one waiting for a slot never goes over the new size: the
    /// slots held when it shrank are dropped as they come back.
    #[tokio::test]
    async fn a_shrunk_limit_is_never_exceeded() {
        let l = Limit::new(3);
        let a = l.acquire().await;
        l.resize(1);
        assert_eq!(l.available(), 0, "the two free slots are gone at once");
        l.resize(3);
        assert_eq!(l.available(), 2, "growing again gives them back");
        let b = l.acquire().await;
        let c = l.acquire().await;
        l.resize(1);
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        drop(a);
        drop(b);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "two held slots were owed");
        drop(c);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(l.available(), 0);
        drop(got);
        assert_eq!(l.available(), 1);
    }
}
