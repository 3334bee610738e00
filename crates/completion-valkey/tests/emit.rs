//! Completions of executions the engine keeps in its own state (docs/valkey.md, "Emitting
//! completions of executions you keep yourself") on Valkey 9.1 and Redis 7.0, standalone, and
//! on a Valkey cluster: completions emitted by `ValkeyBackend::emit` (the library's
//! `completions_emit`) and by an engine function of the test's own that includes the emit
//! step (`EMIT_LUA`), against subscribers that must not tell them from terminal writes.
//!
//! - `emit` delivers like `complete`, in one ordered log with terminal writes, live (no
//!   message found out of order) and resumable by cursor;
//! - a second emit of an execution is refused (`AlreadyTerminal`, the first outcome), a
//!   repeat is accepted, and the marker that refuses it expires as configured;
//! - an engine function changes its own hash and emits in one FCALL; the same function
//!   failing before the emit (its own check, a command error, a bad emit argument) leaves
//!   no event, no marker and its hash as it was;
//! - bad emit arguments are refused by the Lua side with an error naming the value;
//! - a `Waiter` over the backend's lookup finds emitted completions, before and during.

mod common;

use std::time::Duration;

use common::Server;
use common::cluster::{self as clusters, Cluster};
use completion_conformance::support::{
    collect_in, create, create_and_complete, execution_id, flow_id, ids_of, namespace, next_item_in,
};
use completion_core::{
    Completion, CompletionBackend, CompletionPayload, EngineBackend, EngineError, ExecutionId, Namespace, Outcome,
    Reason, StartFrom, Tags,
};
use completion_testserver::ValkeyFlavor;
use completion_valkey::{EMIT_LUA, EmitCall, ValkeyBackend, ValkeyConfig};

/// Long enough that no test here is rescued by the periodic safety read.
const NO_SAFETY_NET: Duration = Duration::from_secs(3600);

/// A name for a library or function of this test's own: function names are server-wide.
fn lua_name(tag: &str) -> String {
    common::unique_prefix(tag).replace('-', "_")
}

/// An engine's own library: the emit step included after the `#!lua` line, then one
/// function `finish` that sets the job hash KEYS[1] to ARGV[1] and emits the completion
/// whose emit keys and arguments start at KEYS[2] and ARGV[2], in one call. Before the
/// emit it checks its own state (the job must be `running`) and, for ARGV[1] `explode`,
/// runs a command that fails (INCR of a hash). Returns the name of `finish`.
fn engine_library(name: &str) -> (String, String) {
    let finish = format!("{name}_finish");
    let code = format!(
        r#"#!lua name={name}
{EMIT_LUA}
local function finish(keys, args)
  -- Checks first, writes after: a function that fails half way keeps what it wrote.
  local emit = completions_emit_prepare(keys, args, 2, 2)
  if emit.retried then
    return emit.retried
  end
  local state = redis.call('HGET', keys[1], 'state')
  if state ~= 'running' then
    return redis.error_reply('ENGINE_NOT_RUNNING job is ' .. tostring(state))
  end
  if args[1] == 'explode' then
    redis.call('INCR', keys[1])
  end
  redis.call('HSET', keys[1], 'state', args[1])
  local entry = completions_emit_commit(emit)
  redis.call('HSET', keys[1], 'completion', entry)
  return entry
end
redis.register_function('{finish}', finish)
"#
    );
    (code, finish)
}

/// `FCALL <function>` with the job key and `state` before the emit's keys and arguments.
fn fcall_args(function: &str, job: &str, state: &str, emit: &EmitCall) -> Vec<String> {
    let mut args = vec!["FCALL".to_string(), function.to_string(), (1 + emit.keys.len()).to_string(), job.to_string()];
    args.extend(emit.keys.iter().cloned());
    args.push(state.to_string());
    args.extend(emit.args.iter().cloned());
    args
}

/// Where an engine function runs: a standalone server or the node of a cluster that owns
/// the keys' slot.
#[derive(Clone)]
enum Target {
    Server(Server),
    Cluster(Cluster),
}

