//! The printed report.
use super::PUBLISH_IN_FLIGHT;
use super::baseline::BaselineResult;
use super::cpu::CpuUse;
use super::pipeline::PipelineResult;
use std::time::Duration;

/// The pipeline should reach at least this share of the raw broker's rate.
pub const TARGET_RATIO: f64 = 0.5;

pub struct Report {
    pub count: usize,
    pub prefetch: u16,
    pub concurrency: usize,
    pub shards: u16,
    pub pipeline: PipelineResult,
    pub baseline: BaselineResult,
    /// Peak resident set size in bytes (`VmHWM`), when known.
    pub peak_rss: Option<u64>,
}

impl Report {
    pub fn ratio(&self) -> f64 {
        let base = self.baseline.measurement.rate();
        if base > 0.0 && base.is_finite() {
            self.pipeline.measurement.rate() / base
        } else {
            f64::NAN
        }
    }

    pub fn print(&self) {
        let p = &self.pipeline.measurement;
        let b = &self.baseline.measurement;
        let ratio = self.ratio();
        println!();
        println!("escalator bench report");
        println!("======================");
        println!("  messages per stage (N)   {}", self.count);
        println!("  prefetch                 {}", self.prefetch);
        println!("  concurrency              {}", self.concurrency);
        println!("  shards                   {}", self.shards);
        println!("  publishes in flight      {PUBLISH_IN_FLIGHT} (publisher confirms awaited)");
        println!(
            "  event body               {} bytes",
            self.pipeline.body_bytes
        );
        println!();
        println!(
            "  {:<10} {:>16} {:>11} {:>11}",
            "", "throughput", "p50", "p99"
        );
        println!(
            "  {:<10} {:>10.1} esc/s {:>11} {:>11}",
            "pipeline",
            p.rate(),
            ms(p.p50()),
            ms(p.p99())
        );
        println!(
            "  {:<10} {:>10.1} msg/s {:>11} {:>11}",
            "baseline",
            b.rate(),
            ms(b.p50()),
            ms(b.p99())
        );
        println!();
        let verdict = if ratio >= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        };
        println!("  ratio pipeline/baseline  {ratio:.2}  (target >= {TARGET_RATIO}: {verdict})");
        println!(
            "  peak RSS                 {}",
            self.peak_rss.map_or_else(
                || "n/a".to_string(),
                |b| format!("{:.1} MiB (VmHWM)", b as f64 / 1_048_576.0)
            )
        );
        println!();
        println!("  pipeline detail");
        println!(
            "    first publish -> last event      {:.2} s (last publish confirmed after {:.2} s)",
            p.elapsed.as_secs_f64(),
            p.publish_elapsed.as_secs_f64()
        );
        if let Some(prof) = &self.pipeline.profile {
            println!(
                "    per escalation                   {:>9}  {:>9}",
                "p50", "p99"
            );
            for st in &prof.stages {
                println!(
                    "    {:<32} {:>9}  {:>9}  ({})",
                    st.label,
                    ms(st.p(50.0)),
                    ms(st.p(99.0)),
                    st.what
                );
            }
            println!(
                "    in the worker (attempt -> done)  mean {:.1} escalations at once, peak {} (concurrency {}); \
                 mean service time {}",
                prof.busy_mean,
                prof.busy_peak,
                self.concurrency,
                ms(prof.service_mean)
            );
            println!(
                "    tickets created                  {:.1}/s; {:.2} provider requests per escalation",
                prof.ticket_rate, prof.requests_per_escalation
            );
            if prof.samples.is_empty() {
                println!("    queue polls                      n/a");
            } else {
                let until = |d: Option<Duration>| {
                    d.map_or_else(
                        || "never".to_string(),
                        |d| format!("{:.2} s", d.as_secs_f64()),
                    )
                };
                println!(
                    "    intake queue backlog             peak {} ready, last seen {} after the first publish",
                    prof.intake_peak(),
                    until(prof.backlog_until(|s| s.intake_ready))
                );
                println!(
                    "    shard queues backlog             peak {} ready (in total), last seen {} after the first publish",
                    prof.shards_peak(),
                    until(prof.backlog_until(|s| s.shards_ready))
                );
            }
        }
        print_cpu(self.pipeline.cpu.as_ref(), self.count);
        println!("  baseline detail");
        println!(
            "    first publish -> last message    {:.2} s (last publish confirmed after {:.2} s)",
            b.elapsed.as_secs_f64(),
            b.publish_elapsed.as_secs_f64()
        );
        print_cpu(self.baseline.cpu.as_ref(), self.count);
        println!();
        println!(
            "  Throughput is N / (first publish -> last outbound message received); latency is"
        );
        println!(
            "  publish -> outbound message received, with all N published at once (in flight as"
        );
        println!("  above), so it includes queueing behind the backlog.");
        println!(
            "  Pipeline and baseline run in one process, together with the provider simulator,"
        );
        println!(
            "  on the same broker and vhost: absolute figures depend on this machine; the ratio"
        );
        println!("  pipeline/baseline is the meaningful figure.");
    }
}

fn print_cpu(cpu: Option<&CpuUse>, count: usize) {
    match cpu {
        Some(cpu) => {
            for (i, line) in cpu.describe(count).iter().enumerate() {
                let head = if i == 0 { "CPU during the run" } else { "" };
                println!("    {head:<32} {line}");
            }
        }
        None => println!("    CPU during the run               n/a"),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size of this process (`VmRSS`), in bytes.
pub fn current_rss() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// Bytes as MiB, or n/a.
pub fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "n/a".to_string(),
        |b| format!("{:.1} MiB", b as f64 / 1_048_576.0),
    )
}

/// A `kB` field of /proc/self/status.
#[cfg(target_os = "linux")]
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn proc_status_kib(_field: &str) -> Option<u64> {
    None
}
