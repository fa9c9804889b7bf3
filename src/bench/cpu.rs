//! CPU time used during a stage, from /proc (Linux only): the machine as a
//! whole, this process, RabbitMQ (`beam.smp`) and Redis (`redis-server`).
use std::time::Duration;

/// Clock ticks per second of /proc times (USER_HZ; 100 on every common Linux).
#[cfg(target_os = "linux")]
const TICKS_PER_SECOND: f64 = 100.0;

/// The processes accounted for: (label, /proc/PID/comm, a word of the command
/// line). `rabbitmqctl` runs in a `beam.smp` too: only the broker boots `rabbit`.
const PROCESSES: [(&str, &str, &str); 2] = [
    ("RabbitMQ", "beam.smp", "rabbit boot"),
    ("Redis", "redis-server", ""),
];

#[derive(Debug, Clone)]
pub struct Snapshot {
    busy: u64,
    total: u64,
    cores: usize,
    /// CPU ticks of this process, then of each of [`PROCESSES`].
    ticks: Vec<u64>,
}

/// CPU used between two snapshots.
#[derive(Debug, Clone)]
pub struct CpuUse {
    /// Busy share of all cores, 0..=1.
    pub machine_busy: f64,
    pub cores: usize,
    /// (label, CPU seconds): this process, RabbitMQ, Redis, then everything else.
    pub by_process: Vec<(&'static str, f64)>,
    pub wall: Duration,
}

impl Snapshot {
    #[cfg(target_os = "linux")]
    pub fn take() -> Option<Snapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = cpu
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let cores = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        let mut ticks = vec![process_ticks("self").unwrap_or(0)];
        let pids = all_pids();
        for (_, comm, word) in PROCESSES {
            let matches = |pid: &String| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
                    && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        String::from_utf8_lossy(&c)
                            .replace('\0', " ")
                            .contains(word)
                    })
            };
            ticks.push(
                pids.iter()
                    .filter(|pid| matches(pid))
                    .filter_map(|pid| process_ticks(pid))
                    .sum(),
            );
        }
        Some(Snapshot {
            busy: total.saturating_sub(idle),
            total,
            cores: cores.max(1),
            ticks,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn take() -> Option<Snapshot> {
        None
    }

    /// CPU used from `self` to `later`, over `wall` time.
    pub fn until(&self, later: &Snapshot, wall: Duration) -> CpuUse {
        let total = later.total.saturating_sub(self.total);
        let busy = later.busy.saturating_sub(self.busy);
        let labels =
            std::iter::once("escalator (this process)").chain(PROCESSES.iter().map(|(l, _, _)| *l));
        let mut by_process: Vec<(&'static str, f64)> = labels
            .zip(self.ticks.iter().zip(&later.ticks))
            .map(|(label, (a, b))| (label, seconds(b.saturating_sub(*a))))
            .collect();
        // /proc/stat counts every core: busy ticks are CPU seconds too.
        let named: f64 = by_process.iter().map(|(_, s)| s).sum();
        by_process.push(("other processes", (seconds(busy) - named).max(0.0)));
        CpuUse {
            machine_busy: if total > 0 {
                busy as f64 / total as f64
            } else {
                0.0
            },
            cores: later.cores,
            by_process,
            wall,
        }
    }
}

#[cfg(target_os = "linux")]
fn seconds(ticks: u64) -> f64 {
    ticks as f64 / TICKS_PER_SECOND
}

#[cfg(not(target_os = "linux"))]
fn seconds(_ticks: u64) -> f64 {
    0.0
}

/// utime + stime of /proc/`pid`/stat, in ticks.
#[cfg(target_os = "linux")]
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(target_os = "linux")]
fn all_pids() -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .collect()
        })
        .unwrap_or_default()
}

impl CpuUse {
    /// Lines for the report, with CPU milliseconds per message.
    pub fn describe(&self, messages: usize) -> Vec<String> {
        let per = |s: f64| s * 1000.0 / messages.max(1) as f64;
        let mut lines = vec![format!(
            "machine {:.0}% busy of {} cores over {:.2} s",
            self.machine_busy * 100.0,
            self.cores,
            self.wall.as_secs_f64()
        )];
        for (label, s) in &self.by_process {
            lines.push(format!(
                "  {label:<26} {s:>6.2} s CPU  {:>6.2} ms/msg",
                per(*s)
            ));
        }
        lines
    }
}
