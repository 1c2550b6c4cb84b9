//! Files the CLI writes for Envoy and Istio (the ECDS file, `render
//! --out`): an exclusive lock and atomic replacement.
//!
//! Two operators (or two CI jobs) may change the database at once, and
//! each then rewrites the ECDS file; the later file must not be the older
//! table. [`publish`](crate::commands::publish) therefore holds an
//! exclusive `flock` on a `.lock` file beside the ECDS file
//! (`apikey.yaml.lock`, never deleted: removing a lock file lets a third
//! process lock a different inode) while it reads the database and writes
//! the file. Files are replaced by writing a temporary file in the same
//! directory (a random name, created exclusively, so no link planted there
//! is followed), fsyncing it, renaming it over the target and fsyncing the
//! directory, so a reader (Envoy watching the ECDS directory) sees the old
//! document or the new one, never half of one, and a crash cannot lose
//! both.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{refused_as, CliError, Code};

/// Permissions of a new ECDS or rendered file: Envoy, often another user,
/// must read it.
pub const PUBLIC_MODE: u32 = 0o644;

/// An exclusive lock on a file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// The lock file of a file: `<file>.lock` in the same directory.
pub fn lock_path(file: &Path) -> PathBuf {
    let mut name = file
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from("apikey"));
    name.push(".lock");
    file.with_file_name(name)
}

/// Takes the exclusive lock on `file`, waiting for another holder (and
/// saying so on stderr) rather than failing.
pub fn lock(file: &Path) -> Result<FileLock, CliError> {
    let path = lock_path(file);
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).write(true);
    // A link planted at the lock's name is refused (ELOOP) rather than
    // followed: followed, it would create an empty file wherever it points,
    // with the operator's rights.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let file = options
        .open(&path)
        .map_err(|error| io_refused("cannot open the lock file", &path, &error))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            eprintln!(
                "apikey: waiting for another apikey command holding {}",
                path.display()
            );
            file.lock()
                .map_err(|error| io_refused("cannot lock", &path, &error))?;
        }
        Err(TryLockError::Error(error)) => {
            return Err(io_refused("cannot lock", &path, &error));
        }
    }
    Ok(FileLock { _file: file })
}

/// Replaces `path` with `bytes` atomically and durably. An existing file
/// keeps its permissions; a new one gets `new_mode`.
///
/// The temporary file has a random name and is created exclusively
/// (`O_CREAT | O_EXCL`, by `tempfile`), so nothing already in the directory
/// is ever opened: a link planted there by someone who can write to the
/// directory, or a file left by a crashed run, is not written through or
/// truncated (issue 17, finding 9: the name used to be `.<file>.tmp.<pid>`,
/// opened with create and truncate, which followed such a link).
pub fn write_atomic(path: &Path, bytes: &[u8], new_mode: u32) -> Result<(), CliError> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mode = existing_mode(path).unwrap_or(new_mode);
    let mut prefix = OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Never wider than the final mode, even for the instant before
        // `set_mode` (the umask may narrow it further).
        builder.permissions(fs::Permissions::from_mode(mode));
    }
    let mut temporary = builder
        .tempfile_in(&directory)
        .map_err(|error| io_refused("cannot create a temporary file in", &directory, &error))?;
    // On any error below, dropping `temporary` removes it.
    set_mode(temporary.as_file(), mode)
        .map_err(|error| io_refused("cannot set the mode of", temporary.path(), &error))?;
    temporary
        .write_all(bytes)
        .and_then(|()| temporary.as_file().sync_all())
        .map_err(|error| io_refused("cannot write", temporary.path(), &error))?;
    temporary
        .persist(path)
        .map_err(|error| io_refused("cannot replace", path, &error.error))?;
    File::open(&directory)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_refused("cannot sync the directory", &directory, &error))
}

/// The permission bits of an existing file.
#[cfg(unix)]
fn existing_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .ok()
        .map(|metadata| metadata.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn existing_mode(_path: &Path) -> Option<u32> {
    None
}

/// Sets the mode exactly (the umask applied at creation may have narrowed it).
#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

fn io_refused(what: &str, path: &Path, error: &io::Error) -> CliError {
    refused_as(Code::IoError, format!("{what} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("apikey-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_lock_file_sits_beside_the_file_it_guards() {
        assert_eq!(
            lock_path(Path::new("/srv/ecds/apikey.yaml")),
            Path::new("/srv/ecds/apikey.yaml.lock")
        );
        assert_eq!(
            lock_path(Path::new("apikey.pb")),
            Path::new("apikey.pb.lock")
        );
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let path = dir.join("apikey.yaml");
        write_atomic(&path, b"one", PUBLIC_MODE).unwrap();
        write_atomic(&path, b"two", PUBLIC_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["apikey.yaml"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_new_file_gets_the_mode_asked_and_an_existing_mode_is_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("mode");
        let path = dir.join("apikey.yaml");
        write_atomic(&path, b"{}", PUBLIC_MODE).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o644, "a new file did not get the mode asked");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"{\"keys\": []}", PUBLIC_MODE).unwrap();
        assert_eq!(mode(&path), 0o640, "the existing mode was not kept");
        fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 17 finding 9: another local user who can write to the ECDS
    /// directory plants a link where a predictable temporary file would go
    /// (the old name was `.<file>.tmp.<pid>`); the write must never go
    /// through it, and the target ends up a regular file of its own.
    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_in_the_directory_is_never_written_through() {
        let dir = scratch("symlink");
        let victim = dir.join("victim");
        fs::write(&victim, b"untouched").unwrap();
        let path = dir.join("apikey.yaml");
        let planted = dir.join(format!(".apikey.yaml.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomic(&path, b"the table", PUBLIC_MODE).unwrap();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"untouched",
            "the write went through the planted link"
        );
        assert!(
            fs::symlink_metadata(&path).unwrap().file_type().is_file(),
            "the ECDS file is a link, not a file of its own"
        );
        assert_eq!(fs::read(&path).unwrap(), b"the table");
        assert!(
            fs::symlink_metadata(&planted)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the planted link was consumed"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_at_the_lock_file_is_refused_not_followed() {
        let dir = scratch("lock-link");
        let target = dir.join("created-through-the-link");
        let file = dir.join("apikey.yaml");
        std::os::unix::fs::symlink(&target, lock_path(&file)).unwrap();
        let error = lock(&file).unwrap_err();
        assert!(
            matches!(&error, CliError::Refused(_, m) if m.contains("cannot open the lock file")),
            "{error:?}"
        );
        assert!(!target.exists(), "the lock was taken through the link");
        fs::remove_dir_all(dir).unwrap();
    }
}
