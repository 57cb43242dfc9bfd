//! What the end-to-end suites in `tests/tests/` share: the signaling server (as a real
//! process, or in this process with STUN and TURN), coturn, free loopback ports, identities
//! and key files, and peers logged in through a server.
//!
//! The suites here cross crates (`punchline`, `punchline-ice`, `punchline-signaling`); each
//! crate's own `tests/` folder keeps the suites that test it through its own API.
//! `signaling-server/tests` uses [`server::Process`] from here too.

pub mod coturn;
pub mod peers;
pub mod server;
pub mod util;
