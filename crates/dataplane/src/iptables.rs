//! The `iptables` backend: kernel NAT through Navigator's own `NAVIGATOR-*`
//! chains, jumped to from the built-in chains, for hosts whose tooling
//! expects iptables. Works with iptables-nft and iptables-legacy.
//!
//! iptables has no maps, so each forward is one DNAT rule per hook (linear
//! cost per new connection; prefer `nft` at scale) and there is no
//! incremental API worth using: every apply rewrites the `NAVIGATOR-*` chains
//! in one `iptables-restore --noflush` transaction per family. Declaring a
//! chain in a `--noflush` restore flushes it, so the rewrite also removes
//! stale rules of a previous agent, and nothing outside those chains (other
//! than the four jump rules) is touched.
//!
//! Controls: per-forward `NAVIGATOR-A-*` (allowlist) and `NAVIGATOR-L-*`
//! (`connlimit`) chains, jumped to from `NAVIGATOR-FORWARD`; usage from rule
//! counters, which the rewrite carries over (`iptables-save -c`, then
//! `iptables-restore --counters`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use navigator_core::{ForwardId, ForwardSpec, Protocol};

use crate::exec::{DEFAULT_TIMEOUT, ExecError, Host};
use crate::kernel::{Counted, KernelBackend, KernelConfig, ListenDelta, Ruleset};

/// The iptables backend.
pub type IptablesBackend = KernelBackend<IptablesRuleset>;

/// Which iptables implementation to drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Variant {
    /// Whatever `iptables` is on this host (Debian alternatives).
    #[default]
    Auto,
    /// `iptables-nft`: rules land in nftables tables `ip nat`/`ip filter`.
    Nft,
    /// `iptables-legacy`: the x_tables kernel API.
    Legacy,
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Variant::Auto),
            "nft" => Ok(Variant::Nft),
            "legacy" => Ok(Variant::Legacy),
            _ => Err("expected auto, nft or legacy".into()),
        }
    }
}

/// Settings of the iptables backend.
#[derive(Clone, Debug, Default)]
pub struct IptablesConfig {
    pub kernel: KernelConfig,
    pub variant: Variant,
}

impl IptablesBackend {
    pub fn new(config: IptablesConfig) -> IptablesBackend {
        KernelBackend::with_ruleset(
            IptablesRuleset {
                variant: config.variant,
            },
            config.kernel,
        )
    }
}

/// The address family a restore is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// (table, built-in chain, Navigator's chain).
pub const JUMPS: [(&str, &str, &str); 4] = [
    ("nat", "PREROUTING", "NAVIGATOR-PREROUTING"),
    ("nat", "OUTPUT", "NAVIGATOR-OUTPUT"),
    ("nat", "POSTROUTING", "NAVIGATOR-POSTROUTING"),
    ("filter", "FORWARD", "NAVIGATOR-FORWARD"),
];

#[derive(Clone, Debug)]
pub struct IptablesRuleset {
    pub variant: Variant,
}

impl IptablesRuleset {
    fn program(&self, family: Family, restore: bool) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match self.variant {
            Variant::Auto => "",
            Variant::Nft => "-nft",
            Variant::Legacy => "-legacy",
        };
        let restore = if restore { "-restore" } else { "" };
        format!("{base}{variant}{restore}")
    }

    fn save_program(&self, family: Family) -> String {
        format!("{}-save", self.program(family, false))
    }

    /// What the rewrite must keep: rule counters of Navigator's rules and
    /// the allowlist chains that exist.
    async fn preserved(&self, host: &Host, family: Family) -> Result<Preserved, ExecError> {
        let mut text = String::new();
        for table in ["nat", "filter"] {
            let out = host
                .run(
                    &[&self.save_program(family), "-c", "-t", table],
                    None,
                    DEFAULT_TIMEOUT,
                )
                .await?;
            text.push_str(&out.stdout);
        }
        Ok(parse_save(&text))
    }

    /// The jumps from built-in chains that are missing.
    async fn missing_jumps(
        &self,
        host: &Host,
        family: Family,
    ) -> Result<Vec<(&'static str, &'static str, &'static str)>, ExecError> {
        let program = self.program(family, false);
        let mut missing = Vec::new();
        for (table, builtin, chain) in JUMPS {
            let out = host
                .run(
                    &[&program, "-w", "5", "-t", table, "-S", builtin],
                    None,
                    DEFAULT_TIMEOUT,
                )
                .await?;
            let want = format!("-A {builtin} -j {chain}");
            if !out.stdout.lines().any(|l| l.trim() == want) {
                missing.push((table, builtin, chain));
            }
        }
        Ok(missing)
    }
}

