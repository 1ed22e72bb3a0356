//! Golden snapshots of the rendered nft batches and iptables-restore inputs
//! for representative plans. They double as documentation of what Navigator
//! writes into the kernel; a change in rendering fails here until the
//! snapshot is regenerated with `UPDATE_SNAPSHOTS=1 cargo test -p
//! navigator-dataplane --test render` and reviewed.
//!
//! With NAVIGATOR_PRIVILEGED_TESTS=1 every nft batch is also checked by the
//! kernel (`nft -c -f`) in a throw-away network namespace, and every
//! iptables input by `iptables-restore --test`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use navigator_core::{Controls, ForwardId, ForwardSpec, Protocol, ProxyProtocol, parse_cidr};
use navigator_dataplane::iptables::{
    Family, JUMPS, Preserved, allow_chain, render_restore, render_restore_with,
};
use navigator_dataplane::kernel::ListenDelta;
use navigator_dataplane::nft::{render_replace, render_replace_with, render_update};

fn spec(n: u128, protocol: Protocol, listen: &str, target: &str) -> ForwardSpec {
    ForwardSpec {
        id: ForwardId(uuid::Uuid::from_u128(n)),
        protocol,
        listen: listen.parse().unwrap(),
        target: target.parse().unwrap(),
        ports: 1,
        one_target_port: false,
        controls: Default::default(),
    }
}

fn forwards() -> Vec<ForwardSpec> {
    vec![
        spec(1, Protocol::Tcp, "203.0.113.10:20022", "10.0.0.5:22"),
        spec(2, Protocol::Udp, "203.0.113.10:20053", "10.0.0.6:53"),
        spec(3, Protocol::Tcp, "203.0.113.11:20080", "10.0.1.7:80"),
        spec(4, Protocol::Tcp, "[2001:db8::10]:20022", "[fd00::5]:22"),
        spec(5, Protocol::Udp, "[2001:db8::10]:20053", "[fd00::6]:53"),
    ]
}

/// Port-range forwards: 4 TCP ports to 4 ports at the same offsets, 3 UDP
/// ports all to one port (N:1), and an IPv6 range.
fn ranges() -> Vec<ForwardSpec> {
    vec![
        ForwardSpec {
            ports: 4,
            ..spec(7, Protocol::Tcp, "203.0.113.10:21000", "10.0.0.5:8000")
        },
        ForwardSpec {
            ports: 3,
            one_target_port: true,
            ..spec(8, Protocol::Udp, "203.0.113.10:21100", "10.0.0.6:5060")
        },
        ForwardSpec {
            ports: 2,
            ..spec(9, Protocol::Tcp, "[2001:db8::10]:21200", "[fd00::5]:8080")
        },
    ]
}

fn controls(cidrs: &[&str], max: Option<u32>) -> Controls {
    Controls::new(
        cidrs.iter().map(|c| parse_cidr(c).unwrap()).collect(),
        max,
        ProxyProtocol::None,
    )
}

/// Forwards with controls: an allowlist with overlapping networks and one
/// of the other family (left out), a limit, a UDP range with a limit only,
/// and an IPv6 allowlist whose networks are all IPv4 (nobody allowed).
fn controlled() -> Vec<ForwardSpec> {
    vec![
        ForwardSpec {
            controls: controls(
                &[
                    "192.0.2.0/24",
                    "192.0.2.128/25",
                    "198.51.100.7",
                    "2001:db8::/32",
                ],
                Some(5),
            ),
            ..spec(11, Protocol::Tcp, "203.0.113.10:22022", "10.0.0.5:22")
        },
        ForwardSpec {
            ports: 3,
            controls: controls(&[], Some(3)),
            ..spec(12, Protocol::Udp, "203.0.113.10:22100", "10.0.0.6:5060")
        },
        ForwardSpec {
            controls: controls(&["192.0.2.0/24"], None),
            ..spec(13, Protocol::Tcp, "[2001:db8::10]:22022", "[fd00::5]:22")
        },
    ]
}

/// The controls of `controlled()` changed only: a new allowlist and limit,
/// a limit removed, an allowlist added.
fn controlled_changed() -> Vec<ForwardSpec> {
    let mut all = controlled();
    all[0].controls = controls(&["192.0.2.0/24", "203.0.113.0/24"], Some(10));
    all[1].controls = controls(&["10.0.0.0/8"], None);
    all[2].controls = controls(&["2001:db8:1::/48"], Some(2));
    all
}

