//! The admin listener (`--admin ADDR`) on a server's control loop.
//!
//! The listener is bound with the server's own (before privileges are dropped or the process
//! detaches, so a bind error reaches the terminal), and served by the control loop: the main
//! thread, which handles signals and owns no client connection, so a scrape never waits
//! behind client traffic and never slows it. Each page asks the model for its figures: the
//! loops answer through their task queues, and one that does not within 50 ms (a handler is
//! holding it) is counted as it last published (loops publish a few times a second), so a
//! busy handler never holds up the control loop.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Model, ServerOptions};
use crate::net::listener::bind_error;
use crate::net::{bind_tcp, Handler, ListenOptions};
use crate::ops::admin::{AdminHandler, MetricsSource, MetricsView};
use crate::reactor::{EventLoop, LoopStats};

/// The figures a model gives: the total over every loop, and each loop's own. The argument is
/// the counters of the loop serving the admin page (the control loop, or half-sync's reactor).
pub type StatsSource = Arc<dyn Fn(Option<&LoopStats>) -> (LoopStats, Vec<LoopStats>) + Send + Sync>;

struct Bound {
    listener: TcpListener,
    server: &'static str,
    started: Instant,
}

static BOUND: Mutex<Option<Bound>> = Mutex::new(None);

/// Binds `--admin` (if given); `attach` later serves it.
pub(crate) fn bind(opts: &ServerOptions, server: &'static str) -> io::Result<()> {
    let Some(addr) = opts.admin else {
        return Ok(());
    };
    let listener = bind_tcp(addr, &ListenOptions::default())
        .map_err(|e| bind_error(format!("admin {addr}"), e))?;
    println!("listening admin {}", listener.local_addr()?);
    *BOUND.lock().unwrap_or_else(|e| e.into_inner()) = Some(Bound {
        listener,
        server,
        started: Instant::now(),
    });
    Ok(())
}

/// Serves the bound admin listener (if any) on `el`, with `source` for the figures.
pub(crate) fn attach(el: &mut EventLoop, model: Model, source: StatsSource) -> io::Result<()> {
    let Some(bound) = BOUND.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return Ok(());
    };
    let Bound {
        listener,
        server,
        started,
    } = bound;
    let view: MetricsSource = Arc::new(move |own: Option<&LoopStats>| {
        let (total, loops) = source(own);
        MetricsView {
            server: server.to_string(),
            model: model.name().to_string(),
            loops_per_connection: matches!(model, Model::ThreadPerConn | Model::ProcessPerConn),
            pid: std::process::id(),
            uptime_secs: started.elapsed().as_secs_f64(),
            requests_by_class: [
                total.http_1xx,
                total.http_2xx,
                total.http_3xx,
                total.http_4xx,
                total.http_5xx,
            ],
            timeouts: vec![
                ("request_head", total.header_timeouts),
                ("request_body", total.body_timeouts),
            ],
            log_dropped: crate::ops::log::dropped_lines(),
            total: Some(total),
            loops,
        }
    });
    let open = Arc::new(AtomicUsize::new(0));
    el.add_listener_outside_limit(
        listener,
        Arc::new(move || {
            Box::new(AdminHandler::new(view.clone()).counted_in(open.clone())) as Box<dyn Handler>
        }),
    )?;
    Ok(())
}
