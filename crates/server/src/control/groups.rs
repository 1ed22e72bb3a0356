//! Address groups on the server's side (issue #16).
//!
//! A group (`[vrrp:NAME]` on its member agents) is stored as one proxy,
//! `group:NAME` ([`navigator_store::group_host`]), whose addresses are the
//! group's virtual addresses, written by every member's heartbeat; placement,
//! ports, quotas and summaries need nothing else. What is particular:
//! - every change of a forward on a group goes to each member that is up
//!   ([`Control::carriers`]), and a member's full and partial syncs and its
//!   summary include its groups' forwards ([`Control::carried_proxies`]);
//! - a forward's status is what the member holding the addresses reports (or
//!   any member while none holds them); the others' failures are kept per
//!   member (`group_member_errors`) so the API says how many carry it;
//! - forwards on a group never move: the address moves instead (VRRP).
//!
//! A member whose group conflicts (its addresses or VRRP id differ from the
//! other members', or an address is another proxy's own) is recorded as
//! `refused: …` and carries none of the group's forwards until fixed.

use std::collections::HashSet;

use navigator_store::{GroupMember, group_host, group_name};

use super::*;

/// How long the members read from the store serve pushes; a member that
/// joined since is caught up by its summary's difference.
const MEMBERS_MAX_AGE: Duration = Duration::from_secs(1);

/// The `keepalived` text of a member that carries nothing of its group.
pub const REFUSED: &str = "refused: ";

/// The members of every group, as last read.
#[derive(Default)]
pub(super) struct GroupCache {
    members: Mutex<Option<(std::time::Instant, Arc<Vec<GroupMember>>)>>,
    /// Problems already logged at ERROR (each once per server run).
    logged: Mutex<HashSet<String>>,
}

/// Whether `member` may carry its group's forwards.
pub fn is_carrier(member: &GroupMember) -> bool {
    !member.keepalived.starts_with(REFUSED)
}

impl Control {
    /// Every group member, read again when older than [`MEMBERS_MAX_AGE`].
    pub(crate) async fn group_members(&self) -> Result<Arc<Vec<GroupMember>>, StoreError> {
        if let Some((at, members)) = locked(&self.groups.members).as_ref()
            && at.elapsed() < MEMBERS_MAX_AGE
        {
            return Ok(members.clone());
        }
        let members = Arc::new(self.store.list_group_members().await?);
        *locked(&self.groups.members) = Some((std::time::Instant::now(), members.clone()));
        Ok(members)
    }

    /// Whether `member`'s last heartbeat is recent enough (as for proxies).
    fn member_is_up(&self, member: &GroupMember) -> bool {
        is_recent(&member.last_report, self.config.agent_down_time)
    }

    /// The agents that carry the forwards of `proxy`: itself, or for a group
    /// its members that are up and not refused.
    pub(super) async fn carriers(&self, proxy: &str) -> Vec<String> {
        let Some(name) = group_name(proxy) else {
            return vec![proxy.to_owned()];
        };
        match self.group_members().await {
            Ok(members) => members
                .iter()
                .filter(|m| m.group == name && is_carrier(m) && self.member_is_up(m))
                .map(|m| m.member.clone())
                .collect(),
            Err(e) => {
                // The summaries repair what this push misses.
                tracing::warn!(group = %name, error = %e, "cannot read the group's members; the change reaches them with their next summary check");
                Vec::new()
            }
        }
    }

    /// The proxies whose forwards agent `host` carries: its own and its
    /// groups'.
    pub(super) async fn carried_proxies(&self, host: &str) -> Result<Vec<String>, StoreError> {
        let mut proxies = vec![host.to_owned()];
        for member in self.group_members().await?.iter() {
            if member.member == host && is_carrier(member) {
                proxies.push(group_host(&member.group));
            }
        }
        Ok(proxies)
    }

    /// Whether `host`'s results about the forwards of `group_proxy` make their
    /// status: it holds the group's addresses, or no member that is up does.
    pub(super) async fn writes_group_status(&self, host: &str, group_proxy: &str) -> bool {
        let Some(name) = group_name(group_proxy) else {
            return true;
        };
        let Ok(members) = self.group_members().await else {
            return true;
        };
        let holders: Vec<&GroupMember> = members
            .iter()
            .filter(|m| m.group == name && m.holder && is_carrier(m) && self.member_is_up(m))
            .collect();
        holders.is_empty() || holders.iter().any(|m| m.member == host)
    }

