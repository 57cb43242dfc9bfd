//! Saving and loading a [`KeyPair`] as a secret key file.
//!
//! The file is text: the header line `punchline-ed25519-secret-key-v1`, then the 32-byte secret
//! seed as 64 hex digits, each line ending in `\n` (the final newline may be missing). On Unix it
//! must be readable and writable by its owner only (mode `0600`, as `ssh` requires of its keys).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::text::decode_hex_into;
use crate::KeyPair;

/// The first line of a secret key file.
pub const KEY_FILE_HEADER: &str = "punchline-ed25519-secret-key-v1";

/// The largest secret key file [`KeyPair::load`] reads, in bytes.
pub const MAX_KEY_FILE_LEN: u64 = 4096;

/// Why a secret key file could not be saved or loaded.
///
/// Every variant names the file; line and column numbers start at 1 and columns count bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be opened or read.
    #[error("cannot read key file {}: {source}", .path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file could not be created or written.
    #[error("cannot write key file {}: {source}", .path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// [`KeyPair::save`] found a file already there.
    #[error(
        "refusing to overwrite existing key file {} (remove it first, or use \
         KeyPair::save_overwrite)",
        .path.display()
    )]
    AlreadyExists {
        /// The key file.
        path: PathBuf,
    },
    /// The path is a directory or another kind of non-regular file.
    #[error("key file {} is not a regular file", .path.display())]
    NotAFile {
        /// The key file.
        path: PathBuf,
    },
    /// Group or others may read or write the file, so the secret key may have leaked.
    #[error(
        "key file {} has permissions {mode:04o}, which let group or others access the secret \
         key; run `chmod 600 {}`",
        .path.display(),
        .path.display()
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The file is larger than any key file.
    #[error(
        "key file {} is {len} bytes, larger than the {max} bytes a key file may have",
        .path.display()
    )]
    TooLarge {
        /// The key file.
        path: PathBuf,
        /// Size of the file in bytes.
        len: u64,
        /// The largest size allowed ([`MAX_KEY_FILE_LEN`]).
        max: u64,
    },
    /// The first line is not [`KEY_FILE_HEADER`].
    #[error(
        "{} is not a punchline secret key file: the first line must be `{KEY_FILE_HEADER}`",
        .path.display()
    )]
    MissingHeader {
        /// The key file.
        path: PathBuf,
    },
    /// A character of the seed is not a hex digit.
    #[error(
        "bad hex digit {found:?} in key file {} at line {line}, column {column}",
        .path.display()
    )]
    BadHex {
        /// The key file.
        path: PathBuf,
        /// Line of the character.
        line: usize,
        /// Column of the character (in bytes).
        column: usize,
        /// The offending character (U+FFFD if the bytes there are not UTF-8).
        found: char,
    },
    /// The seed is shorter or longer than 64 hex digits.
    #[error(
        "secret key seed in {} is {found} hex digits long, expected {expected}",
        .path.display()
    )]
    SeedLength {
        /// The key file.
        path: PathBuf,
        /// Number of hex digits found.
        found: usize,
        /// Number of hex digits expected (64).
        expected: usize,
    },
    /// More follows the seed line.
    #[error(
        "unexpected data after the secret key seed in {} (line {line})",
        .path.display()
    )]
    TrailingData {
        /// The key file.
        path: PathBuf,
        /// Line where the unexpected data starts.
        line: usize,
    },
}

