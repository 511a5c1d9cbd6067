//! The HTTP endpoints: they read the collector's latest snapshot and nothing else.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::agent::{Agent, lock_agent};
use super::agent_view;
use super::metrics::MetricsView;
use super::snapshot::{Shared, lock};
use crate::export::pprof_merge::{Part, merge};
use crate::export::{Exporter as _, PprofExporter, Trace};
use crate::profile::Profile;
use crate::report::Report;
use crate::tracee::unix_nanos;

/// At most this many `?seconds=N` requests wait at once; more get 429.
pub(super) const MAX_WAITING_DELTAS: usize = 4;
/// The longest `?seconds=N` a profile request may ask for.
const MAX_DELTA_SECONDS: u64 = 3600;

/// What the HTTP handlers share: the snapshot, and nothing that reaches the probes.
#[derive(Debug, Clone)]
pub(super) struct AppState {
    pub shared: Shared,
    pub interval: Duration,
    /// Becomes true when gotrace is asked to stop.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Permits for `?seconds=N` requests, which each hold a profile while they wait.
    pub waiting_deltas: Arc<tokio::sync::Semaphore>,
    /// `serve --all`: every target, each with a snapshot of its own (`shared` is then unused).
    pub agent: Option<Agent>,
}

/// `/targets` (`serve --all`): the processes followed, as JSON.
pub(super) async fn targets(State(app): State<AppState>) -> Response {
    let Some(agent) = &app.agent else {
        return (StatusCode::NOT_FOUND, "/targets needs serve --all\n").into_response();
    };
    let document = agent_view::targets_document(&lock_agent(agent));
    match serde_json::to_vec_pretty(&document) {
        Ok(body) => {
            let mut response = body.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `/healthz`: 200 while the tracer works, with what it is doing; 503 when the collector has
/// stopped publishing (it ended, or it is stuck).
pub(super) async fn healthz(State(app): State<AppState>) -> Response {
    if let Some(agent) = &app.agent {
        return agent_health(&app, agent);
    }
    let s = lock(&app.shared);
    let stuck = s.target.is_some()
        && !s.stale
        && s.last_collection
            .is_some_and(|at| at.elapsed() > app.interval.saturating_mul(5) + Duration::from_secs(10));
    if s.collector_gone || stuck {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: the collector stopped publishing\n",
        )
            .into_response();
    }
    let status = match (&s.target, s.stale) {
        (None, _) => "waiting for a target".to_owned(),
        (Some(t), false) => format!("tracing pid {}", t.pid),
        (Some(t), true) => format!("pid {} exited; serving its last data (stale)", t.pid),
    };
    let error = s
        .last_error
        .as_deref()
        .map_or_else(String::new, |e| format!("\nlast error: {e}"));
    (StatusCode::OK, format!("ok: {status}{error}\n")).into_response()
}

/// `/healthz` of `serve --all`: 503 when discovery stopped, or a target's collector stopped
/// publishing.
fn agent_health(app: &AppState, agent: &Agent) -> Response {
    let limit = app.interval.saturating_mul(5) + Duration::from_secs(10);
    let state = lock_agent(agent);
    let stuck: Vec<u32> = state
        .targets
        .values()
        .filter(|t| t.exited.is_none())
        .filter(|t| {
            let s = lock(&t.shared);
            s.target.is_some() && s.last_collection.is_some_and(|at| at.elapsed() > limit)
        })
        .map(|t| t.id.pid)
        .collect();
    if state.gone || lock(&app.shared).collector_gone {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: process discovery stopped\n",
        )
            .into_response();
    }
    if !stuck.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: the collectors of processes {stuck:?} stopped publishing\n"),
        )
            .into_response();
    }
    let tracing = state.targets.values().filter(|t| t.exited.is_none()).count();
    (StatusCode::OK, format!("ok: following {tracing} processes\n")).into_response()
}

/// `/metrics`: the Prometheus text format (version 0.0.4); see [`super::metrics`] and, for
/// `serve --all`, [`agent_view`].
pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    let text = match &app.agent {
        Some(agent) => agent_view::render_metrics(&lock_agent(agent)),
        None => MetricsView::of(&lock(&app.shared)).render(),
    };
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[derive(Debug, Deserialize)]
pub(super) struct PprofQuery {
    seconds: Option<u64>,
    /// `serve --all`: this process only.
    pid: Option<u32>,
    /// `serve --all`: every process of this container (its id, or the first 12 or more
    /// characters of it), merged.
    container: Option<String>,
}

