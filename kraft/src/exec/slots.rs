//! Local run slots: at most `-j` commands run here at once, while lookups,
//! downloads and restores (waiting on the network, not the CPU) may have
//! more actions in flight. A counting semaphore; taking a slot blocks until
//! one is free, and dropping the guard gives it back. The time a thread
//! waited for its slot is not the action's: [`take_waited`] hands it to the
//! scheduler, which leaves it out of the action's duration.

use std::cell::Cell;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

thread_local! {
    static WAITED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// How long this thread waited for slots since the last call.
pub(crate) fn take_waited() -> Duration {
    WAITED.with(|w| w.replace(Duration::ZERO))
}

/// How long this thread has waited for slots so far (not reset).
pub(crate) fn waited() -> Duration {
    WAITED.with(Cell::get)
}

pub(crate) struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

pub(crate) struct Slot<'a>(&'a Slots);

impl Slots {
    pub fn new(n: usize) -> Slots {
        Slots { free: Mutex::new(n.max(1)), freed: Condvar::new() }
    }

    pub fn take(&self) -> Slot<'_> {
        let began = Instant::now();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        WAITED.with(|w| w.set(w.get() + began.elapsed()));
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn never_more_than_n_at_once() {
        let slots = Slots::new(2);
        let now = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let _slot = slots.take();
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
