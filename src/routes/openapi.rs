//! `GET /openapi.json`: the OpenAPI 3.0 description of the whole HTTP API.
//!
//! The document is the hand-written `openapi.json` at the repository root,
//! built into the binary, so the served description always matches the
//! binary that serves it. No auth: it describes routes, it holds no data.
//! `tests/openapi.rs` checks that every documented route exists and that
//! every route the server has is documented.

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The OpenAPI 3.0 document (JSON), as served by [`routes`].
pub const DOCUMENT: &str = include_str!("../../openapi.json");

/// `GET /openapi.json`: [`DOCUMENT`] with `Content-Type: application/json`.
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("openapi.json").and(warp::get()).map(document)
}

/// The response of [`routes`].
fn document() -> Response {
    let mut res = Response::new(DOCUMENT.into());
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_document_is_openapi_3_0_json() {
        let doc: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON");
        let version = doc["openapi"]
            .as_str()
            .expect("openapi.json has an `openapi` version string");
        assert!(version.starts_with("3.0"), "openapi version {version:?}");
        assert!(
            doc["paths"]
                .as_object()
                .is_some_and(|paths| paths.contains_key("/openapi.json")),
            "the document describes its own route"
        );
    }

    #[tokio::test]
    async fn route_serves_the_document_as_json() {
        use hyper::body::Body as _;
        use hyper::service::Service as _;

        let service = hyper_util::service::TowerToHyperService::new(warp::service(routes()));
        let get = warp::http::Request::get("/openapi.json")
            .body(String::new())
            .expect("request builds");
        let res = service.call(get).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            res.body().size_hint().exact(),
            Some(DOCUMENT.len() as u64),
            "the body is the whole document"
        );

        let post = warp::http::Request::post("/openapi.json")
            .body(String::new())
            .expect("request builds");
        let res = service.call(post).await.expect("infallible");
        assert_ne!(res.status(), StatusCode::OK, "only GET is served");
    }
}