/// One target's snapshot to take a profile from, and the labels its samples get when merged
/// with others'.
struct Source {
    shared: Shared,
    labels: Vec<(&'static str, String)>,
}

/// Why a profile request names no target.
#[derive(Debug)]
enum NoSource {
    NotFound(String),
    BadRequest(&'static str),
    NothingYet,
}

impl IntoResponse for NoSource {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound(what) => (StatusCode::NOT_FOUND, format!("{what}\n")).into_response(),
            Self::BadRequest(what) => (StatusCode::BAD_REQUEST, format!("{what}\n")).into_response(),
            Self::NothingYet => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no profile yet: no target traced so far\n",
            )
                .into_response(),
        }
    }
}

/// The targets a profile request asks for: the sidecar's one, or (`serve --all`) the process
/// of `?pid=`, the processes of `?container=`, or every one.
fn sources(app: &AppState, query: &PprofQuery) -> Result<Vec<Source>, NoSource> {
    let Some(agent) = &app.agent else {
        if query.container.is_some() {
            return Err(NoSource::BadRequest("?container= needs serve --all"));
        }
        let current = lock(&app.shared).target.as_ref().map(|t| t.pid);
        if let Some(pid) = query.pid
            && current.is_some_and(|p| p != pid)
        {
            return Err(NoSource::NotFound(format!("not tracing process {pid}")));
        }
        return Ok(vec![Source {
            shared: app.shared.clone(),
            labels: Vec::new(),
        }]);
    };
    let state = lock_agent(agent);
    let chosen: Vec<Source> = state
        .targets
        .values()
        .filter(|t| query.pid.is_none_or(|pid| t.id.pid == pid))
        .filter(|t| {
            query.container.as_deref().is_none_or(|wanted| {
                t.placement
                    .container
                    .as_deref()
                    .is_some_and(|id| id == wanted || (wanted.len() >= 12 && id.starts_with(wanted)))
            })
        })
        .map(|t| Source {
            shared: t.shared.clone(),
            labels: vec![("pid", t.id.pid.to_string()), ("exe", t.exe.clone())],
        })
        .collect();
    if chosen.is_empty() {
        return Err(match (query.pid, &query.container) {
            (Some(pid), _) => NoSource::NotFound(format!("not tracing process {pid} (see /targets)")),
            (None, Some(id)) => NoSource::NotFound(format!("no traced process in container {id} (see /targets)")),
            (None, None) => NoSource::NothingYet,
        });
    }
    Ok(chosen)
}

/// `/debug/pprof/allocs`: as Go's `net/http/pprof` serves it, a gzipped pprof profile of every
/// allocation since the target started being traced; with `?seconds=N`, only those of the
/// next N seconds. Under `serve --all`, of the targets [`sources`] picks, merged.
pub(super) async fn pprof_allocs(State(app): State<AppState>, Query(query): Query<PprofQuery>) -> Response {
    let sources = match sources(&app, &query) {
        Ok(sources) => sources,
        Err(refusal) => return refusal.into_response(),
    };
    let current = |shared: &Shared| {
        let s = lock(shared);
        (s.generation, s.profile.clone())
    };
    let firsts: Vec<(u64, Option<Arc<Profile>>)> = sources.iter().map(|source| current(&source.shared)).collect();
    if firsts.iter().all(|(_, profile)| profile.is_none()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no profile yet: no target traced so far\n",
        )
            .into_response();
    }
    let profiles: Vec<Option<Arc<Profile>>> = match query.seconds {
        None | Some(0) => firsts.into_iter().map(|(_, profile)| profile).collect(),
        Some(n) if n > MAX_DELTA_SECONDS => {
            return (
                StatusCode::BAD_REQUEST,
                format!("seconds must be at most {MAX_DELTA_SECONDS}\n"),
            )
                .into_response();
        }
        Some(n) => {
            let Ok(_permit) = app.waiting_deltas.clone().try_acquire_owned() else {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("at most {MAX_WAITING_DELTAS} ?seconds=N requests at a time\n"),
                )
                    .into_response();
            };
            let mut stopping = app.stopping.clone();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(n)) => {}
                _ = stopping.wait_for(|stop| *stop) => {
                    return (StatusCode::SERVICE_UNAVAILABLE, "gotrace is stopping\n").into_response();
                }
            }
            let deltas: Vec<Option<Arc<Profile>>> = sources
                .iter()
                .zip(firsts)
                .map(|(source, (generation, first))| match (current(&source.shared), first) {
                    ((now, Some(last)), Some(first)) if now == generation => Some(Arc::new(last.since(&first))),
                    // A new process: all of its profile is new.
                    ((_, last), _) => last,
                })
                .collect();
            if deltas.iter().all(Option::is_none) {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the target restarted during the window and has no profile yet\n",
                )
                    .into_response();
            }
            deltas
        }
    };
    let window = query.seconds.filter(|&n| n > 0);
    respond(&sources, &profiles, window, "allocs")
}

