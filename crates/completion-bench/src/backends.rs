//! One function per backend: start its throwaway servers, then measure each planned figure,
//! ours and its baselines interleaved (see the crate docs).

use std::sync::Arc;

use completion_core::{CompletionBackend, EngineBackend, Retention};
use completion_testserver::{PostgresOptions, PostgresServer, ValkeyFlavor, ValkeyOptions, ValkeyServer};
use completions::{Backend, OpenOptions};
use tokio::sync::Mutex;

use crate::machine::Machine;
use crate::report::{BackendResult, FanOutFigure, Scale, Side, SideRuns, Throughput, UnrelatedLoadFigure};
use crate::scale::ServerProbe;
use crate::stats::{self, Probe, Repeated, Sample, interleave};
use crate::{CHUNK, RETENTION, SUBSCRIBERS, Sizes, WRITERS, Which};
use crate::{library, load, raw_postgres, raw_valkey, scale, waits};

/// Every run's figures of one backend, before taking medians.
#[derive(Default)]
pub(crate) struct Runs {
    /// Figure 1: ours, the raw baseline, the floor.
    pub(crate) mine: SideRuns,
    pub(crate) raw: SideRuns,
    pub(crate) floor: SideRuns,
    pub(crate) payload_bytes: usize,
    /// Figure 6: ours idle and loaded, and the load's transactions per second.
    pub(crate) idle: SideRuns,
    pub(crate) loaded: SideRuns,
    pub(crate) load_tps: Vec<f64>,
    /// Per entry of [`WRITERS`].
    pub(crate) ours: [Vec<f64>; WRITERS.len()],
    pub(crate) bare: [Vec<f64>; WRITERS.len()],
    pub(crate) scale: Scale,
}

impl Runs {
    /// Keeps one repetition's latency samples (ours, and the raw baseline's and the floor's).
    pub(crate) fn push_latency(&mut self, ours: &[Sample], raw: Option<(&[Sample], &[Sample])>, payload_bytes: usize) {
        self.mine.push(ours);
        if let Some((raw, floor)) = raw {
            self.raw.push(raw);
            self.floor.push(floor);
        }
        self.payload_bytes = payload_bytes;
    }

    pub(crate) fn finish(
        self,
        backend: Which,
        raw_label: Option<&'static str>,
        floor_label: Option<&'static str>,
        bare_label: Option<&'static str>,
    ) -> BackendResult {
        let Runs { mine, raw, floor, payload_bytes, idle, loaded, load_tps, ours, bare, mut scale } = self;
        let unrelated_load = match (idle.finish(), loaded.finish()) {
            (Some(idle), Some(loaded)) => Some(UnrelatedLoadFigure {
                idle,
                loaded,
                writers: load::WRITERS,
                in_transaction_ms: load::IN_TRANSACTION.as_secs_f64() * 1e3,
                load_transactions_per_s: Repeated::of(load_tps),
            }),
            _ => None,
        };
        let (mine, raw) = (mine.finish(), raw.finish());
        for figure in &mut scale.fan_out {
            figure.delivered_per_s = stats::median(&figure.runs.iter().map(|r| r.delivered_per_s).collect::<Vec<_>>());
            figure.rss_per_subscriber =
                stats::median(&figure.runs.iter().map(|r| r.rss_per_subscriber_after).collect::<Vec<_>>());
            figure.heap_per_subscriber_open =
                stats::median(&figure.runs.iter().map(|r| r.heap_per_subscriber_open).collect::<Vec<_>>());
            figure.heap_per_subscriber =
                stats::median(&figure.runs.iter().map(|r| r.heap_per_subscriber_after).collect::<Vec<_>>());
        }
        let throughput = WRITERS
            .iter()
            .zip(ours)
            .zip(bare)
            .filter(|((_, ours), _)| !ours.is_empty())
            .map(|((&writers, ours), bare)| Throughput {
                writers,
                ours: Repeated::of(ours),
                bare: (!bare.is_empty()).then(|| Repeated::of(bare)),
                bare_label,
            })
            .collect();
        let (latency, write_call, delivery) = match mine {
            Some(Side { end_to_end, call, delivery }) => (Some(end_to_end), Some(call), Some(delivery)),
            None => (None, None, None),
        };
        let (raw_latency, raw_call, raw_delivery) = match raw {
            Some(Side { end_to_end, call, delivery }) => (Some(end_to_end), Some(call), Some(delivery)),
            None => (None, None, None),
        };
        BackendResult {
            backend,
            latency,
            write_call,
            delivery,
            raw_latency,
            raw_call,
            raw_delivery,
            raw_label,
            floor: floor.finish(),
            floor_label,
            unrelated_load,
            waits: None,
            payload_bytes,
            throughput,
            scale,
        }
    }
}

