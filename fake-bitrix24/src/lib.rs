//! A fake Bitrix24 portal and OAuth server on loopback, faithful to the
//! documented behaviour b24-journal's offline-event puller relies on (the
//! facts are in b24-journal's `docs/bitrix24-protocol.md`):
//!
//! - `POST /oauth/token/` (`grant_type=refresh_token`): answers a new access
//!   token **and a new refresh token**; the old refresh token stops working
//!   (`invalid_grant`), as does every token after [`FakeBitrix24::revoke`].
//!   Its `domain` is the OAuth server's, as on the real one.
//! - `POST /rest/event.offline.get.json`: `limit` (default 50), `clear`
//!   (default 1), `process_id`; `clear=0` reserves the batch under a new
//!   32-character process id, hidden from later calls and refetchable by
//!   that id; without the "extended offline events" plan feature
//!   ([`FakeConfig::extended`]) `clear=0` is HTTP 403 `WRONG_LICENSE`.
//! - `POST /rest/event.offline.clear.json`: `process_id` and `message_id[]`
//!   (or `id[]`) delete reserved records; answers `true`.
//! - `POST /rest/event.offline.list.json`: read-only, 50 a page, with each
//!   record's `PROCESS_ID` (empty when not reserved).
//! - The queue merges: one unreserved record per (event name, data); a new
//!   change refreshes its `TIMESTAMP_X`. `MESSAGE_ID` is a 32-character hash
//!   of name and data (the portal uses md5; here the first half of SHA-256,
//!   only its shape and determinism matter).
//! - Errors as `{"error", "error_description"}`: `expired_token` (401) after
//!   [`FakeBitrix24::expire_access_tokens`], `invalid_token` (401),
//!   injected 5xx answers ([`FakeBitrix24::fail_next`]) and slow answers
//!   ([`FakeBitrix24::delay_next`]).
//!
//! Bodies are JSON (what b24-journal sends); the portal also takes forms.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use warp::http::StatusCode;
use warp::Filter;

/// How the fake portal is set up.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The application's `client_id`.
    pub client_id: String,
    /// The application's `client_secret`.
    pub client_secret: String,
    /// The portal's `member_id`.
    pub member_id: String,
    /// Whether the plan has "extended offline events" (`clear=0`).
    pub extended: bool,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            client_id: "local.fake0000000000.00000000".into(),
            client_secret: "fakeclientsecret0123456789abcdefghijklmnopqrstuv".into(),
            member_id: "fa4e0000000000000000000000000b24".into(),
            extended: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// One queued offline record.
#[derive(Debug, Clone)]
struct Record {
    id: u64,
    /// Unix seconds of the last change it stands for.
    ts: i64,
    name: String,
    data: Value,
    user_id: u64,
    message_id: String,
    /// The reservation it belongs to (`clear=0`), if any.
    process_id: Option<String>,
}

/// Counters a test can check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    /// `event.offline.get` calls answered 200.
    pub gets: u64,
    /// `event.offline.clear` calls answered 200.
    pub clears: u64,
    /// Refreshes answered with new tokens.
    pub refreshes: u64,
    /// Calls refused with `expired_token`.
    pub expired: u64,
    /// Calls answered with an injected failure.
    pub failed: u64,
    /// Refreshes refused with `invalid_grant`.
    pub invalid_grants: u64,
}

#[derive(Debug, Default)]
struct State {
    extended: bool,
    next_id: u64,
    queue: Vec<Record>,
    /// The refresh token that works now (rotated on every refresh).
    refresh_token: Option<String>,
    /// Access tokens that work now.
    access_tokens: HashSet<String>,
    /// Access tokens past their life: `expired_token`.
    expired_tokens: HashSet<String>,
    /// Every token ever issued, for tests that grep for leaks.
    issued: Vec<String>,
    /// The application was removed or its grant revoked.
    revoked: bool,
    /// Answers to fail with this status, next first.
    failures: Vec<u16>,
    /// Answers to delay, next first.
    delays: Vec<Duration>,
    calls: Calls,
    /// Unix seconds the clock is moved by.
    clock_offset: i64,
    /// `event.offline.clear` answers wait until this is false.
    stall_clears: bool,
}

