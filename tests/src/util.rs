//! Free loopback ports, scratch directories, identities and key files.

use punchline::identity::KeyPair;
use std::path::{Path, PathBuf};

/// A free UDP port on loopback (for programs that cannot pick their own and tell).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a loopback UDP socket")
        .port()
}

/// A scratch directory for this process, removed when dropped.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory named after `what` and this process.
    pub fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("punchline-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh ed25519 key.
pub fn key() -> KeyPair {
    KeyPair::generate(&mut rand_core::OsRng)
}

/// A fresh key saved as key file `name` in `dir`: the key and the file's path.
pub fn key_file(dir: &Scratch, name: &str) -> (KeyPair, PathBuf) {
    let k = key();
    let path = dir.join(name);
    k.save(&path).expect("save the key file");
    (k, path)
}

/// A tokio runtime with two worker threads, for suites that speak to a server from async
/// code.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_loads_as_the_key_it_was_made_from() {
        let dir = Scratch::new("key-file-test");
        let (k, path) = key_file(&dir, "alice.key");
        let loaded = KeyPair::load(&path).unwrap();
        assert_eq!(loaded.identity(), k.identity());
        let kept = dir.path().to_path_buf();
        drop(dir);
        assert!(!kept.exists(), "the scratch directory goes with it");
    }
}
