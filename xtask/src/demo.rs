//! `cargo xtask demo`: a small engine on the in-process backend, printing each completion
//! the moment it arrives.
//!
//! What it shows: a flow (`extract → transform, validate → load`) in namespace `billing`
//! whose steps the engine promotes as their parents finish, standalone executions in
//! `billing` and `search`, workers that complete, fail or cancel them at random (seeded, so
//! `--seed` repeats the outcomes), a filtered subscriber that only ever sees `search`, a
//! second terminal write refused, and a restart of the engine that resumes from a persisted
//! cursor and receives exactly what it had not handled yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use completion_core::{
    CompletionBackend, CompletionPayload, Cursor, EngineBackend, EngineError, ExecutionId, FlowId, Namespace,
    NewExecution, Outcome, Reason, ScannerFilter, StartFrom, StreamItem, Tags,
};
use completion_memory::MemoryBackend;
use futures_util::StreamExt;

/// How long the demo waits for any one event before giving up.
const DEADLINE: Duration = Duration::from_secs(10);

/// The flow's steps and the steps each one waits for.
const FLOW: [(&str, &[&str]); 4] =
    [("extract", &[]), ("transform", &["extract"]), ("validate", &["extract"]), ("load", &["transform", "validate"])];

type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the demo with `tasks` standalone executions; outcomes follow `seed`.
pub fn run(tasks: usize, seed: Option<u64>) -> Result<(), String> {
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_secs() % 10_000)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    runtime.block_on(demo(tasks, seed)).map_err(|e| format!("demo failed: {e}"))
}

