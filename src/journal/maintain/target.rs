//! Where an online backup may be written: a name inside the configured
//! backup directory, never anywhere else the service can write.
//!
//! The admin API takes a name from its caller; a path it turned into a
//! directory anywhere would let a leaked admin token write into any
//! directory the service user may write. So the name must be relative and
//! made of plain components (no `..`, no `.`, no root), the directories
//! above it must already exist, and none of them, nor the name itself, may
//! be a symbolic link that leads out of the backup directory.
//!
//! The checks run just before the backup opens its target; only a process
//! that can already write into the backup directory could swap a checked
//! directory for a link in between.

use std::path::{Component, Path, PathBuf};

use super::error::MaintainError;

/// The directory named `name` inside `root`, checked as the module says,
/// as an absolute path with `root` and every directory above the name
/// resolved. Errors: [`MaintainError::Target`] for a name that is not
/// allowed (the caller's fault), [`MaintainError::BackupRoot`] when `root`
/// itself cannot be used (the operator's).
pub fn backup_target(root: &Path, name: &Path) -> Result<PathBuf, MaintainError> {
    let shown = name.display();
    let refuse = |why: &str| {
        MaintainError::Target(format!(
            "backup target `{shown}` {why}; give a name inside the backup directory, such as `b24-journal-20261127`"
        ))
    };
    if name.as_os_str().is_empty() {
        return Err(refuse("is empty"));
    }
    if name.is_absolute() {
        return Err(refuse("is an absolute path"));
    }
    for part in name.components() {
        match part {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(refuse("contains `..`")),
            _ => return Err(refuse("contains `.` or a root")),
        }
    }
    let root = root.canonicalize().map_err(|e| {
        MaintainError::BackupRoot(format!("backup directory {}: {e}", root.display()))
    })?;
    let joined = root.join(name);
    let leaf = joined
        .file_name()
        .expect("a name of plain components ends in one");
    let parent = joined
        .parent()
        .expect("`root` joined with a non-empty name has a parent");
    let parent = parent.canonicalize().map_err(|_| {
        refuse("has directories above it that do not exist in the backup directory")
    })?;
    if !parent.starts_with(&root) {
        return Err(refuse(
            "leads out of the backup directory through a symbolic link",
        ));
    }
    let target = parent.join(leaf);
    if target
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(refuse("is a symbolic link"));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(root: &Path, name: &str) -> String {
        match backup_target(root, Path::new(name)) {
            Err(MaintainError::Target(why)) => why,
            other => panic!("{name:?}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn names_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("backups");
        std::fs::create_dir(&root).unwrap();
        let real = root.canonicalize().unwrap();
        assert_eq!(
            backup_target(&root, Path::new("b1")).unwrap(),
            real.join("b1")
        );
        std::fs::create_dir(root.join("daily")).unwrap();
        assert_eq!(
            backup_target(&root, Path::new("daily/b2")).unwrap(),
            real.join("daily/b2")
        );

        assert!(refused(&root, "").contains("is empty"));
        assert!(refused(&root, "/etc/cron.d").contains("absolute"));
        assert!(refused(&root, "../escape").contains("`..`"));
        assert!(refused(&root, "daily/../../escape").contains("`..`"));
        assert!(refused(&root, "./b3").contains("`.`"));
        assert!(refused(&root, "missing/b4").contains("do not exist"));

        // Symbolic links out of the root: as a directory above, or as the
        // name itself.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        assert!(refused(&root, "out/b5").contains("symbolic link"));
        assert!(refused(&root, "out").contains("symbolic link"));
        // A link that stays inside is a link all the same.
        std::os::unix::fs::symlink(root.join("daily"), root.join("in")).unwrap();
        assert!(refused(&root, "in").contains("symbolic link"));
        assert_eq!(
            backup_target(&root, Path::new("in/b6")).unwrap(),
            real.join("daily/b6")
        );
    }

    #[test]
    fn a_missing_root_is_the_operators_problem() {
        let dir = tempfile::tempdir().unwrap();
        let err = backup_target(&dir.path().join("nope"), Path::new("b1")).unwrap_err();
        assert!(matches!(err, MaintainError::BackupRoot(_)), "{err:?}");
    }
}
