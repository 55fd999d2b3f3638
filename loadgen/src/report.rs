//! The results: a progress line per second, the final table, the JSON file and the
//! HdrHistogram percentile distributions (`.hgrm`, the format HdrHistogram's plotters read).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use chat_protocol::ErrorCode;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::Report;
use crate::metrics::Metrics;
use crate::options::Options;

/// Percentiles of one latency, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// The percentiles of a histogram recorded in microseconds.
    #[must_use]
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }
}

/// One measured phase at one offered rate.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Step {
    /// Messages per second offered (scheduled).
    pub offered_rate: f64,
    /// Seconds measured.
    pub seconds: f64,
    /// Sends written per second.
    pub sends_per_sec: f64,
    /// Acks received per second.
    pub acks_per_sec: f64,
    /// Live deliveries received per second, all recipients together.
    pub deliveries_per_sec: f64,
    /// Connect to authenticated session: the first connections and the step's reconnects.
    pub handshake: Latency,
    /// Scheduled send time to ack.
    pub send_to_ack: Latency,
    /// Scheduled send time to arrival at each recipient.
    pub send_to_delivery: Latency,
    /// Error responses by code name.
    pub errors: BTreeMap<String, u64>,
    /// `Lagged` events.
    pub lagged: u64,
    /// `Gap` events.
    pub gaps_announced: u64,
    /// Bodies that did not match their op id.
    pub corrupted: u64,
    /// Sends dropped by the generator (a client's queue was full: the server fell behind).
    pub dropped: u64,
    /// Connections lost without being asked to.
    pub disconnects: u64,
    /// Publishes a peer broker refused or did not confirm.
    pub refused: u64,
    /// Own messages a peer broker sent back to their sender.
    pub echoed: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Connections established again after a churn or a loss.
    pub reconnects: u64,
    /// Deliveries replayed on resume.
    pub replayed: u64,
    /// Sends still queued or unanswered when the drain ended.
    pub unanswered: u64,
    /// Whether the drain ended with every send answered and every acked entry delivered
    /// (otherwise it ran out of time).
    pub settled: bool,
    /// The correctness check (chatd only).
    pub check: Option<Report>,
    /// Server CPU time (user + system) per live delivery, in microseconds.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The load generator's own CPU time per live delivery, in microseconds: beside the
    /// server's, whether the generator (on the same cores) was the one near its limit.
    pub loadgen_cpu_us_per_delivery: Option<f64>,
    /// Whether this rate was sustained: the sends kept up with the schedule, nothing failed,
    /// the check passed and (with `--find-max`) p99 delivery stayed within the bound.
    pub sustainable: bool,
    /// Why not, when not.
    pub limited_by: Option<String>,
    /// Whether the step failed on the `--find-max` latency bound and on nothing else.
    pub latency_only: bool,
    /// 0 for the first measurement at this rate; 1, 2, ... for `--find-max` repeats of a
    /// step that failed on its latency bound alone.
    pub attempt: u32,
    /// The histograms behind the percentiles (written as `.hgrm`).
    #[serde(skip)]
    pub histograms: Option<Histograms>,
}

/// The three latency histograms of a step.
#[derive(Clone, Debug)]
pub struct Histograms {
    /// Handshake.
    pub handshake: Histogram<u64>,
    /// Send to ack.
    pub ack: Histogram<u64>,
    /// Send to delivery.
    pub delivery: Histogram<u64>,
}

impl Step {
    /// A step from what was measured over `seconds` at `offered_rate`.
    #[must_use]
    pub(crate) fn new(
        offered_rate: f64,
        seconds: f64,
        counted: &Metrics,
        latencies: &Metrics,
    ) -> Step {
        let per_sec = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        Step {
            offered_rate,
            seconds,
            sends_per_sec: per_sec(counted.sends),
            acks_per_sec: per_sec(counted.acks),
            deliveries_per_sec: per_sec(counted.deliveries),
            handshake: Latency::of(&latencies.handshake),
            send_to_ack: Latency::of(&latencies.ack),
            send_to_delivery: Latency::of(&latencies.delivery),
            errors: latencies
                .errors
                .iter()
                .map(|(code, n)| (code_name(*code), *n))
                .collect(),
            lagged: latencies.lagged,
            gaps_announced: latencies.gaps_announced,
            corrupted: latencies.corrupted,
            dropped: latencies.dropped,
            disconnects: latencies.disconnects,
            refused: latencies.refused,
            echoed: latencies.echoed,
            connect_failures: latencies.connect_failures,
            reconnects: latencies.connects,
            replayed: latencies.replayed,
            unanswered: 0,
            settled: true,
            check: None,
            server_cpu_us_per_delivery: None,
            loadgen_cpu_us_per_delivery: None,
            sustainable: true,
            limited_by: None,
            latency_only: false,
            attempt: 0,
            histograms: Some(Histograms {
                handshake: latencies.handshake.clone(),
                ack: latencies.ack.clone(),
                delivery: latencies.delivery.clone(),
            }),
        }
    }
}