/// A running fake portal. Dropping it stops the server.
pub struct FakeBitrix24 {
    addr: SocketAddr,
    config: FakeConfig,
    state: Arc<Mutex<State>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn now_secs(state: &State) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    now + state.clock_offset
}

/// `TIMESTAMP_X` as the portal writes it: RFC 3339 with the portal's
/// offset (+03:00 here, so that readers must honour the offset).
pub fn timestamp_x(secs: i64) -> String {
    let offset = time::UtcOffset::from_hms(3, 0, 0).expect("a valid offset");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .expect("a representable time")
        .to_offset(offset)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats")
}

/// The record key of the merge: hash of `NAME|json(data)`.
pub fn message_id(name: &str, data: &Value) -> String {
    let digest = Sha256::digest(format!("{name}|{data}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl FakeBitrix24 {
    /// Starts the fake on `config.listen`.
    pub async fn start(config: FakeConfig) -> FakeBitrix24 {
        let state = Arc::new(Mutex::new(State {
            extended: config.extended,
            next_id: 1,
            ..State::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("the fake portal binds its loopback address");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let server = warp::serve(routes(config.clone(), state.clone()))
            .incoming(listener)
            .graceful(async move {
                let _ = stopped.await;
            })
            .run();
        tokio::spawn(server);
        FakeBitrix24 {
            addr,
            config,
            state,
            _stop: stop,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The portal's domain as events carry it (`host:port` on loopback).
    pub fn domain(&self) -> String {
        self.addr.to_string()
    }

    /// The portal's REST endpoint (`client_endpoint`).
    pub fn client_endpoint(&self) -> String {
        format!("http://{}/rest/", self.addr)
    }

    /// The OAuth server's base URL (b24-journal's `oauth_server`).
    pub fn oauth_server(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &FakeConfig {
        &self.config
    }

    /// Installs the application: issues a fresh access and refresh token
    /// and returns the ONAPPINSTALL body (a PHP form) the portal posts to
    /// the application's handler, signed with `application_token`.
    pub fn install_form(&self, application_token: &str) -> String {
        let (access, refresh) = {
            let mut s = self.lock();
            let access = token();
            let refresh = token();
            s.revoked = false;
            s.access_tokens.insert(access.clone());
            s.refresh_token = Some(refresh.clone());
            s.issued.push(access.clone());
            s.issued.push(refresh.clone());
            (access, refresh)
        };
        let ts = now_secs(&self.lock());
        self.form(
            "ONAPPINSTALL",
            &[
                ("data[VERSION]", "1"),
                ("data[ACTIVE]", "Y"),
                ("data[INSTALLED]", "Y"),
                ("data[LANGUAGE_ID]", "en"),
            ],
            ts,
            &[("access_token", &access), ("refresh_token", &refresh)],
            application_token,
        )
    }

    /// The ONOFFLINEEVENT body the portal posts when its queue fills.
    pub fn offline_signal_form(&self, application_token: &str) -> String {
        let ts = now_secs(&self.lock());
        self.form(
            "ONOFFLINEEVENT",
            &[("data[timestamp]", &ts.to_string())],
            ts,
            &[],
            application_token,
        )
    }

    /// A pushed (online) event for `entity_id` with `ts`, as the portal
    /// posts it to a handler bound online.
    pub fn push_form(&self, event: &str, entity_id: &str, ts: i64, app_token: &str) -> String {
        self.form(
            event,
            &[("data[FIELDS][ID]", entity_id)],
            ts,
            &[],
            app_token,
        )
    }

    fn form(
        &self,
        event: &str,
        data: &[(&str, &str)],
        ts: i64,
        tokens: &[(&str, &str)],
        application_token: &str,
    ) -> String {
        let mut f = form_urlencoded::Serializer::new(String::new());
        f.append_pair("event", event);
        for (k, v) in data {
            f.append_pair(k, v);
        }
        f.append_pair("ts", &ts.to_string());
        for (k, v) in tokens {
            f.append_pair(&format!("auth[{k}]"), v);
        }
        f.append_pair("auth[expires_in]", "3600");
        f.append_pair("auth[scope]", "crm");
        f.append_pair("auth[domain]", &self.domain());
        f.append_pair(
            "auth[server_endpoint]",
            &format!("{}/rest/", self.oauth_server()),
        );
        f.append_pair("auth[status]", "L");
        f.append_pair("auth[client_endpoint]", &self.client_endpoint());
        f.append_pair("auth[member_id]", &self.config.member_id);
        f.append_pair("auth[user_id]", "1");
        f.append_pair("auth[application_token]", application_token);
        f.finish()
    }

    /// A change of `entity_id` that Bitrix24 queues as an offline event
    /// `event` (e.g. `ONCRMDEALUPDATE`); merged into an unreserved record
    /// for the same object. Returns the record's `MESSAGE_ID`.
    pub fn change(&self, event: &str, entity_id: &str) -> String {
        self.change_at(event, entity_id, None)
    }

    /// [`change`](Self::change) at Unix second `ts` (now when `None`).
    pub fn change_at(&self, event: &str, entity_id: &str, ts: Option<i64>) -> String {
        let mut s = self.lock();
        let ts = ts.unwrap_or_else(|| now_secs(&s));
        let data = json!({ "FIELDS": { "ID": entity_id } });
        let message_id = message_id(event, &data);
        if let Some(r) = s
            .queue
            .iter_mut()
            .find(|r| r.process_id.is_none() && r.message_id == message_id)
        {
            r.ts = ts;
            return message_id;
        }
        let id = s.next_id;
        s.next_id += 1;
        s.queue.push(Record {
            id,
            ts,
            name: event.to_owned(),
            data,
            user_id: 1,
            message_id: message_id.clone(),
            process_id: None,
        });
        message_id
    }

    /// Records in the queue, reserved or not.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Records reserved under a process id and not cleared.
    pub fn reserved(&self) -> usize {
        self.lock()
            .queue
            .iter()
            .filter(|r| r.process_id.is_some())
            .count()
    }

    /// The calls answered so far.
    pub fn calls(&self) -> Calls {
        self.lock().calls
    }

    /// Sets whether the plan has "extended offline events".
    pub fn set_extended(&self, extended: bool) {
        self.lock().extended = extended;
    }

    /// Ends the life of every access token issued so far: the next call
    /// with one is answered `expired_token`.
    pub fn expire_access_tokens(&self) {
        let mut s = self.lock();
        let live: Vec<String> = s.access_tokens.drain().collect();
        s.expired_tokens.extend(live);
    }

    /// Revokes the application's grant (uninstalled, or re-authorised
    /// elsewhere): refreshes are `invalid_grant`, tokens `invalid_token`.
    pub fn revoke(&self) {
        let mut s = self.lock();
        s.revoked = true;
        s.refresh_token = None;
        s.access_tokens.clear();
    }

    /// The next `n` REST and OAuth answers are HTTP `status` errors.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut s = self.lock();
        s.failures.extend(std::iter::repeat_n(status, n));
    }

    /// The next `n` answers come after `delay`.
    pub fn delay_next(&self, n: usize, delay: Duration) {
        let mut s = self.lock();
        s.delays.extend(std::iter::repeat_n(delay, n));
    }

    /// While on, `event.offline.clear` calls hang (the caller's time limit
    /// ends them): a window between fetch and clear for crash tests.
    pub fn stall_clears(&self, on: bool) {
        self.lock().stall_clears = on;
    }

    /// Reserves up to `n` queued records under a new process id, as a
    /// `clear=0` fetch whose answer never reached the application would;
    /// returns the id.
    pub fn reserve(&self, n: usize) -> String {
        let mut s = self.lock();
        let p = token();
        for r in s
            .queue
            .iter_mut()
            .filter(|r| r.process_id.is_none())
            .take(n)
        {
            r.process_id = Some(p.clone());
        }
        p
    }

    /// Every token the fake has issued and its client secret: none may
    /// appear in b24-journal's data directory, logs or answers.
    pub fn secrets(&self) -> Vec<String> {
        let mut all = self.lock().issued.clone();
        all.push(self.config.client_secret.clone());
        all
    }
}

/// An error answer in Bitrix24's shape.
fn error(status: StatusCode, code: &str, description: &str) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::with_status(
        warp::reply::json(&json!({ "error": code, "error_description": description })),
        status,
    )
    .into_response()
}

fn ok(body: Value) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::json(&body).into_response()
}

/// Parses a JSON or form body into a JSON object (forms: flat keys, `x[]`
/// collected into arrays).
fn parse_body(body: &[u8]) -> serde_json::Map<String, Value> {
    if let Ok(Value::Object(map)) = serde_json::from_slice(body) {
        return map;
    }
    let mut map = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        if let Some(name) = k.strip_suffix("[]") {
            let entry = map
                .entry(name.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = entry {
                items.push(Value::String(v.into_owned()));
            }
        } else {
            map.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    map
}

fn int_param(map: &serde_json::Map<String, Value>, key: &str, default: i64) -> i64 {
    match map.get(key) {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(Value::String(s)) => s.parse().unwrap_or(default),
        Some(Value::Bool(b)) => i64::from(*b),
        _ => default,
    }
}

fn str_list(map: &serde_json::Map<String, Value>, key: &str) -> Vec<String> {
    match map.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What every route needs.
type Ctx = (Arc<FakeConfig>, Arc<Mutex<State>>);

fn routes(
    config: FakeConfig,
    state: Arc<Mutex<State>>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let config = Arc::new(config);
    let with = move || {
        let (c, s) = (config.clone(), state.clone());
        warp::any().map(move || (c.clone(), s.clone()))
    };
    let oauth = warp::path!("oauth" / "token")
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::body::bytes())
        .and(with())
        .then(
            |query: HashMap<String, String>, body: bytes::Bytes, ctx: Ctx| async move {
                let (c, s) = ctx;
                let mut params = query;
                for (k, v) in form_urlencoded::parse(&body) {
                    params.insert(k.into_owned(), v.into_owned());
                }
                answer(&s, |st| refresh(&c, st, &params)).await
            },
        );
    let rest = warp::path!("rest" / String)
        .and(warp::post())
        .and(warp::body::content_length_limit(1 << 20))
        .and(warp::body::bytes())
        .and(with())
        .then(|method: String, body: bytes::Bytes, ctx: Ctx| async move {
            let (c, s) = ctx;
            let method = method.strip_suffix(".json").unwrap_or(&method).to_owned();
            let params = parse_body(&body);
            if method == "event.offline.clear" {
                while s.lock().map(|st| st.stall_clears).unwrap_or(false) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            answer(&s, |st| call(&c, st, &method, &params)).await
        });
    oauth.or(rest).unify()
}

/// Applies the injected delay and failure, then `f`.
async fn answer(
    state: &Arc<Mutex<State>>,
    f: impl FnOnce(&mut State) -> warp::reply::Response,
) -> warp::reply::Response {
    let delay = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        (!s.delays.is_empty()).then(|| s.delays.remove(0))
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if !s.failures.is_empty() {
        let status = s.failures.remove(0);
        s.calls.failed += 1;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "INTERNAL_SERVER_ERROR", "injected failure");
    }
    f(&mut s)
}

fn refresh(
    c: &FakeConfig,
    s: &mut State,
    params: &HashMap<String, String>,
) -> warp::reply::Response {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if get("grant_type") != "refresh_token" {
        return error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "");
    }
    if get("client_id") != c.client_id || get("client_secret") != c.client_secret {
        return error(StatusCode::UNAUTHORIZED, "invalid_client", "invalid client");
    }
    if s.revoked || s.refresh_token.as_deref() != Some(get("refresh_token")) {
        s.calls.invalid_grants += 1;
        return error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid grant");
    }
    let access = token();
    let refresh = token();
    s.refresh_token = Some(refresh.clone());
    s.access_tokens.insert(access.clone());
    s.issued.push(access.clone());
    s.issued.push(refresh.clone());
    s.calls.refreshes += 1;
    let now = now_secs(s);
    ok(json!({
        "access_token": access,
        "expires": now + 3600,
        "expires_in": 3600,
        "scope": "app",
        "domain": "oauth.bitrix.info",
        "server_endpoint": "https://oauth.bitrix.info/rest/",
        "status": "L",
        "client_endpoint": "(see the portal)",
        "member_id": c.member_id,
        "user_id": 1,
        "refresh_token": refresh,
    }))
}

fn record_json(r: &Record, with_process: bool) -> Value {
    let mut v = json!({
        "ID": r.id.to_string(),
        "TIMESTAMP_X": timestamp_x(r.ts),
        "EVENT_NAME": r.name,
        "EVENT_DATA": r.data,
        "EVENT_ADDITIONAL": { "user_id": r.user_id.to_string() },
        "MESSAGE_ID": r.message_id,
    });
    if with_process {
        v["PROCESS_ID"] = json!(r.process_id.clone().unwrap_or_default());
        v["ERROR"] = json!("0");
    }
    v
}

fn call(
    _c: &FakeConfig,
    s: &mut State,
    method: &str,
    params: &serde_json::Map<String, Value>,
) -> warp::reply::Response {
    let auth = match params.get("auth") {
        Some(Value::String(a)) => a.clone(),
        _ => {
            return error(
                StatusCode::UNAUTHORIZED,
                "NO_AUTH_FOUND",
                "Wrong authorization data",
            )
        }
    };
    if s.expired_tokens.contains(&auth) {
        s.calls.expired += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "expired_token",
            "The access token provided has expired.",
        );
    }
    if s.revoked || !s.access_tokens.contains(&auth) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token provided is invalid.",
        );
    }
    match method {
        "event.offline.get" => offline_get(s, params),
        "event.offline.clear" => offline_clear(s, params),
        "event.offline.list" => {
            let start = int_param(params, "start", 0).max(0) as usize;
            let page: Vec<Value> = s
                .queue
                .iter()
                .skip(start)
                .take(50)
                .map(|r| record_json(r, true))
                .collect();
            let mut body = json!({ "result": page, "total": s.queue.len() });
            if start + 50 < s.queue.len() {
                body["next"] = json!(start + 50);
            }
            ok(body)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        ),
    }
}

fn offline_get(s: &mut State, params: &serde_json::Map<String, Value>) -> warp::reply::Response {
    let clear = int_param(params, "clear", 1) != 0;
    let limit = int_param(params, "limit", 50).max(1) as usize;
    if !clear && !s.extended {
        return error(
            StatusCode::FORBIDDEN,
            "WRONG_LICENSE",
            "This feature is not enabled for the current license: extended offline events handling",
        );
    }
    let process_id = match params.get("process_id") {
        Some(Value::String(p)) if !p.is_empty() => Some(p.clone()),
        _ => None,
    };
    let picked: Vec<usize> = match &process_id {
        Some(p) => s
            .queue
            .iter()
            .enumerate()
            .filter(|(_, r)| r.process_id.as_deref() == Some(p))
            .map(|(i, _)| i)
            .take(limit)
            .collect(),
        None => {
            let mut free: Vec<usize> = s
                .queue
                .iter()
                .enumerate()
                .filter(|(_, r)| r.process_id.is_none())
                .map(|(i, _)| i)
                .collect();
            free.sort_by_key(|&i| (s.queue[i].ts, s.queue[i].id));
            free.truncate(limit);
            free
        }
    };
    let events: Vec<Value> = picked
        .iter()
        .map(|&i| record_json(&s.queue[i], false))
        .collect();
    s.calls.gets += 1;
    let answered_process = if clear {
        let mut gone = picked;
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            s.queue.remove(i);
        }
        Value::Null
    } else {
        let p = process_id.unwrap_or_else(token);
        for &i in &picked {
            s.queue[i].process_id = Some(p.clone());
        }
        if picked.is_empty() {
            Value::Null
        } else {
            Value::String(p)
        }
    };
    ok(json!({ "result": { "process_id": answered_process, "events": events } }))
}

fn offline_clear(s: &mut State, params: &serde_json::Map<String, Value>) -> warp::reply::Response {
    let Some(Value::String(process_id)) = params.get("process_id") else {
        return error(
            StatusCode::BAD_REQUEST,
            "ERROR_ARGUMENT",
            "Argument 'process_id' is null or empty",
        );
    };
    let message_ids = str_list(params, "message_id");
    let ids = str_list(params, "id");
    s.queue.retain(|r| {
        let ours = r.process_id.as_deref() == Some(process_id.as_str());
        let named = if !message_ids.is_empty() {
            message_ids.contains(&r.message_id)
        } else if !ids.is_empty() {
            ids.contains(&r.id.to_string())
        } else {
            true
        };
        !(ours && named)
    });
    s.calls.clears += 1;
    ok(json!({ "result": true }))
}
