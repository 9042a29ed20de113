//! The OpenAPI document of the REST API, generated from the handlers'
//! `#[utoipa::path]` descriptions (the job routes in `sluice-web`'s
//! `handlers`, the coordinator's own in [`coordinator::routes`]) and the
//! protocol's body types. Nothing lists the routes by hand: the served
//! document (`GET /api/v1/openapi.json`), the checked-in copy
//! (`engine/cluster/openapi.json`, `sluice openapi` prints it) and the
//! tests that request every route all read [`ApiDoc`].
//!
//! [`coordinator::routes`]: crate::coordinator::routes

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use crate::coordinator::routes as coordinator;
use sluice_web::handlers as web;

/// The REST API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice coordinator REST API",
        description = "The REST API of a Sluice coordinator. A job embedded in one process \
                       (SLUICE_UI) serves the job routes (tag `jobs` without submit and \
                       rescale, `cluster`, `ui`) for its one job, `embedded`. Every failed \
                       request answers a non-2xx status with an ApiError body, except HEAD.",
    ),
    paths(
        web::jobs,
        coordinator::submit,
        web::job,
        web::cancel,
        web::savepoint,
        coordinator::rescale,
        coordinator::logs,
        web::checkpoints,
        web::results,
        web::job_metrics,
        web::job_history,
        coordinator::upload,
        coordinator::download,
        coordinator::exists,
        web::workers,
        web::workers_load,
        coordinator::register,
        coordinator::heartbeat,
        coordinator::coordinators,
        coordinator::add_coordinator,
        coordinator::remove_coordinator,
        web::cluster,
        web::metrics,
        coordinator::openapi,
        web::root,
        web::page,
        web::script,
        web::charts,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "jobs", description = "Submitting, watching and steering jobs."),
        (name = "cluster", description = "Workers, the cluster summary, metrics."),
        (name = "artifacts", description = "Job binaries by SHA-256."),
        (name = "workers", description = "What workers call: registration and heartbeats."),
        (name = "coordinators", description = "The coordinators' Raft group: its members, adding and removing them."),
        (name = "ui", description = "The web UI (no token needed)."),
        (name = "api", description = "This document."),
    ),
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the routes' `security` names.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The coordinator's operator token (--token-file, SLUICE_TOKEN), when it has \
                         one, or its read-only token (--read-token-file), which GET and HEAD \
                         routes accept and every other route answers 403.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON with a final newline: what the coordinator
/// serves and `engine/cluster/openapi.json` holds.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document is plain data and always serializes");
    text.push('\n');
    text
}

/// Every route the document describes, as (`METHOD`, path with its
/// parameters in braces), in the document's order.
pub fn routes() -> Vec<(String, String)> {
    let doc = ApiDoc::openapi();
    let mut routes = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("OPTIONS", &item.options),
            ("TRACE", &item.trace),
        ];
        for (method, op) in methods {
            if op.is_some() {
                routes.push((method.to_string(), path.clone()));
            }
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_web::ui::{CHARTS, PAGE, SCRIPT};

    /// The quoted strings of `text` that start with `/`.
    fn paths(text: &str) -> Vec<&str> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with('/'))
            .collect()
    }

    /// Every path the page and its script name is part of a route the
    /// document describes (and the coordinator serves, which
    /// `every_documented_route_is_served` checks), so renaming a route
    /// cannot leave the UI calling nothing.
    #[test]
    fn the_ui_names_only_served_routes() {
        let routes = routes();
        let script = paths(SCRIPT);
        for want in [
            "/api/v1",
            "/jobs/",
            "/results",
            "/checkpoints",
            "/cluster",
            "/history",
            "/workers/load",
        ] {
            assert!(script.contains(&want), "the script asks for {want}");
        }
        let page = paths(PAGE);
        assert_eq!(page, ["/ui/charts.js", "/ui/app.js"]);
        assert!(
            !CHARTS.contains("/api/") && !CHARTS.contains("fetch("),
            "the drawing asks for nothing"
        );
        for p in script.iter().chain(&page) {
            let want: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            let served = routes.iter().any(|(_, path)| {
                let segments: Vec<&str> = path.split('/').collect();
                segments.windows(want.len()).any(|w| w == want)
            });
            assert!(served, "{p} is in no route");
        }
        // And the check can fail: a path no route has is found out.
        let nowhere = ["api", "v1", "nothing"];
        assert!(!routes.iter().any(|(_, path)| {
            let segments: Vec<&str> = path.split('/').collect();
            segments.windows(3).any(|w| w == nowhere)
        }));
    }

    /// The document describes each route of the API once, with the
    /// protocol's body types as its schemas.
    #[test]
    fn the_document_describes_every_route_and_body() {
        let routes = routes();
        for want in [
            ("POST", "/api/v1/jobs"),
            ("GET", "/api/v1/jobs/{id}"),
            ("POST", "/api/v1/jobs/{id}/rescale"),
            ("PUT", "/api/v1/artifacts/{sha256}"),
            ("HEAD", "/api/v1/artifacts/{sha256}"),
            ("POST", "/api/v1/workers/{id}/heartbeat"),
            ("GET", "/metrics"),
            ("GET", "/api/v1/openapi.json"),
            ("GET", "/ui/app.js"),
        ] {
            assert!(
                routes.iter().any(|(m, p)| (m.as_str(), p.as_str()) == want),
                "{want:?} is not described"
            );
        }
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for body in [
            "SubmitJob",
            "JobDescription",
            "RescaleRequest",
            "JobStatus",
            "Checkpoints",
            "HeartbeatReply",
            "ExecutorSpec",
            "ApiError",
        ] {
            assert!(schemas[body].is_object(), "no schema {body}");
        }
        // The version-checked bodies are described though read as bytes.
        assert_eq!(
            doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/SubmitJob"
        );
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    /// The routes the routers' `.route(PATH, METHOD(handler)...)` calls
    /// register, read from their sources.
    fn routed() -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        for file in ["../web/src/routes.rs", "src/coordinator/routes.rs"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            for call in text.split(".route(").skip(1) {
                let literal = call.trim_start().strip_prefix('"');
                let (path, rest) = literal
                    .and_then(|l| l.split_once('"'))
                    .expect("a route's path is a literal");
                let call = rest.split(';').next().unwrap();
                for method in ["get", "post", "put", "head", "delete", "patch"] {
                    let named = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                        !call[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                    });
                    if named {
                        found.push((method.to_uppercase(), path.to_string()));
                    }
                }
            }
        }
        found
    }

    /// The other direction: every route a router registers is in the
    /// document, so a route added without its description fails here.
    #[test]
    fn every_routed_path_is_documented() {
        let routed = routed();
        assert!(routed.len() >= 20, "{routed:?}");
        let documented = routes();
        for r in &routed {
            assert!(
                documented.contains(r),
                "{r:?} is routed but not in the document"
            );
        }
        assert_eq!(routed.len(), documented.len(), "{routed:?}");
    }

    /// `engine/cluster/openapi.json` is the generated document. To
    /// regenerate it: `cargo run -p sluice-cluster --bin sluice -- openapi
    /// > engine/cluster/openapi.json`.
    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == document(),
            "{} differs from the document the handlers generate; regenerate it with \
             `cargo run -p sluice-cluster --bin sluice -- openapi > engine/cluster/openapi.json`",
            path.display()
        );
    }
}
