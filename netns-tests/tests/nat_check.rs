//! `nat-check` from a host behind each router type reports that router's mapping and
//! filtering behaviour (RFC 5780), against the lab's STUN server.

use punchline_netns_tests::{lab, say, Lab, Nat};

#[test]
fn nat_check_tells_each_router_type() {
    let mut lab = lab!("nat_check_tells_each_router_type");
    let mut rows = Vec::new();
    for nat in Nat::ALL {
        let mut site = lab.site(nat);
        let host = lab.host(&mut site);
        let bin = lab.bin().to_string();
        let out = lab
            .run_on(
                &host,
                &[&bin, "signaling", "nat-check", "--stun", &Lab::stun()],
            )
            .unwrap_or_else(|e| panic!("nat-check behind {nat:?}: {e}"));
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name:?} in:\n{out}"))
        };
        let (mapping, filtering, kind) =
            (field("mapping:"), field("filtering:"), field("NAT type:"));
        let expected = match nat {
            Nat::None => (
                "endpoint-independent",
                "endpoint-independent",
                "none (open internet)",
            ),
            Nat::FullCone => ("endpoint-independent", "endpoint-independent", "full cone"),
            Nat::PortRestricted => (
                "endpoint-independent",
                "address-and-port-dependent",
                "port-restricted cone",
            ),
            Nat::Symmetric => (
                "address-and-port-dependent",
                "address-and-port-dependent",
                "symmetric",
            ),
        };
        assert_eq!(
            (mapping.as_str(), filtering.as_str(), kind.as_str()),
            expected,
            "behind a {} router:\n{out}",
            nat.name()
        );
        rows.push(format!(
            "{:<16} {mapping:<28} {filtering:<28} {kind}",
            nat.name()
        ));
    }
    lab.audit();
    say(
        "router           mapping                      filtering                    nat-check says",
    );
    for r in rows {
        say(&r);
    }
}
