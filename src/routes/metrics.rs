//! `GET /metrics`: the Prometheus metrics, with the gauges that are read
//! at scrape time (writer queue depth, portals, disk use) refreshed first.

use std::sync::Arc;

use warp::http::{header, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::filters::with_app;
use crate::app::App;
use crate::metrics::{self, metrics};

/// `GET /metrics`
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_app(app))
        .then(scrape)
}

/// The metrics in Prometheus' text format.
async fn scrape(app: Arc<App>) -> Response {
    let m = metrics();
    m.queue_depth.set(app.journal.queue_depth() as i64);
    if let Some(offline) = &app.offline {
        offline.sample_metrics();
    }
    m.portals.set(app.journal.with_directory(|d| {
        d.portals()
            .iter()
            .filter(|p| !p.member_id.is_empty())
            .count()
    }) as i64);
    let dir = app.data_dir.clone();
    // Only a panicked walk fails here: report 0 rather than no metrics.
    let bytes = tokio::task::spawn_blocking(move || metrics::dir_bytes(&dir))
        .await
        .unwrap_or(0);
    m.disk_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    let mut res = Response::new(m.render().into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}
