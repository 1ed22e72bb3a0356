//! The `nft` backend: kernel NAT through one nftables table of its own
//! (`inet navigator`), the default kernel data plane.
//!
//! Layout (published in `docs/dataplane.md` as an integration contract):
//! one DNAT rule per hook looks the packet up in a concatenated-key map
//! (`daddr . l4proto . dport → target addr . port`), so the cost of a new
//! connection does not grow with the number of forwards; postrouting
//! masquerades DNATed flows whose original destination is a Navigator listen
//! address (replies come back through the proxy, with the source address of
//! whichever interface the target is reached through); the forward hook
//! accepts those flows. Forwards are map elements: a reconcile is one
//! `nft -f -` transaction of element additions and deletions; a full rewrite
//! (`delete table` + definition in the same transaction) runs at the first
//! apply, periodically, and whenever drift is detected.
//!
//! Rendering is pure and snapshot-tested; see `tests/snapshots/`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use navigator_core::ForwardSpec;

use crate::exec::{ExecError, Host};
use crate::kernel::{KernelBackend, KernelConfig, ListenDelta, Ruleset};

/// The table Navigator owns unless configured otherwise.
pub const DEFAULT_TABLE: &str = "navigator";

/// The nft backend.
pub type NftBackend = KernelBackend<NftRuleset>;

/// Settings of the nft backend.
#[derive(Clone, Debug)]
pub struct NftConfig {
    pub kernel: KernelConfig,
    /// Name of the `inet` table Navigator owns (and deletes at will).
    pub table: String,
    /// Put `comment "fwd <id>"` on every map element, so an operator can map a
    /// kernel element to an API object. Off by default: the agent never reads
    /// them back (observe answers from the in-memory mirror, and a full sync
    /// rewrites the table), and they are half the bytes of the batch nft parses
    /// and ~25 % of its CPU time (0.4 s of a full sync at 100,000 forwards).
    pub element_comments: bool,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            kernel: KernelConfig::default(),
            table: DEFAULT_TABLE.to_owned(),
            element_comments: false,
        }
    }
}

impl NftBackend {
    pub fn new(config: NftConfig) -> NftBackend {
        KernelBackend::with_ruleset(
            NftRuleset {
                table: config.table,
                element_comments: config.element_comments,
            },
            config.kernel,
        )
    }
}

/// How the nft backend writes its table.
#[derive(Clone, Debug)]
pub struct NftRuleset {
    pub table: String,
    pub element_comments: bool,
}

impl NftRuleset {
    /// Runs one batch atomically. Large batches get a longer timeout.
    async fn load(&self, host: &Host, batch: &str) -> Result<(), ExecError> {
        let timeout = Duration::from_secs(30 + (batch.len() / 1_000_000) as u64 * 10);
        host.run(&["nft", "-f", "-"], Some(batch), timeout)
            .await
            .map(|_| ())
    }
}

impl Ruleset for NftRuleset {
    fn name(&self) -> &'static str {
        "nft"
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nft"]
    }

    async fn replace(&self, host: &Host, all: &[ForwardSpec]) -> Result<(), ExecError> {
        self.load(
            host,
            &render_replace(&self.table, all, self.element_comments),
        )
        .await
    }

    /// Element additions and deletions only: an update is O(changes).
    fn update_needs_all(&self) -> bool {
        false
    }

    async fn update(
        &self,
        host: &Host,
        _all: &[ForwardSpec],
        removed: &[ForwardSpec],
        added: &[ForwardSpec],
        listen: &ListenDelta,
    ) -> Result<(), ExecError> {
        let batch = render_update(&self.table, removed, added, listen, self.element_comments);
        if batch.is_empty() {
            return Ok(());
        }
        self.load(host, &batch).await
    }

    async fn present(&self, host: &Host) -> bool {
        // Terse listing leaves out the elements: cheap at any size, and it
        // shows every chain and rule, which is what drift would touch.
        match host
            .run(
                &["nft", "-t", "list", "table", "inet", &self.table],
                None,
                crate::exec::DEFAULT_TIMEOUT,
            )
            .await
        {
            Ok(out) => skeleton_intact(&self.table, &out.stdout),
            Err(_) => false,
        }
    }
}

/// Whether a terse listing shows every chain and rule of the skeleton.
fn skeleton_intact(table: &str, listing: &str) -> bool {
    let have: Vec<&str> = listing.lines().map(str::trim).collect();
    render_skeleton(table)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("dnat") || l.starts_with("ct ") || l.starts_with("type "))
        .all(|want| have.contains(&want))
}

