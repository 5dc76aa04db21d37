//! `b24-bench restarts`: restarts under load, as a number. Senders post
//! continuously, one event per connection with `Connection: close` (as
//! Bitrix24's PHP sender does), while the service is restarted (SIGTERM,
//! wait for exit 0, start again) several times: once on a socket this
//! process holds and passes as fd 3 (what `b24-journal.socket` does), once
//! binding `--listen` itself. Prints requests, 200s, refused and failed
//! connections, and the longest answer time, overall and for requests
//! that overlapped a restart; then checks that every acknowledged event
//! was stored.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::gen;

/// Options of `restarts`.
#[derive(Debug, clap::Args)]
pub struct RestartsArgs {
    /// The service binary.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/release/b24-journal"
    )]
    server_bin: PathBuf,
    /// Concurrent senders.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Restarts per mode.
    #[arg(long, default_value_t = 5)]
    restarts: usize,
    /// Seconds each process serves before it is restarted.
    #[arg(long, default_value_t = 1.0)]
    up_secs: f64,
    /// Milliseconds between a process's exit and the next start (0: a
    /// plain `systemctl restart`; systemd's `RestartSec=` after a crash).
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// Which modes: `activated`, `listen` or `both`.
    #[arg(long, default_value = "both")]
    mode: String,
    /// Work directory for the data directories and logs (default: a new
    /// directory under the system's temp dir, removed afterwards).
    #[arg(long, value_name = "DIR")]
    tmp: Option<PathBuf>,
}

/// Backlog of the held socket, as `scripts/b24-journal.socket` sets it.
const BACKLOG: i32 = 4096;
/// The read token of the service under test (to count what it stored).
const READ_TOKEN: &str = "bench-restarts-read-token";
/// Portals the senders post as.
const PORTALS: usize = 8;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Refused,
    Failed,
}

/// One request.
struct Sent {
    started: Instant,
    took: Duration,
    outcome: Outcome,
}

/// One mode's figures.
struct Figures {
    mode: &'static str,
    sent: usize,
    ok: usize,
    refused: usize,
    failed: usize,
    longest: Duration,
    longest_in_restart: Duration,
    stored: u64,
    /// Longest SIGTERM-to-exit and start-to-`/healthz` 200 of the restarts.
    longest_stop: Duration,
    longest_start: Duration,
}

/// Runs the modes asked for and prints a table.
pub fn run(a: RestartsArgs) -> anyhow::Result<()> {
    let modes: &[&'static str] = match a.mode.as_str() {
        "both" => &["activated", "listen"],
        "activated" => &["activated"],
        "listen" => &["listen"],
        other => bail!("--mode {other:?}: use activated, listen or both"),
    };
    if !a.server_bin.exists() {
        bail!(
            "{} not found: cargo build --release first",
            a.server_bin.display()
        );
    }
    let (tmp, remove) = match &a.tmp {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("b24-bench-restarts-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let mut rows = Vec::new();
    for mode in modes {
        let f = run_mode(&a, mode, &tmp.join(mode))?;
        println!(
            "restarts mode={} requests={} ok={} refused={} failed={} longest_ms={} longest_during_restarts_ms={} stored={} longest_stop_ms={} longest_start_ms={}",
            f.mode, f.sent, f.ok, f.refused, f.failed, f.longest.as_millis(), f.longest_in_restart.as_millis(), f.stored,
            f.longest_stop.as_millis(), f.longest_start.as_millis()
        );
        rows.push(f);
    }
    println!();
    println!(
        "| mode | requests | 200 | refused | failed | longest answer | longest answer during restarts | stored = acknowledged |"
    );
    println!("|------|---------:|----:|--------:|-------:|---------------:|-------------------------------:|:---------------------:|");
    for f in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} ms | {} ms | {} |",
            f.mode,
            f.sent,
            f.ok,
            f.refused,
            f.failed,
            f.longest.as_millis(),
            f.longest_in_restart.as_millis(),
            if f.stored == f.ok as u64 { "yes" } else { "NO" }
        );
    }
    if remove {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if rows.iter().any(|f| f.stored != f.ok as u64) {
        bail!("an acknowledged event is missing, or an unacknowledged one stored");
    }
    Ok(())
}

/// The service of one mode: how to start it and where it listens.
struct Service<'a> {
    args: &'a RestartsArgs,
    dir: &'a Path,
    addr: SocketAddr,
    held: Option<TcpListener>,
    starts: usize,
}

