//! A concurrency limit whose size can change while permits are out: more
//! slots at once, fewer as holders give theirs back. Per-webhook lanes
//! follow a reloaded cap with it, and the upstream client follows its share
//! of the request budget when instances come and go.
//!
//! May call: nothing of taskhook's.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A semaphore of `size` permits, resizable.
#[derive(Debug, Clone)]
pub struct Limit {
    slots: Arc<Semaphore>,
    size: Arc<Mutex<usize>>,
}

impl Limit {
    pub fn new(size: usize) -> Self {
        Limit {
            slots: Arc::new(Semaphore::new(size)),
            size: Arc::new(Mutex::new(size)),
        }
    }

    /// The size in force.
    pub fn size(&self) -> usize {
        *self.size.lock().expect("limit lock")
    }

    /// Sets the size: added slots are free at once; removed ones are taken
    /// out as their holders give them back.
    pub fn resize(&self, size: usize) {
        let mut current = self.size.lock().expect("limit lock");
        if size > *current {
            self.slots.add_permits(size - *current);
        } else if size < *current {
            let slots = self.slots.clone();
            let excess = (*current - size) as u32;
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(excess).await {
                    p.forget();
                }
            });
        }
        *current = size;
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
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
        drop((held, a, b));
        // The taker of the excess runs on the runtime.
        for _ in 0..100 {
            if l.available() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!((l.size(), l.available()), (1, 1));
    }
}
