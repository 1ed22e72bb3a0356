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

use std::fmt::Write as _;
use std::net::IpAddr;

use navigator_core::ForwardSpec;

use crate::exec::{DEFAULT_TIMEOUT, ExecError, Host};
use crate::kernel::{KernelBackend, KernelConfig, ListenDelta, Ruleset};

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

    async fn replace(&self, host: &Host, all: &[ForwardSpec]) -> Result<(), ExecError> {
        for family in [Family::V4, Family::V6] {
            let missing = self.missing_jumps(host, family).await?;
            let text = render_restore(family, all, &missing);
            host.run(
                &[&self.program(family, true), "--noflush", "-w", "10"],
                Some(&text),
                DEFAULT_TIMEOUT,
            )
            .await?;
        }
        Ok(())
    }

    async fn update(
        &self,
        host: &Host,
        all: &[ForwardSpec],
        _removed: &[ForwardSpec],
        _added: &[ForwardSpec],
        _listen: &ListenDelta,
    ) -> Result<(), ExecError> {
        self.replace(host, all).await
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

/// The `iptables-restore --noflush` input for `family`: Navigator's chains
/// declared (and so flushed) and refilled, plus the jumps in `missing`.
pub fn render_restore(
    family: Family,
    all: &[ForwardSpec],
    missing: &[(&str, &str, &str)],
) -> String {
    let mine: Vec<&ForwardSpec> = all
        .iter()
        .filter(|s| s.listen.is_ipv4() == (family == Family::V4))
        .collect();
    let mut listen: Vec<IpAddr> = mine.iter().map(|s| s.listen.ip()).collect();
    listen.sort();
    listen.dedup();
    let host_len = if family == Family::V4 { 32 } else { 128 };
    let mut out =
        String::from("# navigator: NAVIGATOR-* chains (generated; rewritten on every apply)\n");
    for table in ["nat", "filter"] {
        let _ = writeln!(out, "*{table}");
        for (_, _, chain) in JUMPS.iter().filter(|j| j.0 == table) {
            let _ = writeln!(out, ":{chain} - [0:0]");
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
                        let _ = writeln!(
                            out,
                            "-A {chain} -d {}/{host_len} -p {proto} -m {proto} --dport {dport} -m comment --comment \"fwd {}\" -j DNAT --to-destination {target}",
                            spec.listen.ip(),
                            spec.id,
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
            for ip in &listen {
                let _ = writeln!(
                    out,
                    "-A NAVIGATOR-FORWARD -m conntrack --ctstate DNAT --ctorigdst {ip}/{host_len} -j ACCEPT"
                );
            }
        }
        out.push_str("COMMIT\n");
    }
    out
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
