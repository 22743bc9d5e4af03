//! CPU time and memory of a process from `/proc` (Linux).

/// utime + stime of `pid` in seconds (`self` for this process).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)` which may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime = field 14, stime = field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// A `Vm*` line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// `name=pid,name=pid` → [(name, pid)] (`--cpu-pids`). A name may repeat: its
/// processes' CPU is then summed (nginx's workers, say).
pub fn parse_pids(raw: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (name, pid) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--cpu-pids wants name=pid,...; got {pair:?}"))?;
            Ok((name.to_string(), pid.to_string()))
        })
        .collect()
}

/// CPU seconds every core spent busy (user, nice, system, irq, softirq, steal) since
/// boot, from the first line of `/proc/stat`.
pub fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0))
        .sum::<u64>();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some(busy as f64 / ticks)
}

#[cfg(test)]
mod tests {
    use super::parse_pids;

    #[test]
    fn cpu_pids_keep_their_order_and_repeated_names() {
        let pids = parse_pids(Some("app1=10,nginx=11,nginx=12,")).unwrap();
        let want: Vec<(String, String)> = [("app1", "10"), ("nginx", "11"), ("nginx", "12")]
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect();
        assert_eq!(pids, want);
        assert!(parse_pids(Some("app1:10")).is_err());
        assert!(parse_pids(None).unwrap().is_empty());
    }
}
