//! The signaling server for the end-to-end suites: the `punchline-signaling` binary's entry
//! point, built with this package (see `Cargo.toml`).

fn main() {
    std::process::exit(punchline_signaling::cli::run(std::env::args_os()));
}
