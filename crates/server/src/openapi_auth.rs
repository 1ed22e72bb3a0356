//! Authentication in the OpenAPI document: the `X-Auth-Token` security
//! scheme and the 401/403/503 answers of every route behind it.
//!
//! Added to the generated document in one place rather than in each
//! handler's annotation, so that a new route under `/v1/` cannot forget
//! them. What needs a token is decided by the path, the way the server
//! decides it: everything under `/v1/`, while `/`, `/v1` and `/healthcheck`
//! answer anyone.

use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Components, Content, ObjectBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Type,
};

/// Name of the security scheme in `components.securitySchemes`.
pub const SCHEME: &str = "keystone_token";

/// Whether requests to `path` are authenticated.
pub fn needs_token(path: &str) -> bool {
    path.starts_with("/v1/")
}

/// One error answer the authentication step can give, shared as a
/// `components.responses` entry.
struct AuthAnswer {
    status: &'static str,
    component: &'static str,
    description: &'static str,
    /// Appended to a route's own description of the same status.
    also: &'static str,
}

const ANSWERS: [AuthAnswer; 3] = [
    AuthAnswer {
        status: "401",
        component: "Unauthorized",
        description: "No X-Auth-Token, or one Keystone does not vouch for (invalid, expired or revoked). \
                      WWW-Authenticate names the Keystone to get a token from.",
        also: "",
    },
    AuthAnswer {
        status: "403",
        component: "Forbidden",
        description: "The policy does not allow this action to the token's roles, or the token is not \
                      scoped to a project.",
        also: "; or the policy does not allow this action to the token's roles, or the token is not scoped to a project",
    },
    AuthAnswer {
        status: "503",
        component: "Unavailable",
        description: "Keystone cannot be reached to validate the token; nothing was changed, retry later.",
        also: "; or Keystone cannot be reached to validate the token (nothing was changed)",
    },
];

/// Adds the security scheme, the shared responses, and on every operation
/// that needs a token its security requirement and the 401/403/503 answers.
pub fn document(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        SCHEME,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-Auth-Token",
            "A Keystone token (`openstack token issue`, `navigator token issue`), required with \
             `auth_strategy = keystone`; the forward's project is the token's project. With \
             `auth_strategy = noauth` it is ignored and `X-Project-Id` names the project.",
        ))),
    );
    let error_body = || Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))));
    for answer in &ANSWERS {
        let mut response = ResponseBuilder::new()
            .description(answer.description)
            .content("application/json", error_body());
        if answer.status == "401" {
            let mut header = Header::new(ObjectBuilder::new().schema_type(Type::String));
            header.description = Some("`Keystone uri=\"<identity URL>\"`".to_owned());
            response = response.header("WWW-Authenticate", header);
        }
        components
            .responses
            .insert(answer.component.to_owned(), RefOr::T(response.build()));
    }
    let requirement = SecurityRequirement::new(SCHEME, Vec::<String>::new());
    for (path, item) in doc.paths.paths.iter_mut() {
        if !needs_token(path) {
            continue;
        }
        for operation in operations_mut(item) {
            add_to_operation(operation, &requirement);
        }
    }
}

/// Every operation of a path item, for the layers that add an answer to
/// all of them (authentication here, the rate limit, the Host check).
pub fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// Adds the error answer `status` (component `component`, an `ErrorBody`
/// with `description` and `headers`) to every operation that does not
/// document that status itself.
pub fn add_error_everywhere(
    doc: &mut OpenApi,
    status: &str,
    component: &str,
    description: &str,
    headers: Vec<(&str, Header)>,
) {
    let components = doc.components.get_or_insert_with(Components::new);
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody")))),
    );
    for (name, header) in headers {
        response = response.header(name, header);
    }
    components
        .responses
        .insert(component.to_owned(), RefOr::T(response.build()));
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            operation
                .responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(component)));
        }
    }
}

fn add_to_operation(operation: &mut Operation, requirement: &SecurityRequirement) {
    operation.security = Some(vec![requirement.clone()]);
    for answer in &ANSWERS {
        match operation.responses.responses.get_mut(answer.status) {
            // The route documents this status for its own reasons: say it
            // may also come from authentication.
            Some(RefOr::T(Response { description, .. })) => {
                if !answer.also.is_empty() && !description.ends_with(answer.also) {
                    description.push_str(answer.also);
                }
            }
            Some(RefOr::Ref(_)) => {}
            None => {
                operation.responses.responses.insert(
                    answer.status.to_owned(),
                    RefOr::Ref(Ref::from_response_name(answer.component)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_authenticated_operation_documents_the_token_and_its_failures() {
        let doc = crate::app::openapi();
        let json = serde_json::to_value(&doc).unwrap();
        let scheme = &json["components"]["securitySchemes"][SCHEME];
        assert_eq!(scheme["type"], "apiKey");
        assert_eq!(scheme["in"], "header");
        assert_eq!(scheme["name"], "X-Auth-Token");
        let unauthorized = &json["components"]["responses"]["Unauthorized"];
        assert!(unauthorized["headers"]["WWW-Authenticate"].is_object());
        let mut checked = 0;
        for (path, item) in json["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                if needs_token(path) {
                    checked += 1;
                    assert_eq!(
                        operation["security"],
                        serde_json::json!([{SCHEME: []}]),
                        "{method} {path}"
                    );
                    for status in ["401", "403", "503"] {
                        assert!(
                            responses.contains_key(status),
                            "{method} {path}: no {status}"
                        );
                    }
                } else {
                    assert!(operation.get("security").is_none(), "{method} {path}");
                    assert!(!responses.contains_key("401"), "{method} {path}");
                }
            }
        }
        // forwards: create, list, show, update, delete; proxies: list, show;
        // quotas: show, update, delete, details.
        assert_eq!(checked, 11);
    }

    #[test]
    fn documenting_twice_changes_nothing() {
        let mut doc = crate::app::openapi();
        let once = serde_json::to_string(&doc).unwrap();
        document(&mut doc);
        assert_eq!(serde_json::to_string(&doc).unwrap(), once);
    }
}
