//! The machine and the processes: /proc readings, disk usage, fsync rate.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Peak RSS (VmHWM) of `pid`, in KiB.
pub fn vm_hwm_kb(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets `pid`'s peak RSS to its current RSS (`echo 5 > clear_refs`).
pub fn reset_peak_rss(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5")
}

/// Bytes allocated on disk under `dir` (like `du -s --block-size=1`).
pub fn disk_usage(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let meta = std::fs::symlink_metadata(dir)?;
    total += meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            total += disk_usage(&entry?.path())?;
        }
    }
    Ok(total)
}

/// Bytes on disk of a data directory, by part.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskSplit {
    /// The storage engine's files (`sled/` without the redo log).
    pub engine: u64,
    /// The redo log (`sled/wal/`).
    pub redo_log: u64,
    /// Everything else (`FORMAT`, the directories themselves).
    pub other: u64,
}

impl DiskSplit {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.engine + self.redo_log + self.other
    }
}

/// [`disk_usage`] of a data directory split into engine, redo log and the
/// rest (the layout is in migrations-notes/).
pub fn disk_split(data: &Path) -> std::io::Result<DiskSplit> {
    let total = disk_usage(data)?;
    let engine_dir = data.join("sled");
    let engine = disk_usage(&engine_dir).unwrap_or(0);
    let redo_log = disk_usage(&engine_dir.join("wal")).unwrap_or(0);
    Ok(DiskSplit {
        engine: engine - redo_log,
        redo_log,
        other: total - engine,
    })
}

/// `count` × (write 200 bytes + fdatasync) in `dir`; returns fsyncs per
/// second. `prepared`: the writes overwrite a file already written full of
/// zeros, as the service's redo log does (no size change to commit);
/// otherwise they append.
pub fn fsync_rate(dir: &Path, count: u32, prepared: bool) -> std::io::Result<f64> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = [b'x'; 200];
    if prepared {
        f.write_all_at(&vec![0u8; block.len() * count as usize], 0)?;
        f.sync_all()?;
    }
    let t = Instant::now();
    for i in 0..count as u64 {
        f.write_all_at(&block, i * block.len() as u64)?;
        f.sync_data()?;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(count as f64 / secs)
}

fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((idle, v.iter().sum()))
}

/// Busy and total jiffies of the whole machine so far.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let (idle, total) = cpu_times()?;
    Some((total - idle, total))
}

/// Share of all CPUs busy over `window` (0..=1): other load on the machine.
pub fn cpu_busy(window: Duration) -> Option<f64> {
    let (i0, t0) = cpu_times()?;
    std::thread::sleep(window);
    let (i1, t1) = cpu_times()?;
    let dt = (t1 - t0).max(1) as f64;
    Some(1.0 - (i1 - i0) as f64 / dt)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The machine, in one markdown-friendly paragraph of facts.
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub mem_gib: f64,
    pub disk: String,
    pub kernel: String,
}

pub fn machine(dir: &Path) -> Machine {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let d = dir.to_string_lossy().into_owned();
    let df = sh("df", &["-h", "--output=source,fstype,size,avail", &d]);
    let df_line = df.lines().nth(1).unwrap_or("").to_owned();
    let source = df_line.split_whitespace().next().unwrap_or("").to_owned();
    let dev = source.trim_start_matches("/dev/");
    let lsblk = if dev.is_empty() {
        String::new()
    } else {
        sh("lsblk", &["-dno", "NAME,SIZE,ROTA,MODEL", &source])
    };
    let disk = format!(
        "{} — df (source, type, size, avail): {}; lsblk (name, size, rotational, model): {}",
        d,
        df_line.split_whitespace().collect::<Vec<_>>().join(" "),
        lsblk.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    Machine {
        cores,
        cpu,
        mem_gib: mem_kb as f64 / 1024.0 / 1024.0,
        disk,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// Versions of named packages in a Cargo.lock.
pub fn lock_versions(lock: &Path, names: &[&str]) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let Some(v) = line.strip_prefix("version = ") {
            if let Some(n) = name.take() {
                if names.contains(&n.as_str()) {
                    out.push((n, v.trim_matches('"').to_owned()));
                }
            }
        }
    }
    out
}

/// `git describe --always --dirty` of the repository at `dir`.
pub fn git_describe(dir: &Path) -> String {
    let d = dir.to_string_lossy().into_owned();
    let s = sh("git", &["-C", &d, "describe", "--always", "--dirty"]);
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

/// CPU time (user + system, all threads) used by `pid` so far, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time (user + system) used so far by the threads of `pid` named
/// `name` (their `comm`), in seconds; `None` when it has no such thread.
pub fn thread_cpu_secs(pid: u32, name: &str) -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let task = entry.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(task.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        if let Some(secs) = stat_cpu_secs(&text) {
            *total.get_or_insert(0.0) += secs;
        }
    }
    total
}

/// utime + stime of a `/proc/…/stat` line, in seconds.
fn stat_cpu_secs(text: &str) -> Option<f64> {
    let after = text.rsplit_once(')')?.1;
    let mut f = after.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) as f64 / ticks)
}

/// CPU time this thread has used, in seconds (`CLOCK_THREAD_CPUTIME_ID`).
pub fn this_thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Niceness of this process (field 19 of /proc/self/stat).
pub fn niceness() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    text.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(16)?
        .parse()
        .ok()
}
