//! The REST handlers of API v1, each annotated for the OpenAPI document.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use navigator_api::ErrorBody;
use navigator_api::v1::{
    DEFAULT_PAGE_SIZE, Forward, ForwardBody, ForwardCreateBody, ForwardDetail, ForwardDetailBody,
    ForwardList, ForwardListQuery, ForwardUpdateBody, Health, HealthQuery, Link, MAX_PAGE_SIZE,
    Proxy, ProxyBody, ProxyList, SortDir, SortKey, Version, VersionBody, VersionList, parse_ip,
    parse_protocol_filter, parse_status,
};
use navigator_core::{ForwardId, PortForward};
use std::collections::HashMap;

use navigator_store::{ForwardFilter, ForwardOrder, ProxyRecord, ProxyUsage, SortColumn};
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::context::Context;
use crate::control::is_up;
use crate::error::ApiError;

/// `Json<T>` whose rejections are OpenStack error bodies: malformed JSON and
/// unknown fields are 400 with serde's words (which name the field), a body
/// over the size limit is 413.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                let status = rejection.status();
                let text = rejection.body_text();
                Err(match status {
                    StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(
                        "request body too large: the limit is [api] max_request_body_size bytes"
                            .into(),
                    ),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::BadRequest(
                        "request body must be JSON with Content-Type: application/json".into(),
                    ),
                    _ => ApiError::BadRequest(format!(
                        "malformed request body: {}",
                        strip_axum_prefix(&text)
                    )),
                })
            }
        }
    }
}

/// Query parameters with OpenStack error bodies (unknown parameters are 400).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "invalid query: {}",
                strip_axum_prefix(&rejection.body_text())
            ))),
        }
    }
}

/// axum prefixes serde's message with a sentence of its own; keep serde's part.
fn strip_axum_prefix(text: &str) -> String {
    for prefix in [
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
        "Failed to deserialize query string: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
    text.to_owned()
}

pub(crate) fn audit(ctx: &Context, action: &str, target: &str, outcome: &str) {
    tracing::info!(
        target: "navigator::audit",
        request_id = %ctx.request_id,
        user = ctx.user_id.as_deref().unwrap_or("-"),
        project = %ctx.project_id,
        action,
        target_id = target,
        outcome,
        "audit"
    );
}

/// Loads a forward the caller may see; others' forwards are "not found", so
/// that ids of other projects are never confirmed.
async fn visible_forward(
    state: &AppState,
    ctx: &Context,
    id: &str,
) -> Result<PortForward, ApiError> {
    let Ok(forward_id) = id.parse::<ForwardId>() else {
        return Err(ApiError::forward_not_found(id));
    };
    match state.control.store().get_forward(forward_id).await? {
        // Policy `get_forward` on the forward's own project: a forward the
        // caller may not see is indistinguishable from one that is absent.
        Some(forward) if ctx.allowed(state, "get_forward", &forward.project_id) => Ok(forward),
        _ => Err(ApiError::forward_not_found(id)),
    }
}

/// Create a port forward.
#[utoipa::path(
    post, path = "/v1/forwards", tag = "forwards",
    request_body = ForwardCreateBody,
    responses(
        (status = 201, description = "Created; `status` says whether the proxy carries it yet", body = ForwardBody),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 409, description = "Over the project's quota (the message names project, resource, use and limit), external port already in use, pool exhausted, or no live proxy can carry the forward (the message names each proxy and why)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "No proxy up, or the database is down", body = ErrorBody),
    )
)]
pub async fn create_forward(
    State(state): State<AppState>,
    ctx: Context,
    ApiJson(body): ApiJson<ForwardCreateBody>,
) -> Result<(StatusCode, Json<ForwardBody>), ApiError> {
    let result = async {
        // The forward's project is the caller's (token) project, never the body's.
        ctx.enforce(&state, "create_forward", &ctx.project_id)?;
        let new = body.forward.validate()?;
        if new.proxy.is_some() && !ctx.allowed(&state, "create_forward:proxy", &ctx.project_id) {
            return Err(ApiError::Forbidden(
                "only an admin may choose the proxy".into(),
            ));
        }
        state.control.create(&ctx.project_id, new).await
    }
    .await;
    match result {
        Ok(forward) => {
            audit(&ctx, "forward.create", &forward.id.to_string(), "success");
            Ok((
                StatusCode::CREATED,
                Json(ForwardBody {
                    forward: view(&state, &forward).await,
                }),
            ))
        }
        Err(e) => {
            audit(&ctx, "forward.create", "-", &format!("failure: {e}"));
            Err(e)
        }
    }
}

