//! The real binary as a child process: [`TestServer`] starts `b24-journal`
//! with a clean environment, scrapes its `listening on` line for the port,
//! keeps its logs, and stops it with signals; [`run_to_exit`] runs a
//! command that is expected to exit by itself. Tests use it where the
//! process itself is under test (see the module doc of `common`).

use std::io::{BufRead, BufReader, Read};
use std::ops::Deref;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client::Client;
use super::portals::default_args;

pub const BIN: &str = env!("CARGO_BIN_EXE_b24-journal");

/// Remove ANSI escape sequences (CSI ... final byte) from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c2 in chars.by_ref() {
                    if ('@'..='~').contains(&c2) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse `listening on http://HOST:PORT` out of a log line.
fn parse_listen_line(line: &str) -> Option<(String, u16)> {
    let marker = "listening on http://";
    let idx = line.find(marker)?;
    let rest = &line[idx + marker.len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '/')
        .collect();
    let colon = addr.rfind(':')?;
    let host = addr[..colon]
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port: u16 = addr[colon + 1..].parse().ok()?;
    Some((host, port))
}

/// A command for the binary with a clean, deterministic environment.
pub fn base_command(args: &[String], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("B24J_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "trace");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn drain<R: Read + Send + 'static>(
    reader: R,
    buf: Arc<Mutex<String>>,
    port_tx: Option<mpsc::Sender<(String, u16)>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut sent = port_tx.is_none();
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = strip_ansi(&String::from_utf8_lossy(&line));
                    let text = text.trim_end_matches(['\n', '\r']);
                    {
                        let mut b = buf.lock().unwrap();
                        b.push_str(text);
                        b.push('\n');
                    }
                    if !sent {
                        if let Some(hp) = parse_listen_line(text) {
                            if let Some(tx) = &port_tx {
                                let _ = tx.send(hp);
                            }
                            sent = true;
                        }
                    }
                }
            }
        }
    })
}

/// Run the binary expecting it to exit by itself (e.g. refusing to start).
/// Returns the exit status and stderr+stdout. Panics if it keeps running for
/// `timeout` (after killing it), since that means it did not refuse.
///
/// It blocks; inside a multi-threaded runtime it says so (`block_in_place`),
/// so that an in-process app on the same runtime keeps being served while
/// the binary talks to it (e.g. `backup`).
pub fn run_to_exit(
    args: &[String],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String) {
    let in_multi_thread_runtime = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if in_multi_thread_runtime {
        tokio::task::block_in_place(|| wait_for_exit(args, envs, timeout))
    } else {
        wait_for_exit(args, envs, timeout)
    }
}

fn wait_for_exit(
    args: &[String],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> (ExitStatus, String) {
    let mut child = base_command(args, envs).spawn().expect("spawn b24-journal");
    let logs = Arc::new(Mutex::new(String::new()));
    let h1 = drain(child.stderr.take().unwrap(), logs.clone(), None);
    let h2 = drain(child.stdout.take().unwrap(), logs.clone(), None);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = h1.join();
            let _ = h2.join();
            panic!(
                "b24-journal {:?} was expected to exit by itself but was still running after {:?}; output:\n{}",
                args,
                timeout,
                logs.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = h1.join();
    let _ = h2.join();
    let out = logs.lock().unwrap().clone();
    (status, out)
}

/// The running binary, its logs, and the HTTP helpers of its [`Client`].
pub struct TestServer {
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    drains: Vec<JoinHandle<()>>,
    http: Client,
    pub args: Vec<String>,
}

impl TestServer {
    /// Start `b24-journal serve` on 127.0.0.1:0 with portals P1, P2, P3 and
    /// `READ_TOKEN`, plus `extra_args`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> TestServer {
        let mut args = default_args(data_dir);
        args.extend(extra_args.iter().map(|s| s.to_string()));
        Self::spawn(args, &[])
    }

    /// Start the binary with exactly these arguments and extra env vars and
    /// wait (up to 30 s) for its `listening on http://HOST:PORT` line.
    pub fn spawn(args: Vec<String>, envs: &[(&str, &str)]) -> TestServer {
        Self::try_spawn(args, envs).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `spawn`, but a server that does not come up (exits, or logs no
    /// `listening on` line within 30 s) is an `Err` with its output instead
    /// of a panic.
    pub fn try_spawn(args: Vec<String>, envs: &[(&str, &str)]) -> Result<TestServer, String> {
        let command = base_command(&args, envs);
        Self::try_spawn_command(command, args)
    }

    /// Like `try_spawn`, with a command already set up (`base_command` and
    /// more, e.g. an inherited socket); `args` are its arguments.
    pub fn try_spawn_command(
        mut command: Command,
        args: Vec<String>,
    ) -> Result<TestServer, String> {
        let mut child = command.spawn().expect("spawn b24-journal");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let h1 = drain(child.stderr.take().unwrap(), logs.clone(), Some(tx));
        let h2 = drain(child.stdout.take().unwrap(), logs.clone(), None);
        let (host, port) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(hp) => hp,
            Err(e) => {
                let _ = child.kill();
                let st = child.wait();
                let _ = h1.join();
                let _ = h2.join();
                let out = logs.lock().unwrap().clone();
                return Err(format!(
                    "b24-journal {args:?} did not log `listening on http://HOST:PORT` ({e:?}); exit {st:?}; output:\n{out}"
                ));
            }
        };
        Ok(TestServer {
            child: Some(child),
            logs,
            drains: vec![h1, h2],
            http: Client::new(host, port),
            args,
        })
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Whether the process is still running (not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL (no graceful shutdown) and reap; returns all logs.
    pub fn kill9(&mut self) -> String {
        let mut child = self.child.take().expect("server already stopped");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        for h in self.drains.drain(..) {
            let _ = h.join();
        }
        self.logs()
    }

    /// Send SIGTERM without waiting (see `wait_exit`).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Send SIGHUP (reload) without waiting.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{name} failed");
    }

    /// Wait (up to `timeout`) until the logs hold `needle` `count` times
    /// or more; returns the logs, or panics with them.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= count {
                return logs;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {count}× {needle:?} in the logs within {timeout:?}:\n{}",
                    tail(&logs, 6000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server already stopped").id()
    }

    /// SIGTERM, wait (up to 20 s), assert exit status 0; returns all logs.
    pub fn stop(&mut self) -> String {
        self.sigterm();
        self.wait_exit()
    }

    /// Wait (up to 20 s) for the process to exit after `sigterm`, assert
    /// exit status 0; returns all logs.
    pub fn wait_exit(&mut self) -> String {
        let mut child = self.child.take().expect("server already stopped");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within 20 s of SIGTERM; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for h in self.drains.drain(..) {
            let _ = h.join();
        }
        let logs = self.logs();
        assert!(
            status.success(),
            "server should exit 0 on SIGTERM, got {status:?}; logs tail:\n{}",
            tail(&logs, 4000)
        );
        logs
    }
}

impl Deref for TestServer {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.http
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        s
    } else {
        let mut start = s.len() - n;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        &s[start..]
    }
}