    /// Per group among `proxies` (other proxies than `host` itself):
    /// whether `host`'s results about its forwards make their status
    /// ([`Control::writes_group_status`]), asked once per group.
    pub(super) async fn group_status_writes<'p>(
        &self,
        host: &str,
        proxies: impl Iterator<Item = &'p str>,
    ) -> HashMap<String, bool> {
        let mut writes = HashMap::new();
        for proxy in proxies {
            if proxy != host && !writes.contains_key(proxy) {
                let w = self.writes_group_status(host, proxy).await;
                writes.insert(proxy.to_owned(), w);
            }
        }
        writes
    }

    /// The stored summary of what `host` must carry: its own proxy's and
    /// its groups', summed.
    pub(super) async fn carried_digest(&self, host: &str) -> Result<StoredDigest, ApiError> {
        let mut total: Option<StoredDigest> = None;
        for proxy in self.carried_proxies(host).await? {
            let stored = match self.store.proxy_digest(&proxy).await? {
                Some(stored) => stored,
                None => self.store.rebuild_digests(&proxy).await?,
            };
            match total.as_mut() {
                Some(total) => total.merge(&stored),
                None => total = Some(stored),
            }
        }
        match total {
            Some(total) => Ok(total),
            None => Ok(self.store.rebuild_digests(host).await?),
        }
    }

    /// The forwards `host` must carry, its groups' included.
    pub(super) async fn carried_forwards(&self, host: &str) -> Result<Vec<PortForward>, ApiError> {
        let mut forwards = Vec::new();
        for proxy in self.carried_proxies(host).await? {
            forwards.extend(self.store.forwards_on_proxy(&proxy).await?);
        }
        Ok(forwards)
    }

    /// The forwards of `buckets` that `host` must carry, its groups'
    /// included, each proxy's summary rows set to what they hold.
    pub(super) async fn resync_carried_buckets(
        &self,
        host: &str,
        buckets: &[u8],
    ) -> Result<Vec<PortForward>, ApiError> {
        let mut forwards = Vec::new();
        for proxy in self.carried_proxies(host).await? {
            forwards.extend(self.store.resync_buckets(&proxy, buckets).await?);
        }
        Ok(forwards)
    }

    /// Records the groups a member's heartbeat announces: checks them
    /// against the other members and proxies, registers each group as a
    /// proxy and the member in it, and forgets groups it left.
    pub(super) async fn record_groups(
        &self,
        state: &AgentState,
        port_range: navigator_core::PortRange,
        own: &[IpAddr],
    ) -> Result<(), ApiError> {
        // The cached members decide whether there is anything to do: an
        // agent in no group costs no query here.
        let members = self.group_members().await?;
        if state.groups.is_empty() && !members.iter().any(|m| m.member == state.host) {
            return Ok(());
        }
        let proxies = self.store.list_proxies().await?;
        let now = navigator_store::now();
        let mut announced = HashSet::new();
        for group in &state.groups {
            if !valid_group_name(&group.name) {
                tracing::warn!(host = %state.host, group = %group.name, "agent announced a group with a malformed name; ignored");
                continue;
            }
            announced.insert(group.name.clone());
            let addresses = group
                .addresses
                .iter()
                .map(|a| a.parse::<IpAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "agent {} reported a malformed address in group {}",
                        state.host, group.name
                    ))
                })?;
            let problem = self.group_problem(state, group, &addresses, own, &members, &proxies);
            if let Some(problem) = &problem
                && locked(&self.groups.logged)
                    .insert(format!("{}/{}/{problem}", group.name, state.host))
            {
                tracing::error!(group = %group.name, member = %state.host, problem = %problem, "address group member refused: it carries none of the group's forwards until this is fixed");
            }
            let keepalived = match &problem {
                Some(problem) => format!("{REFUSED}{problem}"),
                None => group.keepalived.clone(),
            };
            self.store
                .upsert_group_member(&GroupMember {
                    group: group.name.clone(),
                    member: state.host.clone(),
                    addresses: addresses.clone(),
                    virtual_router_id: group.virtual_router_id,
                    holder: group.holder && problem.is_none(),
                    keepalived,
                    last_report: now.clone(),
                })
                .await?;
            if problem.is_none() {
                self.store
                    .upsert_proxy(
                        &group_host(&group.name),
                        &state.backend,
                        &addresses,
                        port_range,
                        &state.features,
                    )
                    .await?;
            }
        }
        for member in members.iter().filter(|m| m.member == state.host) {
            if !announced.contains(&member.group) {
                tracing::warn!(group = %member.group, member = %state.host, "agent no longer announces the group; it is no longer a member");
                self.store
                    .delete_group_member(&member.group, &state.host)
                    .await?;
            }
        }
        // The next push reads the members again.
        *locked(&self.groups.members) = None;
        Ok(())
    }

    /// What is wrong with `host`'s membership of `group`, if anything.
    fn group_problem(
        &self,
        state: &AgentState,
        group: &navigator_rpc::GroupState,
        addresses: &[IpAddr],
        own: &[IpAddr],
        members: &[GroupMember],
        proxies: &[ProxyRecord],
    ) -> Option<String> {
        if addresses.is_empty() {
            return Some("the group has no virtual address".to_owned());
        }
        if let Some(address) = addresses.iter().find(|a| own.contains(a)) {
            return Some(format!(
                "virtual address {address} is also one of this proxy's own external addresses"
            ));
        }
        for proxy in proxies.iter().filter(|p| group_name(&p.host).is_none()) {
            if let Some(address) = addresses
                .iter()
                .find(|a| proxy.external_addresses.contains(a))
            {
                return Some(format!(
                    "virtual address {address} is also an external address of proxy {}",
                    proxy.host
                ));
            }
        }
        let mut sorted = addresses.to_vec();
        sorted.sort();
        for other in members
            .iter()
            .filter(|m| m.member != state.host && is_carrier(m) && self.member_is_up(m))
        {
            if other.group == group.name {
                let mut theirs = other.addresses.clone();
                theirs.sort();
                if theirs != sorted || other.virtual_router_id != group.virtual_router_id {
                    return Some(format!(
                        "its group {} is configured with addresses {} and VRRP id {}, member {} with {} and VRRP id {}",
                        group.name,
                        join(&sorted),
                        group.virtual_router_id,
                        other.member,
                        join(&theirs),
                        other.virtual_router_id
                    ));
                }
            } else {
                if let Some(address) = sorted.iter().find(|a| other.addresses.contains(a)) {
                    return Some(format!(
                        "virtual address {address} is also in group {} (member {})",
                        other.group, other.member
                    ));
                }
                if other.virtual_router_id == group.virtual_router_id
                    && locked(&self.groups.logged).insert(format!(
                        "vrid/{}/{}/{}",
                        group.name, other.group, group.virtual_router_id
                    ))
                {
                    // Two segments may reuse an id; one segment may not. The
                    // server cannot tell which, so it warns.
                    tracing::warn!(group = %group.name, other = %other.group, virtual_router_id = group.virtual_router_id, "two address groups use the same VRRP id: on one L2 segment they would fight over it");
                }
            }
        }
        None
    }

    /// Records what a member reported about its groups' forwards: its
    /// failures, and the forwards it carries again. `proxies` maps each
    /// reported forward to its proxy; with `full`, results of a full sync.
    pub(super) async fn record_member_results(
        &self,
        host: &str,
        results: &[ForwardResult],
        proxy_of: &HashMap<ForwardId, String>,
        full: bool,
    ) {
        let mut errors = Vec::new();
        let mut cleared = Vec::new();
        for result in results {
            let Ok(id) = result.id.parse::<ForwardId>() else {
                continue;
            };
            if proxy_of.get(&id).is_none_or(|p| group_name(p).is_none()) {
                continue;
            }
            match result.status {
                ResultStatus::Error => errors.push((
                    id,
                    result
                        .reason
                        .clone()
                        .unwrap_or_else(|| "the agent gave no reason".to_owned()),
                )),
                ResultStatus::Active => cleared.push(id),
            }
        }
        if errors.is_empty() && cleared.is_empty() && !full {
            return;
        }
        if let Err(e) = self
            .store
            .record_member_errors(host, &errors, &cleared, full)
            .await
        {
            tracing::warn!(%host, error = %e, "cannot record the group members' results");
        }
    }

    /// Maps the results of a heartbeat (which names no proxy) to the
    /// proxies of their forwards: a forward whose external address is a
    /// virtual address of one of `host`'s groups is that group's.
    pub(super) async fn proxies_of_results(
        &self,
        host: &str,
        results: &[ForwardResult],
    ) -> HashMap<ForwardId, String> {
        let Ok(members) = self.group_members().await else {
            return HashMap::new();
        };
        let groups: Vec<(&GroupMember, String)> = members
            .iter()
            .filter(|m| m.member == host && is_carrier(m))
            .map(|m| (m, group_host(&m.group)))
            .collect();
        let mut proxies = HashMap::new();
        for result in results {
            let Ok(id) = result.id.parse::<ForwardId>() else {
                continue;
            };
            let address = result
                .applied
                .as_ref()
                .and_then(|a| a.listen_address.parse::<IpAddr>().ok());
            let proxy = address
                .and_then(|a| groups.iter().find(|(m, _)| m.addresses.contains(&a)))
                .map_or_else(|| host.to_owned(), |(_, proxy)| proxy.clone());
            proxies.insert(id, proxy);
        }
        proxies
    }
}

