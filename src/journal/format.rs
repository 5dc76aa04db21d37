//! The data directory's format file: which on-disk layout a directory holds,
//! checked before the engine opens so that a binary never reads (or writes
//! into) a layout it does not know.
//!
//! The file is one line, `b24-journal data format N`. What each version
//! means is in `migrations-notes/`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::store::StoreError;

/// The on-disk format this binary writes and reads. See
/// `migrations-notes/` for what each version means.
pub const FORMAT_VERSION: u32 = 5;
/// Name of the file in the data directory that records the format.
pub const FORMAT_FILE: &str = "FORMAT";
const FORMAT_PREFIX: &str = "b24-journal data format ";
/// Sub-directory of the data directory that holds the storage engine.
pub(crate) const ENGINE_DIR: &str = "sled";

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory was written by a newer binary.
    #[error("data directory {dir} has format version {found}, newer than the {supported} this binary supports; run a newer b24-journal")]
    TooNew {
        /// The data directory.
        dir: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// The directory was written by an older binary and must be migrated.
    #[error("data directory {dir} has format version {found}, older than the {current} this binary uses; stop the service, back up the directory, then run `b24-journal migrate --data-dir {dir}`")]
    NeedsMigration {
        /// The data directory.
        dir: PathBuf,
        /// Version found.
        found: u32,
        /// Version this binary uses.
        current: u32,
    },
    /// The directory holds something we do not recognise.
    #[error("data directory {dir} has an unknown format version ({why}); refusing to open it")]
    Unknown {
        /// The data directory.
        dir: PathBuf,
        /// What was found.
        why: String,
    },
    /// File system trouble.
    #[error("data directory {dir}: {source}")]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The engine failed to open.
    #[error("opening the journal in {dir}: {source}")]
    Store {
        /// The data directory.
        dir: PathBuf,
        /// The error.
        source: StoreError,
    },
}

/// Checks the format version of an existing data directory without
/// creating anything; refuses every version but this binary's like
/// [`check_format`].
pub(crate) fn read_format(dir: &Path) -> Result<u32, OpenError> {
    if !dir.join(FORMAT_FILE).exists() {
        return Err(OpenError::Unknown {
            dir: dir.to_owned(),
            why: format!("no {FORMAT_FILE} file: not a b24-journal data directory"),
        });
    }
    check_format(dir)?;
    Ok(FORMAT_VERSION)
}

/// Checks the format file before the engine opens: writes it into a new
/// (empty) directory, and refuses every version but this binary's (an
/// older one with the `migrate` command to run).
pub(crate) fn check_format(dir: &Path) -> Result<(), OpenError> {
    let io = |source| OpenError::Io {
        dir: dir.to_owned(),
        source,
    };
    let unknown = |why: String| OpenError::Unknown {
        dir: dir.to_owned(),
        why,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let line = text.lines().next().unwrap_or("").trim();
            let version = parse_version(line)
                .ok_or_else(|| unknown(format!("{FORMAT_FILE} says {line:?}")))?;
            if version > FORMAT_VERSION {
                return Err(OpenError::TooNew {
                    dir: dir.to_owned(),
                    found: version,
                    supported: FORMAT_VERSION,
                });
            }
            if (1..FORMAT_VERSION).contains(&version) {
                return Err(OpenError::NeedsMigration {
                    dir: dir.to_owned(),
                    found: version,
                    current: FORMAT_VERSION,
                });
            }
            if version != FORMAT_VERSION {
                return Err(unknown(format!(
                    "format version {version} is not supported"
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries = std::fs::read_dir(dir).map_err(io)?;
            if entries.next().is_some() {
                return Err(unknown(format!(
                    "no {FORMAT_FILE} file, but the directory is not empty"
                )));
            }
            write_format(dir).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes this binary's version into `dir`'s format file: write a temp
/// file, fsync, rename, fsync the directory, so a crash leaves either the
/// old file or the new one.
pub(crate) fn write_format(dir: &Path) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{FORMAT_PREFIX}{FORMAT_VERSION}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FORMAT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The version named by `dir`'s format file, whatever it is. Reads only.
pub(crate) fn raw_format_version(dir: &Path) -> Result<u32, OpenError> {
    let text = std::fs::read_to_string(dir.join(FORMAT_FILE)).map_err(|source| OpenError::Io {
        dir: dir.to_owned(),
        source,
    })?;
    let line = text.lines().next().unwrap_or("").trim();
    parse_version(line).ok_or_else(|| OpenError::Unknown {
        dir: dir.to_owned(),
        why: format!("{FORMAT_FILE} says {line:?}"),
    })
}

/// The version in the format file's first line, if it has the format's
/// shape.
fn parse_version(line: &str) -> Option<u32> {
    line.strip_prefix(FORMAT_PREFIX)?.parse().ok()
}
