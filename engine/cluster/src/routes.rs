//! Every route of the REST API, as `METHOD path` (path parameters in
//! braces): the coordinator serves each, the client calls them, and the
//! OpenAPI document describes them.

/// Every route of the API, as `METHOD path` (path parameters in braces).
pub const ROUTES: &[&str] = &[
    "GET /api/v1/jobs",
    "POST /api/v1/jobs",
    "GET /api/v1/jobs/{id}",
    "POST /api/v1/jobs/{id}/cancel",
    "POST /api/v1/jobs/{id}/savepoint",
    "POST /api/v1/jobs/{id}/rescale",
    "GET /api/v1/jobs/{id}/checkpoints",
    "GET /api/v1/jobs/{id}/results",
    "PUT /api/v1/artifacts/{sha256}",
    "GET /api/v1/artifacts/{sha256}",
    "HEAD /api/v1/artifacts/{sha256}",
    "GET /api/v1/workers",
    "POST /api/v1/workers",
    "POST /api/v1/workers/{id}/heartbeat",
    "GET /api/v1/cluster",
    "GET /metrics",
    "GET /",
    "GET /ui",
    "GET /ui/app.js",
];

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_web::ui::{PAGE, SCRIPT};

    /// The quoted strings of `text` that start with `/`.
    fn paths(text: &str) -> Vec<&str> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with('/'))
            .collect()
    }

    /// Every path the page and its script name is part of a route the
    /// coordinator serves, so renaming a route cannot leave the UI
    /// calling nothing.
    #[test]
    fn the_ui_names_only_served_routes() {
        let script = paths(SCRIPT);
        for want in ["/api/v1", "/jobs/", "/results", "/checkpoints", "/cluster"] {
            assert!(script.contains(&want), "the script asks for {want}");
        }
        let page = paths(PAGE);
        assert_eq!(page, ["/ui/app.js"]);
        for p in script.iter().chain(&page) {
            let want: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            let served = ROUTES.iter().any(|r| {
                let segments: Vec<&str> = r.split(['/', ' ']).collect();
                segments.windows(want.len()).any(|w| w == want)
            });
            assert!(served, "{p} is in no route");
        }
    }
}
