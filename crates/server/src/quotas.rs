//! The quota handlers of API v1: `GET/PUT/DELETE /v1/quotas/{project_id}`
//! and `GET /v1/quotas/{project_id}/details`, in Neutron's shapes.
//!
//! Policy `quota:get` (readers and members of the project, and admins),
//! `quota:update` and `quota:delete` (admins). Quotas are not secret the way
//! forwards are (every project has one, the defaults at least), so a caller
//! who may not read another project's quota gets 403, not 404. Enforcement
//! is the store's, in each create's transaction (`navigator_store` quotas).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use navigator_api::ErrorBody;
use navigator_api::quota::{
    Quota, QuotaBody, QuotaDetail, QuotaDetails, QuotaDetailsBody, QuotaSetBody, QuotaUpdateBody,
    check_project_id,
};
use navigator_store::{ProjectQuota, QuotaUsage};

use crate::app::AppState;
use crate::context::Context;
use crate::error::ApiError;
use crate::handlers::{ApiJson, audit, outcome};

fn limits(quota: &ProjectQuota) -> Quota {
    Quota {
        forwards: quota.forwards.limit,
        ports: quota.ports.limit,
    }
}

fn detail(usage: QuotaUsage) -> QuotaDetail {
    QuotaDetail {
        limit: usage.limit,
        used: usage.used,
    }
}

/// The PUT answer's warning when the project holds more than a limit.
pub fn over_warning(quota: &ProjectQuota) -> Option<String> {
    let over: Vec<String> = [("forwards", quota.forwards), ("ports", quota.ports)]
        .into_iter()
        .filter(|(_, usage)| usage.is_over())
        .map(|(name, usage)| {
            format!(
                "{} {name}, more than its limit of {}",
                usage.used, usage.limit
            )
        })
        .collect();
    (!over.is_empty()).then(|| {
        format!(
            "project {} holds {}: its forwards stay, new ones are refused until it is back under",
            quota.project_id,
            over.join(" and ")
        )
    })
}

/// Checks the path's project and the policy `rule` on it.
fn authorise(
    state: &AppState,
    ctx: &Context,
    rule: &str,
    project_id: &str,
) -> Result<(), ApiError> {
    check_project_id(project_id)?;
    ctx.enforce(state, rule, project_id)
}

/// Show a project's quota: the limits in force.
#[utoipa::path(
    get, path = "/v1/quotas/{project_id}", tag = "quotas",
    params(("project_id" = String, Path, description = "Project (tenant) id", max_length = 255)),
    responses(
        (status = 200, description = "The project's limits (its own, or the [quotas] defaults); -1 is unlimited", body = QuotaBody),
        (status = 400, description = "Invalid project id", body = ErrorBody),
        (status = 403, description = "Not a reader of that project", body = ErrorBody),
    )
)]
pub async fn get_quota(
    State(state): State<AppState>,
    ctx: Context,
    Path(project_id): Path<String>,
) -> Result<Json<QuotaBody>, ApiError> {
    authorise(&state, &ctx, "quota:get", &project_id)?;
    let quota = state.control.store().project_quota(&project_id).await?;
    Ok(Json(QuotaBody {
        quota: limits(&quota),
    }))
}

/// Show a project's quota with what it uses (Neutron's `/details`).
#[utoipa::path(
    get, path = "/v1/quotas/{project_id}/details", tag = "quotas",
    params(("project_id" = String, Path, description = "Project (tenant) id", max_length = 255)),
    responses(
        (status = 200, description = "Limit and use per resource; use may exceed a limit an admin lowered", body = QuotaDetailsBody),
        (status = 400, description = "Invalid project id", body = ErrorBody),
        (status = 403, description = "Not a reader of that project", body = ErrorBody),
    )
)]
pub async fn get_quota_details(
    State(state): State<AppState>,
    ctx: Context,
    Path(project_id): Path<String>,
) -> Result<Json<QuotaDetailsBody>, ApiError> {
    authorise(&state, &ctx, "quota:get", &project_id)?;
    let quota = state.control.store().project_quota(&project_id).await?;
    Ok(Json(QuotaDetailsBody {
        quota: QuotaDetails {
            forwards: detail(quota.forwards),
            ports: detail(quota.ports),
        },
    }))
}

/// Set a project's quota (admin). Resources left out keep their limits; a
/// limit below the use is accepted, with a `warning`.
#[utoipa::path(
    put, path = "/v1/quotas/{project_id}", tag = "quotas",
    params(("project_id" = String, Path, description = "Project (tenant) id", max_length = 255)),
    request_body = QuotaUpdateBody,
    responses(
        (status = 200, description = "The limits now in force, and a warning when the project holds more than one of them", body = QuotaSetBody),
        (status = 400, description = "Unknown resource, or a limit that is not -1 or a whole number from 0 to 2147483647 (the message names the field)", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    )
)]
pub async fn update_quota(
    State(state): State<AppState>,
    ctx: Context,
    Path(project_id): Path<String>,
    ApiJson(body): ApiJson<QuotaUpdateBody>,
) -> Result<Json<QuotaSetBody>, ApiError> {
    let result = async {
        authorise(&state, &ctx, "quota:update", &project_id)?;
        body.quota.validate()?;
        Ok(state
            .control
            .store()
            .set_project_quota(&project_id, body.quota.forwards, body.quota.ports)
            .await?)
    }
    .await;
    audit(&ctx, "quota.update", &project_id, &outcome(&result));
    let quota = result?;
    let warning = over_warning(&quota);
    if let Some(warning) = &warning {
        tracing::info!(project = %project_id, "{warning}");
    }
    Ok(Json(QuotaSetBody {
        quota: limits(&quota),
        warning,
    }))
}

/// Return a project to the `[quotas]` defaults (admin).
#[utoipa::path(
    delete, path = "/v1/quotas/{project_id}", tag = "quotas",
    params(("project_id" = String, Path, description = "Project (tenant) id", max_length = 255)),
    responses(
        (status = 204, description = "The project has the defaults again (also when it had no quota of its own)"),
        (status = 400, description = "Invalid project id", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    )
)]
pub async fn delete_quota(
    State(state): State<AppState>,
    ctx: Context,
    Path(project_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let result = async {
        authorise(&state, &ctx, "quota:delete", &project_id)?;
        Ok(state
            .control
            .store()
            .delete_project_quota(&project_id)
            .await?)
    }
    .await;
    audit(&ctx, "quota.delete", &project_id, &outcome(&result));
    result?;
    Ok(StatusCode::NO_CONTENT)
}