/// A number from `seed` and `what`: the same pair always gives the same number.
fn roll(seed: u64, what: &str) -> u64 {
    // FNV-1a of the name, then one round of splitmix64.
    let mut x =
        what.bytes().fold(0xcbf2_9ce4_8422_2325_u64 ^ seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Starts a worker that "runs" `id` for a while and then reports an outcome chosen by the
/// seed (flow steps succeed more often than standalone executions).
fn spawn_worker(engine: Arc<MemoryBackend>, seed: u64, id: ExecutionId, in_flow: bool) {
    tokio::spawn(async move {
        let r = roll(seed, id.as_str());
        tokio::time::sleep(Duration::from_millis(30 + r % 200)).await;
        let dice = (r >> 16) % 100;
        let result = if dice < if in_flow { 85 } else { 60 } {
            engine.complete(&id).await
        } else if dice < 90 {
            engine.fail(&id, &Reason::new("worker crashed: exit code 137").unwrap_or_default()).await
        } else {
            engine.cancel(&id, &Reason::new("cancelled by an operator").unwrap_or_default()).await
        };
        if let Err(e) = result {
            eprintln!("worker for {id}: {e}");
        }
    });
}

async fn next_completion(
    stream: &mut (impl futures_util::Stream<Item = CompletionPayload> + Unpin),
) -> Result<CompletionPayload, DemoError> {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(Some(done)) => Ok(done),
        Ok(None) => Err("the completion stream ended".into()),
        Err(_) => Err(format!("no completion within {DEADLINE:?}").into()),
    }
}

fn print_row(when: &str, done: &CompletionPayload) {
    // The id types print without padding: format their text.
    let flow = done.flow_id().map_or("-", |f| f.as_str());
    println!(
        "  {when:>8}  {:<8} {:<12} {:<24} {:<10} {}",
        done.namespace().as_str(),
        flow,
        done.execution_id().as_str(),
        done.outcome().as_str(),
        done.cursor()
    );
}

async fn demo(tasks: usize, seed: u64) -> Result<(), DemoError> {
    let started = Instant::now();
    let backend = Arc::new(MemoryBackend::new());
    let billing = Namespace::new("billing")?;
    let search = Namespace::new("search")?;
    let flow = FlowId::new(format!("nightly-{seed}"))?;
    let step_id = |step: &str| ExecutionId::new(format!("{flow}/{step}"));
    let total = FLOW.len() + tasks;
    println!("completions demo: in-process backend, {total} executions, seed {seed} (repeat with --seed {seed})");
    println!("  flow {flow} in `billing`: extract → transform, validate → load; {tasks} standalone executions\n");

    // Subscribe before anything is written: each subscribe call returns only once live.
    let mut engine_stream = backend.subscribe_completions().await?;
    let search_only = ScannerFilter::new().with_namespace(search.clone());
    let mut search_stream = backend.subscribe_completions_filtered(&search_only).await?;
    let expected_search = (0..tasks).filter(|i| i % 2 == 1).count();
    let search_watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..expected_search {
            seen.push(next_completion(&mut search_stream).await?);
        }
        Ok::<_, DemoError>(seen)
    });

    // The flow's root and the standalone executions start at once.
    backend.create_execution(NewExecution::new(step_id("extract")?, billing.clone()).with_flow(flow.clone())).await?;
    spawn_worker(backend.clone(), seed, step_id("extract")?, true);
    for i in 0..tasks {
        let (ns, team) = if i % 2 == 0 { (&billing, "payments") } else { (&search, "ranking") };
        let id = ExecutionId::new(format!("task-{i:02}"))?;
        let tags = Tags::from_pairs([("team", team), ("priority", if i % 3 == 0 { "high" } else { "low" })])?;
        backend.create_execution(NewExecution::new(id.clone(), ns.clone()).with_tags(tags)).await?;
        spawn_worker(backend.clone(), seed, id, false);
    }

    println!("  {:>8}  {:<8} {:<12} {:<24} {:<10} cursor", "at", "ns", "flow", "execution", "outcome");
    let mut outcomes: HashMap<&str, Outcome> = HashMap::new();
    let mut live: Vec<CompletionPayload> = Vec::new();
    let checkpoint_after = total / 2;
    let mut checkpoint: Option<Cursor> = None;
    while live.len() < total {
        let done = next_completion(&mut engine_stream).await?;
        print_row(&format!("{} ms", started.elapsed().as_millis()), &done);
        live.push(done.clone());
        if live.len() == checkpoint_after {
            println!("            ── engine persists its checkpoint: cursor {} ──", done.cursor());
            checkpoint = Some(done.cursor().clone());
        }
        // Promote the flow's steps whose parents are all terminal now.
        let Some(step) = FLOW.iter().map(|(s, _)| *s).find(|s| step_id(s).is_ok_and(|id| &id == done.execution_id()))
        else {
            continue;
        };
        outcomes.insert(step, done.outcome());
        for (child, parents) in FLOW.iter().filter(|(_, parents)| parents.contains(&step)) {
            let parent_outcomes: Option<Vec<Outcome>> = parents.iter().map(|p| outcomes.get(p).copied()).collect();
            let Some(parent_outcomes) = parent_outcomes else { continue };
            let id = step_id(child)?;
            backend.create_execution(NewExecution::new(id.clone(), billing.clone()).with_flow(flow.clone())).await?;
            if parent_outcomes.iter().all(|o| *o == Outcome::Succeeded) {
                spawn_worker(backend.clone(), seed, id, true);
            } else {
                backend.cancel(&id, &Reason::new("an upstream step did not succeed")?).await?;
            }
        }
    }

    println!("\nexactly once:");
    let first = live[0].execution_id().clone();
    match backend.complete(&first).await {
        Err(e @ EngineError::AlreadyTerminal { .. }) => println!("  a second terminal write is refused: {e}"),
        other => return Err(format!("a second terminal write of {first} was not refused: {other:?}").into()),
    }

    println!("\nfiltered subscriber (namespace = search):");
    let seen = search_watcher.await??;
    let foreign = seen.iter().filter(|c| c.namespace() != &search).count();
    println!("  {} completions, {foreign} from another namespace", seen.len());

    let checkpoint = checkpoint.ok_or("no checkpoint was taken (no executions?)")?;
    println!("\nthe engine restarts and resumes after its checkpoint {checkpoint}:");
    let mut resumed = backend.subscribe_from(StartFrom::After(checkpoint.clone()), &ScannerFilter::new()).await?;
    let tail = &live[checkpoint_after..];
    for expected in tail {
        let item = match tokio::time::timeout(DEADLINE, resumed.next()).await {
            Ok(Some(item)) => item,
            _ => return Err("the resumed stream stopped short".into()),
        };
        match item {
            StreamItem::Completion(done) if done.execution_id() == expected.execution_id() => {
                print_row("replayed", &done)
            }
            other => {
                return Err(format!("expected {}, the resumed stream gave {other:?}", expected.execution_id()).into());
            }
        }
    }
    println!("  {} completions replayed: exactly those after the checkpoint, in the same order", tail.len());
    let foreign = Cursor::parse("valkey:1718000000000-0")?;
    match backend.subscribe_from(StartFrom::After(foreign), &ScannerFilter::new()).await {
        Err(e) => println!("  a cursor from another backend is refused: {e}"),
        Ok(_) => return Err("a foreign cursor was accepted".into()),
    }

    // Dropping a stream releases what it held: the counters below show no stream open.
    drop((engine_stream, resumed));
    println!("\nsummary:");
    let mut counts: BTreeMap<(String, &str), usize> = BTreeMap::new();
    for done in &live {
        *counts.entry((done.namespace().to_string(), done.outcome().as_str())).or_default() += 1;
    }
    for ((ns, outcome), n) in counts {
        println!("  {ns:<8} {outcome:<10} {n}");
    }
    let c = backend.counters();
    println!(
        "  counters: {} delivered, {} catch-up reads, {} gaps, {} buffer overflows, {} streams open",
        c.delivered, c.catch_up_reads, c.gaps, c.buffer_overflows, c.active_streams
    );
    println!("  {total} completions in {} ms", started.elapsed().as_millis());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolls_repeat_for_a_seed() {
        assert_eq!(roll(1, "task-00"), roll(1, "task-00"));
        assert_ne!(roll(1, "task-00"), roll(2, "task-00"));
        assert_ne!(roll(1, "task-00"), roll(1, "task-01"));
    }

    #[test]
    fn the_demo_runs() {
        run(5, Some(3)).unwrap();
        run(0, Some(1)).unwrap();
    }
}
