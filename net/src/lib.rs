//! The one accept loop of every listening port (the server's front and admin ports, the
//! operator's HTTP port), so that they stop, fail and log alike.
//!
//! An accept error is either about resources ([`AcceptError::Resources`]: EMFILE, ENFILE,
//! ENOBUFS, ENOMEM), after which the loop pauses [`RESOURCE_PAUSE`] instead of spinning while
//! the process is out of descriptors, or about one connection that went away before it was
//! taken ([`AcceptError::Connection`]), after which it goes straight on. Neither ends the loop:
//! only the stop token does.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long the loop pauses after a resource error.
pub const RESOURCE_PAUSE: Duration = Duration::from_millis(100);

/// What an accept error means for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// The process or system is out of descriptors, buffers or memory: pause, then retry.
    Resources,
    /// Only this connection failed (reset before it was taken, ...): go on.
    Connection,
}

impl AcceptError {
    /// Classifies an accept error.
    pub fn of(e: &io::Error) -> AcceptError {
        match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
                AcceptError::Resources
            }
            _ => AcceptError::Connection,
        }
    }
}

/// Accepts with `accept` until `stop` is cancelled, handing each connection to `serve` (which
/// spawns its task). `port` names the listener in the logs (`front`, `admin`, `operator`).
/// Returns how many connections were accepted.
pub async fn accept_loop<T, A, Fut, S>(
    port: &'static str,
    stop: &CancellationToken,
    mut accept: A,
    mut serve: S,
) -> u64
where
    A: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
    S: FnMut(T),
{
    let mut accepted = 0;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = accept() => r,
        };
        match next {
            Ok(conn) => {
                accepted += 1;
                serve(conn);
            }
            Err(e) => match AcceptError::of(&e) {
                AcceptError::Resources => {
                    tracing::warn!(port, error = %e, "accept: out of resources; pausing 100ms");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(RESOURCE_PAUSE) => {}
                    }
                }
                AcceptError::Connection => tracing::debug!(port, error = %e, "accept failed"),
            },
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;

    fn err(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn errors_are_classified() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(
                AcceptError::of(&err(code)),
                AcceptError::Resources,
                "{code}"
            );
        }
        for code in [libc::ECONNABORTED, libc::EPROTO, libc::EPERM] {
            assert_eq!(
                AcceptError::of(&err(code)),
                AcceptError::Connection,
                "{code}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn errors_never_end_the_loop_and_resources_pause_it() {
        // EMFILE, a reset connection, two good ones, then the listener blocks.
        let script: Arc<Mutex<VecDeque<io::Result<u32>>>> = Arc::new(Mutex::new(
            [
                Err(err(libc::EMFILE)),
                Err(err(libc::ECONNABORTED)),
                Ok(1),
                Ok(2),
            ]
            .into(),
        ));
        let stop = CancellationToken::new();
        let served = Arc::new(Mutex::new(Vec::new()));
        let started = tokio::time::Instant::now();
        let task = {
            let (script, stop, served) = (script.clone(), stop.clone(), served.clone());
            tokio::spawn(async move {
                accept_loop(
                    "test",
                    &stop,
                    || {
                        let next = script.lock().expect("lock").pop_front();
                        async move {
                            match next {
                                Some(r) => r,
                                None => std::future::pending().await,
                            }
                        }
                    },
                    |c| served.lock().expect("lock").push(c),
                )
                .await
            })
        };
        while served.lock().expect("lock").len() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(started.elapsed() >= RESOURCE_PAUSE, "paused after EMFILE");
        stop.cancel();
        assert_eq!(task.await.expect("no panic"), 2);
        assert_eq!(*served.lock().expect("lock"), vec![1, 2]);
    }
}
