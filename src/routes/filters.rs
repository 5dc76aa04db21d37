//! The small pieces the route areas share: the application state and the
//! raw query string as filters, and reading a body under a hard limit.
//! (The bearer-token filter has its own file, `auth.rs`.)

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::Filter;

use crate::app::App;
use crate::http::ApiError;

/// Hands every request the shared state.
pub fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// The raw query string, empty when there is none.
pub fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Reads the body, refusing it as soon as it passes `limit` bytes, whether
/// or not a Content-Length was sent.
pub async fn read_limited<S, B>(body: S, limit: usize) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if out.len() + chunk.remaining() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            out.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}