/// A group name as `[vrrp:NAME]` allows: 1-32 of `a-z`, `0-9`, `-`.
pub fn valid_group_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Control {
    /// Fills in `group` of those `forwards` that are on an address group,
    /// and says in an `ACTIVE` one's `status_reason` which members cannot
    /// carry it. A store error leaves them as they are (the forwards are
    /// still right; only this view of their group is missing).
    pub async fn describe_groups(&self, forwards: &mut [navigator_api::v1::Forward]) {
        let ids: Vec<ForwardId> = forwards
            .iter()
            .filter(|f| group_name(&f.proxy).is_some())
            .filter_map(|f| f.id.parse().ok())
            .collect();
        if ids.is_empty() {
            return;
        }
        let (members, errors) = match (
            self.group_members().await,
            self.store.member_errors(&ids).await,
        ) {
            (Ok(members), Ok(errors)) => (members, errors),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read the address groups of forwards");
                return;
            }
        };
        for forward in forwards.iter_mut() {
            let Some(name) = group_name(&forward.proxy) else {
                continue;
            };
            let up: Vec<&GroupMember> = members
                .iter()
                .filter(|m| m.group == name && is_carrier(m) && self.member_is_up(m))
                .collect();
            let failing: Vec<(&str, &str)> = errors
                .iter()
                .filter(|e| e.forward.to_string() == forward.id)
                .filter(|e| up.iter().any(|m| m.member == e.member))
                .map(|e| (e.member.as_str(), e.reason.as_str()))
                .collect();
            let carrying = up.len().saturating_sub(failing.len());
            if forward.status == ForwardStatus::Active.to_string() && !failing.is_empty() {
                let why = failing
                    .iter()
                    .map(|(member, reason)| format!("{member}: {reason}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                forward.status_reason = Some(format!(
                    "carried by {carrying} of {} members of group {name}; {why}",
                    up.len()
                ));
            }
            forward.group = Some(navigator_api::v1::ForwardGroup {
                name: name.to_owned(),
                holder: up.iter().find(|m| m.holder).map(|m| m.member.clone()),
                members: u32::try_from(up.len()).unwrap_or(u32::MAX),
                carrying: u32::try_from(carrying).unwrap_or(u32::MAX),
            });
        }
    }

    /// The group view of proxy `host` when it is an address group, and the
    /// groups it is a member of otherwise.
    pub async fn describe_proxy_group(
        &self,
        host: &str,
    ) -> Result<(Option<navigator_api::v1::ProxyGroup>, Vec<String>), StoreError> {
        let members = self.group_members().await?;
        let Some(name) = group_name(host) else {
            let groups = members
                .iter()
                .filter(|m| m.member == host)
                .map(|m| m.group.clone())
                .collect();
            return Ok((None, groups));
        };
        let of_group: Vec<&GroupMember> = members.iter().filter(|m| m.group == name).collect();
        let holders: Vec<&&GroupMember> = of_group
            .iter()
            .filter(|m| m.holder && is_carrier(m) && self.member_is_up(m))
            .collect();
        Ok((
            Some(navigator_api::v1::ProxyGroup {
                name: name.to_owned(),
                virtual_router_id: of_group
                    .iter()
                    .find(|m| is_carrier(m))
                    .map_or(0, |m| m.virtual_router_id),
                holder: holders.first().map(|m| m.member.clone()),
                split_brain: holders.len() > 1,
                members: of_group
                    .iter()
                    .map(|m| navigator_api::v1::ProxyGroupMember {
                        host: m.member.clone(),
                        state: if self.member_is_up(m) { "up" } else { "down" }.to_owned(),
                        holder: m.holder,
                        keepalived: m.keepalived.clone(),
                        last_report: m.last_report.clone(),
                    })
                    .collect(),
            }),
            Vec::new(),
        ))
    }
}

impl Control {
    /// The agent whose counters are a forward's on `proxy`: the proxy's own,
    /// or for a group the member holding its addresses (`Err` says why there
    /// is none).
    pub async fn usage_host(&self, proxy: &str) -> Result<String, String> {
        let Some(name) = group_name(proxy) else {
            return Ok(proxy.to_owned());
        };
        let members = self
            .group_members()
            .await
            .map_err(|e| format!("cannot read the members of address group {name}: {e}"))?;
        members
            .iter()
            .find(|m| m.group == name && m.holder && is_carrier(m) && self.member_is_up(m))
            .map(|m| m.member.clone())
            .ok_or_else(|| format!("no member of address group {name} holds its addresses now"))
    }
}
