//! The state file on disk: an exclusive lock, whole-file reads, atomic
//! replacement.
//!
//! Two operators (or two CI jobs) may run `apikey create` at once; each
//! must see the other's key. Every mutating command therefore holds an
//! exclusive `flock` on a `.lock` file beside the state (`<state>.lock`,
//! never deleted: removing a lock file lets a third process lock a
//! different inode) for its whole read–change–write. Files are replaced by
//! writing a temporary file in the same directory, fsyncing it, renaming
//! it over the target and fsyncing the directory, so a reader (Envoy
//! watching the ECDS directory, a concurrent `list`) sees the old document
//! or the new one, never half of one, and a crash cannot lose both.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{refused, CliError};

/// Permissions of a new state file: it names every key's hash and tenant,
/// so only its owner reads it.
pub const STATE_MODE: u32 = 0o600;
/// Permissions of a new ECDS or rendered file: Envoy, often another user,
/// must read it.
pub const PUBLIC_MODE: u32 = 0o644;

/// An exclusive lock on a state file, released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// The lock file of a state file: `<state>.lock` in the same directory.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from("apikey-state.json"));
    name.push(".lock");
    state.with_file_name(name)
}

/// Takes the exclusive lock on `state`, waiting for another holder (and
/// saying so on stderr) rather than failing.
pub fn lock(state: &Path) -> Result<StateLock, CliError> {
    let path = lock_path(state);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
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
    Ok(StateLock { _file: file })
}

/// Reads a whole file; a missing state file gets a hint to run `init`.
pub fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    fs::read(path).map_err(|error| {
        if error.kind() == io::ErrorKind::NotFound {
            refused(format!(
                "no state file at {} (apikey init makes one; --state or APIKEY_STATE names another)",
                path.display()
            ))
        } else {
            io_refused("cannot read", path, &error)
        }
    })
}

/// Replaces `path` with `bytes` atomically and durably. An existing file
/// keeps its permissions; a new one gets `new_mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], new_mode: u32) -> Result<(), CliError> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut temporary_name = OsString::from(".");
    temporary_name.push(path.file_name().unwrap_or_default());
    temporary_name.push(format!(".tmp.{}", std::process::id()));
    let temporary = directory.join(temporary_name);
    let result = write_then_rename(path, &temporary, bytes, new_mode);
    if result.is_err() {
        // Best effort: the temporary file is ours and useless now.
        let _ = fs::remove_file(&temporary);
    }
    result?;
    File::open(&directory)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_refused("cannot sync the directory", &directory, &error))
}

fn write_then_rename(
    path: &Path,
    temporary: &Path,
    bytes: &[u8],
    new_mode: u32,
) -> Result<(), CliError> {
    let mode = existing_mode(path).unwrap_or(new_mode);
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let mut file = options
        .open(temporary)
        .map_err(|error| io_refused("cannot create", temporary, &error))?;
    set_mode(&file, mode)
        .map_err(|error| io_refused("cannot set the mode of", temporary, &error))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| io_refused("cannot write", temporary, &error))?;
    fs::rename(temporary, path).map_err(|error| io_refused("cannot replace", path, &error))
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
    refused(format!("{what} {}: {error}", path.display()))
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
    fn the_lock_file_sits_beside_the_state() {
        assert_eq!(
            lock_path(Path::new("/srv/keys/state.json")),
            Path::new("/srv/keys/state.json.lock")
        );
        assert_eq!(
            lock_path(Path::new("state.json")),
            Path::new("state.json.lock")
        );
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let path = dir.join("state.json");
        write_atomic(&path, b"one", STATE_MODE).unwrap();
        write_atomic(&path, b"two", STATE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_new_state_file_is_private_and_an_existing_mode_is_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("mode");
        let path = dir.join("state.json");
        write_atomic(&path, b"{}", STATE_MODE).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"{\"keys\": []}", STATE_MODE).unwrap();
        assert_eq!(mode(&path), 0o640);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_state_file_points_at_init() {
        let error = read(Path::new("/nonexistent/apikey-state.json")).unwrap_err();
        assert!(
            matches!(&error, CliError::Refused(m) if m.contains("apikey init")),
            "{error:?}"
        );
    }
}