/// `/debug/pprof/heap`: as Go's `net/http/pprof` serves it, a gzipped pprof profile whose
/// default sample type is `inuse_space` (allocations since attach included); 404 with the
/// reason when in-use heap is not tracked for the target (exact and span modes). Under
/// `serve --all`, of the targets [`sources`] picks that track in-use heap, merged.
pub(super) async fn pprof_heap(State(app): State<AppState>, Query(query): Query<PprofQuery>) -> Response {
    let sources = match sources(&app, &query) {
        Ok(sources) => sources,
        Err(refusal) => return refusal.into_response(),
    };
    let profiles: Vec<Option<Arc<Profile>>> = sources.iter().map(|s| lock(&s.shared).profile.clone()).collect();
    let Some(first) = profiles.iter().flatten().next() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no profile yet: no target traced so far\n",
        )
            .into_response();
    };
    let note = first.inuse.note.clone();
    let tracked: Vec<Option<Arc<Profile>>> = profiles.into_iter().map(|p| p.filter(|p| p.inuse.available)).collect();
    if tracked.iter().all(Option::is_none) {
        return (
            StatusCode::NOT_FOUND,
            format!("{note}\n(/debug/pprof/allocs has the allocations)\n"),
        )
            .into_response();
    }
    respond(&sources, &tracked, None, "heap")
}

/// The profiles as one gzipped pprof file: the one, or several merged (each sample labelled
/// with its process).
fn respond(sources: &[Source], profiles: &[Option<Arc<Profile>>], window: Option<u64>, name: &'static str) -> Response {
    let mut encoded = Vec::new();
    for (source, profile) in sources.iter().zip(profiles) {
        let Some(profile) = profile else { continue };
        match pprof_bytes(&source.shared, profile, window) {
            Some(Ok(part)) => encoded.push((part, &source.labels)),
            Some(Err(e)) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode the profile: {e}\n"),
                )
                    .into_response();
            }
            None => {}
        }
    }
    let stale = sources.iter().all(|s| lock(&s.shared).stale);
    let body = match encoded.as_slice() {
        [] => return (StatusCode::SERVICE_UNAVAILABLE, "no target\n").into_response(),
        [((bytes, _), _)] => bytes.clone(),
        several => {
            let parts: Vec<Part<'_>> = several
                .iter()
                .map(|((bytes, _), labels)| Part { gzipped: bytes, labels })
                .collect();
            match merge(&parts) {
                Ok(body) => body,
                Err(e) => {
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot merge the profiles: {e}\n"),
                    )
                        .into_response();
                }
            }
        }
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let disposition = if name == "heap" {
        "attachment; filename=\"heap\""
    } else {
        "attachment; filename=\"allocs\""
    };
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(disposition));
    if stale {
        headers.insert("x-gotrace-stale", HeaderValue::from_static("true"));
    }
    response
}

/// The profile as a gzipped pprof file, with the metadata of its target (`None` while it has
/// none); `window`: the delta's length in seconds.
fn pprof_bytes(shared: &Shared, profile: &Profile, window: Option<u64>) -> Option<std::io::Result<(Vec<u8>, bool)>> {
    let s = lock(shared);
    let target = s.target.clone()?;
    let (mut elapsed, mut started_unix_nanos) = s
        .started
        .map_or((0.0, 0), |(at, unix)| (at.elapsed().as_secs_f64(), unix));
    if let Some(n) = window {
        // A delta covers the last N seconds.
        #[expect(clippy::cast_precision_loss, reason = "seconds, at most an hour")]
        let seconds = n as f64;
        elapsed = elapsed.min(seconds);
        #[expect(clippy::cast_possible_truncation, reason = "an hour of nanoseconds fits")]
        let back = (elapsed * 1e9) as i64;
        started_unix_nanos = unix_nanos().saturating_sub(back);
    }
    let mapping = s.mapping.clone();
    let attached = s.attached_probes;
    let stale = s.stale;
    drop(s);
    let report = Report::new(target, profile, attached, elapsed, Some(0));
    let mut body = Vec::new();
    Some(
        PprofExporter
            .export(
                &Trace {
                    report: &report,
                    profile,
                    mapping: &mapping,
                    started_unix_nanos,
                },
                &mut body,
            )
            .map(|()| (body, stale)),
    )
}
