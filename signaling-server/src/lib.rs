//! punchline-signaling: the signaling server that introduces punchline peers by identity
//! (JSON over websocket; see docs/SIGNALING.md), and the client that connects a
//! [`punchline::Sockets`] to it.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use punchline_signaling::server::{Config, Server};
//! let server = Server::start("127.0.0.1:0".parse().unwrap(), Config::default()).await?;
//! println!("signaling at ws://{}/", server.addr());
//! server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod cli;
pub mod client;
mod conn;
pub mod fakeip;
pub mod limit;
pub mod mailbox;
pub mod pops;
pub mod protocol;
pub mod relay;
pub mod server;
pub mod stun;
pub mod tls;
pub mod turn_server;

pub use client::{ClientError, SignalingClient};
pub use server::{Config, Server};
