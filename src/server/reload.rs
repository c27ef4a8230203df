//! SIGHUP: reloading the configuration without dropping a connection.
//!
//! A server's handler factory is read through one shared slot. A reload re-reads the
//! configuration (the reloader closure the program gave, usually "load the file again and
//! build the service from it"), and only if that succeeds swaps the slot: connections that
//! exist keep the handlers (and settings) they were made with, new connections get the new
//! ones. A configuration that fails to load is logged and changes nothing.
//!
//! Under prefork every worker process holds its own copy of the slot, so the master passes
//! SIGHUP on and each worker reloads itself; the master reloads too, for workers it forks
//! later. What a reload cannot change without new sockets or threads (the listen address,
//! the model, the thread count, the engine) is reported as needing a restart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use super::{ServerOptions, Service};
use crate::net::{Handler, HandlerFactory};

/// Re-reads the configuration: the new factory and options, or why not.
pub type Reloader = Arc<dyn Fn() -> Result<(HandlerFactory, ServerOptions), String> + Send + Sync>;

/// Moves the server's listeners to a new address (set by models that can).
pub type Relisten = Box<dyn Fn(SocketAddr) -> Result<SocketAddr, String> + Send>;

struct Live {
    slot: Arc<RwLock<HandlerFactory>>,
    reloader: Reloader,
    /// The options in force (what a reload compares with).
    running: ServerOptions,
    relisten: Option<Relisten>,
}

static LIVE: Mutex<Option<Live>> = Mutex::new(None);

/// A model that can move its listeners registers how (multi-reactor with reuseport does).
pub fn set_relisten(f: Relisten) {
    if let Some(live) = LIVE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        live.relisten = Some(f);
    }
}

/// The service as the models run it: when it can reload, its factory reads the shared slot.
pub fn install(service: &Service, running: &ServerOptions) -> Service {
    let Some(reloader) = service.reload.clone() else {
        return service.clone();
    };
    let slot = Arc::new(RwLock::new(service.factory.clone()));
    *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Live {
        slot: slot.clone(),
        reloader,
        running: running.clone(),
        relisten: None,
    });
    let factory: HandlerFactory = Arc::new(move || -> Box<dyn Handler> {
        let f = slot.read().unwrap_or_else(|e| e.into_inner()).clone();
        f()
    });
    Service {
        factory,
        ..service.clone()
    }
}

/// SIGHUP in this process: reload, swap on success, log either way. True if swapped.
pub fn reload() -> bool {
    reload_and_say(true)
}

/// [`reload`] in a worker process whose master reloads the same file and says how it went:
/// the outcome is logged at debug level only, so one SIGHUP gives one line, not one per
/// process.
pub fn reload_in_worker() -> bool {
    reload_and_say(false)
}

fn reload_and_say(loud: bool) -> bool {
    if super::stopping() {
        if loud {
            tracing::info!("SIGHUP while stopping: ignored");
        }
        return false;
    }
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(live) = live.as_mut() else {
        if loud {
            tracing::info!("SIGHUP: this server has nothing to reload");
        }
        return false;
    };
    let (factory, opts) = match (live.reloader)() {
        Ok(new) => new,
        Err(e) if loud => {
            tracing::error!("reload failed, still serving the previous configuration: {e}");
            return false;
        }
        Err(e) => {
            // The master may have read the file fine: a worker that could not is worth a word.
            tracing::warn!("reload failed in worker {}: {e}", std::process::id());
            return false;
        }
    };
    *live.slot.write().unwrap_or_else(|e| e.into_inner()) = factory;
    if loud {
        tracing::info!("SIGHUP: configuration reloaded; new connections use it");
    } else {
        tracing::debug!("configuration reloaded in this worker");
    }
    if opts.listen != live.running.listen {
        match &live.relisten {
            Some(relisten) => match relisten(opts.listen) {
                Ok(addr) => {
                    tracing::info!("now listening on {addr} (was {})", live.running.listen);
                    live.running.listen = opts.listen;
                }
                Err(e) => tracing::error!(
                    "reload: cannot listen on {} ({e}); still on {}",
                    opts.listen,
                    live.running.listen
                ),
            },
            None if loud => tracing::warn!(
                "reload: a new `listen` takes effect at the next restart under this model"
            ),
            None => {}
        }
    }
    // What a reload swaps is the service (its handlers and their settings) and, where the model
    // can, the listener. Everything else was applied when the server started, into loops,
    // listeners and the process itself: say so for each one that changed, rather than let a
    // "reloaded" suggest it took effect.
    let was = &live.running;
    let fixed = [
        ("model", opts.model != was.model),
        ("threads", opts.threads != was.threads),
        ("engine", opts.engine != was.engine),
        ("accept", opts.accept != was.accept),
        ("idle_timeout", opts.idle_timeout != was.idle_timeout),
        ("linger_timeout", opts.linger_timeout != was.linger_timeout),
        ("drain_timeout", opts.drain_timeout != was.drain_timeout),
        ("max_conns", opts.max_connections != was.max_connections),
        ("keepalive", opts.keepalive != was.keepalive),
        (
            "backlog, reuseport or socket buffers",
            opts.listen_opts != was.listen_opts,
        ),
        ("pid_file", opts.pid_file != was.pid_file),
        ("rlimit_nofile", opts.rlimit_nofile != was.rlimit_nofile),
        ("daemon", opts.daemon != was.daemon),
        (
            "user or group",
            (&opts.user, &opts.group) != (&was.user, &was.group),
        ),
        ("admin", opts.admin != was.admin),
        ("log_filter, log_file or log_target", opts.log != was.log),
    ];
    // Said once per SIGHUP: by the master, not again by each worker it passes the signal to.
    for (what, changed) in fixed {
        if changed && loud {
            tracing::warn!("reload: a new `{what}` takes effect at the next restart");
        }
    }
    true
}