impl Target {
    async fn load(&self, library: &str) {
        let library = library.to_string();
        match self {
            Target::Server(server) => {
                server.command(&["FUNCTION", "LOAD", &library]).await;
            }
            // Every primary (none has replicas here): a function runs where its keys live.
            Target::Cluster(cluster) => {
                cluster
                    .with(move |c| {
                        for node in c.primaries().expect("primaries") {
                            c.command(node, &["FUNCTION", "LOAD", &library]).expect("FUNCTION LOAD on a primary");
                        }
                    })
                    .await
            }
        }
    }

    /// One command whose first key is `key`, on the node that holds it.
    async fn keyed(&self, key: &str, args: Vec<String>) -> Result<String, String> {
        match self {
            Target::Server(server) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                server.try_command(&args).await
            }
            Target::Cluster(cluster) => {
                let key = key.to_string();
                cluster
                    .with(move |c| {
                        let owner =
                            c.owner_of(c.slot_of(&key).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        c.command(owner, &args).map_err(|e| e.to_string())
                    })
                    .await
            }
        }
    }

    async fn command(&self, key: &str, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.keyed(key, args.clone()).await.unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
    }
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    Tags::from_pairs(pairs.iter().copied()).expect("tags")
}

/// The fields a subscriber sees, cursor aside.
fn seen(c: &CompletionPayload) -> (ExecutionId, Outcome, Namespace, Option<String>, Tags) {
    (c.execution_id().clone(), c.outcome(), c.namespace().clone(), c.flow_id().map(|f| f.to_string()), c.tags().clone())
}

/// `emit` interleaved with terminal writes: one stream, in commit order, each once, the
/// emitted events carrying exactly what was given; delivered live (every message's `prev`
/// matched: no hole, nothing malformed); a stream resumed after an emitted event's cursor
/// goes on with the next, terminal or emitted.
async fn emit_delivers_like_complete_in_one_ordered_log(backend: ValkeyBackend, _target: Target) {
    let ns = namespace("emit");
    let mut live = backend.subscribe_completions().await.expect("subscribe");
    let mut resumable = backend.subscribe_from(StartFrom::Now, &Default::default()).await.expect("subscribe_from");
    let flow = flow_id("flow");
    let emitted = Completion::new(execution_id("emitted"), ns.clone(), Outcome::Failed)
        .with_flow(flow.clone())
        .with_tags(tags(&[("team", "billing"), ("path", "a/b \"c\"")]))
        .with_reason(Reason::new("the upstream answered 503").expect("reason"));
    let plain = Completion::new(execution_id("plain"), ns.clone(), Outcome::Succeeded);
    let first = create_and_complete(&backend, &ns, &Tags::new()).await;
    backend.emit(&emitted).await.expect("emit");
    let third = create(&backend, &ns, Some(&flow), &tags(&[("team", "billing")])).await;
    backend.cancel(&third, &Reason::new("no longer needed").unwrap()).await.expect("cancel");
    backend.emit(&plain).await.expect("emit");
    let expected = [first.clone(), emitted.execution_id.clone(), third.clone(), plain.execution_id.clone()];
    let got = collect_in(&mut live, &ns, 4).await;
    assert_eq!(ids_of(&got), expected, "one log, in commit order");
    assert_eq!(
        seen(&got[1]),
        (emitted.execution_id.clone(), Outcome::Failed, ns.clone(), Some(flow.to_string()), emitted.tags.clone())
    );
    assert_eq!(seen(&got[3]), (plain.execution_id.clone(), Outcome::Succeeded, ns.clone(), None, Tags::new()));
    let mut items = Vec::new();
    for _ in 0..4 {
        items.push(next_item_in(&mut resumable, &ns).await);
    }
    let cursor = items[1].completion().expect("no gap").cursor().clone();
    let stats = backend.stats();
    assert_eq!((stats.message_holes, backend.counters().malformed_messages), (0, 0), "{stats:?}");
    let mut resumed = backend.subscribe_from(StartFrom::After(cursor), &Default::default()).await.expect("resume");
    let rest: Vec<ExecutionId> = [next_item_in(&mut resumed, &ns).await, next_item_in(&mut resumed, &ns).await]
        .iter()
        .map(|i| i.completion().expect("no gap").execution_id().clone())
        .collect();
    // (Read from the log: the emitted entries parse as terminal ones do.)
    assert_eq!(rest, expected[2..], "resumed after the emitted event's cursor");
}