pub(crate) async fn bench_memory(
    run: &str,
    n: usize,
    warmup: usize,
    repeat: usize,
    sizes: Sizes,
) -> Result<BackendResult, String> {
    let backend = match open("memory:", OpenOptions::default(), RETENTION).await? {
        Backend::Memory(backend) => Arc::new(backend),
        other => return Err(opened_as(&other)),
    };
    let mut runs = Runs::default();
    for rep in 0..repeat {
        let run = format!("{run}-{rep}");
        if sizes.plan.latency {
            let mut probe = library::LatencyProbe::new(&*backend, &run).await?;
            let samples = interleave(&mut [&mut probe], n, warmup, CHUNK).await?;
            runs.push_latency(&samples[0], None, probe.payload_bytes);
        }
        for (i, writers) in WRITERS.into_iter().enumerate().filter(|_| sizes.plan.throughput) {
            runs.ours[i].push(library::throughput(backend.clone(), &run, n, writers).await?);
        }
    }
    bench_scale(backend.clone(), &ServerProbe::None, run, repeat, sizes, &mut runs.scale).await?;
    let mut result = runs.finish(Which::Memory, None, None, None);
    if sizes.plan.waits {
        eprintln!("   figure 7: {} concurrent waits", sizes.waits);
        let probes = (n / 10).clamp(100, 2_000);
        result.waits = Some(waits::measure(backend.clone(), backend, run, sizes.waits, probes).await?);
    }
    Ok(result)
}

pub(crate) async fn bench_valkey(
    run: &str,
    n: usize,
    warmup: usize,
    repeat: usize,
    sizes: Sizes,
    machine: &mut Machine,
) -> Result<BackendResult, String> {
    // No persistence: an fsync per write would measure the disk, the same for ours and raw.
    let server = match ValkeyServer::start(ValkeyOptions::default().flavor(ValkeyFlavor::Valkey).persistence(false)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("valkey-server unavailable ({e}); falling back to redis-server");
            ValkeyServer::start(ValkeyOptions::default().flavor(ValkeyFlavor::Redis).persistence(false))
                .map_err(|e| format!("no valkey-server or redis-server: {e}"))?
        }
    };
    let version = server.version().unwrap_or_else(|e| format!("unknown ({e})"));
    machine.valkey = Some(format!("{} {version}", server.flavor().binary_name()));
    let url = server.url();
    let prefix = format!("bench-{run}");
    let backend = match open(&url, OpenOptions::default().with_key_prefix(prefix.clone()), RETENTION).await? {
        Backend::Valkey(backend) => Arc::new(backend),
        other => return Err(opened_as(&other)),
    };
    // The raw PUBLISH sends as many bytes as our function's PUBLISH does (the channel name
    // is documented in docs/valkey.md), not the size of the decoded payload.
    // One completion before the measured runs, so that the extra subscriber is gone by then.
    let payload_bytes = if sizes.plan.latency {
        let sniffer = raw_valkey::Sniffer::start(&url, &format!("{prefix}:completions")).await?;
        library::complete_one(&*backend, run).await?;
        sniffer.first_size().await?
    } else {
        0
    };
    let mut runs = Runs::default();
    // Ours and raw alternate within each repetition (latency: every CHUNK samples), so that
    // a noisy neighbour on a shared machine hits both sides of a ratio alike.
    for rep in 0..repeat {
        let run = format!("{run}-{rep}");
        if sizes.plan.latency {
            let mut probe = library::LatencyProbe::new(&*backend, &run).await?;
            let mut raw = raw_valkey::LatencyProbe::new(&url, payload_bytes).await?;
            let mut floor = raw_valkey::LatencyProbe::floor(&url, payload_bytes).await?;
            let samples = interleave(&mut [&mut probe, &mut raw, &mut floor], n, warmup, CHUNK).await?;
            raw.close().await;
            floor.close().await;
            runs.push_latency(&samples[0], Some((&samples[1], &samples[2])), payload_bytes);
        }
        for (i, writers) in WRITERS.into_iter().enumerate().filter(|_| sizes.plan.throughput) {
            runs.ours[i].push(library::throughput(backend.clone(), &run, n, writers).await?);
            runs.bare[i].push(raw_valkey::bare_writes(&url, &run, n, writers).await?);
        }
    }
    bench_scale(backend, &ServerProbe::Valkey(url.clone()), run, repeat, sizes, &mut runs.scale).await?;
    Ok(runs.finish(
        Which::Valkey,
        Some("fred PUBLISH -> SUBSCRIBE, our PUBLISH body size"),
        Some("FCALL of HSET+XADD+PUBLISH (library benchfloor) -> SUBSCRIBE, same size"),
        Some("HSET alone"),
    ))
}