/// List port forwards, with filters, pagination and sorting.
#[utoipa::path(
    get, path = "/v1/forwards", tag = "forwards",
    params(ForwardListQuery),
    responses(
        (status = 200, description = "A page of forwards, and a `next` link when more may follow", body = ForwardList),
        (status = 400, description = "Invalid filter, limit or marker", body = ErrorBody),
        (status = 403, description = "all_projects without admin", body = ErrorBody),
    )
)]
pub async fn list_forwards(
    State(state): State<AppState>,
    ctx: Context,
    ApiQuery(query): ApiQuery<ForwardListQuery>,
) -> Result<Json<ForwardList>, ApiError> {
    let all_projects = query.all_projects.unwrap_or(false);
    if !all_projects {
        ctx.enforce(&state, "get_forward", &ctx.project_id)?;
    }
    if all_projects && !ctx.allowed(&state, "list_all_projects", &ctx.project_id) {
        return Err(ApiError::Forbidden(
            "all_projects is for admins only".into(),
        ));
    }
    let project_id = match (&query.project_id, all_projects) {
        (Some(project), true) => Some(project.clone()),
        (None, true) => None,
        (Some(project), false) if *project == ctx.project_id => Some(project.clone()),
        (Some(_), false) if ctx.is_admin => {
            return Err(ApiError::BadRequest(
                "project_id filters other projects only with all_projects=true".into(),
            ));
        }
        (Some(_), false) => Some(ctx.project_id.clone()),
        (None, false) => Some(ctx.project_id.clone()),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "invalid limit: {limit} is outside 1-{MAX_PAGE_SIZE}"
        )));
    }
    let marker = query
        .marker
        .as_deref()
        .map(|m| {
            m.parse::<ForwardId>().map_err(|_| {
                ApiError::BadRequest(format!("invalid marker: {m:?} is not a forward id"))
            })
        })
        .transpose()?;
    let filter = ForwardFilter {
        project_id,
        instance_id: query.instance_id.clone(),
        protocol: query
            .protocol
            .as_deref()
            .map(parse_protocol_filter)
            .transpose()?,
        status: query.status.as_deref().map(parse_status).transpose()?,
        external_address: query
            .external_address
            .as_deref()
            .map(|a| parse_ip("external_address", a))
            .transpose()?,
        external_port: query.external_port,
        internal_ip_address: query
            .internal_ip_address
            .as_deref()
            .map(|a| parse_ip("internal_ip_address", a))
            .transpose()?,
        proxy: query.proxy.clone(),
    };
    let order = ForwardOrder {
        column: match query.sort_key.unwrap_or_default() {
            SortKey::CreatedAt => SortColumn::CreatedAt,
            SortKey::UpdatedAt => SortColumn::UpdatedAt,
            SortKey::Id => SortColumn::Id,
            SortKey::ExternalPort => SortColumn::ExternalPort,
            SortKey::InternalPort => SortColumn::InternalPort,
            SortKey::Status => SortColumn::Status,
            SortKey::Protocol => SortColumn::Protocol,
        },
        descending: query.sort_dir.unwrap_or_default() == SortDir::Desc,
        limit,
        marker,
    };
    let forwards = state.control.store().list_forwards(&filter, &order).await?;
    let mut links = Vec::new();
    if let Some(last) = forwards.last().filter(|_| forwards.len() == limit as usize) {
        let next = ForwardListQuery {
            marker: Some(last.id.to_string()),
            limit: Some(limit),
            ..query.clone()
        };
        // The query's fields are strings, numbers, booleans and unit enums,
        // all of which serde_urlencoded encodes; `None`s are left out.
        let query_string = serde_urlencoded::to_string(&next)
            .map_err(|e| ApiError::Internal(format!("cannot encode the next page's query: {e}")))?;
        links.push(Link {
            rel: "next".into(),
            href: format!("{}/v1/forwards?{query_string}", state.public_url),
        });
    }
    let mut forwards: Vec<Forward> = forwards.iter().map(Forward::from).collect();
    state.control.describe_groups(&mut forwards).await;
    Ok(Json(ForwardList {
        forwards,
        forwards_links: links,
    }))
}

