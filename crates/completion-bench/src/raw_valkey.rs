//! The Valkey baselines: a raw PUBLISH to a raw SUBSCRIBE, and HSET alone, with fred.

use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{Message, Value};

use crate::stats::{Probe, Sample};
use crate::writers::spread;

const CHANNEL: &str = "bench:raw";
const DEADLINE: Duration = Duration::from_secs(30);

fn err(op: &str, e: impl std::fmt::Display) -> String {
    format!("valkey raw {op}: {e}")
}

async fn client(url: &str, capacity: usize) -> Result<Client, String> {
    let config = Config::from_url(url).map_err(|e| err("url", e))?;
    let client = Builder::from_config(config)
        // Same socket settings as the backend, so the comparison is about the protocol use.
        .with_connection_config(|c| c.tcp = TcpConfig { nodelay: Some(true), ..TcpConfig::default() })
        .with_performance_config(|p| p.broadcast_channel_capacity = capacity)
        .build()
        .map_err(|e| err("build", e))?;
    tokio::time::timeout(DEADLINE, client.init())
        .await
        .map_err(|_| err("connect", "timed out"))?
        .map_err(|e| err("connect", e))?;
    Ok(client)
}

/// The library of the same-semantics floor: one function that does what our terminal write
/// must at least do (mark the execution terminal, append the event to a log, publish it),
/// with nothing else (no state check, no partitions, no trimming, the message built by the
/// caller). Loaded by the bench itself (`FUNCTION LOAD REPLACE`), under its own name.
const FLOOR_LIBRARY: &str = "#!lua name=benchfloor
redis.register_function('benchfloor_terminal', function(keys, args)
  local entry = redis.call('XADD', keys[2], '*', 'event', args[2])
  redis.call('HSET', keys[1], 'state', 'succeeded', 'terminal_id', entry)
  redis.call('PUBLISH', args[1], args[2])
  return entry
end)
";
const FLOOR_CHANNEL: &str = "bench:floor";

/// What a raw latency sample writes.
enum Write {
    /// A bare `PUBLISH` (the raw pub/sub baseline).
    Publish,
    /// `FCALL benchfloor_terminal`: `HSET` + `XADD` + `PUBLISH` in one call (the floor).
    Floor,
}

/// A message of `payload_bytes` bytes → the same on a raw SUBSCRIBE connection, one at a
/// time: a bare PUBLISH ([`LatencyProbe::new`]) or the same-semantics floor
/// ([`LatencyProbe::floor`]).
pub struct LatencyProbe {
    publisher: Client,
    subscriber: Client,
    messages: tokio::sync::broadcast::Receiver<Message>,
    payload: String,
    write: Write,
    channel: &'static str,
}

impl LatencyProbe {
    /// The raw pub/sub baseline: connects both clients and subscribes.
    pub async fn new(url: &str, payload_bytes: usize) -> Result<Self, String> {
        Self::connect(url, payload_bytes, Write::Publish, CHANNEL).await
    }

    /// The same-semantics floor: loads the `benchfloor` library (replacing an earlier one),
    /// connects both clients and subscribes.
    pub async fn floor(url: &str, payload_bytes: usize) -> Result<Self, String> {
        let probe = Self::connect(url, payload_bytes, Write::Floor, FLOOR_CHANNEL).await?;
        let _: Value =
            probe.publisher.function_load(true, FLOOR_LIBRARY).await.map_err(|e| err("FUNCTION LOAD benchfloor", e))?;
        Ok(probe)
    }

    async fn connect(url: &str, payload_bytes: usize, write: Write, channel: &'static str) -> Result<Self, String> {
        let publisher = client(url, 64).await?;
        let subscriber = client(url, 65_536).await?;
        let messages = subscriber.message_rx();
        subscriber.subscribe(channel).await.map_err(|e| err("subscribe", e))?;
        Ok(Self { publisher, subscriber, messages, payload: "x".repeat(payload_bytes.max(1)), write, channel })
    }

    /// Disconnects both clients.
    pub async fn close(self) {
        let _ = self.publisher.quit().await;
        let _ = self.subscriber.quit().await;
    }
}