fn code_name(code: u16) -> String {
    ErrorCode(code)
        .name()
        .map_or_else(|| code.to_string(), str::to_owned)
}

/// Memory of the server with idle connections.
#[derive(Clone, Debug, Serialize)]
pub struct Idle {
    /// Authenticated connections held.
    pub connections: usize,
    /// Server resident memory before they connected, bytes.
    pub rss_before: u64,
    /// With all of them connected, bytes.
    pub rss_after: u64,
    /// (after - before) / connections.
    pub bytes_per_connection: f64,
}

/// Everything a run found.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The options of the run.
    pub options: Options,
    /// Clients (connections) used.
    pub clients: usize,
    /// Conversations.
    pub conversations: usize,
    /// Senders.
    pub senders: usize,
    /// Measured phases: one, or the `--find-max` steps in the order they ran.
    pub steps: Vec<Step>,
    /// `--find-max`: the highest offered rate that was sustained.
    pub max_sustainable_rate: Option<f64>,
    /// `--find-max`: whether the search ended by itself. `false` when it stopped at
    /// `--max-steps` with a rate still to try: the max is then only a lower bound.
    pub search_finished: Option<bool>,
    /// `idle`: memory per connection.
    pub idle: Option<Idle>,
    /// Whether every check passed (no lost, duplicated or reordered message in any step).
    pub correct: bool,
}