/// Show a port forward.
#[utoipa::path(
    get, path = "/v1/forwards/{id}", tag = "forwards",
    params(("id" = String, Path, description = "Forward UUID")),
    responses((status = 200, description = "The forward, with its usage read from its proxy's agent (at most 2 s; `usage` is then `null` and `usage_unavailable` says why)", body = ForwardDetailBody), (status = 404, description = "No such forward, or not yours", body = ErrorBody))
)]
pub async fn show_forward(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<Json<ForwardDetailBody>, ApiError> {
    let forward = visible_forward(&state, &ctx, &id).await?;
    let (usage, usage_unavailable) =
        match crate::usage::forward_usage(&state.control, &forward).await {
            Ok(usage) => (Some(usage), None),
            Err(reason) => (None, Some(reason)),
        };
    Ok(Json(ForwardDetailBody {
        forward: ForwardDetail {
            forward: view(&state, &forward).await,
            usage,
            usage_unavailable,
        },
    }))
}

/// Change a forward's target or description.
#[utoipa::path(
    put, path = "/v1/forwards/{id}", tag = "forwards",
    params(("id" = String, Path, description = "Forward UUID")),
    request_body = ForwardUpdateBody,
    responses(
        (status = 200, description = "The changed forward; `status` says whether the proxy carries the new target yet", body = ForwardBody),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 404, description = "No such forward, or not yours", body = ErrorBody),
    )
)]
pub async fn update_forward(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ForwardUpdateBody>,
) -> Result<Json<ForwardBody>, ApiError> {
    let result = async {
        let changes = body.forward.validate()?;
        let forward = visible_forward(&state, &ctx, &id).await?;
        // Visible but not changeable (a reader): 403, the forward's existence
        // is no secret to this caller.
        ctx.enforce(&state, "update_forward", &forward.project_id)?;
        state
            .control
            .update(&forward, changes)
            .await?
            .ok_or_else(|| ApiError::forward_not_found(&id))
    }
    .await;
    audit(&ctx, "forward.update", &id, &outcome(&result));
    let updated = result?;
    Ok(Json(ForwardBody {
        forward: view(&state, &updated).await,
    }))
}

/// Delete a forward.
#[utoipa::path(
    delete, path = "/v1/forwards/{id}", tag = "forwards",
    params(("id" = String, Path, description = "Forward UUID")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such forward, or not yours", body = ErrorBody))
)]
pub async fn delete_forward(
    State(state): State<AppState>,
    ctx: Context,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        let forward = visible_forward(&state, &ctx, &id).await?;
        ctx.enforce(&state, "delete_forward", &forward.project_id)?;
        if state.control.delete(&forward).await? {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::forward_not_found(&id))
        }
    }
    .await;
    audit(&ctx, "forward.delete", &id, &outcome(&result));
    result
}

pub(crate) fn outcome<T>(result: &Result<T, ApiError>) -> String {
    match result {
        Ok(_) => "success".into(),
        Err(e) => format!("failure: {e}"),
    }
}

/// The API's view of `forward`, with its address group if it has one.
async fn view(state: &AppState, forward: &navigator_core::PortForward) -> Forward {
    let mut views = [Forward::from(forward)];
    state.control.describe_groups(&mut views).await;
    let [view] = views;
    view
}

async fn proxy_view(state: &AppState, record: &ProxyRecord, usage: ProxyUsage) -> Proxy {
    let (group, groups) = match state.control.describe_proxy_group(&record.host).await {
        Ok(described) => described,
        Err(e) => {
            tracing::warn!(host = %record.host, error = %e, "cannot read the proxy's address groups");
            (None, Vec::new())
        }
    };
    let ProxyUsage { forwards, ports } = usage;
    let capacity =
        u64::from(record.port_range.len()) * 2 * record.external_addresses.len().max(1) as u64;
    Proxy {
        host: record.host.clone(),
        backend: record.backend.clone(),
        external_addresses: record
            .external_addresses
            .iter()
            .map(ToString::to_string)
            .collect(),
        port_range: record.port_range.to_string(),
        state: if is_up(record, state.config.agent_down_time) {
            "up"
        } else {
            "down"
        }
        .into(),
        last_heartbeat: Some(record.last_heartbeat.clone()),
        forward_count: forwards,
        port_count: ports,
        // Four decimals are plenty for a share, and keep the output readable.
        load: (ports as f64 / capacity as f64 * 10_000.0).round() / 10_000.0,
        group,
        groups,
    }
}

/// List proxies (admin).
#[utoipa::path(
    get, path = "/v1/proxies", tag = "proxies",
    responses((status = 200, description = "Every registered proxy", body = ProxyList), (status = 403, description = "Not an admin", body = ErrorBody))
)]
pub async fn list_proxies(
    State(state): State<AppState>,
    ctx: Context,
) -> Result<Json<ProxyList>, ApiError> {
    if !ctx.allowed(&state, "get_proxy", &ctx.project_id) {
        return Err(ApiError::Forbidden(
            "listing proxies is for admins only".into(),
        ));
    }
    let store = state.control.store();
    let usage: HashMap<String, ProxyUsage> = store.proxy_usage().await?.into_iter().collect();
    let mut proxies = Vec::new();
    for record in store.list_proxies().await? {
        let used = usage.get(&record.host).copied().unwrap_or_default();
        proxies.push(proxy_view(&state, &record, used).await);
    }
    Ok(Json(ProxyList { proxies }))
}

