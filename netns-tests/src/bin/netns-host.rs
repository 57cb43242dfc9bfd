//! What runs inside the test namespaces: `netns-host signaling ARGS…` is the
//! `punchline-signaling` command line (server or `nat-check`); `netns-host peer …` is a
//! punchline peer driven by line commands on stdin (see `punchline_netns_tests::peer`);
//! `netns-host wire …` is a link with delay and loss (`punchline_netns_tests::wire`).

fn main() {
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_default();
    let code = match args.next().as_ref().and_then(|a| a.to_str()) {
        Some("signaling") => {
            punchline_signaling::cli::run(std::iter::once("punchline-signaling".into()).chain(args))
        }
        Some("peer") => punchline_netns_tests::peer::run(args.collect()),
        Some("wire") => punchline_netns_tests::wire::run(args.collect()),
        _ => {
            eprintln!(
                "usage: {} signaling ARGS… | peer --signaling URL --seed N | wire --a TAP --b TAP …",
                program.to_string_lossy()
            );
            2
        }
    };
    std::process::exit(code);
}
