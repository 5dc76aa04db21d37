//! The small filters the route areas share: the application state and the
//! raw query string. (The bearer-token filter has its own file, `auth.rs`.)

use std::convert::Infallible;
use std::sync::Arc;

use warp::Filter;

use crate::app::App;

/// Hands every request the shared state.
pub fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// The raw query string, empty when there is none.
pub fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}