/// Show a proxy (admin).
#[utoipa::path(
    get, path = "/v1/proxies/{host}", tag = "proxies",
    params(("host" = String, Path, description = "Proxy host name")),
    responses((status = 200, description = "The proxy", body = ProxyBody), (status = 404, description = "No such proxy", body = ErrorBody))
)]
pub async fn show_proxy(
    State(state): State<AppState>,
    ctx: Context,
    Path(host): Path<String>,
) -> Result<Json<ProxyBody>, ApiError> {
    if !ctx.allowed(&state, "get_proxy", &ctx.project_id) {
        return Err(ApiError::Forbidden(
            "showing proxies is for admins only".into(),
        ));
    }
    let store = state.control.store();
    let record = store
        .get_proxy(&host)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("proxy {host} not found")))?;
    let used = store
        .proxy_usage()
        .await?
        .into_iter()
        .find_map(|(proxy, used)| (proxy == host).then_some(used))
        .unwrap_or_default();
    Ok(Json(ProxyBody {
        proxy: proxy_view(&state, &record, used).await,
    }))
}

fn v1(state: &AppState) -> Version {
    Version {
        id: "v1.0".into(),
        status: "CURRENT".into(),
        links: vec![Link {
            rel: "self".into(),
            href: format!("{}/v1/", state.public_url),
        }],
    }
}

/// API versions.
#[utoipa::path(get, path = "/", tag = "meta", responses((status = 200, description = "The API versions", body = VersionList)))]
pub async fn versions(State(state): State<AppState>) -> Json<VersionList> {
    Json(VersionList {
        versions: vec![v1(&state)],
    })
}

/// The v1 version document.
#[utoipa::path(get, path = "/v1", tag = "meta", responses((status = 200, description = "The v1 version document", body = VersionBody)))]
pub async fn version_v1(State(state): State<AppState>) -> Json<VersionBody> {
    Json(VersionBody {
        version: v1(&state),
    })
}

/// Health of the server and its dependencies, as oslo.middleware's
/// healthcheck: 200 `OK`, or 503 naming what failed (the database, RabbitMQ
/// in cluster mode) or `DISABLED BY FILE` while the server is drained.
/// JSON unless `Accept` prefers `text/plain`. See [`crate::health`].
#[utoipa::path(
    get, path = "/healthcheck", tag = "meta",
    params(HealthQuery),
    responses(
        (status = 200, description = "Every dependency is reachable", content((Health = "application/json"), (String = "text/plain"))),
        (status = 400, description = "Unknown query parameter, or detailed is not true or false", body = ErrorBody),
        (status = 503, description = "A dependency is down, or the server is disabled by file (draining)", content((Health = "application/json"), (String = "text/plain")))
    )
)]
pub async fn healthcheck(
    State(state): State<AppState>,
    request_id: Option<axum::Extension<crate::context::RequestId>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: axum::http::HeaderMap,
    ApiQuery(query): ApiQuery<HealthQuery>,
) -> axum::response::Response {
    let request_id = request_id.map(|id| id.0.0).unwrap_or_default();
    crate::health::answer(
        &state,
        &headers,
        peer.map(|axum::Extension(peer)| peer),
        &request_id,
        query.detailed.unwrap_or(false),
    )
    .await
}

/// Prometheus metrics, unauthenticated like `/healthcheck`: they carry counts,
/// never project ids or addresses. Operators restrict who reaches the API
/// port's `/metrics` at their load balancer (docs/metrics.md).
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Metrics in the OpenMetrics text format 1.0.0; names in docs/metrics.md", content_type = "application/openmetrics-text; version=1.0.0", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let snapshot = crate::metrics::Snapshot::take(&state).await;
    let body = state.control.metrics().encode(&snapshot);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        body,
    )
}

#[cfg(test)]
mod tests {
    use navigator_api::v1::{ForwardListQuery, SortDir, SortKey};

    /// The `next` link's query is read back by the same decoder that reads
    /// every list request (axum's `Query`, serde_urlencoded): odd values
    /// survive the round trip, and unset fields are left out.
    #[test]
    fn next_link_query_round_trips_odd_values() {
        let query = ForwardListQuery {
            instance_id: Some("a b&c=d/é+%zz?#".into()),
            external_port: Some(8080),
            all_projects: Some(true),
            limit: Some(2),
            marker: Some("0b7f6c3e-1c1e-4a55-9c4e-1d2f3a4b5c6d".into()),
            sort_key: Some(SortKey::ExternalPort),
            sort_dir: Some(SortDir::Desc),
            ..ForwardListQuery::default()
        };
        let encoded = serde_urlencoded::to_string(&query).unwrap();
        assert!(!encoded.contains("protocol"), "{encoded}");
        assert!(!encoded.contains(['/', '#', '?', ' ']), "{encoded}");
        let decoded: ForwardListQuery = serde_urlencoded::from_str(&encoded).unwrap();
        assert_eq!(decoded, query);
        assert_eq!(
            serde_urlencoded::to_string(ForwardListQuery::default()).unwrap(),
            ""
        );
    }
}
