//! Concurrent writers: the one loop every throughput-style figure runs (ours, the bare
//! baselines, and the setup of figures 3 to 5).

/// Runs `$body` (a `Result<(), String>` expression, which may `.await`) once for every `$i`
/// in `0..$n`, on `$writers` concurrent tasks, each taking the next `$i` as soon as it
/// finished one (so a slow call holds back only its own task); `$writer` (0 to
/// `$writers - 1`) says which task runs the call, for writers that each hold a connection of
/// their own. Evaluates to a future of `Result<(), String>`: every call succeeded, or the
/// first error.
///
/// Each task owns a clone of every handle listed in `[...]`, made once per task. A macro and
/// not a function: a function would have to clone the handles per call (contended reference
/// counts) or box each call's future (an allocation per write), work on the measured path
/// that the hand-written loop does not do; expanded in place, the loop is the hand-written one
/// (the in-process figure of old and new builds, run in turn, is the same within its noise).
macro_rules! spread {
    ($writers:expr, $n:expr, [$($state:ident),* $(,)?], |$writer:pat_param, $i:ident| $body:expr) => {{
        let n: usize = $n;
        let next = ::std::sync::Arc::new(::std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..$writers)
            .map(|$writer: usize| {
                let next = next.clone();
                $(let $state = $state.clone();)*
                tokio::spawn(async move {
                    loop {
                        let $i = next.fetch_add(1, ::std::sync::atomic::Ordering::Relaxed);
                        if $i >= n {
                            return Ok::<(), String>(());
                        }
                        $body?;
                    }
                })
            })
            .collect();
        async move {
            for task in tasks {
                task.await.map_err(|e| format!("writer task: {e}"))??;
            }
            Ok::<(), String>(())
        }
    }};
}

pub(crate) use spread;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_index_runs_once_and_the_first_error_comes_back() {
        let seen = Arc::new(Mutex::new(vec![0u32; 100]));
        let writers_seen = Arc::new(Mutex::new(HashSet::new()));
        spread!(4, 100, [seen, writers_seen], |writer, i| {
            seen.lock().unwrap()[i] += 1;
            writers_seen.lock().unwrap().insert(writer);
            tokio::task::yield_now().await;
            Ok::<(), String>(())
        })
        .await
        .unwrap();
        assert!(seen.lock().unwrap().iter().all(|&count| count == 1), "each index exactly once");
        assert!(writers_seen.lock().unwrap().iter().all(|&w| w < 4));
        let failed = spread!(3, 50, [], |_, i| if i == 17 { Err(format!("call {i}")) } else { Ok(()) }).await;
        assert_eq!(failed, Err("call 17".to_string()));
        let never = spread!(2, 0, [], |_, _i| Err::<(), String>("never called".to_string())).await;
        assert_eq!(never, Ok(()));
    }
}
