//! The Valkey backend's own edges, each against Valkey 9.1 and Redis 7.0: function library
//! versions, the message's escaping, garbage on the channel, a server that is down at connect, a subscriber cut off
//! by the server's output buffer limit, and one test per fred trap listed in
//! docs/server-facts.md ("fred 10.1"; each fails without the backend's handling of it):
//! - without a reconnect policy fred never reconnects;
//! - fred's message channel holds 32 messages and drops the oldest when the reader lags;
//! - `resubscribe_all` breaks on an empty set, so the backend re-subscribes itself;
//! - a restart of a server without persistence wipes the loaded functions;
//! - `subscribe` resolves before the server processed SUBSCRIBE (not documented by fred).
//!
//! Tests that change server-wide state (libraries, config, restarts) get a server of their
//! own; the others share one per flavor.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::Server;
use completion_conformance::support::{EVENT_DEADLINE, collect_in, create, create_and_complete, namespace};
use completion_core::{
    CompletionBackend, CompletionStream, EngineBackend, EngineError, ExecutionId, Namespace, StartFrom, Tags,
};
use completion_testserver::{ValkeyFlavor, ValkeyOptions};
use completion_valkey::{LIBRARY_VERSION, ValkeyBackend, ValkeyConfig};
use futures_util::StreamExt;

/// Long enough that no test here is rescued by the periodic safety read.
const NO_SAFETY_NET: Duration = Duration::from_secs(3600);

/// A library named like ours whose version function answers `version`.
fn library_with_version(version: i64) -> String {
    format!(
        "#!lua name=completions\nredis.register_function{{function_name='completions_version', \
         callback=function() return {version} end, flags={{'no-writes'}}}}"
    )
}

async fn load_library(server: &Server, code: &str) {
    server.command(&["FUNCTION", "LOAD", "REPLACE", code]).await;
}

/// Creates and completes `n` executions in `ns` concurrently (the client pipelines them).
async fn burst(backend: &ValkeyBackend, ns: &Namespace, n: usize) -> Vec<ExecutionId> {
    burst_tagged(backend, ns, n, Tags::new()).await
}

/// [`burst`] with `tags` on every execution.
async fn burst_tagged(backend: &ValkeyBackend, ns: &Namespace, n: usize, tags: Tags) -> Vec<ExecutionId> {
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(250) {
        let size = (n - chunk * 250).min(250);
        let writes = (0..size).map(|_| create_and_complete(backend, ns, &tags));
        ids.extend(futures_util::future::join_all(writes).await);
    }
    ids
}

fn ids(got: &[completion_core::CompletionPayload]) -> Vec<ExecutionId> {
    got.iter().map(|c| c.execution_id().clone()).collect()
}

/// Asserts that `stream` delivers exactly `expected` (as a set: concurrent writers commit in
/// an order of the server's choosing), each once.
async fn delivers_all(stream: &mut CompletionStream, ns: &Namespace, expected: &[ExecutionId]) {
    let got = ids(&collect_in(stream, ns, expected.len()).await);
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a completion was delivered twice");
    assert_eq!(unique, expected.iter().collect::<HashSet<_>>(), "exactly the committed completions");
}

async fn subscriber_back(server: &Server, backend: &ValkeyBackend) {
    let channel = common::channel(&backend.config().key_prefix);
    common::wait_until("the subscriber connection is subscribed again", || async {
        server.numsub(&channel).await == 1
    })
    .await;
}

