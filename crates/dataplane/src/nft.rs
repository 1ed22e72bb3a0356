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
//! Controls and usage are set elements too, keyed by the forward's
//! `daddr . l4proto . port-interval` (counters: per port): allowlists (`restrict4/6`, and
//! `allow4/6` keyed by the client network then that key: one lookup
//! whatever the number of networks), connection limits (the `limit4/6`
//! verdict maps jump to one `ct count` chain per limited forward), and
//! counters (`conns`, `bytes_in`, `bytes_out`: per-element counters, no rule
//! per forward). A change of controls only changes those elements, never the
//! DNAT element or the counters.
//!
//! Rendering is pure and snapshot-tested; see `tests/snapshots/`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use navigator_core::{ForwardId, ForwardSpec, Protocol};

use crate::exec::{ExecError, Host};
use crate::kernel::{Counted, KernelBackend, KernelConfig, ListenDelta, Ruleset};

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

impl NftRuleset {
    /// The counter sets' elements: one `nft list set` per set (nft 1.0.6
    /// answers only the first of several `list` commands in one batch).
    async fn read_counters(&self, host: &Host) -> Result<Counters, ExecError> {
        let mut counters = Counters::new();
        for set in COUNTER_SETS {
            let out = host
                .run(
                    &["nft", "list", "set", "inet", &self.table, set],
                    None,
                    crate::exec::DEFAULT_TIMEOUT,
                )
                .await?;
            counters.extend(parse_counters(&out.stdout));
        }
        Ok(counters)
    }
}

impl Ruleset for NftRuleset {
    async fn counters(
        &self,
        host: &Host,
        forwards: &[ForwardSpec],
    ) -> Result<HashMap<ForwardId, Counted>, String> {
        let counters = self
            .read_counters(host)
            .await
            .map_err(|e| format!("cannot read the nft counters: {e}"))?;
        Ok(counted(&counters, forwards))
    }