impl Summary {
    /// The final human-readable table.
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = String::new();
        let o = &self.options;
        let _ = writeln!(
            out,
            "\n{:?} against {:?} at {}: {} clients, {} conversations, {} senders, {}-byte bodies",
            o.scenario, o.target, o.server, self.clients, self.conversations, self.senders, o.size
        );
        if let Some(idle) = &self.idle {
            let _ = writeln!(
                out,
                "idle: {} authenticated connections; server memory {:.1} MiB -> {:.1} MiB: {:.0} bytes ({:.1} KiB) per connection",
                idle.connections,
                idle.rss_before as f64 / 1048576.0,
                idle.rss_after as f64 / 1048576.0,
                idle.bytes_per_connection,
                idle.bytes_per_connection / 1024.0
            );
        }
        for (i, step) in self.steps.iter().enumerate() {
            if self.steps.len() > 1 {
                let _ = write!(out, "\nstep {}: ", i + 1);
                if step.attempt > 0 {
                    let _ = write!(out, "(repeat {}) ", step.attempt);
                }
            } else {
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "offered {:.0} msg/s for {:.1} s: sent {:.0}/s, acked {:.0}/s, delivered {:.0}/s{}",
                step.offered_rate,
                step.seconds,
                step.sends_per_sec,
                step.acks_per_sec,
                step.deliveries_per_sec,
                match (&step.sustainable, &step.limited_by) {
                    (true, _) => String::from(" (sustained)"),
                    (false, Some(why)) => format!(" (NOT sustained: {why})"),
                    (false, None) => String::from(" (NOT sustained)"),
                }
            );
            let _ = writeln!(
                out,
                "  {:<18} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}   (ms)",
                "latency", "count", "p50", "p90", "p99", "p99.9", "max"
            );
            for (name, l) in [
                ("handshake", &step.handshake),
                ("send -> ack", &step.send_to_ack),
                ("send -> delivery", &step.send_to_delivery),
            ] {
                let _ = writeln!(
                    out,
                    "  {:<18} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    name, l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
            let mut problems: Vec<String> = step
                .errors
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            for (name, n) in [
                ("lagged", step.lagged),
                ("gaps announced", step.gaps_announced),
                ("corrupted", step.corrupted),
                ("dropped by the generator", step.dropped),
                ("connections lost", step.disconnects),
                ("publishes refused", step.refused),
                ("own messages echoed", step.echoed),
                ("failed connects", step.connect_failures),
                ("sends unanswered after the drain", step.unanswered),
            ] {
                if n > 0 {
                    problems.push(format!("{name} {n}"));
                }
            }
            let _ = writeln!(
                out,
                "  errors: {}",
                if problems.is_empty() {
                    "none".into()
                } else {
                    problems.join(", ")
                }
            );
            if step.replayed > 0 || step.reconnects > 0 {
                let _ = writeln!(
                    out,
                    "  reconnects {}, deliveries replayed on resume {}",
                    step.reconnects, step.replayed
                );
            }
            if !step.settled {
                let _ = writeln!(
                    out,
                    "  drain: ran out of time with messages still on their way"
                );
            }
            match &step.check {
                Some(r) => {
                    let _ = writeln!(
                        out,
                        "  check: {} expected, {} delivered; lost {}, duplicated {}, reordered {}, gaps {} ({} unexpected); hash chain: {} verified, {} anchored, {} broken, {} forked: {}",
                        r.expected,
                        r.delivered,
                        r.lost,
                        r.duplicated,
                        r.reordered,
                        r.gaps,
                        r.unexpected,
                        r.chain_verified,
                        r.chain_anchored,
                        r.chain_breaks,
                        r.forked,
                        if r.is_correct() { "OK" } else { "FAILED" }
                    );
                }
                None if self.idle.is_some() || o.scenario == crate::Scenario::Idle => {}
                None => {
                    let _ = writeln!(
                        out,
                        "  check: not run (the floor assigns no sequence numbers)"
                    );
                }
            }
            if let Some(cpu) = step.server_cpu_us_per_delivery {
                let _ = writeln!(out, "  server CPU: {cpu:.1} us per delivered message");
            }
            if let Some(cpu) = step.loadgen_cpu_us_per_delivery {
                let _ = writeln!(
                    out,
                    "  load generator CPU: {cpu:.1} us per delivered message"
                );
            }
        }
        if let Some(rate) = self.max_sustainable_rate {
            let _ = writeln!(
                out,
                "\nhighest sustainable rate: {rate:.0} msg/s (p99 send -> delivery within {} ms)",
                o.max_p99_ms
            );
            if self.search_finished == Some(false) {
                let _ = writeln!(
                    out,
                    "the search stopped at --max-steps ({}) with a rate still to try: a lower bound",
                    o.max_steps
                );
            }
        } else if o.find_max {
            let _ = writeln!(out, "\nno rate tried was sustainable");
        }
        let _ = writeln!(
            out,
            "result: {}",
            if self.correct {
                "correct"
            } else {
                "INCORRECT (see check)"
            }
        );
        out
    }

    /// Writes the JSON to `path` and, beside it, the percentile distributions of the last
    /// sustainable step (or the last step) as `STEM.handshake.hgrm`, `STEM.ack.hgrm`,
    /// `STEM.delivery.hgrm`.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")?;
        let step = self
            .steps
            .iter()
            .rev()
            .find(|s| s.sustainable)
            .or(self.steps.last());
        if let Some(histograms) = step.and_then(|s| s.histograms.as_ref()) {
            let stem = path.with_extension("");
            for (name, histogram) in [
                ("handshake", &histograms.handshake),
                ("ack", &histograms.ack),
                ("delivery", &histograms.delivery),
            ] {
                let file = format!("{}.{name}.hgrm", stem.display());
                std::fs::write(file, hgrm(histogram))?;
            }
        }
        Ok(())
    }
}

/// The percentile distribution in HdrHistogram's text format, values in milliseconds.
#[must_use]
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if histogram.is_empty() {
        return out;
    }
    let mut total = 0u64;
    for value in histogram.iter_quantiles(5) {
        total += value.count_since_last_iteration();
        let quantile = value.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - quantile))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {}",
            value.value_iterated_to() as f64 / 1000.0,
            quantile,
            total,
            inverse
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / 1000.0,
        histogram.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
    out
}

/// One progress line.
#[must_use]
pub(crate) fn progress(elapsed: f64, phase: &str, interval: &Metrics, seconds: f64) -> String {
    let per_sec = |n: u64| n as f64 / seconds.max(1e-9);
    let p99 = if interval.delivery.is_empty() {
        "-".to_owned()
    } else {
        format!(
            "{:.3} ms",
            interval.delivery.value_at_quantile(0.99) as f64 / 1000.0
        )
    };
    format!(
        "[{elapsed:6.1}s {phase:<9}] sent {:>8.0}/s  acked {:>8.0}/s  delivered {:>9.0}/s  p99 delivery {p99:>10}  errors {}  connects {}",
        per_sec(interval.sends),
        per_sec(interval.acks),
        per_sec(interval.deliveries),
        interval.failures(),
        interval.connects
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_ends_at_the_total_count() {
        let mut h = crate::metrics::histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount"));
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        let fields: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(fields[2], "1000", "{last}");
        assert!(text.contains("Total count    =         1000"));
    }
}
