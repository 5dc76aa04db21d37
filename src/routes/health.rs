//! `GET /healthz`: whether the journal can take writes now, for load
//! balancers and supervisors.

use std::sync::Arc;
use std::time::Duration;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::filters::with_app;
use crate::app::App;
use crate::http::json_response;

/// Longest a health probe waits for the writer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /healthz`
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .and(with_app(app))
        .then(health)
}

/// 200 when a probe write through the writer succeeds within
/// [`PROBE_TIMEOUT`], else 503. In cluster mode also 503 while the node is
/// more than `max_lag` messages behind the stream (a restarted or new node
/// replaying it), so that a load balancer sends reads elsewhere.
async fn health(app: Arc<App>) -> Response {
    if let Some(cluster) = &app.cluster {
        if !cluster.caught_up() {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "status": "behind",
                    "error": "this node is catching up with the cluster's stream",
                    "lag": cluster.lag(),
                }),
            );
        }
    }
    match tokio::time::timeout(PROBE_TIMEOUT, app.journal.probe()).await {
        Ok(Ok(())) => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "health probe failed");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "unavailable", "error": "journal is not writable"}),
            )
        }
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unavailable", "error": "journal did not answer within 5 s"}),
        ),
    }
}
