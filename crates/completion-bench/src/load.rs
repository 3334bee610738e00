//! Figure 6, unrelated load (docs/benchmarks.md, "How it is measured"): our PostgreSQL latency
//! while other clients write to a table of their own in the same database and one session sits
//! idle in transaction holding an xid, against the same backend idle, interleaved.
//!
//! The load is switched on and off by the probes themselves ([`Phase`]): each sample of the
//! loaded side first makes sure the load runs, each sample of the idle side that it is stopped,
//! so with [`crate::stats::interleave`] the load runs exactly during the loaded chunks. Every
//! switch waits for every load session to acknowledge it: when a loaded chunk starts, each
//! writer has committed one transaction and the idle session holds its xid; when an idle
//! chunk starts, every writer has finished its transaction and the idle session has
//! committed. The idle session takes a new xid at the start of every loaded chunk and keeps
//! it for the whole chunk: holding one across the idle chunks too would slow both sides
//! alike (that is what versions 1-3 of the schema did with any xid) and hide it in the ratio.

use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::stats::{Probe, Sample};

/// Concurrent writers of the unrelated load.
pub const WRITERS: usize = 8;
/// How long a writer keeps its transaction open between its two statements (think time
/// inside the transaction: an xid is in flight nearly all the time, which is what an
/// xid-ordered reader would wait for, without the writers alone saturating the cores).
pub const IN_TRANSACTION: Duration = Duration::from_millis(1);
/// No load session runs transactions for longer than this, whatever happens to the figure
/// (and every statement is cut off after 30 s, an idle transaction after 10 minutes).
const LIMIT: Duration = Duration::from_secs(600);
const DEADLINE: Duration = Duration::from_secs(30);

fn err(op: &str, e: impl std::fmt::Display) -> String {
    format!("unrelated load {op}: {e}")
}

enum Cmd {
    On(oneshot::Sender<Result<(), String>>),
    Off(oneshot::Sender<Result<(), String>>),
}

/// The load sessions: [`WRITERS`] writers and one session idle in transaction.
pub struct UnrelatedLoad {
    sessions: Vec<mpsc::UnboundedSender<Cmd>>,
    tasks: Vec<JoinHandle<Result<u64, String>>>,
    on: bool,
    since: Option<Instant>,
    /// Time spent on, summed over the loaded phases.
    on_for: Duration,
}

async fn connect(url: &str) -> Result<Client, String> {
    let (client, connection) = tokio::time::timeout(DEADLINE, tokio_postgres::connect(url, NoTls))
        .await
        .map_err(|_| err("connect", "timed out"))?
        .map_err(|e| err("connect", e))?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "SET application_name = 'completion-bench unrelated load';
             SET statement_timeout = '30s'; SET idle_in_transaction_session_timeout = '10min';",
        )
        .await
        .map_err(|e| err("session settings", e))?;
    Ok(client)
}

/// One short write transaction on the load's own table, in two round trips with
/// [`IN_TRANSACTION`] between them.
async fn transaction(client: &Client, writer: usize) -> Result<(), String> {
    client
        .batch_execute(&format!("BEGIN; INSERT INTO bench_load.rows (writer, at) VALUES ({writer}, now())"))
        .await
        .map_err(|e| err("insert", e))?;
    tokio::time::sleep(IN_TRANSACTION).await;
    client
        .batch_execute(&format!("UPDATE bench_load.counters SET n = n + 1 WHERE writer = {writer}; COMMIT"))
        .await
        .map_err(|e| err("update", e))
}

/// A writer: transactions in a loop while on (one before acknowledging `On`), none while off.
async fn writer(client: Client, writer: usize, mut cmds: mpsc::UnboundedReceiver<Cmd>) -> Result<u64, String> {
    let until = Instant::now() + LIMIT;
    let (mut on, mut done) = (false, 0u64);
    loop {
        let cmd = if on && Instant::now() < until {
            match cmds.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(done),
            }
        } else {
            match cmds.recv().await {
                Some(cmd) => Some(cmd),
                None => return Ok(done),
            }
        };
        match cmd {
            Some(Cmd::On(ack)) => {
                on = true;
                let result = transaction(&client, writer).await;
                done += u64::from(result.is_ok());
                let _ = ack.send(result);
            }
            Some(Cmd::Off(ack)) => {
                on = false;
                let _ = ack.send(Ok(()));
            }
            None => {
                transaction(&client, writer).await?;
                done += 1;
            }
        }
    }
}