    fn name(&self) -> &'static str {
        "nft"
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nft"]
    }

    fn render_tag(&self) -> String {
        format!("nft-r{RENDER_VERSION}-c{}", u8::from(self.element_comments))
    }

    async fn installed_marker(&self, host: &Host) -> Option<String> {
        let out = host
            .run(
                &["nft", "list", "set", "inet", &self.table, MARKER_SET],
                None,
                crate::exec::DEFAULT_TIMEOUT,
            )
            .await
            .ok()?;
        parse_marker(&out.stdout)
    }

    async fn replace(
        &self,
        host: &Host,
        all: &[ForwardSpec],
        marker: &str,
    ) -> Result<(), ExecError> {
        // Usage survives the rewrite: the counts are read first and written
        // into the new elements (what moves in between is lost; a missing
        // table has nothing to carry).
        let counters = self.read_counters(host).await.unwrap_or_default();
        let mut batch = render_replace_with(&self.table, all, self.element_comments, &counters);
        push_marker(&mut batch, &self.table, marker, true);
        self.load(host, &batch).await
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
        marker: &str,
    ) -> Result<(), ExecError> {
        let mut batch = render_update(&self.table, removed, added, listen, self.element_comments);
        if batch.is_empty() {
            return Ok(());
        }
        // A table written before markers existed has no marker set: the
        // update fails and the table is rewritten, with one.
        push_marker(&mut batch, &self.table, marker, false);
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

/// Version of what this module writes for given forwards: bump it when the
/// same forwards would be written differently, so that an upgraded agent
/// does not adopt the tables an older one wrote (the marker differs).
pub const RENDER_VERSION: u32 = 1;

/// The set whose one element's comment is the marker of what the table
/// holds (`crate::kernel`: adoption at start).
pub const MARKER_SET: &str = "marker";

/// Appends the marker to a batch: with a full rewrite the set is defined
/// (the table was just re-created); with an update its element is replaced,
/// in the same transaction as the update.
pub fn push_marker(out: &mut String, table: &str, marker: &str, replace: bool) {
    // A comment is at most 128 characters and holds no quote; the marker is
    // ~70 ASCII characters of our own making.
    let marker: String = marker.chars().filter(|c| *c != '"').take(120).collect();
    if replace {
        let _ = writeln!(out, "add set inet {table} {MARKER_SET} {{ type mark; }}");
    } else {
        let _ = writeln!(out, "delete element inet {table} {MARKER_SET} {{ 1 }}");
    }
    let _ = writeln!(
        out,
        "add element inet {table} {MARKER_SET} {{ 1 comment \"{marker}\" }}"
    );
}

/// The marker in `nft list set inet TABLE marker`'s output.
pub fn parse_marker(listing: &str) -> Option<String> {
    let (_, rest) = listing.split_once("comment \"")?;
    let (marker, _) = rest.split_once('"')?;
    Some(marker.to_owned())
}

/// Whether a terse listing shows every chain and rule of the skeleton.
/// Chain headers are compared up to `priority`, which nft prints in its own
/// (symbolic) spelling.
pub fn skeleton_intact(table: &str, listing: &str) -> bool {
    let head = |l: &str| -> String {
        match l.split_once(" priority ") {
            Some((before, _)) if l.starts_with("type ") => before.to_owned(),
            _ => l.to_owned(),
        }
    };
    let have: Vec<String> = listing.lines().map(|l| head(l.trim())).collect();
    render_skeleton(table)
        .lines()
        .map(str::trim)
        .filter(|l| {
            ["dnat", "ct ", "type ", "ip ", "ip6 "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .all(|want| have.contains(&head(want)))
}

/// The sets whose per-element counters are a forward's usage; a full
/// rewrite carries their counts over.
pub const COUNTER_SETS: [&str; 6] = [
    "conns4",
    "conns6",
    "bytes_in4",
    "bytes_in6",
    "bytes_out4",
    "bytes_out6",
];

/// Every set and map that holds per-forward elements, in batch order.
const ELEMENT_SETS: [&str; 14] = [
    "fwd4",
    "fwd6",
    "conns4",
    "conns6",
    "bytes_in4",
    "bytes_in6",
    "bytes_out4",
    "bytes_out6",
    "restrict4",
    "restrict6",
    "allow4",
    "allow6",
    "limit4",
    "limit6",
];

/// The table definition without elements.
///
/// Hooks, in packet order: `filter_prerouting`/`filter_output` (filter,
/// priority -110, before DNAT, so the destination is still the listen
/// socket) send packets to a listen address through `controls`: new
/// connections of a restricted forward from a source outside its allowlist
/// are dropped, new connections over a forward's `max_connections` are
/// refused (its `limit_<id>` chain), then the client's bytes are counted.
/// `prerouting`/`output` (nat, -100) count each connection's first packet
/// and DNAT it. `count_reply`/`count_reply_local` (filter, +110, after the
/// source of replies is translated back to the listen socket) count the
/// target's bytes.
pub fn render_skeleton(table: &str) -> String {
    format!(
        r#"table inet {table} {{
	comment "managed by navigator-agent; rewritten on every full sync, do not edit"
	set listen4 {{ type ipv4_addr; }}
	set listen6 {{ type ipv6_addr; }}
	map fwd4 {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
	map fwd6 {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}
	set conns4 {{ type ipv4_addr . inet_proto . inet_service; flags dynamic; counter; size 1048576; }}
	set conns6 {{ type ipv6_addr . inet_proto . inet_service; flags dynamic; counter; size 1048576; }}
	set bytes_in4 {{ type ipv4_addr . inet_proto . inet_service; flags dynamic; counter; size 1048576; }}
	set bytes_in6 {{ type ipv6_addr . inet_proto . inet_service; flags dynamic; counter; size 1048576; }}
	set bytes_out4 {{ type ipv4_addr . inet_proto . inet_service; flags dynamic; counter; size 1048576; }}
	set bytes_out6 {{ type ipv6_addr . inet_proto . inet_service; flags dynamic; counter; size 1048576; }}
	set restrict4 {{ type ipv4_addr . inet_proto . inet_service; flags interval; }}
	set restrict6 {{ type ipv6_addr . inet_proto . inet_service; flags interval; }}
	set allow4 {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval; }}
	set allow6 {{ type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval; }}
	map limit4 {{ type ipv4_addr . inet_proto . inet_service : verdict; flags interval; }}
	map limit6 {{ type ipv6_addr . inet_proto . inet_service : verdict; flags interval; }}
	chain controls {{
		ct state new ip daddr . meta l4proto . th dport @restrict4 ip saddr . ip daddr . meta l4proto . th dport != @allow4 drop
		ct state new ip6 daddr . meta l4proto . th dport @restrict6 ip6 saddr . ip6 daddr . meta l4proto . th dport != @allow6 drop
		ct state new ip daddr . meta l4proto . th dport vmap @limit4
		ct state new ip6 daddr . meta l4proto . th dport vmap @limit6
		meta l4proto {{ tcp, udp }} ct direction original update @bytes_in4 {{ ip daddr . meta l4proto . th dport }}
		meta l4proto {{ tcp, udp }} ct direction original update @bytes_in6 {{ ip6 daddr . meta l4proto . th dport }}
	}}
	chain filter_prerouting {{
		type filter hook prerouting priority -110; policy accept;
		ip daddr @listen4 jump controls
		ip6 daddr @listen6 jump controls
	}}
	chain filter_output {{
		type filter hook output priority -110; policy accept;
		ip daddr @listen4 jump controls
		ip6 daddr @listen6 jump controls
	}}
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr @listen4 meta l4proto {{ tcp, udp }} update @conns4 {{ ip daddr . meta l4proto . th dport }}
		ip6 daddr @listen6 meta l4proto {{ tcp, udp }} update @conns6 {{ ip6 daddr . meta l4proto . th dport }}
		dnat ip to ip daddr . meta l4proto . th dport map @fwd4
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @fwd6
	}}
	chain output {{
		type nat hook output priority -100; policy accept;
		ip daddr @listen4 meta l4proto {{ tcp, udp }} update @conns4 {{ ip daddr . meta l4proto . th dport }}
		ip6 daddr @listen6 meta l4proto {{ tcp, udp }} update @conns6 {{ ip6 daddr . meta l4proto . th dport }}
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
	chain count_reply {{
		type filter hook postrouting priority 110; policy accept;
		ct status dnat ct direction reply ct original ip daddr @listen4 meta l4proto {{ tcp, udp }} update @bytes_out4 {{ ip saddr . meta l4proto . th sport }}
		ct status dnat ct direction reply ct original ip6 daddr @listen6 meta l4proto {{ tcp, udp }} update @bytes_out6 {{ ip6 saddr . meta l4proto . th sport }}
	}}
	chain count_reply_local {{
		type filter hook input priority 110; policy accept;
		ct status dnat ct direction reply ct original ip daddr @listen4 meta l4proto {{ tcp, udp }} update @bytes_out4 {{ ip saddr . meta l4proto . th sport }}
		ct status dnat ct direction reply ct original ip6 daddr @listen6 meta l4proto {{ tcp, udp }} update @bytes_out6 {{ ip6 saddr . meta l4proto . th sport }}
	}}
}}
"#
    )
}

/// Counters read back from the kernel: `(set, element key) → (packets,
/// bytes)`.
pub type Counters = std::collections::HashMap<(String, String), (u64, u64)>;

/// The batch that replaces the whole table with exactly `all`: create (so
/// the delete cannot fail), delete, define, fill. One transaction, so
/// packets see either the old table or the new one.
pub fn render_replace(table: &str, all: &[ForwardSpec], comments: bool) -> String {
    render_replace_with(table, all, comments, &Counters::new())
}

/// [`render_replace`], with the usage counters of the table being replaced
/// carried over into the new elements.
pub fn render_replace_with(
    table: &str,
    all: &[ForwardSpec],
    comments: bool,
    counters: &Counters,
) -> String {
    let mut out = format!(
        "# navigator: full sync of table inet {table} ({} forwards)\ntable inet {table}\ndelete table inet {table}\n",
        all.len()
    );
    out.push_str(&render_skeleton(table));
    for spec in all {
        if let Some(n) = spec.controls.max_connections {
            push_limit_add(&mut out, table, spec, n);
        }
    }
    let mut listen: Vec<IpAddr> = all.iter().map(|s| s.listen.ip()).collect();
    listen.sort();
    listen.dedup();
    push_listen(&mut out, "add", table, &listen);
    let mut elements: Vec<Elem> = all.iter().flat_map(|s| elements(s, comments)).collect();
    // The counts of the old table's counter elements, for forwards still
    // carried (others' are dropped with the table).
    for spec in all {
        for (set, key) in counter_keys(spec) {
            if counters.contains_key(&(set.to_owned(), key.clone())) {
                elements.push(Elem {
                    set,
                    key,
                    value: None,
                });
            }
        }
    }
    push_elements(&mut out, "add", table, &elements, counters);
    out
}

/// The batch for a diff; empty when there is nothing to do. Deletions come
/// first, so a retarget (delete old element, add new) is one transaction.
///
/// A forward both removed and added (a retarget or a change of controls)
/// only has the elements that differ deleted and added: its counters and its
/// connection-count set stay, and an unchanged DNAT element is not touched.
pub fn render_update(
    table: &str,
    removed: &[ForwardSpec],
    added: &[ForwardSpec],
    listen: &ListenDelta,
    comments: bool,
) -> String {
    let old: HashMap<ForwardId, &ForwardSpec> = removed.iter().map(|s| (s.id, s)).collect();
    let new: HashMap<ForwardId, &ForwardSpec> = added.iter().map(|s| (s.id, s)).collect();
    let mut delete = Vec::new();
    let mut add = Vec::new();
    let mut limits = String::new();
    // Each side's elements, built once; a forward on both sides (a change)
    // keeps the elements they share, found by hash (an allowlist has up to
    // 10,000 elements, so comparing lists would be quadratic).
    let mut before: HashMap<ForwardId, Vec<Elem>> = removed
        .iter()
        .map(|s| (s.id, elements(s, comments)))
        .collect();
    for spec in added {
        let mut mine = elements(spec, comments);
        if let Some(theirs) = before.get_mut(&spec.id) {
            let theirs_set: HashSet<Elem> = theirs.iter().cloned().collect();
            let mine_set: HashSet<Elem> = mine.iter().cloned().collect();
            mine.retain(|e| !theirs_set.contains(e));
            theirs.retain(|e| !mine_set.contains(e));
        }
        add.extend(mine);
    }
    for spec in removed {
        delete.extend(before.remove(&spec.id).unwrap_or_default());
    }
    // Counter elements of ports no longer carried by the same forward go
    // (the data path made them, so they may not exist: adding first makes
    // the deletion succeed either way, in the same transaction).
    let mut stale = Vec::new();
    for spec in removed {
        let keep: HashSet<_> = new
            .get(&spec.id)
            .map(|s| counter_keys(s).into_iter().collect())
            .unwrap_or_default();
        for (set, key) in counter_keys(spec) {
            if !keep.contains(&(set, key.clone())) {
                stale.push(Elem {
                    set,
                    key,
                    value: None,
                });
            }
        }
    }
    let mut out = String::new();
    push_elements(&mut out, "add", table, &stale, &Counters::new());
    push_elements(&mut out, "delete", table, &stale, &Counters::new());
    push_elements(&mut out, "delete", table, &delete, &Counters::new());
    // Limit chains after the verdict-map elements that jump to them are
    // gone, and before the elements that will jump to them are added.
    for spec in removed {
        let next = new.get(&spec.id).and_then(|s| s.controls.max_connections);
        if spec.controls.max_connections.is_some() && next.is_none() {
            let _ = writeln!(out, "delete chain inet {table} {}", limit_chain(spec.id));
            let _ = writeln!(out, "delete set inet {table} {}", count_set(spec.id));
        }
    }
    for spec in added {
        let Some(n) = spec.controls.max_connections else {
            continue;
        };
        match old.get(&spec.id).and_then(|s| s.controls.max_connections) {
            None => push_limit_add(&mut limits, table, spec, n),
            Some(before) if before != n || old[&spec.id].protocol != spec.protocol => {
                // The count set stays, so connections already open still
                // count against the new limit.
                let _ = writeln!(limits, "flush chain inet {table} {}", limit_chain(spec.id));
                push_limit_rule(&mut limits, table, spec, n);
            }
            Some(_) => {}
        }
    }
    out.push_str(&limits);
    push_listen(&mut out, "add", table, &listen.added);
    push_elements(&mut out, "add", table, &add, &Counters::new());
    push_listen(&mut out, "delete", table, &listen.removed);
    out
}

/// `limit_<id>`: the chain that refuses a forward's connections over its
/// `max_connections`.
pub fn limit_chain(id: ForwardId) -> String {
    format!("limit_{}", id.to_string().replace('-', ""))
}

/// `count_<id>`: the dynamic set whose one element counts the forward's
/// conntrack entries (`ct count`).
pub fn count_set(id: ForwardId) -> String {
    format!("count_{}", id.to_string().replace('-', ""))
}

fn push_limit_add(out: &mut String, table: &str, spec: &ForwardSpec, n: u32) {
    let _ = writeln!(
        out,
        "add set inet {table} {} {{ type inet_proto; flags dynamic; }}",
        count_set(spec.id)
    );
    let _ = writeln!(out, "add chain inet {table} {}", limit_chain(spec.id));
    push_limit_rule(out, table, spec, n);
}

/// One rule per limited forward, reached through the `limit4`/`limit6`
/// verdict maps (one lookup whatever the number of limited forwards): `ct
/// count`'s limit is a constant of the rule. TCP gets a reset, so a client
/// over the limit fails at once instead of retrying SYNs; UDP is dropped.
fn push_limit_rule(out: &mut String, table: &str, spec: &ForwardSpec, n: u32) {
    let verdict = match spec.protocol {
        Protocol::Tcp => "reject with tcp reset",
        Protocol::Udp => "drop",
    };
    let _ = writeln!(
        out,
        "add rule inet {table} {} add @{} {{ meta l4proto ct count over {n} }} {verdict}",
        limit_chain(spec.id),
        count_set(spec.id)
    );
}

/// One element of a per-forward set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Elem {
    set: &'static str,
    key: String,
    /// `: value` of map elements, with its comment.
    value: Option<String>,
}

/// `daddr . proto . port` or `daddr . proto . first-last`: the interval key
/// of a whole forward, for the control sets.
fn interval_key(spec: &ForwardSpec) -> String {
    format!(
        "{} . {} . {}",
        spec.listen.ip(),
        spec.protocol,
        spec.listen_ports()
    )
}

/// `daddr . proto . port`: the key of one port of a forward.
fn port_key(spec: &ForwardSpec, listen: std::net::SocketAddr) -> String {
    format!("{} . {} . {}", listen.ip(), spec.protocol, listen.port())
}

/// The counter elements a forward's traffic makes: one per port in each
/// counter set. The data path creates them (`update @set`), so an apply
/// writes none: an interval set would hold a range in one element, but its
/// inserts cost O(elements) each, and even hash-set elements written for
/// every forward tripled the CPU of a full sync at 100,000 forwards.
fn counter_keys(spec: &ForwardSpec) -> Vec<(&'static str, String)> {
    let v4 = spec.listen.is_ipv4();
    let sets: [&'static str; 3] = if v4 {
        ["conns4", "bytes_in4", "bytes_out4"]
    } else {
        ["conns6", "bytes_in6", "bytes_out6"]
    };
    sets.into_iter()
        .flat_map(|set| {
            spec.pairs()
                .map(move |(listen, _)| (set, port_key(spec, listen)))
        })
        .collect()
}

/// Every element a forward puts in the per-forward sets and maps (the
/// counter sets excepted: see [`counter_keys`]).
fn elements(spec: &ForwardSpec, comments: bool) -> Vec<Elem> {
    let v4 = spec.listen.is_ipv4();
    let pick = |a: &'static str, b: &'static str| if v4 { a } else { b };
    let mut out: Vec<Elem> = spec
        .pairs()
        .map(|(listen, target)| Elem {
            set: pick("fwd4", "fwd6"),
            key: port_key(spec, listen),
            value: Some(dnat_value(spec, target, comments)),
        })
        .collect();
    let key = interval_key(spec);
    if !spec.controls.allowed_cidrs.is_empty() {
        out.push(Elem {
            set: pick("restrict4", "restrict6"),
            key: key.clone(),
            value: None,
        });
        // Networks of the other family can never match a kernel-NAT
        // forward (same family in and out); overlapping ones are merged, as
        // an interval set refuses overlaps.
        let same: Vec<IpNet> = spec
            .controls
            .allowed_cidrs
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)) == v4)
            .copied()
            .collect();
        for net in IpNet::aggregate(&same) {
            out.push(Elem {
                set: pick("allow4", "allow6"),
                // The client network first: nft's concatenated-range sets
                // (pipapo) narrow the candidates field by field, and every
                // element of one forward shares its address, protocol and
                // ports; with those first, each lookup walked all of the
                // forward's networks (10,000 networks: a third of the
                // connection rate); with the network first, a handful.
                key: format!("{net} . {key}"),
                value: None,
            });
        }
    }
    if spec.controls.max_connections.is_some() {
        out.push(Elem {
            set: pick("limit4", "limit6"),
            key,
            value: Some(format!(" : jump {}", limit_chain(spec.id))),
        });
    }
    out
}

