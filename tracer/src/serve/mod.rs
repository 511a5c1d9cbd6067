//! `gotrace serve`: a sidecar that follows one target process, traces it in a sampled mode for
//! as long as it runs, and serves what it collected over HTTP: Prometheus metrics, a pprof
//! profile with `net/http/pprof`'s semantics, and a health check.
//!
//! Two threads: the collector ([`collector`]) owns the probes and the target's binary
//! (finding the target with [`follow`], attaching, draining, symbolizing, re-attaching after a
//! restart) and publishes a [`snapshot`] every interval; the HTTP server ([`http`]) only
//! reads the latest snapshot. No endpoint can change what is traced: the server has no handle
//! on the collector but the snapshot.

mod agent;
mod agent_view;
mod collector;
mod follow;
mod http;
mod identity;
mod metrics;
mod snapshot;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::routing::get;
use gobin::procmaps::process_exe;

use self::snapshot::{Shared, lock};
use crate::config::{Scope, Selector, ServeConfig};
use crate::progress;

/// Runs until SIGINT or SIGTERM.
pub fn run(config: &ServeConfig) -> anyhow::Result<()> {
    crate::privileges::check_tracing_privileges()?;
    match &config.scope {
        Scope::One(Selector::Pid(pid)) => {
            process_exe(*pid).with_context(|| format!("cannot follow process {pid}"))?;
        }
        Scope::One(Selector::Exe(path)) => {
            std::fs::metadata(path).with_context(|| format!("cannot follow {}", path.display()))?;
        }
        Scope::One(Selector::Name(_)) | Scope::All(_) => {}
    }
    let shared: Shared = Arc::default();
    let agent = match &config.scope {
        Scope::All(_) => Some(agent::Agent::default()),
        Scope::One(_) => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr().context("cannot read the listening address")?;
    // Tests and scripts read this line to find the port of --listen 127.0.0.1:0.
    if agent.is_some() {
        progress!("serving http://{local}/metrics, /targets, /debug/pprof/allocs, /debug/pprof/heap and /healthz");
    } else {
        progress!("serving http://{local}/metrics, /debug/pprof/allocs, /debug/pprof/heap and /healthz");
    }
    let collector = {
        let (config, shared, stop, agent) = (Arc::new(config.clone()), shared.clone(), stop.clone(), agent.clone());
        std::thread::Builder::new()
            .name("collector".to_owned())
            .spawn(move || {
                /// Marks the collector gone however it ends, a panic included.
                struct Gone(Shared);
                impl Drop for Gone {
                    fn drop(&mut self) {
                        lock(&self.0).collector_gone = true;
                    }
                }
                let _gone = Gone(shared.clone());
                match (&config.scope, &agent) {
                    (Scope::All(agent_config), Some(agent)) => {
                        agent::discover_and_trace(&config, agent_config, agent, &stop);
                    }
                    (Scope::One(selector), _) => collector::follow_and_trace(&config, selector, &shared, &stop),
                    (Scope::All(_), None) => {}
                }
            })
            .context("cannot start the collector thread")?
    };
    let (stopping, stopping_seen) = tokio::sync::watch::channel(false);
    let app = axum::Router::new()
        .route("/metrics", get(http::metrics))
        .route("/debug/pprof/allocs", get(http::pprof_allocs))
        .route("/debug/pprof/heap", get(http::pprof_heap))
        .route("/healthz", get(http::healthz))
        .route("/targets", get(http::targets))
        .with_state(http::AppState {
            shared,
            interval: config.interval,
            stopping: stopping_seen,
            waiting_deltas: Arc::new(tokio::sync::Semaphore::new(http::MAX_WAITING_DELTAS)),
            agent,
        });
    let stop_now = stop.clone();
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            // The collector starts detaching (and putting a changed rate back) at once, and
            // requests waiting out a ?seconds=N end now rather than hold the shutdown up.
            stop_now.store(true, Ordering::Relaxed);
            let _ = stopping.send(true);
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("the HTTP server failed")
    })?;
    progress!("stopping");
    stop.store(true, Ordering::Relaxed);
    // The collector notices within one poll; it detaches its probes and puts a changed rate
    // back as it goes.
    let _ = collector.join();
    Ok(())
}
