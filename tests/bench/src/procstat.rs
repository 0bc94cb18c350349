//! RSS and CPU time of a process, from /proc (Linux only, like the target).

use std::sync::OnceLock;

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_kib: u64,
    pub cpu_s: f64,
}

fn ticks_per_sec() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 overall: 11 and 12 after ")".
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Sample { rss_kib, cpu_s: ticks / ticks_per_sec() })
}

/// CPU seconds the whole machine has spent busy (all cores, since boot):
/// the busy fields of /proc/stat's first line. Compared with the sum over
/// our own processes, it shows how much else ran during a measurement.
pub fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else { return 0.0 };
    // user nice system idle iowait irq softirq steal …
    let f: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum();
    busy / ticks_per_sec()
}

/// Wait (at most `limit`) until the machine is nearly idle (under 0.3 busy
/// cores over a second), so a benchmark does not start in the middle of
/// someone's compile. Returns the busy cores last seen.
pub async fn wait_quiet(limit: std::time::Duration) -> f64 {
    let deadline = tokio::time::Instant::now() + limit;
    let mut warned = false;
    loop {
        let b0 = machine_busy_s();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let busy = machine_busy_s() - b0;
        if busy < 0.3 || tokio::time::Instant::now() >= deadline {
            if busy >= 0.3 {
                eprintln!("warning: the machine is busy ({busy:.2} cores) with something else; figures will suffer");
            }
            return busy;
        }
        if !warned {
            eprintln!("waiting for the machine to go quiet ({busy:.2} cores busy with something else)…");
            warned = true;
        }
    }
}
