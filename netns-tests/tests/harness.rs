//! The lab itself: a test that fails part way leaves no namespace and no process behind.

use punchline_netns_tests::{lab, Lab, Nat};

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let lab = lab!("a_panicking_test_leaves_nothing_behind");
    let prefix = format!("{}-", lab.prefix());
    drop(lab);
    let built = std::sync::Mutex::new((Vec::new(), Vec::new()));
    let outcome = std::panic::catch_unwind(|| {
        let mut lab = Lab::new("panicking", env!("CARGO_BIN_EXE_netns-host")).expect("checked");
        let mut site = lab.site(Nat::Symmetric);
        let host = lab.host(&mut site);
        let _peer = lab.peer(&host, 9);
        let names = Lab::namespaces_named(&format!("{}-", lab.prefix()));
        let pids: Vec<String> = names
            .iter()
            .flat_map(|ns| {
                let out = std::process::Command::new("ip")
                    .args(["netns", "pids", ns])
                    .output()
                    .expect("ip netns pids");
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        *built.lock().unwrap() = (names, pids);
        panic!("on purpose, with a server, a router and a peer running");
    });
    assert!(outcome.is_err());
    let (names, pids) = built.into_inner().unwrap();
    // inet, srv, the router and the host; the server and the peer ran in them.
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(pids.len() >= 2, "{pids:?}");
    assert!(Lab::namespaces_named(&prefix).is_empty());
    for ns in &names {
        assert!(Lab::namespaces_named(ns).is_empty(), "{ns} is still there");
    }
    for pid in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still running"
        );
    }
}
