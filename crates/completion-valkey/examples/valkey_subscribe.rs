//! Subscribes to completions on Valkey (or Redis 7+) and prints them, resuming after a saved
//! cursor.
//!
//! ```text
//! VALKEY_URL=valkey://127.0.0.1:6379 cargo run -p completion-valkey --example valkey_subscribe -- [--demo] [--after CURSOR] [--namespace NS] [--prefix PREFIX]
//! ```
//!
//! Without `VALKEY_URL` it connects to `redis://127.0.0.1:6379`. `--demo` also creates and
//! finishes a few executions in the namespace `demo`, so there is something to see. Stop with
//! Ctrl-C; pass the last cursor printed as `--after` to resume.

use std::time::Duration;

use completion_core::{
    CompletionBackend, Cursor, EngineBackend, EngineError, ExecutionId, Namespace, NewExecution, Reason, ScannerFilter,
    StartFrom, StreamItem, Tags,
};
use completion_valkey::{ValkeyBackend, ValkeyConfig};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("VALKEY_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let mut config = ValkeyConfig::new(url);
    let mut args = std::env::args().skip(1);
    let (mut demo, mut from, mut filter) = (false, StartFrom::Now, ScannerFilter::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--demo" => demo = true,
            "--after" => from = StartFrom::After(Cursor::parse(&args.next().ok_or("--after needs a cursor")?)?),
            "--namespace" => {
                filter = filter.with_namespace(Namespace::new(args.next().ok_or("--namespace needs a value")?)?)
            }
            "--prefix" => config = config.with_key_prefix(args.next().ok_or("--prefix needs a value")?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }

    let backend = ValkeyBackend::connect(config).await?;
    println!("connected; key prefix {}, {} partitions", backend.config().key_prefix, backend.config().partitions);
    // Returns once SUBSCRIBE is confirmed: nothing committed from now on is missed.
    let mut completions = backend.subscribe_from(from, &filter).await?;

    if demo {
        let writer = backend.clone();
        tokio::spawn(async move {
            if let Err(error) = write_demo(&writer).await {
                eprintln!("demo writer: {error}");
            }
        });
    }

    loop {
        tokio::select! {
            item = completions.next() => match item {
                Some(StreamItem::Completion(c)) => {
                    println!("{} {} {} (cursor {})", c.namespace(), c.execution_id(), c.outcome(), c.cursor());
                }
                Some(StreamItem::Gap(gap)) => {
                    println!("gap: events after {:?} were trimmed; resuming at {}", gap.after, gap.resumed_at);
                }
                Some(_) => {}
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("counters: {:?}", backend.counters());
    println!("valkey stats: {:?}", backend.stats());
    Ok(())
}

/// Creates and finishes a few executions, one of each outcome, a second apart.
async fn write_demo(backend: &ValkeyBackend) -> Result<(), EngineError> {
    let ns = Namespace::new("demo")?;
    let run = std::process::id();
    for i in 0..6 {
        let id = ExecutionId::new(format!("demo-{run}-{i}"))?;
        let tags = Tags::from_pairs([("step", i.to_string())])?;
        backend.create_execution(NewExecution::new(id.clone(), ns.clone()).with_tags(tags)).await?;
        match i % 3 {
            0 => backend.complete(&id).await?,
            1 => backend.fail(&id, &Reason::new("demo failure")?).await?,
            _ => backend.cancel(&id, &Reason::new("demo cancel")?).await?,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
