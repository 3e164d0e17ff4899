//! Read coalescing for the hot path (DataLoader-style, without a timer): a GET goes out at
//! once when no read is in flight; reads that arrive while one is in flight queue up and go out
//! together as one MGET when it returns. A lone fetch is never delayed; under concurrency, many
//! fetches share one round trip and one command's overhead on both ends.
//!
//! Queued reads carry no timer of their own: a batch runs under the time its oldest read has
//! left, so each read still ends within the response timeout of its arrival, at the cost of one
//! timer per batch instead of one per read.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

/// A queued read: the key, and where its reply goes.
pub(crate) type Pending<T> = (Vec<u8>, oneshot::Sender<Result<T, Failure>>);

/// Why a batch gave no reply; every read in it gets the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The response timeout of the batch's oldest read passed.
    Timeout,
    /// Redis was skipped (breaker open, no runtime).
    Unavailable,
    /// Redis failed or answered something else than expected.
    Failed(String),
}

#[derive(Debug)]
struct State<T> {
    /// Reads (single GETs or batches) on the wire.
    in_flight: usize,
    queue: Vec<Pending<T>>,
    /// When the oldest read in `queue` arrived.
    oldest: Option<Instant>,
}

/// Reads to send together, and when the oldest of them arrived.
#[derive(Debug)]
pub(crate) struct Batch<T> {
    pub(crate) reads: Vec<Pending<T>>,
    pub(crate) oldest: Instant,
}

/// Coalesces reads of single keys into batches.
#[derive(Debug)]
pub(crate) struct ReadBatcher<T> {
    state: Mutex<State<T>>,
    max_in_flight: usize,
}

/// What a read should do.
pub(crate) enum Turn<T> {
    /// Send the read now; call [`ReadBatcher::done`] when it returns.
    Go,
    /// Wait for a batch to carry it.
    Wait(oneshot::Receiver<Result<T, Failure>>),
}

impl<T> ReadBatcher<T> {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        ReadBatcher {
            state: Mutex::new(State {
                in_flight: 0,
                queue: Vec::new(),
                oldest: None,
            }),
            max_in_flight: max_in_flight.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides whether a read of `key` goes out now or waits for a batch.
    pub(crate) fn turn(&self, key: &[u8]) -> Turn<T> {
        let mut state = self.lock();
        if state.in_flight < self.max_in_flight {
            state.in_flight += 1;
            Turn::Go
        } else {
            let (tx, rx) = oneshot::channel();
            if state.queue.is_empty() {
                state.oldest = Some(Instant::now());
            }
            state.queue.push((key.to_vec(), tx));
            Turn::Wait(rx)
        }
    }

    /// A read or batch returned: the reads that queued up meanwhile, to send as the next batch
    /// in the same slot, or `None` after freeing the slot.
    pub(crate) fn next_or_release(&self) -> Option<Batch<T>> {
        let mut state = self.lock();
        if state.queue.is_empty() {
            state.in_flight -= 1;
            None
        } else {
            let oldest = state.oldest.take().unwrap_or_else(Instant::now);
            Some(Batch {
                reads: std::mem::take(&mut state.queue),
                oldest,
            })
        }
    }
}

/// Delivers a batch's replies, in key order, or its error to every read in it.
pub(crate) fn deliver<T>(pending: Vec<Pending<T>>, replies: Result<Vec<T>, Failure>) {
    match replies {
        Ok(values) if values.len() == pending.len() => {
            for ((_, tx), value) in pending.into_iter().zip(values) {
                let _ = tx.send(Ok(value));
            }
        }
        Ok(_) => {
            for (_, tx) in pending {
                let _ = tx.send(Err(Failure::Failed(
                    "batched read: reply length mismatch".into(),
                )));
            }
        }
        Err(e) => {
            for (_, tx) in pending {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_queue_only_while_the_slots_are_taken() {
        let batcher = ReadBatcher::<u32>::new(1);
        assert!(matches!(batcher.turn(b"a"), Turn::Go));
        let Turn::Wait(rx) = batcher.turn(b"b") else {
            panic!("a second read must wait while one is in flight");
        };
        let before = Instant::now();
        let batch = batcher.next_or_release().expect("b queued");
        assert!(
            batch.oldest <= before,
            "the batch dates from its oldest read"
        );
        assert_eq!(batch.reads.len(), 1);
        assert_eq!(batch.reads[0].0, b"b");
        deliver(batch.reads, Ok(vec![7]));
        assert_eq!(rx.await.unwrap(), Ok(7));
        assert!(batcher.next_or_release().is_none());
        assert!(matches!(batcher.turn(b"c"), Turn::Go));
    }

    #[test]
    fn a_lone_read_goes_at_once_and_frees_its_slot() {
        let batcher = ReadBatcher::<u32>::new(1);
        assert!(matches!(batcher.turn(b"a"), Turn::Go));
        assert!(batcher.next_or_release().is_none());
        assert!(matches!(batcher.turn(b"a"), Turn::Go));
    }
}