/// The table definition without elements.
pub fn render_skeleton(table: &str) -> String {
    format!(
        r#"table inet {table} {{
	comment "managed by navigator-agent; rewritten on every full sync, do not edit"
	set listen4 {{ type ipv4_addr; }}
	set listen6 {{ type ipv6_addr; }}
	map fwd4 {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
	map fwd6 {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		dnat ip to ip daddr . meta l4proto . th dport map @fwd4
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @fwd6
	}}
	chain output {{
		type nat hook output priority -100; policy accept;
		dnat ip to ip daddr . meta l4proto . th dport map @fwd4
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @fwd6
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ct original ip daddr @listen4 masquerade
		ct status dnat ct original ip6 daddr @listen6 masquerade
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		ct status dnat ct original ip daddr @listen4 accept
		ct status dnat ct original ip6 daddr @listen6 accept
	}}
}}
"#
    )
}

/// The batch that replaces the whole table with exactly `all`: create (so
/// the delete cannot fail), delete, define, fill. One transaction, so
/// packets see either the old table or the new one.
pub fn render_replace(table: &str, all: &[ForwardSpec], comments: bool) -> String {
    let mut out = format!(
        "# navigator: full sync of table inet {table} ({} forwards)\ntable inet {table}\ndelete table inet {table}\n",
        all.len()
    );
    out.push_str(&render_skeleton(table));
    let mut listen: Vec<IpAddr> = all.iter().map(|s| s.listen.ip()).collect();
    listen.sort();
    listen.dedup();
    push_elements(&mut out, "add", table, &listen, all, comments);
    out
}

/// The batch for a diff; empty when there is nothing to do. Deletions come
/// first, so a retarget (delete old element, add new) is one transaction.
pub fn render_update(
    table: &str,
    removed: &[ForwardSpec],
    added: &[ForwardSpec],
    listen: &ListenDelta,
    comments: bool,
) -> String {
    let mut out = String::new();
    push_elements(&mut out, "delete", table, &[], removed, false);
    push_elements(&mut out, "add", table, &listen.added, added, comments);
    push_elements(&mut out, "delete", table, &listen.removed, &[], false);
    out
}

fn push_elements(
    out: &mut String,
    verb: &str,
    table: &str,
    listen: &[IpAddr],
    forwards: &[ForwardSpec],
    comments: bool,
) {
    let v4: Vec<String> = listen
        .iter()
        .filter(|a| a.is_ipv4())
        .map(ToString::to_string)
        .collect();
    let v6: Vec<String> = listen
        .iter()
        .filter(|a| a.is_ipv6())
        .map(ToString::to_string)
        .collect();
    push_set(out, verb, table, "listen4", &v4);
    push_set(out, verb, table, "listen6", &v6);
    for (map, is_v4) in [("fwd4", true), ("fwd6", false)] {
        let elements: Vec<String> = forwards
            .iter()
            .filter(|s| s.listen.is_ipv4() == is_v4)
            .flat_map(|s| {
                s.pairs().map(move |(listen, target)| {
                    element(s, listen, target, verb == "add", comments)
                })
            })
            .collect();
        push_set(out, verb, table, map, &elements);
    }
}

fn push_set(out: &mut String, verb: &str, table: &str, set: &str, elements: &[String]) {
    if elements.is_empty() {
        return;
    }
    let _ = writeln!(out, "{verb} element inet {table} {set} {{");
    for (i, e) in elements.iter().enumerate() {
        let sep = if i + 1 < elements.len() { "," } else { "" };
        let _ = writeln!(out, "\t{e}{sep}");
    }
    out.push_str("}\n");
}

/// `10.0.0.1 . tcp . 20000 comment "fwd <id>" : 10.1.0.5 . 22`; deletions
/// need the key only.
///
/// A port range is one element per port. An interval key
/// (`10.0.0.1 . tcp . 20000-20009`) would be one element, but the value of a
/// map is a single `addr . port`: DNAT to it sends every port of the range to
/// that one port, and a DNAT to a port range picks ports by the kernel's
/// choice, not by offset. Per-port elements keep port `N + i` going to
/// target port `M + i`.
fn element(
    spec: &ForwardSpec,
    listen: std::net::SocketAddr,
    target: std::net::SocketAddr,
    with_value: bool,
    comments: bool,
) -> String {
    let key = format!("{} . {} . {}", listen.ip(), spec.protocol, listen.port());
    if !with_value {
        return key;
    }
    let comment = if comments {
        format!(" comment \"fwd {}\"", spec.id)
    } else {
        String::new()
    };
    format!("{key}{comment} : {} . {}", target.ip(), target.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skeleton_check_sees_missing_rules() {
        let skeleton = render_skeleton("navigator");
        assert!(skeleton_intact("navigator", &skeleton));
        let damaged = skeleton.replace("masquerade", "");
        assert!(!skeleton_intact("navigator", &damaged));
        assert!(!skeleton_intact("navigator", ""));
    }

    #[test]
    fn update_of_nothing_is_empty() {
        assert_eq!(
            render_update("navigator", &[], &[], &ListenDelta::default(), true),
            ""
        );
    }
}