impl Probe for LatencyProbe {
    async fn sample(&mut self, i: usize) -> Result<Sample, String> {
        let started = Instant::now();
        match self.write {
            Write::Publish => {
                let _: i64 =
                    self.publisher.publish(self.channel, self.payload.as_str()).await.map_err(|e| err("publish", e))?;
            }
            Write::Floor => {
                let keys = vec![format!("bench:floor:exec:{i}"), "bench:floor:log".to_string()];
                let _: Value = self
                    .publisher
                    .fcall("benchfloor_terminal", keys, vec![self.channel, self.payload.as_str()])
                    .await
                    .map_err(|e| err("FCALL benchfloor_terminal", e))?;
            }
        }
        let call = started.elapsed();
        tokio::time::timeout(DEADLINE, self.messages.recv())
            .await
            .map_err(|_| err("message", "did not arrive in time"))?
            .map_err(|e| err("message", e))?;
        Ok(Sample { end_to_end: started.elapsed(), call })
    }
}

/// The state change alone: `HSET` of a state field, `n` times, by `writers` concurrent
/// tasks sharing one connection (as the backend's writes do). Returns writes per second.
pub async fn bare_writes(url: &str, run: &str, n: usize, writers: usize) -> Result<f64, String> {
    let client = client(url, 64).await?;
    let started = Instant::now();
    let run = run.to_string();
    spread!(writers, n, [client, run], |_, i| {
        let key = format!("bench:bare:{run}:{writers}:{i}");
        client.hset::<i64, _, _>(key, [("state", "succeeded"), ("completed_at", "1")]).await.map_err(|e| err("hset", e))
    })
    .await?;
    let elapsed = started.elapsed();
    let _ = client.quit().await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// A raw subscription to our backend's own channel, to learn the size of the message body
/// it PUBLISHes, so that the raw baseline sends exactly as many bytes.
pub struct Sniffer {
    client: Client,
    messages: tokio::sync::broadcast::Receiver<Message>,
}

impl Sniffer {
    /// Subscribes to `channel` (the backend's `<key prefix>:completions`).
    pub async fn start(url: &str, channel: &str) -> Result<Self, String> {
        let client = client(url, 65_536).await?;
        let messages = client.message_rx();
        client.subscribe(channel.to_string()).await.map_err(|e| err("subscribe", e))?;
        Ok(Self { client, messages })
    }

    /// The body size of the first message seen, then unsubscribes.
    pub async fn first_size(mut self) -> Result<usize, String> {
        let message = tokio::time::timeout(DEADLINE, self.messages.recv())
            .await
            .map_err(|_| err("sniff", "no message on the backend's channel"))?
            .map_err(|e| err("sniff", e))?;
        let _ = self.client.quit().await;
        match message.value.as_bytes() {
            Some(bytes) => Ok(bytes.len()),
            None => Err(err("sniff", format!("unexpected message value {:?}", message.value))),
        }
    }
}

/// Clients on the server (`CLIENT LIST`), but the counting one; subscribers are those with
/// a channel, shard-channel or pattern subscription.
pub async fn connections(url: &str) -> Result<crate::scale::Connections, String> {
    let probe = client(url, 64).await?;
    let list: String = probe
        .custom(
            fred::types::CustomCommand::new_static("CLIENT", fred::types::ClusterHash::FirstKey, false),
            vec!["LIST"],
        )
        .await
        .map_err(|e| err("CLIENT LIST", e))?;
    let _ = probe.quit().await;
    Ok(count_clients(&list))
}

/// Counts a `CLIENT LIST` reply's clients, but the one that ran it.
fn count_clients(list: &str) -> crate::scale::Connections {
    let mut counted = crate::scale::Connections::default();
    for line in list.lines().filter(|l| !l.trim().is_empty()) {
        let field = |name: &str| line.split_whitespace().find_map(|kv| kv.strip_prefix(name));
        // The counting connection is the one running CLIENT LIST right now.
        if matches!(field("cmd="), Some("client|list" | "client")) {
            continue;
        }
        counted.total += 1;
        let subscribed = ["sub=", "psub=", "ssub="]
            .iter()
            .any(|name| field(name).and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v > 0));
        if subscribed {
            counted.subscriber += 1;
        }
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::count_clients;

    #[test]
    fn counts_subscribers_and_skips_the_counting_client() {
        let list = "id=3 addr=127.0.0.1:1 name= db=0 sub=0 psub=0 ssub=0 flags=N cmd=fcall\n\
                    id=4 addr=127.0.0.1:2 name= db=0 sub=1 psub=0 ssub=0 flags=P cmd=subscribe\n\
                    id=5 addr=127.0.0.1:3 name= db=0 sub=0 psub=0 ssub=2 flags=P cmd=ssubscribe\n\
                    id=6 addr=127.0.0.1:4 name= db=0 sub=0 psub=0 ssub=0 flags=N cmd=client|list\n";
        let counted = count_clients(list);
        assert_eq!((counted.total, counted.subscriber), (3, 2));
        assert_eq!(count_clients("").total, 0);
    }
}
