//! The page itself: HTML, CSS and JS embedded in the binary at build time, served as one
//! document (no CDN, no build step, nothing else to fetch with the token).

use cluster_transport::HttpResponse;
use std::sync::OnceLock;

const HTML: &str = include_str!("page/index.html");
const CSS: &str = include_str!("page/app.css");
const JS: &str = include_str!("page/app.js");
const LOGIN: &str = include_str!("page/login.html");

/// The page with its style and script inlined.
fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| HTML.replace("/*STYLE*/", CSS).replace("/*SCRIPT*/", JS))
}

/// Headers of both pages: no framing, no referrer (the first address may hold the token),
/// nothing loaded from elsewhere, nothing cached.
fn html(status: u16, body: &str) -> HttpResponse {
    HttpResponse::new(status, "text/html; charset=utf-8", body)
        .header("Cache-Control", "no-store")
        .header("Referrer-Policy", "no-referrer")
        .header("X-Frame-Options", "DENY")
        .header("X-Content-Type-Options", "nosniff")
        .header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        )
}

/// `GET /admin` with a valid token.
pub(super) fn page() -> HttpResponse {
    html(200, document())
}

/// `GET /admin` without one: 401 and a form to give it (`rejected`: a token was given
/// and is wrong).
pub(super) fn login(rejected: bool) -> HttpResponse {
    let note = if rejected {
        "That token is not valid."
    } else {
        "This page needs a token."
    };
    html(401, &LOGIN.replace("{{note}}", note)).header("WWW-Authenticate", "Bearer")
}