impl KeyPair {
    /// Writes the key pair to a new secret key file at `path`, readable by its owner only.
    ///
    /// Refuses to replace an existing file ([`KeyFileError::AlreadyExists`]), so a key is never
    /// lost by accident; use [`KeyPair::save_overwrite`] for that.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), KeyFileError> {
        self.write_key_file(path.as_ref(), false)
    }

    /// Writes the key pair to a secret key file at `path`, replacing any file already there
    /// and making it readable by its owner only.
    pub fn save_overwrite(&self, path: impl AsRef<Path>) -> Result<(), KeyFileError> {
        self.write_key_file(path.as_ref(), true)
    }

    /// Reads a key pair from the secret key file at `path`.
    ///
    /// Refuses a file that group or others may access (telling how to fix it), a file larger
    /// than [`MAX_KEY_FILE_LEN`], and any content other than the header line and the seed line.
    pub fn load(path: impl AsRef<Path>) -> Result<KeyPair, KeyFileError> {
        let path = path.as_ref();
        let read_error = |source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        };
        // Look before opening: opening a FIFO would block.
        if !fs::metadata(path).map_err(read_error)?.is_file() {
            return Err(KeyFileError::NotAFile {
                path: path.to_owned(),
            });
        }
        let file = File::open(path).map_err(read_error)?;
        // Check the opened file itself, in case the path changed in between.
        let metadata = file.metadata().map_err(read_error)?;
        if !metadata.is_file() {
            return Err(KeyFileError::NotAFile {
                path: path.to_owned(),
            });
        }
        check_permissions(path, &metadata)?;
        let too_large = |len| KeyFileError::TooLarge {
            path: path.to_owned(),
            len,
            max: MAX_KEY_FILE_LEN,
        };
        if metadata.len() > MAX_KEY_FILE_LEN {
            return Err(too_large(metadata.len()));
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        let len = bytes.len() as u64;
        if len > MAX_KEY_FILE_LEN {
            // The file grew after it was checked.
            return Err(too_large(len));
        }
        parse_key_file(path, &bytes).map(KeyPair::from_seed)
    }

    /// Writes the key file, creating it with mode 0600.
    fn write_key_file(&self, path: &Path, overwrite: bool) -> Result<(), KeyFileError> {
        let write_error = |source| KeyFileError::Write {
            path: path.to_owned(),
            source,
        };
        let mut options = OpenOptions::new();
        options.write(true);
        if overwrite {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| {
            if !overwrite && source.kind() == io::ErrorKind::AlreadyExists {
                KeyFileError::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                write_error(source)
            }
        })?;
        // The mode above applies only to new files: tighten a replaced one too.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(write_error)?;
        }
        let text = format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(self.seed()));
        file.write_all(text.as_bytes()).map_err(write_error)?;
        file.sync_all().map_err(write_error)
    }
}

