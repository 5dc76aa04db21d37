//! The real service under test: its config file, start until healthy,
//! stop, and what the harness reads from it (`GET /metrics`' store writes
//! and read mirror state, `GET /v1/portals`' totals).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::harness::{Harness, READ_TOKEN};
use super::proc::{free_port, Proc};
use crate::client;
use crate::gen::{self, Portal};

/// A running `b24-journal serve`.
pub(super) struct Service {
    pub(super) proc_: Proc,
    pub(super) addr: SocketAddr,
    /// From spawning it to its first healthy answer.
    pub(super) startup: Duration,
}

/// Starts on a free port are tried this often before the run gives up
/// (another process may take the port between probe and bind).
const START_ATTEMPTS: usize = 3;

impl Harness {
    /// Writes `<tmp>/<name>.toml`: the data dir, the read token, `portals`.
    pub(super) fn write_config(
        &self,
        name: &str,
        data_dir: &Path,
        portals: &[Portal],
    ) -> anyhow::Result<PathBuf> {
        let path = self.o.tmp.join(format!("{name}.toml"));
        let text = format!(
            "data_dir = \"{}\"\nread_token = \"{READ_TOKEN}\"\n\n{}",
            data_dir.display(),
            gen::portals_toml(portals)
        );
        std::fs::write(&path, text).with_context(|| path.display().to_string())?;
        Ok(path)
    }

    /// Starts the real service binary and waits for `GET /healthz` 200.
    pub(super) fn start_service(&self, name: &str, config: &Path) -> anyhow::Result<Service> {
        let mut attempt = 0;
        loop {
            let port = free_port()?;
            let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut cmd = Command::new(&self.o.server_bin);
            cmd.arg("serve")
                .arg("--config")
                .arg(config)
                .arg("--listen")
                .arg(addr.to_string())
                .env("RUST_LOG", &self.o.server_log)
                .stdout(Stdio::null());
            let log = self.o.tmp.join(format!("{name}-{attempt}.log"));
            let t0 = Instant::now();
            let mut p = Proc::spawn(name, cmd, &log, &self.pids)?;
            match self.wait_healthy(&mut p, addr, t0) {
                Ok(startup) => {
                    return Ok(Service {
                        proc_: p,
                        addr,
                        startup,
                    })
                }
                Err(e) if attempt + 1 == START_ATTEMPTS => return Err(e),
                Err(_) => attempt += 1,
            }
        }
    }

    fn wait_healthy(
        &self,
        p: &mut Proc,
        addr: SocketAddr,
        t0: Instant,
    ) -> anyhow::Result<Duration> {
        loop {
            p.alive()?;
            let r = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(6), client::get(addr, "/healthz", None))
                    .await
            });
            if let Ok(Ok((200, _))) = r {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("{} not healthy after 120 s", p.name);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the service's read mirror is ready (`b24j_read_mirror_ready
    /// 1` in `/metrics`), so that queries are measured in the steady state
    /// and not against its rebuild after the start; returns how long that
    /// took from now.
    pub(super) fn wait_mirror(&self, svc: &mut Service) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            svc.proc_.alive()?;
            if self.metric(svc.addr, "b24j_read_mirror_ready") == Some(1) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(300) {
                bail!(
                    "the read mirror of {} not ready after 300 s",
                    svc.proc_.name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM; anything but a clean exit is an error of the run.
    pub(super) fn stop_service(&mut self, s: Service, what: &str) {
        match s.proc_.stop() {
            Ok(st) if st.success() => {}
            Ok(st) => self
                .errors
                .push(format!("{what}: service exited with {st} after SIGTERM")),
            Err(e) => self.errors.push(format!("{what}: {e:#}")),
        }
    }

    /// The service's `b24j_store_writes_total` (sled keys written), from
    /// `GET /metrics`; `None` if it cannot be read.
    pub(super) fn store_writes(&self, addr: SocketAddr) -> Option<u64> {
        self.metric(addr, "b24j_store_writes_total")
    }

    /// The value of the service's metric `name` (a counter or gauge
    /// without labels) from `GET /metrics`; `None` if it cannot be read
    /// within 6 s.
    fn metric(&self, addr: SocketAddr, name: &str) -> Option<u64> {
        let got = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(6), client::get(addr, "/metrics", None)).await
        });
        let Ok(Ok((200, body))) = got else {
            return None;
        };
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
            .trim()
            .parse()
            .ok()
    }

    /// Sums `events` and `duplicates` over `GET /v1/portals`.
    pub(super) fn journal_totals(&self, addr: SocketAddr) -> anyhow::Result<(u64, u64)> {
        let (status, body) = self
            .rt
            .block_on(client::get(addr, "/v1/portals", Some(READ_TOKEN)))
            .context("GET /v1/portals")?;
        if status != 200 {
            bail!(
                "GET /v1/portals answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body).context("GET /v1/portals JSON")?;
        let list = v["portals"]
            .as_array()
            .context("GET /v1/portals: no `portals` array")?;
        let sum = |k: &str| list.iter().map(|p| p[k].as_u64().unwrap_or(0)).sum::<u64>();
        Ok((sum("events"), sum("duplicates")))
    }
}
