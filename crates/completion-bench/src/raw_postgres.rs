//! The PostgreSQL baselines with tokio-postgres: a raw transaction (UPDATE + NOTIFY) to a
//! raw LISTEN, and the UPDATE alone. They use their own table in their own schema.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::stats::{Probe, Sample};
use crate::writers::spread;

const CHANNEL: &str = "bench_raw";
const DEADLINE: Duration = Duration::from_secs(30);

fn err(op: &str, e: impl std::fmt::Display) -> String {
    format!("postgres raw {op}: {e}")
}

/// A connection whose notifications (if it LISTENs) go to the returned receiver.
async fn connect(url: &str) -> Result<(Client, mpsc::UnboundedReceiver<String>), String> {
    let (client, mut connection) = tokio::time::timeout(DEADLINE, tokio_postgres::connect(url, NoTls))
        .await
        .map_err(|_| err("connect", "timed out"))?
        .map_err(|e| err("connect", e))?;
    let (tx, rx) = mpsc::unbounded_channel();
    // `connection.await` would throw notifications away: poll it ourselves (docs/server-facts.md,
    // "tokio-postgres 0.7 and deadpool-postgres 0.14").
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok((client, rx))
}

/// Creates the baseline table with `rows` rows in state `active`.
async fn prepare_table(client: &Client, table: &str, rows: usize) -> Result<(), String> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS bench_raw;
             DROP TABLE IF EXISTS bench_raw.{table};
             CREATE TABLE bench_raw.{table} (id bigint PRIMARY KEY, state text NOT NULL, completed_at timestamptz);
             INSERT INTO bench_raw.{table} SELECT g, 'active', NULL FROM generate_series(0, {rows}) g;"
        ))
        .await
        .map_err(|e| err("create table", e))
}

/// The same-semantics floor's schema: an executions table, an events table, and one PL/pgSQL
/// function that marks the execution terminal, appends the event and NOTIFYs it as the
/// payload, in the caller's transaction (autocommit: one transaction per call). Nothing
/// else: no state check, no secondary index, no tickets or advisory locks.
fn floor_schema(rows: usize) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS bench_floor;
         DROP TABLE IF EXISTS bench_floor.executions, bench_floor.events;
         CREATE TABLE bench_floor.executions (id bigint PRIMARY KEY, state text NOT NULL, completed_at timestamptz);
         CREATE TABLE bench_floor.events (id bigserial PRIMARY KEY, execution_id bigint NOT NULL, event text NOT NULL);
         INSERT INTO bench_floor.executions SELECT g, 'active', NULL FROM generate_series(0, {rows}) g;
         CREATE OR REPLACE FUNCTION bench_floor.finish(p_id bigint, p_event text) RETURNS void
         LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE bench_floor.executions SET state = 'succeeded', completed_at = now() WHERE id = p_id;
             INSERT INTO bench_floor.events (execution_id, event) VALUES (p_id, p_event);
             PERFORM pg_notify('{FLOOR_CHANNEL}', p_event);
         END
         $$;"
    )
}
const FLOOR_CHANNEL: &str = "bench_floor";

/// What a raw latency sample sends.
enum Write {
    /// `BEGIN; UPDATE; NOTIFY; COMMIT` as one simple query (the raw NOTIFY baseline).
    Transaction,
    /// `SELECT bench_floor.finish($1, $2)`, prepared, in autocommit (the floor).
    Floor(tokio_postgres::Statement),
}

/// One write → notification on a LISTEN connection, one at a time: the raw baseline
/// ([`LatencyProbe::new`]: BEGIN; UPDATE; NOTIFY with `payload_bytes` bytes; COMMIT, sent as
/// one simple-query round trip, the cheapest way to do it by hand) or the same-semantics
/// floor ([`LatencyProbe::floor`]: UPDATE + INSERT of the event + NOTIFY of it, in one
/// function call).
pub struct LatencyProbe {
    writer: Client,
    /// Kept open: it is the LISTENing connection.
    _listener: Client,
    notifications: mpsc::UnboundedReceiver<String>,
    payload: String,
    write: Write,
}