impl Service<'_> {
    fn start(&mut self) -> anyhow::Result<Child> {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("service-{}.log", self.starts)))?;
        let mut cmd = Command::new(&self.args.server_bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(held) = &self.held {
            let fd = held.as_raw_fd();
            // SAFETY: only dup2, getpid and setenv between fork and exec, on
            // data prepared before (the environment is the inherited one:
            // std would pass a copy of its own to exec if one were set here).
            unsafe {
                cmd.pre_exec(move || {
                    // dup2(3, 3) would keep FD_CLOEXEC: clear it instead.
                    let moved = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, 3)
                    };
                    if moved < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The pid in decimal, NUL-terminated, without allocating.
                    let mut buf = [0u8; 12];
                    let (mut n, mut i) = (libc::getpid() as u32, buf.len() - 1);
                    loop {
                        i -= 1;
                        buf[i] = b'0' + (n % 10) as u8;
                        n /= 10;
                        if n == 0 {
                            break;
                        }
                    }
                    libc::setenv(c"LISTEN_FDS".as_ptr(), c"1".as_ptr(), 1);
                    libc::setenv(c"LISTEN_PID".as_ptr(), buf[i..].as_ptr().cast(), 1);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("start the service")?;
        self.wait_ready(&mut child)?;
        Ok(child)
    }

    /// Until `/healthz` answers 200.
    fn wait_ready(&self, child: &mut Child) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http(self.addr, "GET /healthz HTTP/1.1", "", "") {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the service exited with {status} at start (logs in {})",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!(
            "the service did not answer /healthz within 60 s (logs in {})",
            self.dir.display()
        )
    }
}

fn run_mode(a: &RestartsArgs, mode: &'static str, dir: &Path) -> anyhow::Result<Figures> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let portals = gen::portals(PORTALS, 31);
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "data_dir = \"{}\"\nread_token = \"{READ_TOKEN}\"\n{}",
            dir.join("data").display(),
            gen::portals_toml(&portals)
        ),
    )?;
    let held = (mode == "activated").then(hold_socket).transpose()?;
    let addr = match &held {
        Some(l) => l.local_addr()?,
        None => TcpListener::bind("127.0.0.1:0")?.local_addr()?,
    };
    let mut service = Service {
        args: a,
        dir,
        addr,
        held,
        starts: 0,
    };
    let mut child = service.start()?;
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..a.clients)
        .map(|c| {
            let stop = stop.clone();
            let portal = portals[c % portals.len()].clone();
            std::thread::spawn(move || send_until(stop, addr, portal, c as u64))
        })
        .collect();
    let mut windows = Vec::new();
    let (mut longest_stop, mut longest_start) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..a.restarts {
        std::thread::sleep(Duration::from_secs_f64(a.up_secs));
        let began = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait()?;
        if !status.success() {
            bail!(
                "the service exited with {status} on SIGTERM (logs in {})",
                dir.display()
            );
        }
        longest_stop = longest_stop.max(began.elapsed());
        std::thread::sleep(Duration::from_millis(a.gap_ms));
        let starting = Instant::now();
        child = service.start()?;
        longest_start = longest_start.max(starting.elapsed());
        windows.push((began, Instant::now()));
    }
    std::thread::sleep(Duration::from_secs_f64(a.up_secs));
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<Sent> = senders
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let stored = stored_events(addr)?;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let overlaps = |s: &Sent| {
        let end = s.started + s.took;
        windows.iter().any(|(b, e)| s.started <= *e && end >= *b)
    };
    let count = |o| sent.iter().filter(|s| s.outcome == o).count();
    Ok(Figures {
        mode,
        sent: sent.len(),
        ok: count(Outcome::Ok),
        refused: count(Outcome::Refused),
        failed: count(Outcome::Failed),
        longest: sent.iter().map(|s| s.took).max().unwrap_or_default(),
        longest_in_restart: sent
            .iter()
            .filter(|s| overlaps(s))
            .map(|s| s.took)
            .max()
            .unwrap_or_default(),
        stored,
        longest_stop,
        longest_start,
    })
}

/// A listening socket on 127.0.0.1:0 with the `.socket` unit's backlog.
fn hold_socket() -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    // Listening again only changes the backlog.
    // SAFETY: listen(2) on a socket this process owns.
    if unsafe { libc::listen(l.as_raw_fd(), BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(l)
}

/// Posts distinct events, one per connection, until `stop`.
fn send_until(
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    portal: gen::Portal,
    client: u64,
) -> Vec<Sent> {
    let mut rng = gen::Rng::new(client + 1);
    let mut body = Vec::new();
    let mut sent = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        body.clear();
        gen::write_body(
            &mut body,
            &portal,
            "ONCRMACTIVITYADD",
            client * 1_000_000_000 + n,
            1_700_000_000 + n,
            &mut rng,
        );
        let started = Instant::now();
        let outcome = match http(
            addr,
            "POST /v1/bitrix24/events HTTP/1.1",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            std::str::from_utf8(&body).unwrap_or_default(),
        ) {
            Ok((200, _)) => Outcome::Ok,
            Ok(_) => Outcome::Failed,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
            Err(_) => Outcome::Failed,
        };
        sent.push(Sent {
            started,
            took: started.elapsed(),
            outcome,
        });
        if outcome == Outcome::Refused {
            // As a sender would: the next event comes a moment later.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    sent
}

/// One request on a new connection, `Connection: close` (the answer ends
/// when the server closes it): (status, body).
fn http(addr: SocketAddr, line: &str, headers: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{line}\r\nHost: {addr}\r\nAuthorization: Bearer {READ_TOKEN}\r\n{headers}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, rest.to_owned()))
}

/// Events stored, summed over `GET /v1/portals`.
fn stored_events(addr: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = http(addr, "GET /v1/portals HTTP/1.1", "", "")?;
    if status != 200 {
        bail!("GET /v1/portals answered {status}: {body}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("GET /v1/portals is not JSON")?;
    Ok(v["portals"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["events"].as_u64()).sum())
        .unwrap_or(0))
}