/// (snapshot file, rendered text, checker).
fn cases() -> Vec<(&'static str, String, &'static str)> {
    let all = forwards();
    let retargeted = spec(2, Protocol::Udp, "203.0.113.10:20053", "10.0.0.9:53");
    let added = spec(6, Protocol::Tcp, "198.51.100.1:20443", "10.0.0.8:443");
    vec![
        (
            "nft_empty.nft",
            render_replace("navigator", &[], false),
            "nft",
        ),
        (
            "nft_full_sync.nft",
            render_replace("navigator", &all, false),
            "nft",
        ),
        (
            // `[agent] nft_element_comments = true`.
            "nft_full_sync_comments.nft",
            render_replace("navigator", &all, true),
            "nft",
        ),
        (
            "nft_update_retarget_add_delete.nft",
            render_update(
                "navigator",
                &[all[1].clone(), all[2].clone()],
                &[retargeted, added.clone()],
                &ListenDelta {
                    added: vec![added.listen.ip()],
                    removed: vec![all[2].listen.ip()],
                },
                false,
            ),
            "nft-update",
        ),
        (
            "iptables_v4.rules",
            render_restore(Family::V4, &all, &JUMPS),
            "iptables-restore",
        ),
        (
            "ip6tables_v6.rules",
            render_restore(Family::V6, &all, &JUMPS),
            "ip6tables-restore",
        ),
        (
            "iptables_v4_jumps_present.rules",
            render_restore(Family::V4, &all, &[]),
            "iptables-restore",
        ),
        (
            "nft_ranges.nft",
            render_replace("navigator", &ranges(), true),
            "nft",
        ),
        (
            "iptables_v4_ranges.rules",
            render_restore(Family::V4, &ranges(), &JUMPS),
            "iptables-restore",
        ),
        (
            "ip6tables_v6_ranges.rules",
            render_restore(Family::V6, &ranges(), &JUMPS),
            "ip6tables-restore",
        ),
        (
            "nft_controls.nft",
            render_replace_with("navigator", &controlled(), false, &{
                let mut counters = std::collections::HashMap::new();
                counters.insert(
                    (
                        "bytes_in4".to_owned(),
                        "203.0.113.10 . tcp . 22022".to_owned(),
                    ),
                    (7, 4200),
                );
                counters
            }),
            "nft",
        ),
        (
            // A change of controls only: no DNAT or counter element moves.
            "nft_update_controls.nft",
            render_update(
                "navigator",
                &controlled(),
                &controlled_changed(),
                &ListenDelta::default(),
                false,
            ),
            "nft-update",
        ),
        (
            "iptables_v4_controls.rules",
            render_restore_with(Family::V4, &controlled(), &[], &{
                let mut preserved = Preserved::default();
                let fwd = format!("fwd {}", controlled()[0].id);
                preserved
                    .counters
                    .insert(("NAVIGATOR-PREROUTING".into(), fwd.clone()), (3, 180));
                preserved.counters.insert(
                    ("NAVIGATOR-FORWARD".into(), format!("{fwd} in")),
                    (20, 4000),
                );
                // A chain of a forward that no longer has an allowlist.
                preserved
                    .chains
                    .push(allow_chain(ForwardId(uuid::Uuid::from_u128(99))));
                preserved
            }),
            "iptables-restore",
        ),
        (
            "ip6tables_v6_controls.rules",
            render_restore(Family::V6, &controlled(), &JUMPS),
            "ip6tables-restore",
        ),
    ]
}

#[test]
fn rendered_rulesets_match_snapshots() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var("UPDATE_SNAPSHOTS").as_deref() == Ok("1");
    for (file, text, _) in cases() {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with UPDATE_SNAPSHOTS=1 to create it",
                path.display()
            )
        });
        assert!(
            want == text,
            "{file} differs from the rendering; review and run with UPDATE_SNAPSHOTS=1.\n--- rendered:\n{text}"
        );
    }
}

fn run_in(netns: &str, argv: &[&str], stdin: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn every_rendered_batch_passes_the_kernel_check() {
    if std::env::var("NAVIGATOR_PRIVILEGED_TESTS").as_deref() != Ok("1") {
        eprintln!(
            "every_rendered_batch_passes_the_kernel_check: skipped: set NAVIGATOR_PRIVILEGED_TESTS=1 (needs root and network namespaces)"
        );
        return;
    }
    let netns = format!("nvr{}", std::process::id());
    let created = Command::new("ip").args(["netns", "add", &netns]).status();
    assert!(
        created.is_ok_and(|s| s.success()),
        "cannot create network namespace {netns}: NAVIGATOR_PRIVILEGED_TESTS=1 requires root"
    );
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(netns.clone());
    // The update batch applies to an existing table: load the full sync
    // first (for real), then check the update against it.
    let mut loaded = forwards();
    loaded.extend(controlled());
    run_in(
        &netns,
        &["nft", "-f", "-"],
        &render_replace("navigator", &loaded, true),
    )
    .expect("loading the full sync");
    // The drift check recognises the skeleton as nft prints it back.
    let listing = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns,
            "nft",
            "-t",
            "list",
            "table",
            "inet",
            "navigator",
        ])
        .output()
        .expect("listing the table");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        navigator_dataplane::nft::skeleton_intact("navigator", &listing),
        "the loaded skeleton is not recognised as intact:\n{listing}"
    );
    for (file, text, checker) in cases() {
        let argv: &[&str] = match checker {
            "nft" | "nft-update" => &["nft", "-c", "-f", "-"],
            "iptables-restore" => &["iptables-restore", "--noflush", "--test"],
            _ => &["ip6tables-restore", "--noflush", "--test"],
        };
        if let Err(e) = run_in(&netns, argv, &text) {
            panic!("{file} is refused by {argv:?}: {e}\n{text}");
        }
    }
}

/// An unchanged limit chain is neither declared (flushed) nor refilled, so
/// its `connlimit` counts survive an apply; a changed one is rewritten.
#[test]
fn iptables_limit_chain_is_rewritten_only_when_it_changes() {
    use navigator_dataplane::iptables::limit_chain;
    let all = controlled();
    let chain = limit_chain(all[0].id);
    let mut preserved = Preserved::default();
    preserved.chains.push(chain.clone());
    preserved.comments.insert(
        chain.clone(),
        vec![format!("fwd {} limit 5 tcp", all[0].id)],
    );
    let text = render_restore_with(Family::V4, &all, &[], &preserved);
    assert!(!text.contains(&format!(":{chain} ")), "{text}");
    assert!(!text.contains(&format!("-A {chain} ")), "{text}");
    assert!(!text.contains(&format!("-X {chain}")), "{text}");
    assert!(text.contains(&format!("-j {chain}")), "{text}");
    let mut changed = all.clone();
    changed[0].controls = controls(&[], Some(6));
    let text = render_restore_with(Family::V4, &changed, &[], &preserved);
    assert!(text.contains(&format!(":{chain} - [0:0]")), "{text}");
    assert!(text.contains("--connlimit-above 6"), "{text}");
}
