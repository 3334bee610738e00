//! Subscribes to completions on PostgreSQL and prints them, resuming after a saved cursor.
//!
//! ```text
//! DATABASE_URL=postgres://app@localhost/app cargo run -p completion-postgres --example postgres_subscribe -- [--demo] [--after CURSOR] [--namespace NS]
//! ```
//!
//! `--demo` also creates and finishes a few executions in the namespace `demo`, so there is
//! something to see. Stop with Ctrl-C; pass the last cursor printed as `--after` to resume.

use std::time::Duration;

use completion_core::{
    CompletionBackend, Cursor, EngineBackend, EngineError, ExecutionId, Namespace, NewExecution, Reason, ScannerFilter,
    StartFrom, StreamItem, Tags,
};
use completion_postgres::{PostgresBackend, PostgresConfig};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to a PostgreSQL server, e.g. postgres://app@localhost/app")?;
    let mut args = std::env::args().skip(1);
    let (mut demo, mut from, mut filter) = (false, StartFrom::Now, ScannerFilter::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--demo" => demo = true,
            "--after" => from = StartFrom::After(Cursor::parse(&args.next().ok_or("--after needs a cursor")?)?),
            "--namespace" => {
                filter = filter.with_namespace(Namespace::new(args.next().ok_or("--namespace needs a value")?)?)
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }

    let backend = PostgresBackend::connect(PostgresConfig::from_url(url)).await?;
    println!("connected; schema {}, channel {}", backend.schema(), backend.channel());
    // Returns once LISTEN is in effect: nothing committed from now on is missed.
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
                    println!("gap: events after {:?} were pruned; resuming at {}", gap.after, gap.resumed_at);
                }
                Some(_) => {}
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let counters = backend.counters();
    println!(
        "delivered {}, reconnects {}, catch-up reads {}",
        counters.delivered, counters.reconnects, counters.catch_up_reads
    );
    Ok(())
}

async fn write_demo(backend: &PostgresBackend) -> Result<(), EngineError> {
    let ns = Namespace::new("demo")?;
    let run = uuid_like();
    for i in 0..3 {
        let id = ExecutionId::new(format!("demo-{run}-{i}"))?;
        let tags = Tags::from_pairs([("step", i.to_string())])?;
        backend.create_execution(NewExecution::new(id.clone(), ns.clone()).with_tags(tags)).await?;
        match i {
            0 => backend.complete(&id).await?,
            1 => backend.fail(&id, &Reason::new("demo failure")?).await?,
            _ => backend.cancel(&id, &Reason::new("demo cancel")?).await?,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A run id unique enough for a demo.
fn uuid_like() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}