/// A second emit of one execution is refused with the first outcome, a repeat goes
/// through (and becomes what a later emit is refused with), and each accepted emit is one
/// event. A retried call (same write token) emits once.
async fn a_second_emit_is_refused_unless_repeated(backend: ValkeyBackend, target: Target) {
    let ns = namespace("twice");
    let mut stream = backend.subscribe_completions().await.expect("subscribe");
    let id = execution_id("twice");
    let succeeded = Completion::new(id.clone(), ns.clone(), Outcome::Succeeded);
    let failed = Completion::new(id.clone(), ns.clone(), Outcome::Failed);
    backend.emit(&succeeded).await.expect("first emit");
    match backend.emit(&failed).await {
        Err(EngineError::AlreadyTerminal { execution_id, outcome }) => {
            assert_eq!((execution_id, outcome), (id.clone(), Outcome::Succeeded));
        }
        other => panic!("a second emit must be refused, got {other:?}"),
    }
    backend.emit_repeat(&failed).await.expect("a repeat is accepted");
    match backend.emit(&succeeded).await {
        Err(EngineError::AlreadyTerminal { outcome, .. }) => assert_eq!(outcome, Outcome::Failed, "the latest"),
        other => panic!("refused after the repeat too, got {other:?}"),
    }
    // The library function called twice with the same write token: one event.
    let call = backend.emit_repeat_call(&succeeded);
    let mut args = vec!["FCALL".to_string(), "completions_emit".into(), "3".into()];
    args.extend(call.keys.iter().cloned());
    args.extend(call.args.iter().cloned());
    let once = target.keyed(&call.keys[0], args.clone()).await.expect("emit through FCALL");
    let again = target.keyed(&call.keys[0], args).await.expect("the same call again");
    assert_eq!(once, again, "a retried call answers the first one's entry");
    let marker = execution_id("marker");
    backend.emit(&Completion::new(marker.clone(), ns.clone(), Outcome::Succeeded)).await.expect("marker");
    let got = collect_in(&mut stream, &ns, 4).await;
    let outcomes: Vec<_> = got.iter().map(|c| (c.execution_id().clone(), c.outcome())).collect();
    assert_eq!(
        outcomes,
        [
            (id.clone(), Outcome::Succeeded),
            (id.clone(), Outcome::Failed),
            (id, Outcome::Succeeded),
            (marker, Outcome::Succeeded)
        ],
        "one event per accepted emit, none for refused or retried calls"
    );
}

/// The marker lives `emit_marker_ttl`: then the same id is accepted as a first emit. `None`
/// keeps it for ever.
async fn the_emit_marker_expires_as_configured(server: Server) {
    let config = common::config(&server, "ttl").with_emit_marker_ttl(Some(Duration::from_millis(300)));
    let backend = common::connect(config).await;
    let ns = namespace("ttl");
    let emit = Completion::new(execution_id("ttl"), ns.clone(), Outcome::Succeeded);
    backend.emit(&emit).await.expect("emit");
    let marker = backend.emit_call(&emit).keys[2].clone();
    let ttl: i64 = server.command(&["PTTL", &marker]).await.parse().expect("PTTL");
    assert!((1..=300).contains(&ttl), "the marker expires within its lifetime: {ttl}");
    assert!(matches!(backend.emit(&emit).await, Err(EngineError::AlreadyTerminal { .. })));
    common::wait_until("the emit marker expired", || async { server.command(&["EXISTS", &marker]).await == "0" }).await;
    backend.emit(&emit).await.expect("accepted again once the marker expired");
    let forever = common::connect(common::config(&server, "forever").with_emit_marker_ttl(None)).await;
    let emit = Completion::new(execution_id("forever"), ns, Outcome::Cancelled);
    forever.emit(&emit).await.expect("emit");
    assert_eq!(server.command(&["PTTL", &forever.emit_call(&emit).keys[2]]).await, "-1");
}

