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

use std::sync::{Arc, Mutex, RwLock};

use super::Service;
use crate::net::{Handler, HandlerFactory};

/// Re-reads the configuration: the new factory, or why not.
pub type Reloader = Arc<dyn Fn() -> Result<HandlerFactory, String> + Send + Sync>;

struct Live {
    slot: Arc<RwLock<HandlerFactory>>,
    reloader: Reloader,
}

static LIVE: Mutex<Option<Live>> = Mutex::new(None);

/// The service as the models run it: when it can reload, its factory reads the shared slot.
pub fn install(service: &Service) -> Service {
    let Some(reloader) = service.reload.clone() else {
        return service.clone();
    };
    let slot = Arc::new(RwLock::new(service.factory.clone()));
    *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Live {
        slot: slot.clone(),
        reloader,
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
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(live) = live.as_ref() else {
        tracing::info!("SIGHUP: this server has nothing to reload");
        return false;
    };
    match (live.reloader)() {
        Ok(factory) => {
            *live.slot.write().unwrap_or_else(|e| e.into_inner()) = factory;
            tracing::info!(
                pid = std::process::id(),
                "configuration reloaded; new connections use it"
            );
            eprintln!("keel: configuration reloaded");
            true
        }
        Err(e) => {
            tracing::error!("reload failed, still serving the previous configuration: {e}");
            false
        }
    }
}
