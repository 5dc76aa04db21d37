//! The maintenance commands: `backup` (asks the running service over HTTP),
//! `verify` and `portals` (work on a stopped data directory).

use std::io::Read;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::journal::maintain::{self, MaintainError};
use crate::journal::registration::{Registration, Source, Status};
use crate::settings::{BackupArgs, PortalsAction, PortalsArgs};
use crate::types::{Domain, MemberId, Secret};

/// Why a maintenance command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The data directory could not be used.
    #[error(transparent)]
    Maintain(#[from] MaintainError),
    /// Verification found problems.
    #[error("verification failed: {0} problem(s)")]
    Problems(u64),
    /// The service refused or could not be reached.
    #[error("{0}")]
    Failed(String),
}

/// `b24-journal backup --to DIR`: POSTs to the running service's admin API
/// and prints its answer.
pub async fn backup(args: BackupArgs) -> Result<(), CommandError> {
    let failed = |e: String| CommandError::Failed(e);
    let base = args.url.strip_prefix("http://").ok_or_else(|| {
        failed(format!(
            "--url {}: only http:// URLs are supported",
            args.url
        ))
    })?;
    let host = base.trim_end_matches('/');
    let body = serde_json::json!({ "to": args.to }).to_string();
    let request = format!(
        "POST /v1/admin/backup HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}",
        token = args.admin_token,
        len = body.len(),
    );
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| failed(format!("cannot reach the service at {}: {e}", args.url)))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| failed(format!("sending the request: {e}")))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| failed(format!("reading the answer: {e}")))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    // The body may be chunked; the JSON object is the part between braces.
    let json = body
        .find('{')
        .and_then(|start| body.rfind('}').map(|end| &body[start..=end]))
        .unwrap_or(body);
    if status == 200 {
        println!("{json}");
        Ok(())
    } else {
        Err(failed(format!("backup refused ({status}): {json}")))
    }
}

/// `b24-journal verify --data-dir DIR`: prints a JSON report; an error if
/// anything is wrong.
pub fn verify(data_dir: &Path) -> Result<(), CommandError> {
    let report = maintain::verify(data_dir)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_else(|e| e.to_string())
    );
    if report.problem_count > 0 {
        return Err(CommandError::Problems(report.problem_count));
    }
    Ok(())
}

/// `b24-journal migrate --data-dir DIR`: converts an older data directory
/// in place and prints what it did as JSON.
pub fn migrate(data_dir: &Path) -> Result<(), CommandError> {
    let report = maintain::migrate(data_dir)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_else(|e| e.to_string())
    );
    Ok(())
}

/// `b24-journal portals …`.
pub fn portals(args: PortalsArgs) -> Result<(), CommandError> {
    let invalid = |what: &str, why: &str| CommandError::Failed(format!("{what} {why}"));
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
        }
        PortalsAction::Add {
            member_id,
            domain,
            token_env,
        } => {
            let member = MemberId::parse(&member_id).map_err(|e| invalid("member id", e.0))?;
            let domain = Domain::parse(&domain).map_err(|e| invalid("domain", e.0))?;
            // Never from the command line: it would show in `ps` and shell
            // history.
            let token = match token_env {
                Some(var) => std::env::var(&var).map_err(|_| {
                    CommandError::Failed(format!("environment variable {var} is not set"))
                })?,
                None => {
                    let mut t = String::new();
                    std::io::stdin()
                        .read_to_string(&mut t)
                        .map_err(|e| CommandError::Failed(format!("reading the token: {e}")))?;
                    t
                }
            };
            let token = token.trim();
            if token.is_empty() {
                return Err(invalid("application token", "must not be empty"));
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
                return Err(CommandError::Failed(format!(
                    "{member_id} has no registration in {}",
                    args.data_dir.display()
                )));
            }
        }
    }
    Ok(())
}