/// The engine's own function sets its job hash and emits in one FCALL; failing before the
/// emit (its own state check, a failing command, a bad emit argument) it leaves no event,
/// no marker, its hash unchanged, so that the next proper call is a first emit. The stream
/// gets exactly the proper call's event, first (the failed calls came before it in time).
async fn an_engine_function_changes_its_own_hash_and_emits(backend: ValkeyBackend, target: Target) {
    let name = lua_name("engine");
    let (library, finish) = engine_library(&name);
    target.load(&library).await;
    let ns = namespace("engine");
    let mut stream = backend.subscribe_completions().await.expect("subscribe");
    let mut resumable = backend.subscribe_from(StartFrom::Now, &Default::default()).await.expect("subscribe_from");
    let id = execution_id("job");
    let completion = Completion::new(id.clone(), ns.clone(), Outcome::Succeeded).with_tags(tags(&[("queue", "eu")]));
    let call = backend.emit_call(&completion);
    // The engine's own key, in the partition's slot.
    let job = format!("jobs:{}:{id}", call.hash_tag);
    let log = call.keys[0].clone();
    target.command(&job, &["HSET", &job, "state", "queued"]).await;

    // 1. Its own check fails: not running yet.
    let refused = target.keyed(&job, fcall_args(&finish, &job, "done", &call)).await.unwrap_err();
    assert!(refused.contains("ENGINE_NOT_RUNNING job is queued"), "{refused}");
    target.command(&job, &["HSET", &job, "state", "running"]).await;
    // 2. A command fails (a script error raised by redis.call), before any write.
    let exploded = target.keyed(&job, fcall_args(&finish, &job, "explode", &call)).await.unwrap_err();
    assert!(exploded.contains("WRONGTYPE"), "{exploded}");
    // 3. A bad emit argument: refused by the emit step's checks, naming it.
    let mut bad = call.clone();
    bad.args[3] = "done".into();
    let refused = target.keyed(&job, fcall_args(&finish, &job, "done", &bad)).await.unwrap_err();
    assert!(refused.contains("COMPLETIONS_BAD_ARGS outcome `done`"), "{refused}");
    assert_eq!(target.command(&job, &["HGET", &job, "state"]).await, "running", "the job hash is unchanged");
    assert_eq!(target.command(&log, &["XLEN", &log]).await, "0", "no log entry");
    assert_eq!(target.command(&log, &["EXISTS", &call.keys[2]]).await, "0", "no emit marker");

    // The proper call: the job's state and its completion in one FCALL.
    let entry = target.keyed(&job, fcall_args(&finish, &job, "done", &call)).await.expect("finish");
    assert_eq!(target.command(&job, &["HGET", &job, "state"]).await, "done");
    assert_eq!(target.command(&job, &["HGET", &job, "completion"]).await, entry);
    assert_eq!(target.command(&log, &["XLEN", &log]).await, "1");
    let got = collect_in(&mut stream, &ns, 1).await;
    assert_eq!(seen(&got[0]), (id.clone(), Outcome::Succeeded, ns.clone(), None, completion.tags.clone()));
    let item = next_item_in(&mut resumable, &ns).await;
    assert_eq!(item.completion().expect("no gap").execution_id(), &id);
    // Sent again with the same token (a client retry): the first entry, no second event.
    let retried = target.keyed(&job, fcall_args(&finish, &job, "done", &call)).await.expect("retry");
    assert_eq!(retried, entry);
    // Another call for the job (a fresh token): the marker refuses it.
    target.command(&job, &["HSET", &job, "state", "running"]).await;
    let twice = target.keyed(&job, fcall_args(&finish, &job, "done", &backend.emit_call(&completion))).await;
    assert!(twice.as_ref().unwrap_err().contains("COMPLETIONS_EMITTED succeeded"), "{twice:?}");
    assert_eq!(target.command(&job, &["HGET", &job, "state"]).await, "running", "refused before its writes");
    // What the subscriber got next is a later event, not a duplicate.
    let marker = Completion::new(execution_id("marker"), ns.clone(), Outcome::Succeeded);
    backend.emit(&marker).await.expect("marker");
    assert_eq!(ids_of(&collect_in(&mut stream, &ns, 1).await), [marker.execution_id]);
}