pub(crate) async fn bench_postgres(
    run: &str,
    n: usize,
    warmup: usize,
    repeat: usize,
    sizes: Sizes,
    machine: &mut Machine,
) -> Result<BackendResult, String> {
    // The helper's default: fsync and synchronous_commit off, the same for ours and raw.
    let server = PostgresServer::start(PostgresOptions::default()).map_err(|e| format!("postgres server: {e}"))?;
    let version = server.version().unwrap_or_else(|e| format!("unknown ({e})"));
    machine.postgres = Some(version);
    let url = server.url();
    // As many pooled connections as the bare baseline's writers use.
    let backend = match open(&url, OpenOptions::default().with_pool_size(WRITERS[WRITERS.len() - 1]), RETENTION).await?
    {
        Backend::Postgres(backend) => Arc::new(backend),
        other => return Err(opened_as(&other)),
    };
    let mut runs = Runs::default();
    for rep in 0..repeat {
        let run = format!("{run}-{rep}");
        if sizes.plan.latency {
            let mut probe = library::LatencyProbe::new(&*backend, &run).await?;
            // One unmeasured completion first: the raw baseline NOTIFYs as many bytes as our
            // payload's JSON has.
            probe.sample(n + warmup).await?;
            let mut raw = raw_postgres::LatencyProbe::new(&url, n + warmup, probe.payload_bytes).await?;
            let mut floor = raw_postgres::LatencyProbe::floor(&url, n + warmup, probe.payload_bytes).await?;
            let samples = interleave(&mut [&mut probe, &mut raw, &mut floor], n, warmup, CHUNK).await?;
            let payload_bytes = probe.payload_bytes;
            runs.push_latency(&samples[0], Some((&samples[1], &samples[2])), payload_bytes);
        }
        if sizes.plan.unrelated_load {
            eprintln!("   unrelated load (run {})", rep + 1);
            let probe = Mutex::new(library::LatencyProbe::new(&*backend, &format!("{run}-ul")).await?);
            let load = Mutex::new(load::UnrelatedLoad::start(&url).await?);
            let mut idle = load::Phase { probe: &probe, load: &load, on: false, offset: 0 };
            let mut loaded = load::Phase { probe: &probe, load: &load, on: true, offset: n + warmup };
            let samples = interleave(&mut [&mut idle, &mut loaded], n, warmup, CHUNK).await?;
            runs.load_tps.push(load.into_inner().finish().await?);
            runs.idle.push(&samples[0]);
            runs.loaded.push(&samples[1]);
        }
        for (i, writers) in WRITERS.into_iter().enumerate().filter(|_| sizes.plan.throughput) {
            runs.ours[i].push(library::throughput(backend.clone(), &run, n, writers).await?);
            runs.bare[i].push(raw_postgres::bare_writes(&url, n, writers).await?);
        }
    }
    let probe = ServerProbe::Postgres {
        url: url.clone(),
        listen: backend.listener_application_name(),
        pool: backend.pool_application_name(),
    };
    bench_scale(backend.clone(), &probe, run, repeat, sizes, &mut runs.scale).await?;
    backend.close();
    Ok(runs.finish(
        Which::Postgres,
        Some("tokio-postgres BEGIN;UPDATE;NOTIFY;COMMIT -> LISTEN, our payload's JSON size"),
        Some("prepared SELECT of a PL/pgSQL UPDATE+INSERT+NOTIFY(event), autocommit -> LISTEN, same size"),
        Some("UPDATE alone"),
    ))
}

/// Opens the backend `url` names with `options`, keeping the last `retention` events.
pub(crate) async fn open(url: &str, options: OpenOptions, retention: u64) -> Result<Backend, String> {
    let options = options.with_retention(Retention::events(retention));
    completions::open(url, &options).await.map_err(|e| format!("connect: {e}"))
}

/// The error for a URL that opened another backend than the figure measures.
pub(crate) fn opened_as(backend: &Backend) -> String {
    format!("connect: the URL opened the {} backend, not the one measured", backend.name())
}

/// Figures 3 to 5 on one backend instance, `repeat` times each.
pub(crate) async fn bench_scale<B>(
    backend: Arc<B>,
    probe: &ServerProbe,
    run: &str,
    repeat: usize,
    sizes: Sizes,
    into: &mut Scale,
) -> Result<(), String>
where
    B: CompletionBackend + EngineBackend,
{
    if sizes.plan.fan_out {
        into.fan_out =
            SUBSCRIBERS.iter().map(|&subscribers| FanOutFigure { subscribers, ..Default::default() }).collect();
    }
    for rep in 0..repeat {
        let run = format!("{run}-s{rep}");
        for figure in &mut into.fan_out {
            eprintln!("   fan-out to {} (run {})", figure.subscribers, rep + 1);
            figure.runs.push(scale::fan_out(backend.clone(), probe, &run, figure.subscribers, sizes.fan_out).await?);
        }
        if sizes.plan.filtering {
            eprintln!("   filtering (run {})", rep + 1);
            into.filtering.push(scale::filtering(backend.clone(), &run, sizes.filtering).await?);
        }
    }
    if !sizes.plan.catch_up {
        return Ok(());
    }
    eprintln!("   catch-up: writing {} events", sizes.catch_up);
    // Written once: resuming does not consume the log, so every run reads the same backlog.
    let backlog = scale::backlog(backend.clone(), &format!("{run}-cu"), sizes.catch_up).await?;
    into.backlog_write_seconds = backlog.write_seconds;
    for _ in 0..repeat {
        into.catch_up.push(scale::catch_up(&*backend, &backlog).await?);
    }
    Ok(())
}
