//! Subscribes to the completions of the backend a URL names and prints them, resuming after
//! a saved cursor.
//!
//! ```text
//! cargo run -p subscribe -- [URL] [--demo] [--after CURSOR] [--namespace NS] [--prefix PREFIX] [--schema SCHEMA]
//! ```
//!
//! The URL comes from the command line, else `$COMPLETIONS_URL`, else `memory:` (the
//! in-process backend, empty: use `--demo` there). Any URL `completions::open` reads:
//! `redis://127.0.0.1:6379`, `valkey-cluster://...`, `postgres://app@localhost/app`, ...
//! `--demo` also creates and finishes a few executions in the namespace `demo`, so there is
//! something to see; `--prefix` (Valkey) and `--schema` (PostgreSQL) pick where the backend
//! keeps its data. Stop with Ctrl-C; pass the last cursor printed as `--after` to resume.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use completions::{
    Backend, Cursor, EngineBackend, EngineError, ExecutionId, Namespace, NewExecution, OpenOptions, Reason,
    ScannerFilter, StartFrom, StreamItem, Tags, redact_url,
};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = std::env::var("COMPLETIONS_URL").unwrap_or_else(|_| "memory:".to_string());
    let mut options = OpenOptions::default();
    let (mut demo, mut from, mut filter) = (false, StartFrom::Now, ScannerFilter::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--demo" => demo = true,
            "--after" => from = StartFrom::After(Cursor::parse(&args.next().ok_or("--after needs a cursor")?)?),
            "--namespace" => {
                filter = filter.with_namespace(Namespace::new(args.next().ok_or("--namespace needs a value")?)?)
            }
            "--prefix" => options = options.with_key_prefix(args.next().ok_or("--prefix needs a value")?),
            "--schema" => options = options.with_schema(args.next().ok_or("--schema needs a value")?),
            other if other.starts_with("--") => return Err(format!("unknown argument {other:?}").into()),
            other => url = other.to_string(),
        }
    }

    let backend = completions::open(&url, &options).await?;
    println!("connected to {} ({} backend)", redact_url(&url), backend.name());
    // Returns once the subscription is live (SUBSCRIBE confirmed, LISTEN in effect): nothing
    // committed from now on is missed.
    let mut completions = backend.completions().subscribe_from(from, &filter).await?;

    if demo {
        let engine = backend.engine();
        tokio::spawn(async move {
            if let Err(error) = write_demo(&*engine).await {
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
    println!("counters: {:?}", backend.completions().counters());
    // What one backend alone reports: match on the variant.
    match &backend {
        Backend::Valkey(valkey) => println!("valkey stats: {:?}", valkey.stats()),
        Backend::Postgres(postgres) => println!("postgres stats: {:?}", postgres.stats()),
        _ => {}
    }
    Ok(())
}

/// Creates and finishes a few executions, one of each outcome, a second apart.
async fn write_demo(engine: &dyn EngineBackend) -> Result<(), EngineError> {
    let ns = Namespace::new("demo")?;
    // Unique per run, so that runs on one server never collide.
    let run = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    for i in 0..6 {
        let id = ExecutionId::new(format!("demo-{run}-{i}"))?;
        let tags = Tags::from_pairs([("step", i.to_string())])?;
        engine.create_execution(NewExecution::new(id.clone(), ns.clone()).with_tags(tags)).await?;
        match i % 3 {
            0 => engine.complete(&id).await?,
            1 => engine.fail(&id, &Reason::new("demo failure")?).await?,
            _ => engine.cancel(&id, &Reason::new("demo cancel")?).await?,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
