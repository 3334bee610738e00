//! Concurrent writers: the one loop every throughput-style figure runs (ours, the bare
//! baselines, and the setup of figures 3 to 5).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `op(writer, i)` once for every `i` in `0..n`, on `writers` concurrent tasks, each
/// taking the next `i` as soon as it finished one (so a slow call holds back only its own
/// task); `writer` (0 to `writers - 1`) says which task runs the call, for writers that each
/// hold a connection of their own. Returns once every call succeeded, or with the first error.
pub async fn spread<F, Fut>(writers: usize, n: usize, op: F) -> Result<(), String>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), String>(());
                    }
                    op(writer, i).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| format!("writer task: {e}"))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_index_runs_once_and_the_first_error_comes_back() {
        let seen = Arc::new(Mutex::new(vec![0u32; 100]));
        let writers_seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let (s, w) = (seen.clone(), writers_seen.clone());
        spread(4, 100, move |writer, i| {
            let (s, w) = (s.clone(), w.clone());
            async move {
                s.lock().unwrap()[i] += 1;
                w.lock().unwrap().insert(writer);
                tokio::task::yield_now().await;
                Ok(())
            }
        })
        .await
        .unwrap();
        assert!(seen.lock().unwrap().iter().all(|&count| count == 1), "each index exactly once");
        assert!(writers_seen.lock().unwrap().iter().all(|&w| w < 4));
        let failed = spread(3, 50, |_, i| async move { if i == 17 { Err(format!("call {i}")) } else { Ok(()) } }).await;
        assert_eq!(failed, Err("call 17".to_string()));
        assert_eq!(spread(2, 0, |_, _| async { Err("never called".to_string()) }).await, Ok(()));
    }
}