async fn newer_library_is_refused_and_older_upgraded(flavor: ValkeyFlavor) {
    let server = common::dedicated_server(ValkeyOptions::default().flavor(flavor).persistence(false)).await;
    load_library(&server, &library_with_version(LIBRARY_VERSION + 1)).await;
    match ValkeyBackend::connect(common::config(&server, "newer")).await {
        Err(EngineError::Incompatible { reason, .. }) => {
            assert!(reason.contains(&format!("version {}", LIBRARY_VERSION + 1)), "{reason}");
        }
        other => panic!("a newer library must be refused, got {:?}", other.map(|_| ())),
    }
    let foreign = "#!lua name=completions\nredis.register_function('something_else', function() return 1 end)";
    load_library(&server, foreign).await;
    match ValkeyBackend::connect(common::config(&server, "foreign")).await {
        Err(EngineError::Incompatible { reason, .. }) => assert!(reason.contains("not ours"), "{reason}"),
        other => panic!("a foreign library of our name must be refused, got {:?}", other.map(|_| ())),
    }
    load_library(&server, &library_with_version(LIBRARY_VERSION - 1)).await;
    let backend = common::connect(common::config(&server, "older")).await;
    assert_eq!(backend.library_version().await.unwrap(), Some(LIBRARY_VERSION), "an older library is upgraded");
    assert_eq!(backend.stats().library_loads, 1);
    let ns = namespace("upgraded");
    let mut stream = backend.subscribe_completions().await.unwrap();
    let id = create_and_complete(&backend, &ns, &Tags::new()).await;
    assert_eq!(ids(&collect_in(&mut stream, &ns, 1).await), [id], "the upgraded library works");
}

async fn concurrent_connects_load_the_library_safely(flavor: ValkeyFlavor) {
    let server = common::dedicated_server(ValkeyOptions::default().flavor(flavor).persistence(false)).await;
    let connects = (0..8).map(|_| ValkeyBackend::connect(common::config(&server, "race")));
    let backends: Vec<_> = futures_util::future::join_all(connects).await;
    let mut loads = 0;
    for backend in &backends {
        let backend = backend.as_ref().unwrap_or_else(|e| panic!("a racing connect failed: {e}"));
        loads += backend.stats().library_loads;
    }
    assert_eq!(loads, 1, "exactly one of the racing processes loaded the library");
}

async fn garbage_on_the_channel_is_skipped_and_counted(flavor: ValkeyFlavor) {
    let server = common::shared_server(flavor).await;
    let backend = common::connect(common::config(&server, "garbage").with_safety_interval(NO_SAFETY_NET)).await;
    let ns = namespace("garbage");
    let mut stream = backend.subscribe_completions().await.unwrap();
    let channel = common::channel(&backend.config().key_prefix);
    let garbage = [
        "not json",
        "{}",
        "[1,2,3]",
        r#"{"v":1,"partition":99999,"id":"1-0","prev":"0-0"}"#,
        r#"{"v":1,"partition":0,"id":"x","prev":"0-0","execution_id":"e","namespace":"n","outcome":"ok","completed_at_ms":1}"#,
        "\u{1}\u{2}binary\u{ff}",
    ];
    for body in garbage {
        server.command(&["PUBLISH", &channel, body]).await;
    }
    let id = create_and_complete(&backend, &ns, &Tags::new()).await;
    assert_eq!(ids(&collect_in(&mut stream, &ns, 1).await), [id], "the stream goes on after garbage");
    // The feed reads in order: the completion came after every garbage message.
    assert_eq!(backend.counters().malformed_messages, garbage.len() as u64, "each bad message is counted");
    let more = burst(&backend, &ns, 5).await;
    delivers_all(&mut stream, &ns, &more).await;
}

async fn server_down_at_connect_fails_within_the_timeout(flavor: ValkeyFlavor) {
    // Nothing listens: refused at once.
    let server = common::dedicated_server(ValkeyOptions::default().flavor(flavor).persistence(false)).await;
    let url = server.url();
    drop(server);
    let limit = Duration::from_millis(800);
    let config = ValkeyConfig::new(url.clone()).with_connect_timeout(limit);
    match tokio::time::timeout(EVENT_DEADLINE, ValkeyBackend::connect(config)).await {
        Ok(Err(e @ EngineError::Transport { .. })) => {
            let port = url.rsplit(':').next().unwrap();
            assert!(e.to_string().contains(port), "the error names the server: {e}");
        }
        Ok(other) => panic!("connecting to a closed port: expected a transport error, got {:?}", other.map(|_| ())),
        Err(_) => panic!("connect did not give up"),
    }
    // Something accepts but never answers: the connect timeout applies.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let config = ValkeyConfig::new(url).with_connect_timeout(limit);
    match tokio::time::timeout(EVENT_DEADLINE, ValkeyBackend::connect(config)).await {
        Ok(Err(EngineError::Timeout { op, after, .. })) => assert_eq!((op, after), ("connect", limit)),
        Ok(other) => panic!("connecting to a silent server: expected a timeout, got {:?}", other.map(|_| ())),
        Err(_) => panic!("connect did not give up"),
    }
}

