//! The children the harness starts (services, the bare server): killed if
//! the harness stops early, and registered in `<tmp>/pids/` so that
//! scripts/bench.sh's trap can kill them if the harness itself is killed.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// A child process with its stderr in a log file.
pub(super) struct Proc {
    pub(super) name: String,
    pub(super) child: Option<Child>,
    pub(super) pid: u32,
    log: PathBuf,
    pidfile: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stderr to `log`.
    pub(super) fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        pids: &Path,
    ) -> anyhow::Result<Proc> {
        let log_file = File::create(log).with_context(|| log.display().to_string())?;
        cmd.stdin(Stdio::null()).stderr(log_file);
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        let pid = child.id();
        let pidfile = pids.join(format!("{pid}"));
        let _ = std::fs::write(&pidfile, format!("{pid}\n"));
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            pid,
            log: log.to_owned(),
            pidfile,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Err if the process has exited.
    pub(super) fn alive(&mut self) -> anyhow::Result<()> {
        let child = self
            .child
            .as_mut()
            .expect("only `stop` takes the child, and it consumes the Proc");
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(anyhow!(
                "{} exited unexpectedly ({st}); log tail:\n{}",
                self.name,
                self.log_tail()
            )),
            Err(e) => Err(e).context(self.name.clone()),
        }
    }

    /// SIGTERM, then wait (up to 60 s) for a clean exit.
    pub(super) fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .expect("only `stop` takes the child, and it consumes the Proc");
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    let _ = std::fs::remove_file(&self.pidfile);
                    return Ok(st);
                }
                Ok(None) if t.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_file(&self.pidfile);
                    bail!("{} did not stop within 60 s of SIGTERM", self.name);
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pidfile);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(super) fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()
        .context("local address of 127.0.0.1:0")?
        .port())
}