/// Version of what this module writes for given forwards: bump it when the
/// same forwards would be written differently, so that an upgraded agent
/// does not adopt the chains an older one wrote (the marker differs).
pub const RENDER_VERSION: u32 = 1;

/// The filter-table chain whose one rule's comment is the marker of what
/// the chains hold (`crate::kernel`: adoption at start). Nothing jumps to it.
pub const MARKER_CHAIN: &str = "NAVIGATOR-MARKER";

/// A restore input that empties the marker chain first, then writes
/// `rules`, then the marker. Each table's section commits on its own, so a
/// failure part-way leaves no marker (the next agent rewrites everything)
/// rather than a marker of rules that were not all written.
pub fn with_marker(rules: &str, marker: &str) -> String {
    let marker: String = marker.chars().filter(|c| *c != '"').take(200).collect();
    format!(
        "*filter\n:{MARKER_CHAIN} - [0:0]\nCOMMIT\n{rules}*filter\n:{MARKER_CHAIN} - [0:0]\n\
         -A {MARKER_CHAIN} -m comment --comment \"{marker}\" -j RETURN\nCOMMIT\n"
    )
}

/// The marker in `iptables -S NAVIGATOR-MARKER`'s output.
pub fn parse_marker(listing: &str) -> Option<String> {
    let (_, rest) = listing.split_once("--comment \"")?;
    let (marker, _) = rest.split_once('"')?;
    Some(marker.to_owned())
}

impl Ruleset for IptablesRuleset {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn tools(&self) -> &'static [&'static str] {
        match self.variant {
            Variant::Auto => &["iptables-restore", "ip6tables-restore"],
            Variant::Nft => &["iptables-nft-restore", "ip6tables-nft-restore"],
            Variant::Legacy => &["iptables-legacy-restore", "ip6tables-legacy-restore"],
        }
    }

    fn render_tag(&self) -> String {
        let variant = match self.variant {
            Variant::Auto => "auto",
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
        };
        format!("iptables-{variant}-r{RENDER_VERSION}")
    }

    async fn installed_marker(&self, host: &Host) -> Option<String> {
        let mut found = None;
        for family in [Family::V4, Family::V6] {
            let out = host
                .run(
                    &[&self.program(family, false), "-w", "10", "-S", MARKER_CHAIN],
                    None,
                    DEFAULT_TIMEOUT,
                )
                .await
                .ok()?;
            let marker = parse_marker(&out.stdout)?;
            // Both families are written with the same marker.
            if found.as_ref().is_some_and(|m| *m != marker) {
                return None;
            }
            found = Some(marker);
        }
        found
    }

    async fn replace(
        &self,
        host: &Host,
        all: &[ForwardSpec],
        marker: &str,
    ) -> Result<(), ExecError> {
        for family in [Family::V4, Family::V6] {
            let missing = self.missing_jumps(host, family).await?;
            // Every apply rewrites the chains: the usage counters are read
            // first and restored with the rules (`--counters`).
            let preserved = self.preserved(host, family).await?;
            let text = with_marker(
                &render_restore_with(family, all, &missing, &preserved),
                marker,
            );
            host.run(
                &[
                    &self.program(family, true),
                    "--noflush",
                    "--counters",
                    "-w",
                    "10",
                ],
                Some(&text),
                DEFAULT_TIMEOUT,
            )
            .await?;
        }
        Ok(())
    }

    async fn counters(
        &self,
        host: &Host,
        forwards: &[ForwardSpec],
    ) -> Result<HashMap<ForwardId, Counted>, String> {
        let mut counted: HashMap<ForwardId, Counted> = HashMap::new();
        for family in [Family::V4, Family::V6] {
            if !forwards
                .iter()
                .any(|s| s.listen.is_ipv4() == (family == Family::V4))
            {
                continue;
            }
            let preserved = self
                .preserved(host, family)
                .await
                .map_err(|e| format!("cannot read the iptables counters: {e}"))?;
            for spec in forwards
                .iter()
                .filter(|s| s.listen.is_ipv4() == (family == Family::V4))
            {
                let get = |chain: &str, comment: String| {
                    preserved
                        .counters
                        .get(&(chain.to_owned(), comment))
                        .copied()
                        .unwrap_or_default()
                };
                let c = counted.entry(spec.id).or_default();
                let fwd = format!("fwd {}", spec.id);
                c.connections = get("NAVIGATOR-PREROUTING", fwd.clone()).0
                    + get("NAVIGATOR-OUTPUT", fwd.clone()).0;
                c.bytes_in = get("NAVIGATOR-FORWARD", format!("{fwd} in")).1;
                c.bytes_out = get("NAVIGATOR-FORWARD", format!("{fwd} out")).1;
            }
        }
        Ok(counted)
    }

    async fn update(
        &self,
        host: &Host,
        all: &[ForwardSpec],
        _removed: &[ForwardSpec],
        _added: &[ForwardSpec],
        _listen: &ListenDelta,
        marker: &str,
    ) -> Result<(), ExecError> {
        self.replace(host, all, marker).await
    }

    async fn present(&self, host: &Host) -> bool {
        for family in [Family::V4, Family::V6] {
            match self.missing_jumps(host, family).await {
                Ok(missing) if missing.is_empty() => {}
                _ => return false,
            }
        }
        true
    }
}

