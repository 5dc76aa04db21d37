//! The subcommands' bodies: `serve` (hands over to the server), `backup`
//! (asks the running service over HTTP), and `verify`, `migrate` and
//! `portals` (work on a stopped data directory), and `read-tokens` (edits
//! a config file, in its own file).

mod read_tokens;

pub use read_tokens::{read_tokens, ReadTokensError};

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

use crate::cli::{
    BackupArgs, Cli, ClusterAction, ClusterCmdArgs, Command, PortalsAction, PortalsArgs,
};
use crate::cluster::{ops, ClusterConfig};
use crate::journal::maintain::{self, MaintainError};
use crate::journal::registration::{Registration, Source, Status};
use crate::journal::store::StoreError;
use crate::journal::OpenError;
use crate::logging;
use crate::server::{self, Activation, Reloader, RunError};
use crate::settings::{SettingsError, SettingsSource};
use crate::types::{Domain, MemberId, Secret};

/// Why the program failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The server could not run.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A maintenance command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// Why a maintenance command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The data directory could not be used.
    #[error(transparent)]
    Maintain(#[from] MaintainError),
    /// Verification found problems.
    #[error("verification failed: {0} problem(s)")]
    Problems(u64),
    /// The command's blocking task panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// `--url` is not an `http://` URL.
    #[error("--url {0}: only http:// URLs are supported")]
    UnsupportedUrl(String),
    /// No connection to the service.
    #[error("cannot reach the service at {url}: {source}")]
    Unreachable {
        /// The service's URL.
        url: String,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The request could not be built (a token that is not a valid header
    /// value) or sent.
    #[error("sending the request: {0}")]
    Send(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The answer could not be read.
    #[error("reading the answer: {0}")]
    Read(#[source] hyper::Error),
    /// The service answered with an error.
    #[error("backup refused ({status}): {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The service's answer, `{"error": …}`.
        body: String,
    },
    /// A command-line value is malformed.
    #[error("{what} {why}")]
    Invalid {
        /// The value.
        what: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The variable named by `--token-env` is not set.
    #[error("environment variable {var} is not set")]
    TokenEnv {
        /// The variable.
        var: String,
        /// Why it could not be read.
        source: std::env::VarError,
    },
    /// The token could not be read from standard input.
    #[error("reading the token: {0}")]
    TokenStdin(#[source] std::io::Error),
    /// `read-tokens` failed.
    #[error(transparent)]
    ReadTokens(#[from] ReadTokensError),
    /// A command that needs a stopped data directory met a running service.
    #[error("{} is in use by a running b24-journal; {advice}", data_dir.display())]
    InUse {
        /// The data directory.
        data_dir: PathBuf,
        /// What to do instead.
        advice: &'static str,
    },
    /// A `cluster` operation failed.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The secrets key file could not be created.
    #[error(transparent)]
    Key(#[from] crate::offline::secrets::KeyError),
    /// `portals remove` named a portal without a registration.
    #[error("{member_id} has no registration in {}", data_dir.display())]
    NotRegistered {
        /// The portal.
        member_id: String,
        /// The data directory.
        data_dir: PathBuf,
    },
}

/// Runs the command the CLI asked for, with logging set up for it.
/// `activation` holds the socket a supervisor passed, read before the
/// runtime started (see [`Activation::from_env`]); only `serve` uses it.
pub async fn run(cli: Cli, activation: Activation) -> Result<(), Error> {
    match cli.into_command() {
        Command::Serve(args) => {
            let source = SettingsSource::new(*args);
            let settings = source.resolve()?;
            let logs = logging::init(&settings.log_filter, settings.log_json);
            for warning in &settings.warnings {
                tracing::warn!("{warning}");
            }
            server::run(settings, activation, Reloader { source, logs }).await?;
        }
        Command::Backup(args) => {
            init_logging();
            backup(args).await?;
        }
        Command::Verify(args) => {
            init_logging();
            blocking(move || verify(&args.data_dir).map_err(in_use(&args.data_dir, VERIFY_ADVICE)))
                .await?;
        }
        Command::Migrate(args) => {
            init_logging();
            blocking(move || migrate(&args.data_dir).map_err(in_use(&args.data_dir, STOP_ADVICE)))
                .await?;
        }
        Command::Keygen(args) => {
            crate::offline::secrets::SecretsKey::generate(&args.to).map_err(CommandError::Key)?;
            println!(
                "created {} (mode 0600): pass it as --secrets-key-file; keep it outside the data directory and back it up apart from it",
                args.to.display()
            );
        }
        Command::Portals(args) => {
            init_logging();
            let data_dir = args.data_dir.clone();
            blocking(move || portals(args).map_err(in_use(&data_dir, STOP_ADVICE))).await?;
        }
        Command::ReadTokens(args) => {
            read_tokens(args, &mut std::io::stdout().lock()).map_err(CommandError::from)?;
        }
        Command::Cluster(args) => {
            init_logging();
            cluster(args).await?;
        }
    }
    Ok(())
}

/// `cluster init` and `cluster status`: prints the result as JSON.
async fn cluster(args: ClusterCmdArgs) -> Result<(), CommandError> {
    let config = ClusterConfig::resolve(&args.cluster, None)
        .map_err(|e| CommandError::Cluster(e.to_string()))?
        .ok_or_else(|| {
            CommandError::Cluster("name the NATS servers with --cluster (or B24J_CLUSTER)".into())
        })?;
    let result = match args.action {
        ClusterAction::Init {
            replicas,
            max_age_days,
            max_bytes,
            duplicate_window_secs,
        } => {
            let limits = ops::StreamLimits {
                replicas,
                max_age: std::time::Duration::from_secs(max_age_days.saturating_mul(86_400)),
                max_bytes,
                duplicate_window: std::time::Duration::from_secs(duplicate_window_secs),
            };
            ops::init(&config, limits).await
        }
        ClusterAction::Status => ops::status(&config).await,
    }
    .map_err(|e| CommandError::Cluster(e.to_string()))?;
    println!("{result}");
    Ok(())
}

/// What to do instead of verifying a running service's directory.
const VERIFY_ADVICE: &str = "`verify` reads a stopped data directory only. To check a running service, take an online backup (`b24-journal backup --to NAME`) and verify the copy (`b24-journal verify --data-dir BACKUP_DIR/NAME`), or stop the service first";
/// What to do before changing a running service's directory.
const STOP_ADVICE: &str =
    "stop the service first (`systemctl stop b24-journal`), then run the command again";

/// Turns "the engine's files are locked" into [`CommandError::InUse`]
/// with `advice`; other errors pass unchanged.
fn in_use<'a>(
    data_dir: &'a Path,
    advice: &'static str,
) -> impl FnOnce(CommandError) -> CommandError + 'a {
    move |e| match e {
        CommandError::Maintain(MaintainError::Open(OpenError::Store {
            source: StoreError::Locked(_),
            ..
        })) => CommandError::InUse {
            data_dir: data_dir.to_owned(),
            advice,
        },
        other => other,
    }
}

/// Runs a command that reads and writes files off the async workers.
async fn blocking(
    command: impl FnOnce() -> Result<(), CommandError> + Send + 'static,
) -> Result<(), CommandError> {
    tokio::task::spawn_blocking(command).await?
}

/// Sets up text logging at `RUST_LOG` (default `info`) for the
/// maintenance commands.
fn init_logging() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let _ = logging::init(&filter, false);
}

/// `b24-journal backup --to DIR`: POSTs to the running service's admin API
/// and prints its answer.
pub async fn backup(args: BackupArgs) -> Result<(), CommandError> {
    let unsupported = || CommandError::UnsupportedUrl(args.url.clone());
    let uri: Uri = args.url.parse().map_err(|_| unsupported())?;
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) => authority.clone(),
        _ => return Err(unsupported()),
    };
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|source| CommandError::Unreachable {
            url: args.url.clone(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CommandError::Send(e.into()))?;
    // The connection's own errors reach `send_request` and the body read.
    tokio::spawn(connection);
    let body = serde_json::json!({ "to": args.to }).to_string();
    let request = Request::post("/v1/admin/backup")
        .header(HOST, authority.as_str())
        .header(AUTHORIZATION, format!("Bearer {}", args.admin_token))
        .header(CONTENT_TYPE, "application/json")
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| CommandError::Send(e.into()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| CommandError::Send(e.into()))?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .map_err(CommandError::Read)?
        .to_bytes();
    let answer = String::from_utf8_lossy(&answer);
    if status.as_u16() == 200 {
        println!("{answer}");
        Ok(())
    } else {
        Err(CommandError::Refused {
            status: status.as_u16(),
            body: answer.into_owned(),
        })
    }
}

/// `b24-journal verify --data-dir DIR`: prints a JSON report; an error if
/// anything is wrong.
pub fn verify(data_dir: &Path) -> Result<(), CommandError> {
    let report = maintain::verify(data_dir)?;
    print_json(&report);
    if report.problem_count > 0 {
        return Err(CommandError::Problems(report.problem_count));
    }
    Ok(())
}

/// `b24-journal migrate --data-dir DIR`: converts an older data directory
/// in place and prints what it did as JSON.
pub fn migrate(data_dir: &Path) -> Result<(), CommandError> {
    let report = maintain::migrate(data_dir)?;
    print_json(&report);
    Ok(())
}

/// Prints a report as indented JSON. A data directory whose path is not
/// UTF-8 cannot be written as JSON: the reason is printed instead, and the
/// command's outcome stands.
fn print_json(report: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(report).unwrap_or_else(|e| e.to_string())
    );
}

/// `b24-journal portals …`.
pub fn portals(args: PortalsArgs) -> Result<(), CommandError> {
    match args.action {
        PortalsAction::List => {
            for r in maintain::list_registrations(&args.data_dir)? {
                println!(
                    "{}\t{}\t{}\t{}",
                    r.member_id,
                    r.domain,
                    match r.status {
                        Status::Active => "active",
                        Status::Uninstalled => "uninstalled",
                    },
                    match r.source {
                        Source::Install => "install",
                        Source::Operator => "operator",
                    }
                );
            }
            for s in maintain::list_pull_states(&args.data_dir)? {
                // Never the token: it is sealed, and not opened here.
                let status = crate::offline::PullStatus::of(&s, "-", false);
                println!(
                    "{}\t{}\toffline\ttoken={}\tclear={}\tpulled={}\trecovered={}\treconciled={}\tduplicates={}\tlast_pull={}\tlast_error={}",
                    s.member_id,
                    s.domain,
                    status.token,
                    status.clear_mode,
                    status.pulled,
                    status.recovered,
                    status.reconciled,
                    status.duplicates,
                    status.last_pull.as_deref().unwrap_or("never"),
                    status.last_error.as_deref().unwrap_or("none"),
                );
            }
        }
        PortalsAction::Add {
            member_id,
            domain,
            token_env,
        } => {
            let invalid =
                |what| move |e: crate::types::Invalid| CommandError::Invalid { what, why: e.0 };
            let member = MemberId::parse(&member_id).map_err(invalid("member id"))?;
            let domain = Domain::parse(&domain).map_err(invalid("domain"))?;
            let token = read_token(token_env)?;
            let token = token.trim();
            if token.is_empty() {
                return Err(CommandError::Invalid {
                    what: "application token",
                    why: "must not be empty",
                });
            }
            let digest = Secret::new(token.to_owned()).digest();
            maintain::put_registration(
                &args.data_dir,
                Registration {
                    member_id: member.as_str().to_owned(),
                    token_sha256: Some(digest.0),
                    domain: domain.as_str().to_owned(),
                    source: Source::Operator,
                    status: Status::Active,
                    updated_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                },
            )?;
            println!(
                "registered {member} ({domain}); the token is stored as its SHA-256 digest",
                domain = domain.as_str()
            );
        }
        PortalsAction::Remove { member_id } => {
            if maintain::remove_registration(&args.data_dir, &member_id)? {
                println!("removed the registration of {member_id}; its journal is kept");
            } else {
                return Err(CommandError::NotRegistered {
                    member_id,
                    data_dir: args.data_dir,
                });
            }
        }
    }
    Ok(())
}

/// The application token for `portals add`: from the variable `token_env`
/// names, else standard input. Never from the command line: it would show
/// in `ps` and shell history.
fn read_token(token_env: Option<String>) -> Result<String, CommandError> {
    match token_env {
        Some(var) => std::env::var(&var).map_err(|source| CommandError::TokenEnv { var, source }),
        None => {
            let mut token = String::new();
            std::io::stdin()
                .read_to_string(&mut token)
                .map_err(CommandError::TokenStdin)?;
            Ok(token)
        }
    }
}