impl LatencyProbe {
    /// The raw baseline: connects both clients, prepares `rows` rows to update and LISTENs.
    pub async fn new(url: &str, rows: usize, payload_bytes: usize) -> Result<Self, String> {
        let (writer, _) = connect(url).await?;
        prepare_table(&writer, "latency", rows).await?;
        Self::listening(url, writer, CHANNEL, payload_bytes, Write::Transaction).await
    }

    /// The same-semantics floor: (re)creates its schema with `rows` executions, connects
    /// both clients and LISTENs.
    pub async fn floor(url: &str, rows: usize, payload_bytes: usize) -> Result<Self, String> {
        let (writer, _) = connect(url).await?;
        writer.batch_execute(&floor_schema(rows)).await.map_err(|e| err("floor schema", e))?;
        let statement =
            writer.prepare("SELECT bench_floor.finish($1, $2)").await.map_err(|e| err("prepare floor", e))?;
        Self::listening(url, writer, FLOOR_CHANNEL, payload_bytes, Write::Floor(statement)).await
    }

    async fn listening(
        url: &str,
        writer: Client,
        channel: &str,
        payload_bytes: usize,
        write: Write,
    ) -> Result<Self, String> {
        let (listener, notifications) = connect(url).await?;
        listener.batch_execute(&format!("LISTEN {channel}")).await.map_err(|e| err("listen", e))?;
        // Plain characters: nothing to quote inside the NOTIFY literal.
        let payload = "x".repeat(payload_bytes.max(1));
        Ok(Self { writer, _listener: listener, notifications, payload, write })
    }
}

impl Probe for LatencyProbe {
    async fn sample(&mut self, i: usize) -> Result<Sample, String> {
        let started = match &self.write {
            Write::Transaction => {
                let sql = format!(
                    "BEGIN; UPDATE bench_raw.latency SET state = 'succeeded', completed_at = now() WHERE id = {i}; \
                     NOTIFY {CHANNEL}, '{}'; COMMIT;",
                    self.payload
                );
                let started = Instant::now();
                self.writer.batch_execute(&sql).await.map_err(|e| err("update+notify", e))?;
                started
            }
            Write::Floor(statement) => {
                let id = i as i64;
                let started = Instant::now();
                self.writer.execute(statement, &[&id, &self.payload]).await.map_err(|e| err("floor call", e))?;
                started
            }
        };
        let call = started.elapsed();
        tokio::time::timeout(DEADLINE, self.notifications.recv())
            .await
            .map_err(|_| err("notification", "did not arrive in time"))?
            .ok_or_else(|| err("notification", "listener connection ended"))?;
        Ok(Sample { end_to_end: started.elapsed(), call })
    }
}

/// The UPDATE alone (autocommit, prepared), `n` rows, by `writers` connections (one per
/// writer, like a pool). Returns updates per second.
pub async fn bare_writes(url: &str, n: usize, writers: usize) -> Result<f64, String> {
    let table = format!("bare{writers}");
    let (setup, _) = connect(url).await?;
    prepare_table(&setup, &table, n).await?;
    let mut clients = Vec::with_capacity(writers);
    for _ in 0..writers {
        let (client, _) = connect(url).await?;
        let statement = client
            .prepare(&format!("UPDATE bench_raw.{table} SET state = 'succeeded', completed_at = now() WHERE id = $1"))
            .await
            .map_err(|e| err("prepare", e))?;
        clients.push((client, statement));
    }
    // Each writer keeps its own session, as the backend's pooled writers do.
    let clients = Arc::new(clients);
    let started = Instant::now();
    spread!(writers, n, [clients], |writer, i| {
        let (client, statement) = &clients[writer];
        client.execute(statement, &[&(i as i64)]).await.map_err(|e| err("update", e))
    })
    .await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The backend instance's sessions in `pg_stat_activity`, by its `application_name`s.
pub async fn connections(url: &str, listen: &str, pool: &str) -> Result<crate::scale::Connections, String> {
    let (client, _) = connect(url).await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE application_name = $1),
                    count(*) FILTER (WHERE application_name IN ($1, $2))
             FROM pg_stat_activity",
            &[&listen, &pool],
        )
        .await
        .map_err(|e| err("pg_stat_activity", e))?;
    let count = |i: usize| row.get::<_, i64>(i).max(0) as usize;
    Ok(crate::scale::Connections { total: count(1), subscriber: count(0) })
}
