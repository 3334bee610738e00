//! The tables printed at the end of a run, from a [`Report`].

use crate::Which;
use crate::report::Report;
use crate::stats::{self, Latency, Repeated, ratio};
use crate::{cluster, scale};

pub(crate) fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".to_string())
}

pub(crate) fn render(report: &Report) -> String {
    use std::fmt::Write;
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncompletion-bench: {} completions per figure, medians of {} runs, {:.0} s in all",
        report.completions, report.repeat, report.seconds
    );
    let _ = writeln!(out, "command: {}", report.command);
    let _ = writeln!(out, "machine: {} cores ({}), {} MiB, Linux {}", m.cores, m.cpu, m.memory_mib, m.kernel);
    let _ = writeln!(
        out,
        "servers: {}; PostgreSQL {}",
        m.valkey.as_deref().unwrap_or("valkey not run"),
        m.postgres.as_deref().unwrap_or("not run")
    );
    if !report.results.is_empty() {
        render_backends(report, &mut out);
    }
    if let Some(row) = &report.cluster {
        cluster::render(row, &mut out);
    }
    for e in &report.errors {
        let _ = writeln!(out, "not measured: {e}");
    }
    out
}

/// The per-backend tables (figures 1 to 5).
pub(crate) fn render_backends(report: &Report, out: &mut String) {
    use std::fmt::Write;
    let name = backend_name;
    if report.results.iter().any(|r| r.latency.is_some()) {
        let _ = writeln!(
            out,
            "\nend-to-end latency, terminal write call -> event on a subscriber stream (us); call50: p50 of the write call's own reply"
        );
        let _ = writeln!(
            out,
            "{:<9} {:>6} {:>6} {:>6} {:>11} {:>6} | {:>6} {:>6} {:>6} {:>11} | {:>6} {:>6}  raw baseline",
            "backend",
            "p50",
            "p99",
            "p99.9",
            "p50 range",
            "call50",
            "raw50",
            "raw99",
            "raw999",
            "p50 range",
            "p50 x",
            "p99 x"
        );
        for r in &report.results {
            let (Some(latency), Some(write_call)) = (&r.latency, &r.write_call) else { continue };
            let ours = &latency.median;
            let raw = r.raw_latency.as_ref();
            let cell = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".to_string());
            let _ = writeln!(
                out,
                "{:<9} {:>6.0} {:>6.0} {:>6.0} {:>11} {:>6.0} | {:>6} {:>6} {:>6} {:>11} | {:>6} {:>6}  {}",
                name(r.backend),
                ours.p50_us,
                ours.p99_us,
                ours.p999_us,
                latency.p50_range(),
                write_call.median.p50_us,
                cell(raw.map(|l| l.median.p50_us)),
                cell(raw.map(|l| l.median.p99_us)),
                cell(raw.map(|l| l.median.p999_us)),
                raw.map(|l| l.p50_range()).unwrap_or_else(|| "-".to_string()),
                fmt_ratio(ratio(ours.p50_us, raw.map(|l| l.median.p50_us))),
                fmt_ratio(ratio(ours.p99_us, raw.map(|l| l.median.p99_us))),
                r.raw_label.map(|l| format!("{l}, {} B payload", r.payload_bytes)).unwrap_or_default(),
            );
        }
    }
    if report.results.iter().any(|r| r.floor.is_some()) {
        render_floors(report, out);
    }
    if let Some(w) = report.results.iter().find_map(|r| r.waits.as_ref()) {
        let _ = writeln!(
            out,
            "\nconcurrent waits on one Waiter (memory backend): {} pending, {:.0} bytes of heap per pending wait (its task, future, table entry and channel), registered in {:.1} s",
            w.waits, w.heap_per_wait, w.register_seconds
        );
        let _ = writeln!(out, "{:<22} {:>8} {:>8} {:>8}", "complete -> (us)", "p50", "p99", "samples");
        for (what, l) in [("the wait wakes up", &w.wake), ("a plain stream's item", &w.stream)] {
            let _ = writeln!(out, "{what:<22} {:>8.0} {:>8.0} {:>8}", l.p50_us, l.p99_us, l.samples);
        }
    }
    if report.results.iter().any(|r| r.unrelated_load.is_some()) {
        render_unrelated_load(report, out);
    }
    if report.results.iter().any(|r| !r.throughput.is_empty()) {
        let _ = writeln!(out, "\nwrite throughput (completions/s; bare: writes/s)");
        let _ = writeln!(
            out,
            "{:<9} {:>7} {:>9} {:>15} | {:>9} {:>15} | {:>9}  bare baseline",
            "backend", "writers", "ours", "range", "bare", "range", "ours/bare"
        );
        for r in &report.results {
            for t in &r.throughput {
                let _ = writeln!(
                    out,
                    "{:<9} {:>7} {:>9.0} {:>15} | {:>9} {:>15} | {:>9}  {}",
                    name(r.backend),
                    t.writers,
                    t.ours.median,
                    t.ours.range(),
                    t.bare.as_ref().map(|b| format!("{:.0}", b.median)).unwrap_or_else(|| "-".to_string()),
                    t.bare.as_ref().map(Repeated::range).unwrap_or_else(|| "-".to_string()),
                    fmt_ratio(ratio(t.ours.median, t.bare.as_ref().map(|b| b.median))),
                    t.bare_label.unwrap_or("none (in-process)"),
                );
            }
        }
    }
    if report.results.iter().any(|r| !r.scale.fan_out.is_empty()) {
        let _ = writeln!(
            out,
            "\nfan-out: {} writers, one backend instance; delivered = subscribers x events / (first write -> last delivery)",
            scale::WRITERS
        );
        let _ = writeln!(
            out,
            "{:<9} {:>5} {:>6} {:>11} {:>19} | {:>11} {:>11} | {:>10} {:>10} {:>10}",
            "backend",
            "subs",
            "events",
            "delivered/s",
            "range",
            "server conns",
            "of them sub",
            "RSS/sub",
            "heap idle",
            "heap used"
        );
        for r in &report.results {
            for f in &r.scale.fan_out {
                let conns = f.runs.last().and_then(|run| run.connections);
                let cell = |v: Option<usize>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string());
                let _ = writeln!(
                    out,
                    "{:<9} {:>5} {:>6} {:>11.0} {:>19} | {:>11} {:>11} | {:>8.1} K {:>8.1} K {:>8.1} K",
                    name(r.backend),
                    f.subscribers,
                    f.runs.first().map(|run| run.events).unwrap_or(0),
                    f.delivered_per_s,
                    Repeated::of(f.runs.iter().map(|run| run.delivered_per_s).collect()).range(),
                    cell(conns.map(|c| c.total)),
                    cell(conns.map(|c| c.subscriber)),
                    f.rss_per_subscriber / 1024.0,
                    f.heap_per_subscriber_open / 1024.0,
                    f.heap_per_subscriber / 1024.0,
                );
            }
        }
    }
    if report.results.iter().any(|r| !r.scale.filtering.is_empty()) {
        let _ = writeln!(
            out,
            "\nfiltering: {} namespaces, {} writers; one subscriber filtered to one namespace vs one unfiltered",
            scale::NAMESPACES,
            scale::WRITERS
        );
        let _ = writeln!(
            out,
            "{:<9} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6}",
            "backend", "events", "flt p50", "all p50", "x", "flt CPU", "all CPU", "x"
        );
        for r in &report.results {
            let runs = &r.scale.filtering;
            if runs.is_empty() {
                continue;
            }
            let med = |f: fn(&scale::Filtering) -> f64| stats::median(&runs.iter().map(f).collect::<Vec<_>>());
            let (fp50, up50) = (med(|f| f.filtered.latency.p50_us), med(|f| f.unfiltered.latency.p50_us));
            let (fcpu, ucpu) = (med(|f| f.filtered.cpu_ms_per_1000), med(|f| f.unfiltered.cpu_ms_per_1000));
            let _ = writeln!(
                out,
                "{:<9} {:>6} | {:>6.0}us {:>6.0}us {:>6} | {:>6.0}ms {:>6.0}ms {:>6}  (p50 of the one namespace's events; process CPU per 1000 written)",
                name(r.backend),
                runs[0].events,
                fp50,
                up50,
                fmt_ratio(ratio(fp50, Some(up50))),
                fcpu,
                ucpu,
                fmt_ratio(ratio(fcpu, Some(ucpu))),
            );
        }
    }
    if report.results.iter().any(|r| !r.scale.catch_up.is_empty()) {
        let _ = writeln!(
            out,
            "\ncatch-up: StartFrom::After(cursor) with the events behind it, subscribe call -> last of them"
        );
        let _ = writeln!(out, "{:<9} {:>7} {:>10} {:>17} {:>5}", "backend", "events", "events/s", "range", "gaps");
        for r in &report.results {
            let runs = &r.scale.catch_up;
            if runs.is_empty() {
                continue;
            }
            let rates = Repeated::of(runs.iter().map(|c| c.events_per_s).collect());
            let _ = writeln!(
                out,
                "{:<9} {:>7} {:>10.0} {:>17} {:>5}",
                name(r.backend),
                runs[0].events,
                rates.median,
                rates.range(),
                runs.iter().map(|c| c.gaps).sum::<usize>(),
            );
        }
    }
}

