//! The queues between the trigger's stages (sources → admission → jobs), bounded by count
//! and by bytes. A count alone does not bound memory: 10,000 frames of 1 MiB are 10 GiB,
//! and a flood of big frames once grew the daemon by the size of its input. A sender
//! waits while the bytes queued and its own would pass the budget, so a slow stage pushes
//! back on the one before it (and the sources on libzmq's high-water mark or the broker's
//! prefetch) instead of growing the heap. One item bigger than the whole budget still
//! goes through when the queue is empty, so nothing is refused for its size here (the
//! sockets' size limits do that).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use crossbeam_channel::{RecvTimeoutError, SendTimeoutError, TryRecvError, TrySendError};

/// What an item costs in memory, roughly: its payload bytes.
pub trait Weigh {
    fn weight(&self) -> usize;
}

/// An event's frames as received, plus a little for what it was parsed into. An AMQP
/// event has no frames: its broker's prefetch is what bounds those.
impl Weigh for crate::event::Event {
    fn weight(&self) -> usize {
        const PARSED: usize = 512;
        PARSED + self.frames.iter().map(Vec::len).sum::<usize>()
    }
}

impl<T: Weigh> Weigh for Vec<Arc<T>> {
    fn weight(&self) -> usize {
        self.iter().map(|t| t.weight()).sum()
    }
}

/// The bytes queued, shared by every sender and receiver of one queue.
#[derive(Debug)]
struct Budget {
    queued: Mutex<usize>,
    freed: Condvar,
    limit: usize,
}

impl Budget {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // Only this module holds the lock, and never across a panic-prone call.
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take `bytes` if they fit (or the queue holds nothing), waiting until `deadline`.
    fn take(&self, bytes: usize, deadline: Option<Instant>) -> bool {
        let mut queued = self.lock();
        while *queued > 0 && queued.saturating_add(bytes) > self.limit {
            match deadline {
                None => return false,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    queued = self
                        .freed
                        .wait_timeout(queued, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        *queued += bytes;
        true
    }

    fn give_back(&self, bytes: usize) {
        let mut queued = self.lock();
        *queued = queued.saturating_sub(bytes);
        drop(queued);
        self.freed.notify_all();
    }
}

pub struct Sender<T> {
    tx: crossbeam_channel::Sender<T>,
    budget: Arc<Budget>,
}

pub struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    budget: Arc<Budget>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver {
            rx: self.rx.clone(),
            budget: self.budget.clone(),
        }
    }
}

/// A queue of at most `count` items and (but for one oversized item) `bytes` bytes.
pub fn bounded<T: Weigh>(count: usize, bytes: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(count);
    let budget = Arc::new(Budget {
        queued: Mutex::new(0),
        freed: Condvar::new(),
        limit: bytes,
    });
    (
        Sender {
            tx,
            budget: budget.clone(),
        },
        Receiver { rx, budget },
    )
}

impl<T: Weigh> Sender<T> {
    /// Wait up to `timeout` for room, by count and by bytes.
    pub fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        let deadline = Instant::now() + timeout;
        let bytes = item.weight();
        if !self.budget.take(bytes, Some(deadline)) {
            return Err(SendTimeoutError::Timeout(item));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.tx.send_timeout(item, left).inspect_err(|_| {
            self.budget.give_back(bytes);
        })
    }

    /// Send if there is room now.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let bytes = item.weight();
        if !self.budget.take(bytes, None) {
            return Err(TrySendError::Full(item));
        }
        self.tx.try_send(item).inspect_err(|_| {
            self.budget.give_back(bytes);
        })
    }

    /// Wait for room as long as it takes; fails only when every receiver is gone.
    pub fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            match self.send_timeout(item, Duration::from_secs(1)) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(back)) => item = back,
                Err(SendTimeoutError::Disconnected(back)) => return Err(back),
            }
        }
    }
}

impl<T: Weigh> Receiver<T> {
    /// Account for an item taken through [`Receiver::selectable`]: give its bytes back.
    pub fn received(&self, item: T) -> T {
        self.budget.give_back(item.weight());
        item
    }

    /// The channel underneath, for `crossbeam_channel::select!`; pass what it yields
    /// through [`Receiver::received`], or the budget is never given back.
    pub fn selectable(&self) -> &crossbeam_channel::Receiver<T> {
        &self.rx
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map(|i| self.received(i))
    }

    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv().map(|i| self.received(i))
    }

    /// The bytes queued now (for tests and metrics).
    pub fn queued_bytes(&self) -> usize {
        *self.budget.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Blob(usize);
    impl Weigh for Blob {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn a_sender_waits_for_bytes_not_only_for_count() {
        let (tx, rx) = bounded::<Blob>(1000, 100);
        tx.try_send(Blob(60)).expect("fits");
        assert!(matches!(tx.try_send(Blob(60)), Err(TrySendError::Full(_))));
        let short = Duration::from_millis(20);
        assert!(matches!(
            tx.send_timeout(Blob(60), short),
            Err(SendTimeoutError::Timeout(_))
        ));
        tx.try_send(Blob(40)).expect("the rest of the budget");
        assert_eq!(rx.queued_bytes(), 100);
        // A receive frees its bytes and wakes a waiting sender.
        let waiting = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send_timeout(Blob(60), Duration::from_secs(10)).is_ok())
        };
        assert_eq!(rx.recv_timeout(short).map(|b| b.0).ok(), Some(60));
        assert!(waiting.join().expect("no panic"));
        assert_eq!(rx.queued_bytes(), 100);
    }

    #[test]
    fn one_item_bigger_than_the_budget_passes_an_empty_queue() {
        let (tx, rx) = bounded::<Blob>(10, 100);
        tx.try_send(Blob(1000)).expect("alone it passes");
        assert!(matches!(tx.try_send(Blob(1)), Err(TrySendError::Full(_))));
        assert_eq!(rx.try_recv().map(|b| b.0).ok(), Some(1000));
        assert_eq!(rx.queued_bytes(), 0);
    }

    #[test]
    fn the_count_still_bounds_and_a_failed_send_gives_its_bytes_back() {
        let (tx, rx) = bounded::<Blob>(1, 100);
        tx.try_send(Blob(1)).expect("fits");
        assert!(matches!(tx.try_send(Blob(1)), Err(TrySendError::Full(_))));
        assert_eq!(rx.queued_bytes(), 1);
        drop(rx);
        assert!(matches!(
            tx.try_send(Blob(1)),
            Err(TrySendError::Disconnected(_))
        ));
    }
}
