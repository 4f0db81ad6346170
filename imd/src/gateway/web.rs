//! What imd serves to browsers: the JavaScript SDK at a stable path. The files live in
//! `imd/web/` and are compiled into the binary, so a running imd always serves the SDK
//! of its own protocol version.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The SDK, `imd/web/imd-client.js`.
const SDK: &str = include_str!("../../web/imd-client.js");

/// `GET /sdk/imd-client.js`.
pub(super) async fn sdk() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // Revalidated on every load: a new imd may serve a new SDK at the same path.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SDK,
    )
        .into_response()
}