pub(crate) fn backend_name(b: Which) -> String {
    match b {
        Which::ValkeyCluster => "valkey-cluster".to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Figure 1's split and floors: p50 of each probe end to end, of its write call alone and of
/// what came after the call's reply (per sample), and ours against the raw pub/sub baseline
/// and against the same-semantics floor.
pub(crate) fn render_floors(report: &Report, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "\nlatency split and floors (p50, us; dlv: end to end minus the call, per sample), ours / raw pub/sub / same semantics in one round trip, interleaved"
    );
    let _ = writeln!(
        out,
        "{:<9} {:>5} {:>6} {:>5} | {:>5} {:>6} {:>5} | {:>5} {:>5} {:>6} {:>5} {:>11} | {:>7} {:>7} {:>7}  floor",
        "backend",
        "ours",
        "call",
        "dlv",
        "raw",
        "call",
        "dlv",
        "flr50",
        "flr99",
        "call",
        "dlv",
        "flr range",
        "x raw",
        "x floor",
        "p99 x f"
    );
    for r in &report.results {
        let (Some(latency), Some(call), Some(delivery), Some(floor)) =
            (&r.latency, &r.write_call, &r.delivery, &r.floor)
        else {
            continue;
        };
        let p50 = |l: Option<&Repeated<Latency>>| l.map(|l| format!("{:.0}", l.median.p50_us)).unwrap_or("-".into());
        let _ = writeln!(
            out,
            "{:<9} {:>5.0} {:>6.0} {:>5.0} | {:>5} {:>6} {:>5} | {:>5.0} {:>5.0} {:>6.0} {:>5.0} {:>11} | {:>7} {:>7} {:>7}  {}",
            backend_name(r.backend),
            latency.median.p50_us,
            call.median.p50_us,
            delivery.median.p50_us,
            p50(r.raw_latency.as_ref()),
            p50(r.raw_call.as_ref()),
            p50(r.raw_delivery.as_ref()),
            floor.end_to_end.median.p50_us,
            floor.end_to_end.median.p99_us,
            floor.call.median.p50_us,
            floor.delivery.median.p50_us,
            floor.end_to_end.p50_range(),
            fmt_ratio(ratio(latency.median.p50_us, r.raw_latency.as_ref().map(|l| l.median.p50_us))),
            fmt_ratio(ratio(latency.median.p50_us, Some(floor.end_to_end.median.p50_us))),
            fmt_ratio(ratio(latency.median.p99_us, Some(floor.end_to_end.median.p99_us))),
            r.floor_label.unwrap_or_default(),
        );
    }
}

/// Figure 6: ours with the unrelated load against ours idle, interleaved.
pub(crate) fn render_unrelated_load(report: &Report, out: &mut String) {
    use std::fmt::Write;
    let Some((r, f)) = report.results.iter().find_map(|r| r.unrelated_load.as_ref().map(|f| (r, f))) else {
        return;
    };
    let _ = writeln!(
        out,
        "\nlatency with unrelated load ({} writers on a table of their own, each BEGIN; INSERT; {:.0} ms; UPDATE; COMMIT; plus one session idle in transaction holding an xid) vs idle, interleaved (us)",
        f.writers, f.in_transaction_ms
    );
    let _ = writeln!(
        out,
        "{:<9} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} {:>6} {:>11} | {:>6} {:>6} | {:>7}",
        "backend",
        "idle50",
        "idle99",
        "call50",
        "dlv50",
        "load50",
        "load99",
        "call50",
        "dlv50",
        "p50 range",
        "p50 x",
        "p99 x",
        "load tx/s"
    );
    let (idle, loaded) = (&f.idle, &f.loaded);
    let _ = writeln!(
        out,
        "{:<9} {:>6.0} {:>6.0} {:>6.0} {:>6.0} | {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>11} | {:>6} {:>6} | {:>9.0}",
        backend_name(r.backend),
        idle.end_to_end.median.p50_us,
        idle.end_to_end.median.p99_us,
        idle.call.median.p50_us,
        idle.delivery.median.p50_us,
        loaded.end_to_end.median.p50_us,
        loaded.end_to_end.median.p99_us,
        loaded.call.median.p50_us,
        loaded.delivery.median.p50_us,
        loaded.end_to_end.p50_range(),
        fmt_ratio(ratio(loaded.end_to_end.median.p50_us, Some(idle.end_to_end.median.p50_us))),
        fmt_ratio(ratio(loaded.end_to_end.median.p99_us, Some(idle.end_to_end.median.p99_us))),
        f.load_transactions_per_s.median,
    );
}