fn push_listen(out: &mut String, verb: &str, table: &str, listen: &[IpAddr]) {
    for (set, v4) in [("listen4", true), ("listen6", false)] {
        let elements: Vec<String> = listen
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(ToString::to_string)
            .collect();
        push_set(out, verb, table, set, &elements);
    }
}

fn push_elements(out: &mut String, verb: &str, table: &str, all: &[Elem], counters: &Counters) {
    for set in ELEMENT_SETS {
        let lines: Vec<String> = all
            .iter()
            .filter(|e| e.set == set)
            .map(|e| {
                if verb != "add" {
                    return e.key.clone();
                }
                let counter = match counters.get(&(set.to_owned(), e.key.clone())) {
                    Some((packets, bytes)) => format!(" counter packets {packets} bytes {bytes}"),
                    None => String::new(),
                };
                match &e.value {
                    Some(value) => format!("{}{counter}{value}", e.key),
                    None => format!("{}{counter}", e.key),
                }
            })
            .collect();
        push_set(out, verb, table, set, &lines);
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

/// ` comment "fwd <id>" : 10.1.0.5 . 22`: the value of a DNAT map element.
///
/// A port range is one element per port. An interval key
/// (`10.0.0.1 . tcp . 20000-20009`) would be one element, but the value of a
/// map is a single `addr . port`: DNAT to it sends every port of the range to
/// that one port, and a DNAT to a port range picks ports by the kernel's
/// choice, not by offset. Per-port elements keep port `N + i` going to
/// target port `M + i`.
fn dnat_value(spec: &ForwardSpec, target: std::net::SocketAddr, comments: bool) -> String {
    let comment = if comments {
        format!(" comment \"fwd {}\"", spec.id)
    } else {
        String::new()
    };
    format!("{comment} : {} . {}", target.ip(), target.port())
}

/// Reads `nft list set` output: per set, each element's counter.
pub fn parse_counters(listing: &str) -> Counters {
    let mut out = Counters::new();
    let mut set: Option<String> = None;
    let mut buf: Option<String> = None;
    for line in listing.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("set ").and_then(|r| r.strip_suffix(" {")) {
            set = Some(name.to_owned());
            continue;
        }
        if let Some(rest) = t.strip_prefix("elements = {") {
            buf = Some(rest.to_owned());
        } else if let Some(b) = buf.as_mut() {
            b.push(' ');
            b.push_str(t);
        }
        let Some(b) = buf.as_ref() else { continue };
        let Some(body) = b.trim_end().strip_suffix('}') else {
            continue;
        };
        if let Some(set) = &set {
            for element in body.split(',') {
                let Some((key, rest)) = element.split_once(" counter packets ") else {
                    continue;
                };
                let mut words = rest.split_whitespace();
                let packets = words.next().and_then(|w| w.parse().ok());
                let bytes = words.nth(1).and_then(|w| w.parse().ok());
                if let (Some(packets), Some(bytes)) = (packets, bytes) {
                    out.insert((set.clone(), key.trim().to_owned()), (packets, bytes));
                }
            }
        }
        buf = None;
    }
    out
}

/// What the counters say of `forwards`.
pub fn counted(counters: &Counters, forwards: &[ForwardSpec]) -> HashMap<ForwardId, Counted> {
    let get = |set: &str, key: &str| counters.get(&(set.to_owned(), key.to_owned())).copied();
    forwards
        .iter()
        .map(|spec| {
            let f = if spec.listen.is_ipv4() { "4" } else { "6" };
            let mut c = Counted::default();
            // A range sums over its ports.
            for (listen, _) in spec.pairs() {
                let key = port_key(spec, listen);
                c.connections += get(&format!("conns{f}"), &key).map_or(0, |c| c.0);
                c.bytes_in += get(&format!("bytes_in{f}"), &key).map_or(0, |c| c.1);
                c.bytes_out += get(&format!("bytes_out{f}"), &key).map_or(0, |c| c.1);
            }
            (spec.id, c)
        })
        .collect()
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
