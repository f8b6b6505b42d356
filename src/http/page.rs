//! `GET /`: the live bus page. Plain HTML and JS inside the binary (no build step, nothing
//! loaded from anywhere else): recent events from `/v1/events`, the live stream from
//! `/v1/stream`, a topic filter, and each event's signers as the relay verified them.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("page.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Only this page's own inline code and this origin: event data is shown as
            // text, and the page can reach nothing else.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
}
