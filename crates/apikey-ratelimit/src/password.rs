//! The Redis password: read from a file, held in a type that never prints
//! it.
//!
//! A password on the command line is visible to every user of the machine
//! (`ps`, `/proc/<pid>/cmdline`), so the server takes only a file's path
//! (a compose or Kubernetes secret mounted read-only, or a file of mode
//! 0600). The content is trimmed, so a file written with `echo` works. The
//! value is kept in [`Password`], whose `Debug` is redacted and which has
//! no `Display`: no log line, error or panic message can carry it. Errors
//! name the file, never what is in it.

use std::io::Read as _;
use std::path::Path;

/// A file longer than this is refused without being read further: a path
/// pointing at the wrong file (a log, `/dev/zero`) must fail, not hang.
pub const MAX_FILE_BYTES: u64 = 4096;

/// The Redis password. `Debug` prints `Password(<redacted>)`; the only way
/// to the value is [`Password::expose`], for the one place that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The password itself, to hand to the Redis client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Reads the password in `path`: its content without leading and trailing
/// white space (the newline an editor or `echo` adds). Refused: a file that
/// cannot be read, is over [`MAX_FILE_BYTES`], is not UTF-8, or is empty
/// once trimmed.
pub fn read_file(path: &Path) -> Result<Password, String> {
    let shown = path.display();
    let file =
        std::fs::File::open(path).map_err(|e| format!("Redis password file {shown}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("Redis password file {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "Redis password file {shown} is over {MAX_FILE_BYTES} bytes: is it the right file?"
        ));
    }
    // The error of from_utf8 would carry the bytes: say only what is wrong.
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("Redis password file {shown} is not UTF-8 text"))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("Redis password file {shown} is empty"));
    }
    Ok(Password(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in a fresh temporary directory, removed with it.
    struct TempFile {
        dir: std::path::PathBuf,
        path: std::path::PathBuf,
    }

    impl TempFile {
        fn with(name: &str, content: &[u8]) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "apikey-ratelimit-password-{}-{name}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("redis-password");
            std::fs::write(&path, content).unwrap();
            Self { dir, path }
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn the_content_is_trimmed_of_the_newline_echo_adds() {
        let file = TempFile::with("trimmed", b"  s3cret-Pa55 \n");
        let password = read_file(&file.path).unwrap();
        assert_eq!(password.expose(), "s3cret-Pa55", "white space was kept");
    }

    #[test]
    fn debug_never_prints_the_password() {
        let file = TempFile::with("debug", b"hunter2-do-not-print\n");
        let password = read_file(&file.path).unwrap();
        for shown in [format!("{password:?}"), format!("{password:#?}")] {
            assert!(!shown.contains("hunter2"), "Debug printed it: {shown}");
            assert!(shown.contains("redacted"), "Debug says nothing: {shown}");
        }
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_not_its_content() {
        let oversized = vec![b'x'; usize::try_from(MAX_FILE_BYTES).unwrap() + 1];
        for (case, content) in [
            ("empty", &b""[..]),
            ("blank", &b" \n\t\n"[..]),
            ("not utf-8", &b"secret\xff\xfe"[..]),
            ("oversized", &oversized[..]),
        ] {
            let file = TempFile::with(&case.replace(' ', "-"), content);
            let error = read_file(&file.path).expect_err(case);
            assert!(
                error.contains(&file.path.display().to_string()),
                "{case}: the error does not name the file: {error}"
            );
            assert!(
                !error.contains("secret") && !error.contains("xxxx"),
                "{case}: the error shows the content: {error}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_refused_with_its_path() {
        let path = std::env::temp_dir().join("apikey-ratelimit-no-such-password-file");
        let error = read_file(&path).expect_err("a missing file was accepted");
        assert!(
            error.contains("apikey-ratelimit-no-such-password-file"),
            "{error}"
        );
    }
}
