//! `b24-journal read-tokens list|add|remove --config FILE`: manage the
//! `[[read_tokens]]` entries of a config file, keeping its comments and
//! layout (`toml_edit`). `add` makes a random token, prints it once, and
//! stores only its SHA-256 (`token_sha256`), so the file never holds it.
//! The running service picks the change up on `systemctl reload`.

use std::path::Path;

use sha2::{Digest, Sha256};
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

use crate::cli::{ReadTokensAction, ReadTokensArgs};
use crate::settings::dashboards::valid_name;

/// Why a `read-tokens` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadTokensError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The config file.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{path} is not valid TOML: {reason}")]
    Parse {
        /// The config file.
        path: String,
        /// Where and why (no line quoted: it may hold a token).
        reason: String,
    },
    /// A value given on the command line, or in the file, cannot be used.
    #[error("{0}")]
    Invalid(String),
}

/// Runs one `read-tokens` command; what it prints goes to `out`.
pub fn read_tokens(
    args: ReadTokensArgs,
    out: &mut impl std::io::Write,
) -> Result<(), ReadTokensError> {
    let path = args.config.as_path();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && matches!(args.action, ReadTokensAction::Add { .. }) =>
        {
            String::new()
        }
        Err(source) => return Err(io(path, source)),
    };
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| ReadTokensError::Parse {
                path: path.display().to_string(),
                reason: e.message().replace('\n', "; "),
            })?;
    let w = |out: &mut dyn std::io::Write, s: String| {
        out.write_all(s.as_bytes())
            .map_err(|e| io(Path::new("stdout"), e))
    };
    match args.action {
        ReadTokensAction::List => {
            for t in tables(&doc)?.iter() {
                let name = t.get("name").and_then(Item::as_str).unwrap_or("?");
                let portals: Vec<&str> = t
                    .get("portals")
                    .and_then(Item::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                let stored = if t.contains_key("token_sha256") {
                    "sha256"
                } else {
                    "plain"
                };
                w(out, format!("{name}\t{stored}\t{}\n", portals.join(",")))?;
            }
        }
        ReadTokensAction::Add { name, portals } => {
            if !valid_name(&name) {
                return Err(ReadTokensError::Invalid(format!(
                    "name {name:?}: use 1 to 64 letters, digits, `-`, `_` or `.`"
                )));
            }
            let portals: Vec<String> = portals
                .iter()
                .flat_map(|p| p.split(','))
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect();
            if portals.is_empty() {
                return Err(ReadTokensError::Invalid(
                    "give at least one --portal MEMBER_ID_OR_DOMAIN".into(),
                ));
            }
            if tables(&doc)?
                .iter()
                .any(|t| t.get("name").and_then(Item::as_str) == Some(&name))
            {
                return Err(ReadTokensError::Invalid(format!(
                    "a read token named {name:?} exists; remove it first to replace it"
                )));
            }
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes)
                .map_err(|e| ReadTokensError::Invalid(format!("no random bytes: {e}")))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let digest: String = Sha256::digest(token.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let mut table = Table::new();
            table.insert("name", toml_edit::value(name.as_str()));
            table.insert("token_sha256", toml_edit::value(digest));
            let mut list = Array::new();
            for p in &portals {
                list.push(p.as_str());
            }
            table.insert("portals", Item::Value(Value::Array(list)));
            match doc.get_mut("read_tokens") {
                Some(item) => item
                    .as_array_of_tables_mut()
                    .ok_or_else(not_tables)?
                    .push(table),
                None => {
                    let mut all = ArrayOfTables::new();
                    all.push(table);
                    doc.insert("read_tokens", Item::ArrayOfTables(all));
                }
            }
            write(path, &doc)?;
            w(out, format!("{token}\n"))?;
            eprintln!(
                "read token {name:?} added to {} for {}; it is shown only this once. Apply it with `systemctl reload b24-journal` (SIGHUP).",
                path.display(),
                portals.join(", ")
            );
        }
        ReadTokensAction::Remove { name } => {
            let all = doc
                .get_mut("read_tokens")
                .and_then(Item::as_array_of_tables_mut)
                .ok_or_else(|| ReadTokensError::Invalid(format!("no read token named {name:?}")))?;
            let before = all.len();
            all.retain(|t| t.get("name").and_then(Item::as_str) != Some(&name));
            if all.len() == before {
                return Err(ReadTokensError::Invalid(format!(
                    "no read token named {name:?}"
                )));
            }
            write(path, &doc)?;
            eprintln!(
                "read token {name:?} removed from {}; apply with `systemctl reload b24-journal` (SIGHUP).",
                path.display()
            );
        }
    }
    Ok(())
}

fn not_tables() -> ReadTokensError {
    ReadTokensError::Invalid("`read_tokens` must be an array of tables ([[read_tokens]])".into())
}

/// The `[[read_tokens]]` tables (none if the key is absent).
fn tables(doc: &DocumentMut) -> Result<ArrayOfTables, ReadTokensError> {
    match doc.get("read_tokens") {
        None => Ok(ArrayOfTables::new()),
        Some(item) => item.as_array_of_tables().cloned().ok_or_else(not_tables),
    }
}

fn io(path: &Path, source: std::io::Error) -> ReadTokensError {
    ReadTokensError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `doc` over `path` through a temporary file and a rename, keeping
/// the file's permissions (it holds secrets); a new file is 0600.
fn write(path: &Path, doc: &DocumentMut) -> Result<(), ReadTokensError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o7777);
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    file.write_all(doc.to_string().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&tmp, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}