/// The session idle in transaction: `BEGIN; SELECT pg_current_xact_id()` on `On`, `COMMIT`
/// on `Off`.
async fn idle_in_transaction(client: Client, mut cmds: mpsc::UnboundedReceiver<Cmd>) -> Result<u64, String> {
    let mut open = false;
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Cmd::On(ack) => {
                let result = if open {
                    Ok(())
                } else {
                    client
                        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
                        .await
                        .map_err(|e| err("idle in transaction", e))
                };
                open = result.is_ok();
                let _ = ack.send(result);
            }
            Cmd::Off(ack) => {
                let result =
                    if open { client.batch_execute("COMMIT").await.map_err(|e| err("commit", e)) } else { Ok(()) };
                open = false;
                let _ = ack.send(result);
            }
        }
    }
    Ok(0)
}

impl UnrelatedLoad {
    /// Creates the load's table (`bench_load`, its own schema) and connects the sessions;
    /// the load is off.
    pub async fn start(url: &str) -> Result<Self, String> {
        let setup = connect(url).await?;
        setup
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS bench_load;
                 DROP TABLE IF EXISTS bench_load.rows, bench_load.counters;
                 CREATE TABLE bench_load.rows (id bigserial PRIMARY KEY, writer int NOT NULL, at timestamptz NOT NULL);
                 CREATE TABLE bench_load.counters (writer int PRIMARY KEY, n bigint NOT NULL);
                 INSERT INTO bench_load.counters SELECT g, 0 FROM generate_series(0, {WRITERS}) g;"
            ))
            .await
            .map_err(|e| err("create table", e))?;
        let (mut sessions, mut tasks) = (Vec::new(), Vec::new());
        for i in 0..=WRITERS {
            let client = connect(url).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            sessions.push(tx);
            tasks.push(if i < WRITERS {
                tokio::spawn(writer(client, i, rx))
            } else {
                tokio::spawn(idle_in_transaction(client, rx))
            });
        }
        Ok(Self { sessions, tasks, on: false, since: None, on_for: Duration::ZERO })
    }

    /// Switches the load on or off and waits until every session has acknowledged it (a
    /// no-op when it already is).
    pub async fn set(&mut self, on: bool) -> Result<(), String> {
        if self.on == on {
            return Ok(());
        }
        let mut acks = Vec::with_capacity(self.sessions.len());
        for session in &self.sessions {
            let (tx, rx) = oneshot::channel();
            session.send(if on { Cmd::On(tx) } else { Cmd::Off(tx) }).map_err(|_| err("switch", "a session ended"))?;
            acks.push(rx);
        }
        for ack in acks {
            tokio::time::timeout(DEADLINE, ack)
                .await
                .map_err(|_| err("switch", "a session did not acknowledge in time"))?
                .map_err(|_| err("switch", "a session ended"))??;
        }
        self.on = on;
        if on {
            self.since = Some(Instant::now());
        } else if let Some(since) = self.since.take() {
            self.on_for += since.elapsed();
        }
        Ok(())
    }

    /// Stops the load and ends the sessions; returns the writers' transactions per second
    /// while the load was on.
    pub async fn finish(mut self) -> Result<f64, String> {
        self.set(false).await?;
        self.sessions.clear();
        let mut done = 0u64;
        for task in self.tasks {
            done += task.await.map_err(|e| err("session task", e))??;
        }
        let seconds = self.on_for.as_secs_f64();
        Ok(if seconds > 0.0 { done as f64 / seconds } else { 0.0 })
    }
}

/// One side of the figure: samples `probe` (shared by both sides, so both write through the
/// same backend and read the same stream) with the load switched `on` or off first. The
/// loaded side samples ids past the idle side's (`offset`), so that they never collide.
pub struct Phase<'a, P> {
    pub probe: &'a Mutex<P>,
    pub load: &'a Mutex<UnrelatedLoad>,
    pub on: bool,
    pub offset: usize,
}

impl<P: Probe> Probe for Phase<'_, P> {
    async fn sample(&mut self, i: usize) -> Result<Sample, String> {
        self.load.lock().await.set(self.on).await?;
        self.probe.lock().await.sample(i + self.offset).await
    }
}
