//! A fetch's time on Redis: every request one fetch makes (read, lease, fill, release) counts
//! against one response timeout, so a fetch spends at most that long waiting on Redis in all,
//! not that long per request. Waiting for another caller's fill (sleeping between lease
//! requests) is not time on Redis and does not count.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

use crate::error::Error;

/// When a fetch's first request went out, to start its [`Budget`] from once that returns.
/// Reads the clock only when there is a timeout: a hit on the embedded backend costs no clock
/// read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    timeout: Option<Duration>,
    at: Option<Instant>,
}

impl Started {
    pub(crate) fn now(timeout: Option<Duration>) -> Started {
        Started {
            timeout,
            at: timeout.map(|_| Instant::now()),
        }
    }

    /// When the first request went out (`None` without a timeout: the embedded backend,
    /// which reads no clock).
    pub(crate) fn at(&self) -> Option<Instant> {
        self.at
    }

    /// The budget left once the first request has returned.
    pub(crate) fn budget(self) -> Budget {
        Budget {
            left: self
                .timeout
                .zip(self.at)
                .map(|(t, at)| t.saturating_sub(at.elapsed())),
            timeout: self.timeout.unwrap_or(Duration::MAX),
        }
    }
}

/// What is left of one fetch's response timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// `None`: no limit (the embedded backend answers at once).
    left: Option<Duration>,
    timeout: Duration,
}

impl Budget {
    /// The error of a request that found nothing left.
    pub(crate) fn timed_out(&self) -> Error {
        Error::Timeout(self.timeout)
    }

    /// Runs a wait on Redis through another fetch (the leader of a load this one joined),
    /// which gets what is left (`None`: no limit), and counts the time it took.
    pub(crate) async fn wait<T, W: Future<Output = T>>(
        &mut self,
        wait: impl FnOnce(Option<Duration>) -> W,
    ) -> T {
        let Some(left) = self.left else {
            return wait(None).await;
        };
        let start = Instant::now();
        let out = wait(Some(left)).await;
        self.left = Some(left.saturating_sub(start.elapsed()));
        out
    }

    /// Nothing left: the next request would fail without being sent.
    pub(crate) fn is_spent(&self) -> bool {
        self.left.is_some_and(|l| l.is_zero())
    }

    /// Runs one request within what is left, and counts the time it took. A request cut short
    /// is an [`Error::Timeout`] of the whole response timeout, like any other; it may still
    /// run on the server.
    pub(crate) async fn spend<T>(
        &mut self,
        request: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(left) = self.left else {
            return request.await;
        };
        if left.is_zero() {
            return Err(self.timed_out());
        }
        let start = Instant::now();
        let result = match tokio::time::timeout(left, request).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        };
        self.left = Some(left.saturating_sub(start.elapsed()));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_share_one_timeout() {
        let started = Started::now(Some(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(40)).await;
        let mut budget = started.budget();
        let slow = |ms| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Error>(ms)
        };
        assert_eq!(budget.spend(slow(30)).await.unwrap(), 30);
        assert!(!budget.is_spent());
        // 30 ms are left: a 50 ms request is cut short at 30 ms.
        let before = tokio::time::Instant::now();
        let cut = budget.spend(slow(50)).await;
        assert!(matches!(cut, Err(Error::Timeout(t)) if t == Duration::from_millis(100)));
        assert_eq!(before.elapsed(), Duration::from_millis(30));
        assert!(budget.is_spent());
        assert!(matches!(
            budget.spend(slow(0)).await,
            Err(Error::Timeout(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_through_another_fetch_gets_what_is_left_and_counts() {
        let mut budget = Started::now(Some(Duration::from_millis(100))).budget();
        let got = budget
            .wait(|left| async move {
                tokio::time::sleep(Duration::from_millis(60)).await;
                left
            })
            .await;
        assert_eq!(got, Some(Duration::from_millis(100)));
        let left = budget.wait(|left| async move { left }).await;
        assert_eq!(left, Some(Duration::from_millis(40)));
    }

    #[tokio::test]
    async fn no_timeout_no_limit() {
        let started = Started::now(None);
        assert!(started.at.is_none(), "no timeout, no clock read");
        let mut budget = started.budget();
        assert!(!budget.is_spent());
        assert_eq!(budget.spend(async { Ok::<_, Error>(7) }).await.unwrap(), 7);
    }
}
