//! Percentiles and rates. Latencies are kept in microseconds as f64 so that the table and
//! the JSON carry the same numbers.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

/// Latency percentiles over one run, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// How many samples.
    pub samples: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest sample.
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of `samples` (nearest rank). Empty input gives zeros.
    pub fn from_samples(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest sample with at least q of all samples at or below it.
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1e6
        };
        Self { samples: samples.len(), p50_us: at(0.50), p99_us: at(0.99), p999_us: at(0.999), max_us: at(1.0) }
    }
}

/// One end-to-end measurement, from a write call to the event arriving.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Write call -> event on the subscriber.
    pub end_to_end: Duration,
    /// The write call alone, until its reply.
    pub call: Duration,
}

/// Something that measures one write -> event round at a time (ours, or a raw baseline),
/// set up once (subscriptions, tables) and sampled many times.
pub trait Probe {
    /// Writes the `i`-th event and waits for it.
    fn sample(&mut self, i: usize) -> impl Future<Output = Result<Sample, String>>;
}

/// [`Probe`] in a form that can be a trait object, so that [`interleave`] takes probes of
/// different types (ours, a raw baseline, a same-semantics floor) in one list. Every probe
/// gets it; every sample then costs one boxed future, ours and the baselines' alike.
pub trait AnyProbe {
    /// [`Probe::sample`], boxed.
    fn sample_boxed(&mut self, i: usize) -> Pin<Box<dyn Future<Output = Result<Sample, String>> + '_>>;
}

impl<P: Probe> AnyProbe for P {
    fn sample_boxed(&mut self, i: usize) -> Pin<Box<dyn Future<Output = Result<Sample, String>> + '_>> {
        Box::pin(self.sample(i))
    }
}

/// Samples of every probe, taken `chunk` at a time in turn (the first, usually ours, then
/// each baseline in order), so that a noisy neighbour on a shared machine hits all of them
/// alike within milliseconds, not only within one repetition. Each probe is sampled with the
/// same `i`s (0 to `n + warmup`); the first `warmup` of each are not kept. Returns one list
/// per probe, in the order given.
pub async fn interleave(
    probes: &mut [&mut dyn AnyProbe],
    n: usize,
    warmup: usize,
    chunk: usize,
) -> Result<Vec<Vec<Sample>>, String> {
    let mut kept: Vec<Vec<Sample>> = probes.iter().map(|_| Vec::with_capacity(n)).collect();
    let mut i = 0;
    while i < n + warmup {
        let end = (i + chunk.max(1)).min(n + warmup);
        for (probe, kept) in probes.iter_mut().zip(&mut kept) {
            for j in i..end {
                let s = probe.sample_boxed(j).await?;
                if j >= warmup {
                    kept.push(s);
                }
            }
        }
        i = end;
    }
    Ok(kept)
}

/// End-to-end and call latencies of `samples`.
pub fn latencies(samples: &[Sample]) -> (Latency, Latency) {
    let mut e2e: Vec<Duration> = samples.iter().map(|s| s.end_to_end).collect();
    let mut call: Vec<Duration> = samples.iter().map(|s| s.call).collect();
    (Latency::from_samples(&mut e2e), Latency::from_samples(&mut call))
}

/// Percentiles of what each sample took after its write call's reply (end to end minus the
/// call: the delivery, or how long the event trailed the reply; 0 when it arrived first).
pub fn delivery(samples: &[Sample]) -> Latency {
    let mut after: Vec<Duration> = samples.iter().map(|s| s.end_to_end.saturating_sub(s.call)).collect();
    Latency::from_samples(&mut after)
}

/// `ours / base`, or `None` when the base is zero or missing.
pub fn ratio(ours: f64, base: Option<f64>) -> Option<f64> {
    match base {
        Some(b) if b > 0.0 => Some(ours / b),
        _ => None,
    }
}

/// The median of `values` (mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One figure measured several times: the median (what the table quotes) and every run
/// (the spread).
#[derive(Clone, Debug, Serialize)]
pub struct Repeated<T> {
    /// Field-wise median over the runs.
    pub median: T,
    /// Each run's figure, in run order.
    pub runs: Vec<T>,
}

impl Repeated<Latency> {
    /// Field-wise medians of `runs` (its `samples` is the total over all runs).
    pub fn of_latencies(runs: Vec<Latency>) -> Self {
        let field = |f: fn(&Latency) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let median = Latency {
            samples: runs.iter().map(|l| l.samples).sum(),
            p50_us: field(|l| l.p50_us),
            p99_us: field(|l| l.p99_us),
            p999_us: field(|l| l.p999_us),
            max_us: field(|l| l.max_us),
        };
        Self { median, runs }
    }

    /// `min-max` of the runs' p50, for the table.
    pub fn p50_range(&self) -> String {
        range(&self.runs.iter().map(|l| l.p50_us).collect::<Vec<_>>())
    }
}

impl Repeated<f64> {
    /// The median of `runs`.
    pub fn of(runs: Vec<f64>) -> Self {
        Self { median: median(&runs), runs }
    }

    /// `min-max` of the runs, for the table.
    pub fn range(&self) -> String {
        range(&self.runs)
    }
}

fn range(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() { "-".to_string() } else { format!("{min:.0}-{max:.0}") }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use super::{Probe, Sample, delivery, interleave};

    /// Records which probe was sampled with which `i`, in order.
    struct Recorder<'a> {
        name: char,
        log: &'a RefCell<Vec<(char, usize)>>,
    }

    impl Probe for Recorder<'_> {
        async fn sample(&mut self, i: usize) -> Result<Sample, String> {
            self.log.borrow_mut().push((self.name, i));
            let call = Duration::from_micros(i as u64);
            Ok(Sample { end_to_end: call + Duration::from_micros(1), call })
        }
    }

    #[tokio::test]
    async fn interleave_takes_every_probe_in_turn_a_chunk_at_a_time() {
        let log = RefCell::new(Vec::new());
        let (mut a, mut b, mut c) =
            (Recorder { name: 'a', log: &log }, Recorder { name: 'b', log: &log }, Recorder { name: 'c', log: &log });
        let kept = interleave(&mut [&mut a, &mut b, &mut c], 3, 2, 2).await.unwrap();
        let order: String = log.borrow().iter().map(|(name, _)| *name).collect();
        assert_eq!(order, "aabbccaabbccabc");
        // Every probe sampled with the same i's, 0 to n + warmup; the warm-up ones not kept.
        for samples in &kept {
            let is: Vec<u128> = samples.iter().map(|s| s.call.as_micros()).collect();
            assert_eq!(is, [2, 3, 4]);
        }
        assert_eq!(delivery(&kept[0]).p50_us, 1.0);
    }
}
