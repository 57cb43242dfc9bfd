//! The `punchline-signaling` server binary (see [`punchline_signaling::cli`]).

fn main() {
    std::process::exit(punchline_signaling::cli::run(std::env::args_os()));
}
