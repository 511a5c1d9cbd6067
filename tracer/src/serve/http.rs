//! The HTTP endpoints: they read the collector's latest snapshot and nothing else.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::metrics::MetricsView;
use super::snapshot::{Shared, lock};
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
}

/// `/healthz`: 200 while the tracer works, with what it is doing; 503 when the collector has
/// stopped publishing (it ended, or it is stuck).
pub(super) async fn healthz(State(app): State<AppState>) -> Response {
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

/// `/metrics`: the Prometheus text format (version 0.0.4); see [`super::metrics`].
pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    let view = MetricsView::of(&lock(&app.shared));
    let text = view.render();
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
}

/// `/debug/pprof/allocs`: as Go's `net/http/pprof` serves it, a gzipped pprof profile of every
/// allocation since the target started being traced; with `?seconds=N`, only those of the
/// next N seconds.
pub(super) async fn pprof_allocs(State(app): State<AppState>, Query(query): Query<PprofQuery>) -> Response {
    let shared = &app.shared;
    let current = || {
        let s = lock(shared);
        (s.generation, s.profile.clone())
    };
    let (generation, first) = current();
    let Some(first) = first else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no profile yet: no target traced so far\n",
        )
            .into_response();
    };
    let profile = match query.seconds {
        None | Some(0) => first,
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
            let (generation_now, last) = current();
            match last {
                Some(last) if generation_now == generation => Arc::new(last.since(&first)),
                // A new process: all of its profile is new.
                Some(last) => last,
                None => {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the target restarted during the window and has no profile yet\n",
                    )
                        .into_response();
                }
            }
        }
    };
    pprof_response(shared, &profile, query.seconds.filter(|&n| n > 0))
}

/// `/debug/pprof/heap`: as Go's `net/http/pprof` serves it, a gzipped pprof profile whose
/// default sample type is `inuse_space` (allocations since attach included); 404 with the
/// reason when in-use heap is not tracked for the target (exact and span modes).
pub(super) async fn pprof_heap(State(app): State<AppState>) -> Response {
    let shared = &app.shared;
    let Some(profile) = lock(shared).profile.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no profile yet: no target traced so far\n",
        )
            .into_response();
    };
    if !profile.inuse.available {
        return (
            StatusCode::NOT_FOUND,
            format!("{}\n(/debug/pprof/allocs has the allocations)\n", profile.inuse.note),
        )
            .into_response();
    }
    pprof_response(shared, &profile, None)
}

/// The profile as a gzipped pprof file, with the metadata of the current target; `window`:
/// the delta's length in seconds.
fn pprof_response(shared: &Shared, profile: &Profile, window: Option<u64>) -> Response {
    let s = lock(shared);
    let Some(target) = s.target.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no target\n").into_response();
    };
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
    if let Err(e) = PprofExporter.export(
        &Trace {
            report: &report,
            profile,
            mapping: &mapping,
            started_unix_nanos,
        },
        &mut body,
    ) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the profile: {e}\n"),
        )
            .into_response();
    }
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"allocs\""),
    );
    if stale {
        headers.insert("x-gotrace-stale", HeaderValue::from_static("true"));
    }
    response
}