/// Refuses a key file that group or others may read or write.
#[cfg(unix)]
fn check_permissions(path: &Path, metadata: &fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Without Unix permissions there is nothing to check.
#[cfg(not(unix))]
fn check_permissions(_path: &Path, _metadata: &fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

/// Parses the content of a key file into the secret seed.
fn parse_key_file(path: &Path, bytes: &[u8]) -> Result<[u8; 32], KeyFileError> {
    let (header, rest) = split_line(bytes);
    if header != KEY_FILE_HEADER.as_bytes() {
        return Err(KeyFileError::MissingHeader {
            path: path.to_owned(),
        });
    }
    let (seed_line, rest) = split_line(rest);
    if !rest.is_empty() {
        return Err(KeyFileError::TrailingData {
            path: path.to_owned(),
            line: 3,
        });
    }
    let bad_hex = |position: usize, found| KeyFileError::BadHex {
        path: path.to_owned(),
        line: 2,
        column: position + 1,
        found,
    };
    let seed_text = std::str::from_utf8(seed_line)
        .map_err(|error| bad_hex(error.valid_up_to(), char::REPLACEMENT_CHARACTER))?;
    let mut seed = [0u8; 32];
    // Reports a bad character anywhere in the line before looking at its length.
    decode_hex_into(seed_text, &mut seed).map_err(|bad| bad_hex(bad.position, bad.found))?;
    if seed_text.len() != 2 * seed.len() {
        return Err(KeyFileError::SeedLength {
            path: path.to_owned(),
            found: seed_text.len(),
            expected: 2 * seed.len(),
        });
    }
    Ok(seed)
}

/// Splits `bytes` after its first line: the line without its `\n`, and what follows.
fn split_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(end) => (&bytes[..end], &bytes[end + 1..]),
        None => (bytes, &[]),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::os::unix::fs::PermissionsExt;

    /// A directory of its own for one test, removed afterwards.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("punchline-identity-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn key_pair() -> KeyPair {
        KeyPair::generate(&mut ChaCha8Rng::seed_from_u64(42))
    }

    fn write_file(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// A well-formed key file with `seed_line` as its second line.
    fn key_file(seed_line: &str) -> Vec<u8> {
        format!("{KEY_FILE_HEADER}\n{seed_line}\n").into_bytes()
    }

    fn valid_seed_hex() -> String {
        hex::encode(key_pair().seed())
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = TempDir::new("round-trip");
        let path = dir.file("key");
        let pair = key_pair();
        pair.save(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(pair.seed()))
        );
        let loaded = KeyPair::load(&path).unwrap();
        assert_eq!(loaded.public_key(), pair.public_key());
        assert_eq!(loaded.seed(), pair.seed());
    }

    #[test]
    fn save_refuses_to_overwrite() {
        let dir = TempDir::new("no-overwrite");
        let path = dir.file("key");
        write_file(&path, b"precious", 0o644);
        let err = key_pair().save(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("save_overwrite"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn save_overwrite_replaces_and_tightens_permissions() {
        let dir = TempDir::new("overwrite");
        let path = dir.file("key");
        write_file(
            &path,
            b"old content that is longer than a key file line",
            0o644,
        );
        let pair = key_pair();
        pair.save_overwrite(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(KeyPair::load(&path).unwrap().seed(), pair.seed());
    }

    #[test]
    fn load_refuses_files_others_can_access() {
        let dir = TempDir::new("permissions");
        let path = dir.file("key");
        for mode in [0o644, 0o640, 0o604, 0o602, 0o620] {
            write_file(&path, &key_file(&valid_seed_hex()), mode);
            let err = KeyPair::load(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::InsecurePermissions { mode: m, .. } if m == mode),
                "{err}"
            );
            let message = err.to_string();
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(
                message.contains(&format!("chmod 600 {}", path.display())),
                "{message}"
            );
        }
        // Owner-only modes are fine.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(KeyPair::load(&path).is_ok());
    }

    /// Writes `content` with mode 0600 and loads it.
    fn load_content(test: &str, content: &[u8]) -> Result<KeyPair, KeyFileError> {
        let dir = TempDir::new(test);
        let path = dir.file("key");
        write_file(&path, content, 0o600);
        KeyPair::load(&path)
    }

    #[test]
    fn final_newline_is_optional() {
        let content = format!("{KEY_FILE_HEADER}\n{}", valid_seed_hex());
        let loaded = load_content("no-final-newline", content.as_bytes()).unwrap();
        assert_eq!(loaded.public_key(), key_pair().public_key());
    }

    #[test]
    fn load_refuses_a_missing_or_wrong_header() {
        let seed = valid_seed_hex();
        for (i, content) in [
            String::new(),
            format!("{seed}\n"),
            format!("punchline-ed25519-secret-key-v2\n{seed}\n"),
            format!("{KEY_FILE_HEADER}\r\n{seed}\r\n"),
        ]
        .iter()
        .enumerate()
        {
            let err = load_content(&format!("header-{i}"), content.as_bytes()).unwrap_err();
            assert!(matches!(err, KeyFileError::MissingHeader { .. }), "{err}");
        }
    }

    #[test]
    fn load_refuses_truncated_or_long_seeds() {
        let seed = valid_seed_hex();
        let header_only = format!("{KEY_FILE_HEADER}\n");
        let cases = [
            (header_only.into_bytes(), 0),
            (key_file(&seed[..63]), 63),
            (key_file(&seed[..10]), 10),
            (key_file(&format!("{seed}00")), 66),
        ];
        for (i, (content, found)) in cases.iter().enumerate() {
            let err = load_content(&format!("seed-length-{i}"), content).unwrap_err();
            assert!(
                matches!(err, KeyFileError::SeedLength { found: f, expected: 64, .. } if f == *found),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("{found} hex digits")));
        }
    }

    #[test]
    fn load_reports_where_the_hex_is_bad() {
        let mut seed = valid_seed_hex();
        seed.replace_range(20..21, "x");
        let err = load_content("bad-hex", &key_file(&seed)).unwrap_err();
        assert!(
            matches!(
                err,
                KeyFileError::BadHex {
                    line: 2,
                    column: 21,
                    found: 'x',
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("line 2, column 21"), "{err}");

        let mut bytes = key_file(&valid_seed_hex());
        bytes[KEY_FILE_HEADER.len() + 1 + 5] = 0xff;
        let err = load_content("bad-utf8", &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                KeyFileError::BadHex {
                    column: 6,
                    found: char::REPLACEMENT_CHARACTER,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn load_refuses_trailing_data() {
        let mut content = key_file(&valid_seed_hex());
        content.extend_from_slice(b"extra\n");
        let err = load_content("trailing", &content).unwrap_err();
        assert!(
            matches!(err, KeyFileError::TrailingData { line: 3, .. }),
            "{err}"
        );
        let mut content = key_file(&valid_seed_hex());
        content.push(b'\n');
        let err = load_content("trailing-blank", &content).unwrap_err();
        assert!(matches!(err, KeyFileError::TrailingData { .. }), "{err}");
    }

    #[test]
    fn load_refuses_oversized_files() {
        let mut content = key_file(&valid_seed_hex());
        content.resize(5000, b'0');
        let err = load_content("oversized", &content).unwrap_err();
        assert!(
            matches!(
                err,
                KeyFileError::TooLarge {
                    len: 5000,
                    max: 4096,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn load_reports_missing_files_and_directories() {
        let dir = TempDir::new("missing");
        let err = KeyPair::load(dir.file("nope")).unwrap_err();
        match &err {
            KeyFileError::Read { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains("nope"), "{err}");
        let err = KeyPair::load(&dir.0).unwrap_err();
        assert!(matches!(err, KeyFileError::NotAFile { .. }), "{err}");
    }
}
