//! The web UI the coordinator serves at `/ui`: one page and its script,
//! compiled into the binary (no build step, nothing fetched from
//! elsewhere). The script polls the REST API (`/api/v1/...`) once a
//! second and shows the cluster, the workers, and per job its state,
//! graph (vertices shaded by busy time, with backpressure and rates),
//! charts of its recent figures (the server's bounded history), plan with
//! records per operator, load, placement, checkpoints, and the newest rows
//! its sinks received with a chart of them; each worker's CPU. Every value from the API is set as text, never
//! as markup, so job output cannot inject script into the page.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page.
pub const PAGE: &str = include_str!("ui/index.html");

/// Its script.
pub const SCRIPT: &str = include_str!("ui/app.js");

/// The script's drawing: the job graph and the charts, in SVG.
pub const CHARTS: &str = include_str!("ui/charts.js");

/// Scripts only from the coordinator itself, requests only to it.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

fn respond(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`.
pub fn page() -> Response {
    respond("text/html; charset=utf-8", PAGE)
}

/// `GET /ui/app.js`.
pub fn script() -> Response {
    respond("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /ui/charts.js`.
pub fn charts() -> Response {
    respond("text/javascript; charset=utf-8", CHARTS)
}