async fn output_buffer_cut_off_loses_nothing(flavor: ValkeyFlavor) {
    let options = ValkeyOptions::default().flavor(flavor).persistence(false);
    let server = common::dedicated_server(options).await;
    // Tiny limits: a burst of messages in one event-loop turn exceeds them.
    server.command(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 1kb 512b 1"]).await;
    let backend = common::connect(common::config(&server, "cutoff").with_safety_interval(NO_SAFETY_NET)).await;
    let ns = namespace("cutoff");
    let mut plain = backend.subscribe_completions().await.unwrap();
    let mut resumable = backend.subscribe_from(StartFrom::Now, &Default::default()).await.unwrap();
    // Large messages (16 tags of 256 bytes): the server's 16 KB reply buffer fills within
    // one event-loop turn, so the output buffer limit applies.
    let big = Tags::from_pairs((0..16).map(|i| (format!("tag{i}"), "x".repeat(256)))).unwrap();
    let written = burst_tagged(&backend, &ns, 1500, big).await;
    delivers_all(&mut plain, &ns, &written).await;
    let mut got = Vec::new();
    while got.len() < written.len() {
        let item = tokio::time::timeout(EVENT_DEADLINE, resumable.next()).await.expect("resumable item").unwrap();
        let completion = item.completion().unwrap_or_else(|| panic!("no gap: {item:?}"));
        if completion.namespace() == &ns {
            got.push(completion.execution_id().clone());
        }
    }
    assert_eq!(got.iter().collect::<HashSet<_>>(), written.iter().collect::<HashSet<_>>());
    let counters = backend.counters();
    assert!(counters.reconnects > 0, "the server never cut the subscriber off, so nothing was tested: {counters:?}");
    let info = server.command(&["INFO", "stats"]).await;
    if let Some(n) = info.lines().find_map(|l| l.strip_prefix("client_output_buffer_limit_disconnections:")) {
        assert!(n.trim().parse::<u64>().unwrap() > 0, "the server reports the cut-off");
    }
}

/// Fred trap: without a reconnect policy it never reconnects.
async fn reconnects_after_every_connection_is_killed(flavor: ValkeyFlavor) {
    let server = common::shared_server(flavor).await;
    let backend = common::connect(common::config(&server, "killed").with_safety_interval(NO_SAFETY_NET)).await;
    let ns = namespace("killed");
    let mut stream = backend.subscribe_completions().await.unwrap();
    let before = burst(&backend, &ns, 3).await;
    delivers_all(&mut stream, &ns, &before).await;
    let names = common::names_of(&backend);
    assert_eq!(server.kill_named(&names).await, 2, "the command and subscriber connections were killed");
    subscriber_back(&server, &backend).await;
    // The command connection reconnects too: these writes go through it.
    let after = burst(&backend, &ns, 3).await;
    delivers_all(&mut stream, &ns, &after).await;
    assert!(backend.counters().reconnects >= 1, "{:?}", backend.counters());
}

/// Fred trap: a 32-message channel that drops the oldest when the reader lags. Here the
/// channel is made tiny on purpose: lag is certain, and the feed must catch up from the log.
async fn lagging_message_channel_loses_nothing(flavor: ValkeyFlavor) {
    let server = common::shared_server(flavor).await;
    let config = common::config(&server, "lag").with_safety_interval(NO_SAFETY_NET).with_message_capacity(2);
    let backend = common::connect(config).await;
    let ns = namespace("lag");
    let mut stream = backend.subscribe_completions().await.unwrap();
    let written = burst(&backend, &ns, 2000).await;
    delivers_all(&mut stream, &ns, &written).await;
    let stats = backend.stats();
    assert!(stats.lagged_messages > 0, "the channel never lagged, so nothing was tested: {stats:?}");
    // The default channel is sized for bursts: nothing is dropped at all.
    let backend = common::connect(common::config(&server, "nolag").with_safety_interval(NO_SAFETY_NET)).await;
    let mut stream = backend.subscribe_completions().await.unwrap();
    let written = burst(&backend, &ns, 2000).await;
    delivers_all(&mut stream, &ns, &written).await;
    assert_eq!(backend.stats().lagged_messages, 0, "{:?}", backend.stats());
}

/// Fred trap: `resubscribe_all` breaks on an empty set; the backend re-subscribes its one
/// channel itself after the subscriber reconnects.
async fn subscription_is_restored_after_the_subscriber_is_killed(flavor: ValkeyFlavor) {
    let server = common::shared_server(flavor).await;
    let backend = common::connect(common::config(&server, "resub").with_safety_interval(NO_SAFETY_NET)).await;
    let ns = namespace("resub");
    let mut stream = backend.subscribe_completions().await.unwrap();
    let subscriber = backend.client_names().subscriber.expect("a subscriber connection");
    for round in 0..3 {
        assert_eq!(server.kill_named(std::slice::from_ref(&subscriber)).await, 1, "round {round}");
        subscriber_back(&server, &backend).await;
        // Delivered live: no safety read runs, and the reconnect's catch-up read is over.
        let id = create(&backend, &ns, None, &Tags::new()).await;
        backend.complete(&id).await.unwrap();
        assert_eq!(ids(&collect_in(&mut stream, &ns, 1).await), [id], "round {round}");
    }
    assert!(backend.stats().resubscribes >= 3, "{:?}", backend.stats());
}

/// Fred trap: a restart without persistence wipes the functions; the backend reloads them.
async fn functions_wiped_by_a_restart_are_reloaded(flavor: ValkeyFlavor) {
    let server = common::dedicated_server(ValkeyOptions::default().flavor(flavor).persistence(false)).await;
    let backend = common::connect(common::config(&server, "wiped").with_safety_interval(NO_SAFETY_NET)).await;
    let ns = namespace("wiped");
    let mut stream = backend.subscribe_completions().await.unwrap();
    let before = burst(&backend, &ns, 2).await;
    delivers_all(&mut stream, &ns, &before).await;
    server.restart().await.unwrap();
    // Writes wait for the reconnect (command timeout), then find the library gone.
    let after = burst(&backend, &ns, 3).await;
    delivers_all(&mut stream, &ns, &after).await;
    assert_eq!(backend.library_version().await.unwrap(), Some(LIBRARY_VERSION));
    // Loaded at connect, and again after the restart wiped it (the feed's catch-up read or
    // the first write found it gone, whichever came first).
    assert!(backend.stats().library_loads >= 2, "{:?}", backend.stats());
}

/// Fred trap (docs/server-facts.md, "fred 10.1"): fred answers `subscribe` when it queues
/// SUBSCRIBE, before even writing it (`push_command` answers commands that expect no reply
/// before `write`), so the feed's read of the log head on the command connection can reach
/// the server first, and a completion committed right after subscribe returned is neither
/// read nor announced. The backend confirms SUBSCRIBE with a PING on the same connection.
/// The race is narrow: the test guards the path, it cannot force the interleaving.
/// Many instances start feeds at once, each completing one execution right after every
/// subscribe; no safety read can rescue a miss.
async fn subscribe_returns_after_the_server_processed_subscribe(flavor: ValkeyFlavor) {
    async fn instance(server: Server) -> Result<(), String> {
        let config = common::config(&server, "ready").with_partitions(1).with_safety_interval(NO_SAFETY_NET);
        let backend = common::connect(config).await;
        let ns = namespace("ready");
        let channel = common::channel(&backend.config().key_prefix);
        for round in 0..8 {
            let mut stream = backend.subscribe_completions().await.unwrap();
            let id = create_and_complete(&backend, &ns, &Tags::new()).await;
            // A deadline that only bounds a miss (no safety read would ever end it), not a
            // delivery time: 64 feeds start here at once, on a machine maybe busy with more.
            match tokio::time::timeout(EVENT_DEADLINE, collect_in(&mut stream, &ns, 1)).await {
                Ok(got) => assert_eq!(ids(&got), [id]),
                Err(_) => return Err(format!("round {round}: the completion right after subscribe was missed")),
            }
            drop(stream);
            // Released: the next subscribe starts a new feed (and a new SUBSCRIBE).
            common::wait_until("the feed stopped", || async { server.numsub(&channel).await == 0 }).await;
        }
        Ok(())
    }
    let server = common::shared_server(flavor).await;
    let results = futures_util::future::join_all((0..8).map(|_| instance(server.clone()))).await;
    let missed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(missed.is_empty(), "{missed:?}");
}

/// A terminal call the client library re-sends after its reply was lost (same write token)
/// takes effect once: same entry id, one log entry, one message.
async fn a_retried_terminal_write_takes_effect_once(flavor: ValkeyFlavor) {
    let server = common::shared_server(flavor).await;
    let backend = common::connect(common::config(&server, "retry").with_partitions(1)).await;
    let prefix = backend.config().key_prefix.clone();
    let ns = namespace("retry");
    let id = create(&backend, &ns, None, &Tags::new()).await;
    let mut stream = backend.subscribe_completions().await.unwrap();
    // The documented layout, with one partition: everything is in partition 0.
    let tag = format!("{prefix}:{{{prefix}:0}}");
    let (key, log, meta) = (format!("{tag}:x:{id}"), format!("{tag}:log"), format!("{tag}:meta"));
    let channel = common::channel(&prefix);
    let terminal = |outcome: &'static str, token: &'static str| {
        let args = ["FCALL", "completions_terminal", "3", &key, &log, &meta, id.as_str(), outcome, "", token, "0"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend([channel.clone(), String::new(), String::new()]);
        let server = server.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            server.try_command(&args).await
        }
    };
    let first = terminal("succeeded", "token-1").await.unwrap();
    let again = terminal("succeeded", "token-1").await.unwrap();
    assert_eq!(first, again, "the retry answers with the first write's entry");
    assert_eq!(server.command(&["XLEN", &log]).await, "1", "one log entry");
    let other = terminal("failed", "token-2").await.unwrap_err();
    assert!(other.contains("COMPLETIONS_TERMINAL succeeded"), "{other}");
    let marker = create_and_complete(&backend, &ns, &Tags::new()).await;
    assert_eq!(ids(&collect_in(&mut stream, &ns, 2).await), [id, marker], "one message for the retried write");
}

/// The partition count of a prefix is fixed: another count is refused at connect.
async fn another_partition_count_is_refused(flavor: ValkeyFlavor) {
    let server = common::shared_server(flavor).await;
    let config = common::config(&server, "parts").with_partitions(4);
    let _first = common::connect(config.clone()).await;
    match ValkeyBackend::connect(config.with_partitions(8)).await {
        Err(EngineError::Incompatible { reason, .. }) => assert!(reason.contains("partitions=4"), "{reason}"),
        other => panic!("expected Incompatible, got {:?}", other.map(|_| ())),
    }
}

/// A well-formed cursor past the log's head (here: from a busier prefix) is refused, not
/// used to skip events silently; a cursor at the head is accepted.
async fn a_cursor_past_the_head_is_refused(flavor: ValkeyFlavor) {
    let server = common::shared_server(flavor).await;
    let busy = common::connect(common::config(&server, "busy")).await;
    let idle = common::connect(common::config(&server, "idle")).await;
    let ns = namespace("past-head");
    let mut stream = busy.subscribe_completions().await.expect("subscribe");
    create_and_complete(&busy, &ns, &Tags::new()).await;
    let cursor = collect_in(&mut stream, &ns, 1).await.remove(0).cursor().clone();
    match idle.subscribe_from(StartFrom::After(cursor.clone()), &Default::default()).await {
        Err(EngineError::InvalidInput { reason, .. }) => assert!(reason.contains("past the end"), "{reason}"),
        other => panic!("expected InvalidInput for {cursor}, got {:?}", other.map(|_| ())),
    }
    assert!(busy.subscribe_from(StartFrom::After(cursor), &Default::default()).await.is_ok());
}

/// A log written by library version 2 (partition meta hashes without `last`, the newest
/// entry id version 3 keeps) is read and extended by version 3 without a false gap or a
/// missed message: the terminal write and the read function fall back to the stream itself
/// until their first write records `last`. Simulated by deleting `last` from half the meta
/// hashes; the other half get a stale `last` (what version 2 code running again after
/// version 3 leaves), which the stream's newer entries override.
async fn a_log_written_by_library_v2_is_read_and_extended(flavor: ValkeyFlavor) {
    let server = common::shared_server(flavor).await;
    let backend = common::connect(common::config(&server, "v2log").with_partitions(4)).await;
    let prefix = backend.config().key_prefix.clone();
    let ns = namespace("v2log");
    let mut live = backend.subscribe_completions().await.expect("subscribe");
    let mut before = burst(&backend, &ns, 20).await;
    let mut got = collect_in(&mut live, &ns, 20).await;
    // Ids land on partitions by hash, so 20 may leave one empty (about 1 run in 80), and an
    // empty partition has no newest entry to compare with: write until each holds one.
    let log = |p: u16| format!("{prefix}:{{{prefix}:{p}}}:log");
    for p in 0..4 {
        while server.command(&["XLEN", &log(p)]).await.trim() == "0" {
            before.extend(burst(&backend, &ns, 1).await);
            got.extend(collect_in(&mut live, &ns, 1).await);
        }
    }
    assert_eq!(ids(&got).into_iter().collect::<HashSet<_>>(), before.iter().cloned().collect::<HashSet<_>>());
    let cursor = got.last().expect("20 completions").cursor().clone();
    for p in 0..4 {
        let meta = format!("{prefix}:{{{prefix}:{p}}}:meta");
        if p % 2 == 0 {
            server.command(&["HDEL", &meta, "last"]).await;
        } else {
            server.command(&["HSET", &meta, "last", "1-0"]).await;
            // The read function's head is the stream's newest entry, not the stale record.
            let log = log(p);
            let newest = server.command(&["XREVRANGE", &log, "+", "-", "COUNT", "1"]).await;
            let read = server.command(&["FCALL_RO", "completions_read", "2", &log, &meta, "0-0", "0"]).await;
            let head = read.lines().nth(1).unwrap_or_default().to_string();
            assert_eq!(Some(head.as_str()), newest.lines().next(), "partition {p}: {read:?}");
        }
    }
    // Written after: each message's `prev` must match what the feed holds, or it would
    // read the log (counted as a catch-up read) instead of delivering the message.
    let reads = backend.counters().catch_up_reads;
    let after: Vec<ExecutionId> = futures_util::future::join_all((0..8).map(|_| async {
        let id = create(&backend, &ns, None, &Tags::new()).await;
        backend.complete(&id).await.expect("complete");
        id
    }))
    .await;
    delivers_all(&mut live, &ns, &after).await;
    assert_eq!(backend.counters().catch_up_reads, reads, "every message's prev matched: no resync");
    assert_eq!(backend.counters().gaps, 0);
    // Resuming from before the deletion reads the rest of the log, no gap.
    let mut resumed = backend.subscribe_from(StartFrom::After(cursor), &Default::default()).await.expect("resume");
    let mut items = Vec::new();
    for _ in 0..after.len() {
        items.push(completion_conformance::support::next_item_in(&mut resumed, &ns).await);
    }
    let resumed_ids: HashSet<ExecutionId> =
        items.iter().map(|i| i.completion().expect("no gap").execution_id().clone()).collect();
    assert_eq!(resumed_ids, after.iter().cloned().collect::<HashSet<_>>());
    assert!(before.len() >= 20);
}

/// The PUBLISHed message escapes the event's strings exactly as `cjson.encode` does
/// (docs/valkey.md, "The message body"): library v4 quotes strings that need no escaping
/// itself and hands the others (controls, quote, backslash, and '/', which cjson writes as
/// `\/`) to cjson. Compared byte for byte with what the server's own cjson makes of them.
async fn the_message_escapes_strings_as_cjson_does(flavor: ValkeyFlavor) {
    use fred::prelude::{ClientLike, Config, EventInterface, PubsubInterface};
    let server = common::shared_server(flavor).await;
    let backend = common::connect(common::config(&server, "escape").with_safety_interval(NO_SAFETY_NET)).await;
    let subscriber =
        fred::prelude::Builder::from_config(Config::from_url(&server.url()).expect("url")).build().expect("client");
    subscriber.init().await.expect("connect");
    let mut messages = subscriber.message_rx();
    let channel = common::channel(&backend.config().key_prefix);
    subscriber.subscribe(channel.as_str()).await.expect("subscribe");
    // fred's `subscribe` can resolve before the server processed SUBSCRIBE (above).
    common::wait_until("the raw subscription took effect", || async { server.numsub(&channel).await == 1 }).await;
    let cjson = async |s: &str| server.command(&["EVAL", "return cjson.encode(ARGV[1])", "0", s]).await;
    for (id, ns) in [("plain-id.1", "plain"), (r#"a/b"c\d"#, "n/s")] {
        let id = ExecutionId::new(format!("{id}-{}", common::unique_prefix("e"))).expect("execution id");
        let ns = Namespace::new(ns).expect("namespace");
        backend.create_execution(completion_core::NewExecution::new(id.clone(), ns.clone())).await.expect("create");
        backend.complete(&id).await.expect("complete");
        let message = tokio::time::timeout(EVENT_DEADLINE, messages.recv()).await.expect("message").expect("channel");
        let body = message.value.as_string().expect("text body");
        let expected_id = format!(r#""execution_id":{}"#, cjson(id.as_str()).await);
        let expected_ns = format!(r#""namespace":{}"#, cjson(ns.as_str()).await);
        assert!(body.contains(&expected_id), "{body} lacks {expected_id}");
        assert!(body.contains(&expected_ns), "{body} lacks {expected_ns}");
    }
    let _ = subscriber.quit().await;
}

/// `close` ends every stream and refuses new subscriptions (the subscriber connection goes),
/// while writes, reads and trims go on, as with `PostgresBackend::close`.
async fn close_ends_every_stream_and_writes_keep_working(flavor: ValkeyFlavor) {
    let server = common::shared_server(flavor).await;
    let backend = common::connect(common::config(&server, "close").with_safety_interval(NO_SAFETY_NET)).await;
    let ns = namespace("close");
    let channel = common::channel(&backend.config().key_prefix);
    let mut plain = backend.subscribe_completions().await.unwrap();
    let mut resumable = backend.subscribe_from(StartFrom::Now, &completion_core::ScannerFilter::new()).await.unwrap();
    assert_eq!(backend.open_streams(), 2);
    let before = burst(&backend, &ns, 2).await;
    delivers_all(&mut plain, &ns, &before).await;
    backend.close();
    let ended = tokio::time::timeout(EVENT_DEADLINE, async { (plain.next().await, resumable.next().await) }).await;
    assert!(matches!(ended, Ok((None, None))), "both streams end after close: {ended:?}");
    let refused = backend.subscribe_completions().await.err();
    assert!(matches!(refused, Some(EngineError::Closed { .. })), "{refused:?}");
    let refused = backend.subscribe_from(StartFrom::Earliest, &completion_core::ScannerFilter::new()).await.err();
    assert!(matches!(refused, Some(EngineError::Closed { .. })), "{refused:?}");
    common::wait_until("the subscriber connection closed", || async { server.numsub(&channel).await == 0 }).await;
    let after = burst(&backend, &ns, 2).await;
    for id in &after {
        let info = backend.describe(id).await.expect("describe after close");
        assert_eq!(info.state, completion_core::ExecutionState::Terminal(completion_core::Outcome::Succeeded));
    }
    backend.enforce_retention().await.expect("trimming after close");
    drop((plain, resumable));
    assert_eq!(backend.open_streams(), 0);
}

macro_rules! for_each_flavor {
    ($($test:ident),* $(,)?) => {
        mod valkey {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(completion_testserver::ValkeyFlavor::Valkey).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(completion_testserver::ValkeyFlavor::Redis).await;
                }
            )*
        }
    };
}

for_each_flavor!(
    a_cursor_past_the_head_is_refused,
    a_log_written_by_library_v2_is_read_and_extended,
    newer_library_is_refused_and_older_upgraded,
    concurrent_connects_load_the_library_safely,
    garbage_on_the_channel_is_skipped_and_counted,
    server_down_at_connect_fails_within_the_timeout,
    output_buffer_cut_off_loses_nothing,
    reconnects_after_every_connection_is_killed,
    lagging_message_channel_loses_nothing,
    subscription_is_restored_after_the_subscriber_is_killed,
    subscribe_returns_after_the_server_processed_subscribe,
    functions_wiped_by_a_restart_are_reloaded,
    a_retried_terminal_write_takes_effect_once,
    another_partition_count_is_refused,
    the_message_escapes_strings_as_cjson_does,
    close_ends_every_stream_and_writes_keep_working,
);