/// Every emit argument and key is checked by the Lua side, which names the bad value; the
/// same call with the arguments `emit_call` made goes through.
async fn bad_emit_arguments_are_refused_naming_the_value(backend: ValkeyBackend, target: Target) {
    let ns = namespace("bad");
    let id = execution_id("bad");
    let completion = Completion::new(id.clone(), ns, Outcome::Failed);
    let good = backend.emit_call(&completion);
    let other = backend.emit_call(&Completion::new(
        std::iter::repeat_with(|| execution_id("other"))
            .find(|o| backend.hash_tag(o) != backend.hash_tag(&id))
            .expect("an id of another partition"),
        namespace("bad"),
        Outcome::Failed,
    ));
    let long = "x".repeat(129);
    let arg_cases: Vec<(usize, &str, String)> = vec![
        (0, "", "execution id must not be empty".into()),
        (0, "a b", "execution id `a b`".into()),
        (0, &long, format!("execution id `{}...` is 129 bytes long", &long[..100])),
        (1, "ns{1}", "namespace `ns{1}`".into()),
        (2, "fl ow", "flow id `fl ow`".into()),
        (3, "done", "outcome `done` is not succeeded, failed or cancelled".into()),
        (4, "[]", "tags `[]` are not a JSON object".into()),
        (4, r#"{"k":1}"#, r#"tags `{"k":1}`: every key and value must be a string"#.into()),
        (4, r#"{"k=":"v"}"#, "tag key `k=`".into()),
        (4, r#"{"k":"a\u0001"}"#, "tag value `a\u{1}` of tag `k`".into()),
        (4, r#"{"k":"v""#, r#"tags `{"k":"v"` are not a JSON object"#.into()),
        (5, "bell\u{7}", "reason `bell\u{7}`".into()),
        (7, "x", "partition `x` is not a number".into()),
        (8, "0", "partition count `0` is not a number from 1 to 256".into()),
        (9, "elsewhere", "channel `elsewhere` is not".into()),
        (10, "loud", "announce mode `loud` is not plain or sharded".into()),
        (11, "many", "retention count `many` is not a number".into()),
        (13, "0", "marker lifetime `0` must be at least 1 ms".into()),
        (14, "twice", "repeat flag `twice` is not once or repeat".into()),
    ];
    let run = async |call: &EmitCall| {
        let mut args = vec!["FCALL".to_string(), "completions_emit".into(), "3".into()];
        args.extend(call.keys.iter().cloned());
        args.extend(call.args.iter().cloned());
        target.keyed(&good.keys[0], args).await
    };
    for (at, value, expected) in arg_cases {
        let mut call = good.clone();
        call.args[at] = value.to_string();
        let error = run(&call).await.expect_err(&format!("argument {at} = {value:?} must be refused"));
        assert!(error.contains("COMPLETIONS_BAD_ARGS"), "{error}");
        assert!(error.contains(&expected), "argument {at} = {value:?}: {error:?} lacks {expected:?}");
    }
    // The partition must be the id's: the number, then each key.
    let mut call = good.clone();
    call.args[7] = other.args[7].clone();
    let error = run(&call).await.unwrap_err();
    assert!(error.contains(&format!("execution id `{id}` belongs to partition {}", good.args[7])), "{error}");
    if let Target::Server(_) = target {
        // (On a cluster keys of another slot are refused by the server itself.)
        for k in 0..3 {
            let mut call = good.clone();
            call.keys[k] = other.keys[k].clone();
            let error = run(&call).await.unwrap_err();
            assert!(error.contains(&format!("`{}`", other.keys[k])), "key {k}: {error}");
        }
    }
    let mut short = good.clone();
    short.args.pop();
    assert!(run(&short).await.unwrap_err().contains("emit takes 15 arguments"));
    // Nothing of the above wrote anything; the good call goes through.
    assert_eq!(target.command(&good.keys[0], &["EXISTS", &good.keys[2]]).await, "0");
    run(&good).await.expect("the arguments emit_call made are accepted");
    // On the Rust side, values are checked as they are made, naming the value.
    for error in [
        ExecutionId::new("job {1}").map(|_| ()).unwrap_err(),
        Namespace::new("").map(|_| ()).unwrap_err(),
        Reason::new("\u{0}").map(|_| ()).unwrap_err(),
    ] {
        assert!(matches!(error, EngineError::InvalidInput { .. }), "{error}");
    }
    let error = ExecutionId::new("job {1}").unwrap_err().to_string();
    assert!(error.contains("job {1}"), "{error}");
    let error = ValkeyConfig::new("redis://h").with_emit_marker_ttl(Some(Duration::ZERO)).check().unwrap_err();
    assert!(error.to_string().contains("emit_marker_ttl"), "{error}");
}

/// A `Waiter` over the backend's own lookup (`CompletionLookup for ValkeyBackend`: the emit
/// marker, then the execution hash): an emitted completion before the wait is found by the
/// lookup, one during it arrives from the stream, a terminal write of the built-in side is
/// found too, and an id neither knows is pending until the deadline (it may still be emitted).
async fn a_waiter_over_the_emit_markers_finds_emitted_completions(backend: ValkeyBackend, _target: Target) {
    use completion_conformance::support::EVENT_DEADLINE;
    use completion_core::{WaitError, Waiter};

    let backend = std::sync::Arc::new(backend);
    let ns = namespace("emit-wait");
    let waiter = Waiter::with_lookup(backend.clone(), backend.clone()).await.expect("waiter");
    let before = execution_id("emit-wait-before");
    backend.emit(&Completion::new(before.clone(), ns.clone(), Outcome::Failed)).await.expect("emit");
    let got = waiter.wait(&before, EVENT_DEADLINE).await.expect("found by the lookup");
    assert_eq!(got.outcome, Outcome::Failed);
    let built_in = create_and_complete(&*backend, &ns, &Tags::new()).await;
    assert_eq!(waiter.wait(&built_in, EVENT_DEADLINE).await.expect("found").outcome, Outcome::Succeeded);
    let during = execution_id("emit-wait-during");
    let (got, ()) = tokio::join!(waiter.wait(&during, EVENT_DEADLINE), async {
        let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
        while waiter.pending() != 1 {
            assert!(tokio::time::Instant::now() < deadline, "the wait registers");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        backend.emit(&Completion::new(during.clone(), ns.clone(), Outcome::Succeeded)).await.expect("emit");
    });
    assert_eq!(got.expect("from the stream").execution_id, during);
    let never = execution_id("emit-wait-never");
    match tokio::time::timeout(EVENT_DEADLINE, waiter.wait(&never, Duration::from_millis(100))).await.expect("bounded")
    {
        Err(WaitError::TimedOut { .. }) => {}
        other => panic!("an id nobody knows is pending until the deadline, got {other:?}"),
    }
}

async fn standalone(flavor: ValkeyFlavor, tag: &str) -> (ValkeyBackend, Target) {
    let server = common::shared_server(flavor).await;
    let backend = common::connect(common::config(&server, tag).with_safety_interval(NO_SAFETY_NET)).await;
    (backend, Target::Server(server))
}

async fn on_cluster(tag: &str) -> (ValkeyBackend, Target) {
    let cluster = clusters::shared_cluster(ValkeyFlavor::Valkey).await;
    let backend = common::connect(clusters::config(&cluster, tag).with_safety_interval(NO_SAFETY_NET)).await;
    (backend, Target::Cluster(cluster))
}

macro_rules! for_each_flavor {
    ($($test:ident),* $(,)?) => {
        mod valkey {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (backend, target) = super::standalone(completion_testserver::ValkeyFlavor::Valkey, "emit").await;
                    super::$test(backend, target).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (backend, target) = super::standalone(completion_testserver::ValkeyFlavor::Redis, "emit").await;
                    super::$test(backend, target).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (backend, target) = super::on_cluster("emit").await;
                    super::$test(backend, target).await;
                }
            )*
        }
    };
}

for_each_flavor!(
    emit_delivers_like_complete_in_one_ordered_log,
    a_second_emit_is_refused_unless_repeated,
    an_engine_function_changes_its_own_hash_and_emits,
    bad_emit_arguments_are_refused_naming_the_value,
    a_waiter_over_the_emit_markers_finds_emitted_completions,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emit_marker_expires_as_configured_on_valkey() {
    the_emit_marker_expires_as_configured(common::shared_server(ValkeyFlavor::Valkey).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emit_marker_expires_as_configured_on_redis() {
    the_emit_marker_expires_as_configured(common::shared_server(ValkeyFlavor::Redis).await).await;
}
