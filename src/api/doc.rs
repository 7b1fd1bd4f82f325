//! The API's OpenAPI 3.1 document, generated from the routes the server
//! serves (each registered with its handler's `#[utoipa::path]`, see
//! `server::routes`) and the model's `ToSchema` types; served
//! at `GET /api/v1/openapi.json` and committed as `docs/openapi.json`
//! (a test fails when the two differ; `ferry openapi > docs/openapi.json`
//! rewrites it).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::model::view::{ErrorBody, TransferView};
use crate::model::ClusterSubmitted;

/// What `POST /api/v1/transfers` answers: the transfer this node holds, or,
/// for a submission naming `source`/`target`, where it went.
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // only describes the answer
pub enum Submitted {
    Here(Box<TransferView>),
    Anywhere(Box<ClusterSubmitted>),
}

/// The error every refusal answers with (documented once, used by each path).
pub type Error = ErrorBody;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ferry_<key id>_<secret>")
                    .description(Some("A token made with `ferry token create` (see the README: API tokens and HTTPS)"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferry node API",
        description = "A ferry node's REST API: submit and follow transfers, operate them, read the node, its partners and rules, manage tokens, stream events, scrape metrics. Every route but /healthz and /readyz needs a bearer token; errors are {\"error\": {\"code\", \"message\"}}."
    ),
    components(schemas(Submitted, crate::model::TransferEvent, crate::events::Gap)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The document: the description above with every route's path
/// (see `server::routes`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (open, guarded) = super::server::routes();
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(open).merge(guarded).into_openapi()
}

/// The document, as JSON text (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let generated = super::openapi_json();
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the document the code generates: run \
             `cargo run -- openapi > docs/openapi.json` and commit it"
        );
    }

    #[test]
    fn it_is_openapi_3_1_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&super::openapi_json()).expect("JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
        let paths = doc["paths"].as_object().expect("paths");
        for p in [
            "/api/v1/transfers",
            "/api/v1/transfers/{id}",
            "/api/v1/transfers/{id}/log",
            "/api/v1/transfers/{id}/stop",
            "/api/v1/transfers/{id}/files",
            "/api/v1/transfers/{id}/cancel",
            "/api/v1/transfers/{id}/restart",
            "/api/v1/node",
            "/api/v1/partners",
            "/api/v1/rules",
            "/api/v1/cluster/transfers/{id}",
            "/api/v1/tokens",
            "/api/v1/tokens/{name}",
            "/api/v1/events",
            "/api/v1/openapi.json",
            "/metrics",
            "/healthz",
            "/readyz",
        ] {
            assert!(paths.contains_key(p), "{p} is not described");
        }
        assert_eq!(paths.len(), 18, "a route is described twice or one is missing from the list above");
    }
}