/// What a rewrite keeps of the chains it replaces.
#[derive(Clone, Debug, Default)]
pub struct Preserved {
    /// `(chain, comment) → (packets, bytes)`, summed over the rules that
    /// share them (the DNAT rules of a range).
    pub counters: HashMap<(String, String), (u64, u64)>,
    /// The per-forward chains (`NAVIGATOR-A-*`, `NAVIGATOR-L-*`) that exist
    /// now.
    pub chains: Vec<String>,
    /// The comments of each chain's rules, in order: an unchanged limit
    /// chain is recognised by them and left alone.
    pub comments: HashMap<String, Vec<String>>,
}

/// Reads `iptables-save -c` output: counters of rules with a comment, and
/// Navigator's allowlist chains.
pub fn parse_save(text: &str) -> Preserved {
    let mut preserved = Preserved::default();
    for line in text.lines() {
        if let Some(chain) = line
            .strip_prefix(':')
            .and_then(|l| l.split_whitespace().next())
            && (chain.starts_with(ALLOW_PREFIX) || chain.starts_with(LIMIT_PREFIX))
        {
            preserved.chains.push(chain.to_owned());
            continue;
        }
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((counts, rule)) = rest.split_once("] ") else {
            continue;
        };
        let Some((packets, bytes)) = counts.split_once(':') else {
            continue;
        };
        let (Ok(packets), Ok(bytes)) = (packets.parse::<u64>(), bytes.parse::<u64>()) else {
            continue;
        };
        let Some(chain) = rule
            .strip_prefix("-A ")
            .and_then(|r| r.split_whitespace().next())
        else {
            continue;
        };
        let Some(comment) = rule
            .split_once("--comment \"")
            .and_then(|(_, c)| c.split_once('"'))
            .map(|(c, _)| c)
        else {
            continue;
        };
        preserved
            .comments
            .entry(chain.to_owned())
            .or_default()
            .push(comment.to_owned());
        let entry = preserved
            .counters
            .entry((chain.to_owned(), comment.to_owned()))
            .or_default();
        entry.0 += packets;
        entry.1 += bytes;
    }
    preserved
}

/// The prefix of the per-forward allowlist chains.
pub const ALLOW_PREFIX: &str = "NAVIGATOR-A-";

/// The prefix of the per-forward connection-limit chains.
pub const LIMIT_PREFIX: &str = "NAVIGATOR-L-";

/// `NAVIGATOR-L-<last 16 hex digits of the id>`.
pub fn limit_chain(id: ForwardId) -> String {
    let hex = id.to_string().replace('-', "");
    format!("{LIMIT_PREFIX}{}", &hex[16..])
}

/// The comment of a limit chain's rule: it names everything the rule
/// depends on, so an equal comment means an equal rule.
fn limit_comment(spec: &ForwardSpec, n: u32) -> String {
    format!("fwd {} limit {n} {}", spec.id, spec.protocol)
}

/// `NAVIGATOR-A-<last 16 hex digits of the id>` (random in UUIDv4 and v7):
/// 28 characters, iptables' limit.
pub fn allow_chain(id: ForwardId) -> String {
    let hex = id.to_string().replace('-', "");
    format!("{ALLOW_PREFIX}{}", &hex[16..])
}

