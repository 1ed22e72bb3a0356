//! The HTTP application: routes, middleware and the OpenAPI document, built
//! from one router so the document cannot drift from what is served.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::context;
use crate::control::Control;
use crate::error::ApiError;
use crate::handlers;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub control: Arc<Control>,
    pub config: Arc<Config>,
    /// Authentication (`auth_strategy`) and policy.
    pub auth: Arc<crate::auth::Auth>,
    /// Base URL for links in responses, e.g. `http://127.0.0.1:9797`.
    pub public_url: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Navigator",
        description = "Port forwarding for OpenStack clouds: map external_address:external_port on a proxy node to an instance's internal_ip_address:internal_port.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    // Referenced by query parameters, which do not bring their schemas along.
    components(schemas(
        navigator_api::v1::SortKey,
        navigator_api::v1::SortDir,
        navigator_api::v1::ProtocolName,
        navigator_api::v1::StatusName
    )),
    tags(
        (name = "forwards", description = "Port forwards of the caller's project"),
        (name = "proxies", description = "Forwarding nodes (admin)"),
        (name = "quotas", description = "Limits on a project's forwards and ports"),
        (name = "meta", description = "Versions, health and metrics")
    )
)]
struct ApiDoc;

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::versions))
        .routes(routes!(handlers::version_v1))
        .routes(routes!(handlers::healthcheck))
        .routes(routes!(handlers::metrics))
        .routes(routes!(handlers::create_forward, handlers::list_forwards))
        .routes(routes!(
            handlers::show_forward,
            handlers::update_forward,
            handlers::delete_forward
        ))
        .routes(routes!(handlers::list_proxies))
        .routes(routes!(handlers::show_proxy))
        .routes(routes!(
            crate::quotas::get_quota,
            crate::quotas::update_quota,
            crate::quotas::delete_quota
        ))
        .routes(routes!(crate::quotas::get_quota_details))
}

/// The OpenAPI document of API v1 (served at `/openapi.json`, committed as
/// `docs/openapi.json`).
pub fn openapi() -> OpenApiDoc {
    let mut doc = routes().split_for_parts().1;
    crate::openapi_auth::document(&mut doc);
    crate::ratelimit::document(&mut doc);
    crate::host_check::document(&mut doc);
    doc
}

/// The full application for `state`: the REST API, with the built-in
/// dashboard (`/dashboard`, HTML, not in the OpenAPI document) in front,
/// behind the per-client rate limit (`[api] rate_limit`).
pub fn router(state: AppState) -> Router {
    // The Host check is outermost, around the dashboard too; the dashboard's
    // in-process calls to the API router pass through neither layer (they
    // carry no Host and no peer address).
    // Where the check is on, the name of [DEFAULT] public_endpoint is one
    // clients use by definition.
    let mut allowed_hosts = state.config.allowed_hosts.clone();
    if (state.config.auth_strategy == crate::config::AuthStrategy::NoAuth
        || !allowed_hosts.is_empty())
        && let Some(host) = state.config.public_endpoint_host()
    {
        allowed_hosts.push(host);
    }
    let host_check = Arc::new(crate::host_check::HostCheck::new(
        state.config.auth_strategy,
        &allowed_hosts,
    ));
    let app = crate::dashboard::mount(api_router(state.clone()), &state);
    let app = match crate::ratelimit::RateLimit::new(
        state.config.rate_limit,
        state.config.rate_limit_burst,
    ) {
        Some(limit) => app.layer(axum::middleware::from_fn_with_state(
            limit,
            crate::ratelimit::limit,
        )),
        None => app,
    };
    app.layer(axum::middleware::from_fn_with_state(
        host_check,
        crate::host_check::check,
    ))
}

/// The REST API alone (the dashboard calls it in process).
fn api_router(state: AppState) -> Router {
    let (router, mut doc) = routes().split_for_parts();
    crate::openapi_auth::document(&mut doc);
    crate::ratelimit::document(&mut doc);
    crate::host_check::document(&mut doc);
    let doc = Arc::new(doc);
    let body_limit = state.config.max_request_body_size;
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .route("/v1/", axum::routing::get(handlers::version_v1))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(axum::middleware::from_fn(context::request_id))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no resource at {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> impl IntoResponse {
    let e = ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()));
    debug_assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
    e
}
