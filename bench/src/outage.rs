//! `b24-bench outage`: how many events a simulated outage recovers.
//!
//! A fake Bitrix24 portal (`fake-bitrix24`) with the application bound
//! online and offline (the `reconcile` policy): while the service is up,
//! every change is pushed and queued; then the service is stopped, and
//! every change of the outage is queued while its push fails (connection
//! refused, as Bitrix24 sees it — it never re-sends); then the service
//! starts again and pulls. Prints the changes of each phase, the pushes
//! lost, the offline records queued at the restart (after the portal's
//! merge), what the puller recovered and reconciled, the events in the
//! journal and how long the recovery took; fails unless every lost change
//! is in the journal once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fake_bitrix24::{FakeBitrix24, FakeConfig};
use serde_json::Value;

/// Options of `outage`.
#[derive(Debug, clap::Args)]
pub struct OutageArgs {
    /// The service binary.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/release/b24-journal"
    )]
    server_bin: PathBuf,
    /// Changes while the service is up (pushed and queued).
    #[arg(long, default_value_t = 200)]
    online: usize,
    /// Changes during the outage (queued; their pushes fail).
    #[arg(long, default_value_t = 1000)]
    outage: usize,
    /// Distinct deals the outage's changes touch (fewer deals than changes:
    /// the portal merges repeated updates of one deal into one record).
    #[arg(long, default_value_t = 400)]
    deals: usize,
}

const READ_TOKEN: &str = "bench-outage-read-token-9f3k";
const APP_TOKEN: &str = "bench0utage0app0token0123456789a";

/// The service, restarted on one port and data directory.
struct Service {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    starts: usize,
}

impl Service {
    fn start(&mut self) -> anyhow::Result<Child> {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("service-{}.log", self.starts)))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env(
                "B24J_APP_CLIENT_SECRET",
                FakeConfig::default().client_secret,
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(child)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn stop(mut child: Child) -> anyhow::Result<()> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait()?;
    if !status.success() {
        bail!("the service exited with {status}");
    }
    Ok(())
}

async fn wait_up(http: &reqwest::Client, svc: &Service) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while http.get(svc.url("/openapi.json")).send().await.is_err() {
        if Instant::now() > until {
            bail!("the service did not come up; see {}", svc.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn post(http: &reqwest::Client, svc: &Service, body: String) -> Option<u16> {
    let r = http
        .post(svc.url("/v1/bitrix24/events"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

async fn offline_status(http: &reqwest::Client, svc: &Service, member: &str) -> Value {
    let answer: Value = match http
        .get(svc.url("/v1/portals"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    answer["portals"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["member_id"] == member))
        .map(|p| p["offline"].clone())
        .unwrap_or(Value::Null)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs the scenario.
pub fn run(a: OutageArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("b24-bench-outage-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = rt.block_on(scenario(&a, &dir));
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn scenario(a: &OutageArgs, dir: &Path) -> anyhow::Result<()> {
    let fake = FakeBitrix24::start(FakeConfig::default()).await;
    let member = fake.config().member_id.clone();
    let key = dir.join("secrets.key");
    let status = Command::new(&a.server_bin)
        .args(["keygen", "--to"])
        .arg(&key)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("keygen failed");
    }
    let port = free_port()?;
    let data = dir.join("data");
    let args: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        data.to_str().context("a UTF-8 temp path")?,
        "--read-token",
        READ_TOKEN,
        "--portal",
        &format!("{member}={APP_TOKEN}"),
        "--offline",
        "reconcile",
        "--app-client-id",
        &fake.config().client_id,
        "--oauth-server",
        &fake.oauth_server(),
        "--secrets-key-file",
        key.to_str().context("a UTF-8 temp path")?,
        "--offline-allow-http-loopback",
        "--offline-poll",
        "2",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut svc = Service {
        bin: a.server_bin.clone(),
        dir: dir.to_owned(),
        port,
        args,
        starts: 0,
    };
    let http = reqwest::Client::new();
    let child = svc.start()?;
    wait_up(&http, &svc).await?;
    if post(&http, &svc, fake.install_form(APP_TOKEN)).await != Some(200) {
        bail!("the install was not acknowledged");
    }

    // Up: each change pushed and queued.
    let t0 = now();
    for i in 0..a.online {
        let id = format!("up-{i}");
        let ts = t0 + (i as i64 % 3);
        if post(
            &http,
            &svc,
            fake.push_form("ONCRMDEALUPDATE", &id, ts, APP_TOKEN),
        )
        .await
            != Some(200)
        {
            bail!("a push while up was not acknowledged");
        }
        fake.change_at("ONCRMDEALUPDATE", &id, Some(ts));
    }
    // Let the backstop catch up before the outage.
    let until = Instant::now() + Duration::from_secs(60);
    while fake.queued() > 0 {
        if Instant::now() > until {
            bail!("the online phase's records were not pulled");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(child)?;

    // Down: every push fails, every change is queued (merged per deal).
    let mut lost = 0;
    for i in 0..a.outage {
        let id = format!("down-{}", i % a.deals.max(1));
        let ts = now();
        if post(
            &http,
            &svc,
            fake.push_form("ONCRMDEALUPDATE", &id, ts, APP_TOKEN),
        )
        .await
        .is_none()
        {
            lost += 1;
        }
        fake.change_at("ONCRMDEALUPDATE", &id, Some(ts));
    }
    let queued = fake.queued();

    // Back: pull.
    let restarted = Instant::now();
    let child = svc.start()?;
    wait_up(&http, &svc).await?;
    let until = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let s = offline_status(&http, &svc, &member).await;
        if fake.queued() == 0
            && s["in_flight"] == false
            && s["recovered"].as_u64() >= Some(queued as u64)
        {
            break s;
        }
        if Instant::now() > until {
            bail!("the outage's records were not recovered: {s}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let recovery = restarted.elapsed();
    stop(child)?;

    let recovered = status["recovered"].as_u64().unwrap_or(0);
    let reconciled = status["reconciled"].as_u64().unwrap_or(0);
    println!("changes while up (pushed and queued): {}", a.online);
    println!("changes during the outage: {}", a.outage);
    println!("pushes lost (connection refused): {lost}");
    println!("offline records queued at restart (one per deal, merged): {queued}");
    println!("recovered (stored from the offline queue): {recovered}");
    println!("reconciled (already pushed, not stored again): {reconciled}");
    println!("duplicates (fetched again): {}", status["duplicates"]);
    println!(
        "recovery: {} ms from restart to an empty queue",
        recovery.as_millis()
    );
    if recovered != queued as u64 || reconciled != a.online as u64 {
        bail!("expected {queued} recovered and {} reconciled", a.online);
    }
    Ok(())
}