/// The `iptables-restore --noflush` input for `family`: Navigator's chains
/// declared (and so flushed) and refilled, plus the jumps in `missing`.
pub fn render_restore(
    family: Family,
    all: &[ForwardSpec],
    missing: &[(&str, &str, &str)],
) -> String {
    render_restore_with(family, all, missing, &Preserved::default())
}

/// [`render_restore`] that carries `preserved` counters over and removes
/// allowlist chains no forward needs any more.
///
/// Controls live in `NAVIGATOR-FORWARD` (filter), after DNAT, matched by
/// the connection's original destination (`--ctorigdst`/`--ctorigdstport`):
/// a restricted forward's new connections jump to its `NAVIGATOR-A-*` chain
/// (one `-s` rule per network, `RETURN`, then `DROP`); a limited forward's
/// new connections jump to its `NAVIGATOR-L-*` chain, whose `connlimit` rule
/// (one bucket per rule: mask 0) refuses connections over `max_connections`
/// (TCP reset; UDP dropped), and which is rewritten only when the limit
/// changes; two rules without target count bytes each way
/// (`--ctdir ORIGINAL`/`REPLY`).
pub fn render_restore_with(
    family: Family,
    all: &[ForwardSpec],
    missing: &[(&str, &str, &str)],
    preserved: &Preserved,
) -> String {
    let mine: Vec<&ForwardSpec> = all
        .iter()
        .filter(|s| s.listen.is_ipv4() == (family == Family::V4))
        .collect();
    let mut listen: Vec<IpAddr> = mine.iter().map(|s| s.listen.ip()).collect();
    listen.sort();
    listen.dedup();
    let host_len = if family == Family::V4 { 32 } else { 128 };
    // The first rule of each (chain, comment) carries its preserved count.
    let mut used = std::collections::HashSet::new();
    let mut counter = |chain: &str, comment: &str| -> String {
        let key = (chain.to_owned(), comment.to_owned());
        match preserved.counters.get(&key) {
            Some((p, b)) if used.insert(key) => format!("[{p}:{b}] "),
            _ => String::new(),
        }
    };
    let mut out =
        String::from("# navigator: NAVIGATOR-* chains (generated; rewritten on every apply)\n");
    for table in ["nat", "filter"] {
        let _ = writeln!(out, "*{table}");
        for (_, _, chain) in JUMPS.iter().filter(|j| j.0 == table) {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        if table == "filter" {
            for spec in mine.iter().filter(|s| !s.controls.allowed_cidrs.is_empty()) {
                let _ = writeln!(out, ":{} - [0:0]", allow_chain(spec.id));
            }
            // A limit chain is declared (and so flushed and refilled) only
            // when new or changed: `connlimit` counts belong to the rule,
            // and an untouched rule keeps them across applies (iptables-nft;
            // iptables-legacy replaces the whole table on every commit).
            for spec in &mine {
                if let Some(n) = spec.controls.max_connections
                    && !limit_unchanged(preserved, spec, n)
                {
                    let _ = writeln!(out, ":{} - [0:0]", limit_chain(spec.id));
                }
            }
        }
        for (_, builtin, chain) in missing.iter().filter(|j| j.0 == table) {
            let _ = writeln!(out, "-I {builtin} 1 -j {chain}");
        }
        if table == "nat" {
            for chain in ["NAVIGATOR-PREROUTING", "NAVIGATOR-OUTPUT"] {
                for spec in &mine {
                    for (dport, target) in dnat_rules(spec) {
                        let target = match target.ip() {
                            IpAddr::V4(ip) => format!("{ip}:{}", target.port()),
                            IpAddr::V6(ip) => format!("[{ip}]:{}", target.port()),
                        };
                        let comment = format!("fwd {}", spec.id);
                        let _ = writeln!(
                            out,
                            "{}-A {chain} -d {}/{host_len} -p {proto} -m {proto} --dport {dport} -m comment --comment \"{comment}\" -j DNAT --to-destination {target}",
                            counter(chain, &comment),
                            spec.listen.ip(),
                            proto = spec.protocol,
                        );
                    }
                }
            }
            for ip in &listen {
                let _ = writeln!(
                    out,
                    "-A NAVIGATOR-POSTROUTING -m conntrack --ctstate DNAT --ctorigdst {ip}/{host_len} -j MASQUERADE"
                );
            }
        } else {
            const FWD: &str = "NAVIGATOR-FORWARD";
            for spec in &mine {
                let flow = format!(
                    "-p {proto} -m conntrack --ctorigdst {}/{host_len} --ctorigdstport {}",
                    spec.listen.ip(),
                    spec.listen_ports().replace('-', ":"),
                    proto = spec.protocol,
                );
                let fwd = format!("fwd {}", spec.id);
                if !spec.controls.allowed_cidrs.is_empty() {
                    let _ = writeln!(
                        out,
                        "-A {FWD} {flow} --ctstate NEW -m comment --comment \"{fwd} allow\" -j {}",
                        allow_chain(spec.id)
                    );
                }
                if spec.controls.max_connections.is_some() {
                    let _ = writeln!(
                        out,
                        "-A {FWD} {flow} --ctstate NEW -m comment --comment \"{fwd} limited\" -j {}",
                        limit_chain(spec.id)
                    );
                }
                for (dir, what) in [("ORIGINAL", "in"), ("REPLY", "out")] {
                    let comment = format!("{fwd} {what}");
                    let _ = writeln!(
                        out,
                        "{}-A {FWD} {flow} --ctstate DNAT --ctdir {dir} -m comment --comment \"{comment}\"",
                        counter(FWD, &comment),
                    );
                }
            }
            for ip in &listen {
                let _ = writeln!(
                    out,
                    "-A {FWD} -m conntrack --ctstate DNAT --ctorigdst {ip}/{host_len} -j ACCEPT"
                );
            }
            for spec in mine.iter().filter(|s| !s.controls.allowed_cidrs.is_empty()) {
                let chain = allow_chain(spec.id);
                let same: Vec<IpNet> = spec
                    .controls
                    .allowed_cidrs
                    .iter()
                    .filter(|n| matches!(n, IpNet::V4(_)) == (family == Family::V4))
                    .copied()
                    .collect();
                for net in IpNet::aggregate(&same) {
                    let _ = writeln!(out, "-A {chain} -s {net} -j RETURN");
                }
                let _ = writeln!(
                    out,
                    "-A {chain} -m comment --comment \"fwd {} refused\" -j DROP",
                    spec.id
                );
            }
            for spec in &mine {
                let Some(n) = spec.controls.max_connections else {
                    continue;
                };
                if limit_unchanged(preserved, spec, n) {
                    continue;
                }
                let verdict = match spec.protocol {
                    Protocol::Tcp => "REJECT --reject-with tcp-reset",
                    Protocol::Udp => "DROP",
                };
                let _ = writeln!(
                    out,
                    "-A {} -p {} -m connlimit --connlimit-above {n} --connlimit-mask 0 --connlimit-daddr -m comment --comment \"{}\" -j {verdict}",
                    limit_chain(spec.id),
                    spec.protocol,
                    limit_comment(spec, n),
                );
            }
            let mut wanted: Vec<String> = mine
                .iter()
                .filter(|s| !s.controls.allowed_cidrs.is_empty())
                .map(|s| allow_chain(s.id))
                .collect();
            wanted.extend(
                mine.iter()
                    .filter(|s| s.controls.max_connections.is_some())
                    .map(|s| limit_chain(s.id)),
            );
            for stale in preserved.chains.iter().filter(|c| !wanted.contains(c)) {
                let _ = writeln!(out, "-F {stale}");
                let _ = writeln!(out, "-X {stale}");
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Whether `spec`'s limit chain exists with exactly the rule it needs.
fn limit_unchanged(preserved: &Preserved, spec: &ForwardSpec, n: u32) -> bool {
    preserved
        .comments
        .get(&limit_chain(spec.id))
        .is_some_and(|c| c.len() == 1 && c[0] == limit_comment(spec, n))
}

/// The `--dport` match and DNAT target of each rule a forward needs. An N:1
/// range is one rule matching `first:last`; an N:N range is one rule per
/// port, since DNAT to a port range picks ports freely instead of keeping the
/// offset.
fn dnat_rules(spec: &ForwardSpec) -> Vec<(String, std::net::SocketAddr)> {
    if spec.one_target_port {
        return vec![(spec.listen_ports().replace('-', ":"), spec.target)];
    }
    spec.pairs()
        .map(|(listen, target)| (listen.port().to_string(), target))
        .collect()
}
