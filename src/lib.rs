//! switchyard: a blue-green traffic-switching L7 reverse proxy.
//!
//! Where a connection and its requests go, and where the code for each stage lives:
//!
//! ```text
//! client ─▶ proxy::conn       accept, connection limit, TLS (proxy::tls); idle HTTP/1.1
//!                             connections parked, the raw stream watched (proxy::sniff)
//!        ─▶ proxy::service    admit: framing, limits, Host (proxy::headers), rate limit
//!                             and request id (proxy::edge), constitutional hash
//!        ─▶ proxy::route      one ArcSwap load: pool by weight/affinity; proxy::backend
//!                             picks the backend by P2C
//!        ─▶ proxy::upstream   keep-alive client to the backend; bodies stream (proxy::body)
//!        ◀─ proxy::service    answer: hash check, 5xx, hop-by-hop strip, metrics, tunnel
//!        ◀─ proxy::edge       security headers; the access-log line when the body ends
//! ```
//!
//! Two planes: [`proxy`] is the data plane and never waits on the control plane;
//! [`control`] (admin socket, persisted state, reload, and the rollout controller) changes
//! what requests see only by publishing a new route table. [`metrics`] exports both. [`config`] turns
//! the TOML file into a validated [`config::Config`]. [`notify`] holds where the daemon is in
//! its life (starting, serving, draining) for `GET /ready` and tells systemd (sd_notify).
//! [`ctl`] is the other side of the admin socket: the `switchyard ctl` client. [`demo`]
//! runs the whole job on loopback (`switchyard demo`); [`sim`] runs the rollout machine on
//! synthetic traffic (`switchyard simulate`). [`tls_client`] is the one TLS client
//! configuration of every outbound connection (TLS backends, etcd, hooks, Prometheus).
//!
//! [`Switchyard::bind`] then [`Switchyard::run`] is the whole daemon; `main` and the
//! tests use the same two calls, the tests with `127.0.0.1:0` addresses.
//! [`Switchyard::bind_with`] adds the config file's path (for `reload` and SIGHUP), another
//! state store, or exhaustive admin lists. The saved state is restored during `bind`.

#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod sim;
pub mod tls_client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use config::Config;
use control::admin::AdminServer;
use control::handover::SocketKind;
use control::state::{FileStateStore, StateStore};
use control::Control;
use metrics::window::LiveStats;
use metrics::Metrics;
use proxy::conn::{h1_builder, server_builder, Acceptor};
use proxy::edge::access_log::AccessLog;
use proxy::edge::Edge;
use proxy::route::RouteHandle;
use proxy::service::Shared;
use proxy::tls::TlsTerminator;

/// Why the daemon could not start; each variant names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} ({what}): the address is already taken{holder}. Stop that \
         process, or give this daemon another address; to replace a running daemon without \
         downtime use `switchyard run --takeover` (docs/upgrade.md)"
    )]
    AddrTaken {
        what: &'static str,
        addr: SocketAddr,
        /// Who holds it, when known (` by pid N (name); the switchyard daemon on ...`).
        holder: String,
    },
    #[error("cannot create the admin socket {path}: {source}{}", admin_hint(.source))]
    Admin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid pool configuration: {0}")]
    Pools(String),
    #[error("TLS listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: proxy::tls::TlsError,
    },
    #[error("cannot open the access log (access_log.path): {0}")]
    AccessLog(std::io::Error),
    #[error("takeover: {0}")]
    Takeover(String),
    #[error("[fleet]: {0}")]
    Fleet(String),
}

/// The fix for the usual admin socket failure: a directory the daemon cannot write (a
/// normal user and the default `/run/switchyard`).
fn admin_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied
        | std::io::ErrorKind::NotFound
        | std::io::ErrorKind::NotADirectory
        | std::io::ErrorKind::ReadOnlyFilesystem => {
            "; set [admin] socket to a path in a directory this user can write (the README's \
             Quick start uses one directory for the socket and the state), or create the \
             directory with write access for this user (the systemd unit's RuntimeDirectory= does)"
        }
        _ => "",
    }
}

/// What [`Switchyard::bind_with`] takes besides the config.
#[derive(Default)]
pub struct BindOptions {
    /// The file the config was read from: `reload` and SIGHUP re-read it. Without it a
    /// reload is refused (`reload_failed`).
    pub config_path: Option<PathBuf>,
    /// Where state persists; by default a [`FileStateStore`] at `state.path`.
    pub state_store: Option<Arc<dyn StateStore>>,
    /// Only the `[admin]` lists grant access: root and the daemon's own uid are not
    /// implicitly admins. The tests use this (they run as root).
    pub strict_admin_lists: bool,
    /// `run --takeover`: take the listening sockets, admin socket and state over from the
    /// daemon that serves this config (see [`control::handover`], `docs/upgrade.md`).
    pub takeover: bool,
    /// With `takeover`: SIGTERM the old process once this one serves (and, under systemd,
    /// has announced itself with `MAINPID=`), so the hand-over is one command.
    pub stop_old: bool,
}

/// A bound, not yet running, proxy.
pub struct Switchyard {
    config: Config,
    http: Vec<TcpListener>,
    tls: Vec<(TcpListener, Arc<TlsTerminator>)>,
    metrics_listener: Option<TcpListener>,
    admin: Option<UnixListener>,
    routes: Arc<RouteHandle>,
    metrics: Arc<Metrics>,
    stats: Arc<LiveStats>,
    control: Arc<Control>,
    strict_admin_lists: bool,
    edge: Arc<Edge>,
    /// The hand-over in progress (`--takeover`), confirmed once this process serves.
    takeover: Option<control::handover::Takeover>,
    lifecycle: Arc<notify::Lifecycle>,
    stop_old: bool,
    /// `[fleet]`: the etcd store this instance follows.
    fleet: Option<Arc<control::fleet::store::EtcdStore>>,
}

impl Switchyard {
    /// Binds every listener the config names (port 0 picks a free port) and restores the
    /// saved state from `state.path`.
    pub async fn bind(config: Config) -> Result<Switchyard, StartError> {
        Self::bind_with(config, BindOptions::default()).await
    }

    /// [`Switchyard::bind`] with options.
    pub async fn bind_with(config: Config, options: BindOptions) -> Result<Switchyard, StartError> {
        let metrics = Metrics::new();
        // One-second buckets; the ring holds the longest window the config allows.
        let stats = Arc::new(LiveStats::new(
            Duration::from_secs(1),
            config.rollout.window,
        ));
        let table = proxy::initial_table(&config).map_err(StartError::Pools)?;
        for pool in &table.pools {
            for b in pool.backends.iter() {
                metrics.register_backend(pool.id, b);
            }
        }
        let routes = Arc::new(RouteHandle::new(table));
        let edge = Arc::new(Edge::new(&config, &metrics).map_err(StartError::AccessLog)?);
        // First, with --takeover, the running daemon's sockets: it stops changing (and
        // saving) its state before this one binds anything or reads the state file.
        let mut takeover = if options.takeover {
            let t = control::handover::Takeover::begin(&config.admin.socket)
                .map_err(StartError::Takeover)?;
            match &t {
                Some(t) => {
                    info!(old.pid = ?t.old_pid, "taking over the listening sockets of the running daemon")
                }
                None => info!("--takeover: no daemon answers on the admin socket; starting afresh"),
            }
            t
        } else {
            None
        };
        let mut http = Vec::new();
        for &addr in &config.proxy.listen {
            http.push(listen_tcp(
                &mut takeover,
                SocketKind::Http,
                addr,
                "proxy",
                config.proxy.reuse_port,
                &config.admin.socket,
            )?);
        }
        let mut tls = Vec::new();
        for t in &config.proxy.tls {
            let terminator =
                TlsTerminator::new(t, config.proxy.timeouts.tls_handshake).map_err(|source| {
                    StartError::Tls {
                        addr: t.listen,
                        source,
                    }
                })?;
            let l = listen_tcp(
                &mut takeover,
                SocketKind::Tls,
                t.listen,
                "proxy tls",
                config.proxy.reuse_port,
                &config.admin.socket,
            )?;
            tls.push((l, Arc::new(terminator)));
        }
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(listen_tcp(
                &mut takeover,
                SocketKind::Metrics,
                addr,
                "metrics",
                false,
                &config.admin.socket,
            )?),
            None => None,
        };
        if let Some(t) = &takeover {
            for s in t.unused() {
                warn!(kind = ?s.kind, addr = %s.local, "a socket handed over matches no listener of this config; closed here");
            }
        }
        let bind_admin = if takeover.is_some() {
            control::admin::bind_replacing
        } else {
            control::admin::bind
        };
        let admin = Some(
            bind_admin(&config.admin).map_err(|source| StartError::Admin {
                path: config.admin.socket.clone(),
                source,
            })?,
        );
        // Restore only once every socket is ours: a daemon that cannot bind must not
        // touch the state of the one that holds them.
        // With `[fleet]` the state lives in etcd (the file is not read: a joining or
        // restarting instance takes the fleet's table).
        let fleet = match &config.fleet {
            Some(f) => Some(control::fleet::store(f).map_err(StartError::Fleet)?),
            None => None,
        };
        let store = match (options.state_store, &fleet) {
            (Some(s), _) => s,
            (None, Some(f)) => f.clone(),
            (None, None) => Arc::new(FileStateStore::new(config.state.path.clone())),
        };
        let control = Arc::new(Control::start(
            config.clone(),
            options.config_path,
            routes.clone(),
            metrics.clone(),
            store,
        ));
        control.attach_tls(tls.iter().map(|(_, t)| t.clone()).collect());
        // The rollout controller, with the rollout saved before a restart (a running one
        // comes back paused at the same weight).
        let controller = Arc::new(control::controller::Controller::new(
            stats.clone(),
            metrics.clone(),
        ));
        control.attach_controller(controller.clone());
        if config.fleet.is_some() {
            // A follower until the fleet's membership says otherwise.
            control.leader_flag();
            // The fleet's rollout goes on as recorded (only the leader steps it); a joining
            // instance must not pause it as a restart would.
            controller.adopt(&control, &control.restored_rollout());
        } else {
            controller.restore(&control);
        }
        let strict_admin_lists = options.strict_admin_lists;
        Ok(Switchyard {
            config,
            http,
            tls,
            metrics_listener,
            admin,
            routes,
            metrics,
            stats,
            control,
            strict_admin_lists,
            edge,
            takeover,
            lifecycle: Arc::new(notify::Lifecycle::default()),
            stop_old: options.stop_old,
            fleet,
        })
    }

    /// Starting, serving or draining: what `GET /ready` and systemd are told.
    pub fn lifecycle(&self) -> Arc<notify::Lifecycle> {
        self.lifecycle.clone()
    }

    /// Addresses of the plain HTTP listeners, in config order.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Addresses of the TLS listeners, in config order.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// The TLS terminators, for certificate reloads and status.
    pub fn tls_terminators(&self) -> Vec<Arc<TlsTerminator>> {
        self.tls.iter().map(|(_, t)| t.clone()).collect()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn routes(&self) -> Arc<RouteHandle> {
        self.routes.clone()
    }

    /// Live per-pool statistics (what the rollout gates judge).
    pub fn stats(&self) -> Arc<LiveStats> {
        self.stats.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The access log's writer, to reopen its file (`main` does on SIGUSR1); `None` when off.
    pub fn access_log(&self) -> Option<AccessLog> {
        self.edge.access_log.clone()
    }

    /// The control plane: updates, reload (`main` calls it on SIGHUP), events.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight requests
    /// finish within `proxy.timeouts.shutdown_grace`, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let Switchyard {
            config,
            http,
            tls,
            metrics_listener,
            admin,
            routes,
            metrics,
            stats,
            control,
            strict_admin_lists,
            edge,
            takeover,
            lifecycle,
            stop_old,
            fleet,
        } = self;
        // Duplicates of the listening sockets, for a successor's `handover`.
        let mut inheritable = control::handover::Inheritable::default();
        for (l, &addr) in http.iter().zip(&config.proxy.listen) {
            inheritable.add(SocketKind::Http, addr, l);
        }
        for ((l, _), t) in tls.iter().zip(&config.proxy.tls) {
            inheritable.add(SocketKind::Tls, t.listen, l);
        }
        if let (Some(l), Some(addr)) = (&metrics_listener, config.metrics.listen) {
            inheritable.add(SocketKind::Metrics, addr, l);
        }
        for l in &http {
            if let Ok(addr) = l.local_addr() {
                info!(%addr, "proxy listening");
            }
        }
        let shared = Arc::new(Shared {
            routes: routes.clone(),
            metrics: metrics.clone(),
            stats: stats.clone(),
            edge: edge.clone(),
        });
        let tracker = TaskTracker::new();
        let acceptor = Arc::new(Acceptor {
            shared,
            builder: server_builder(&config),
            h1: h1_builder(&config),
            header_read: config.proxy.timeouts.header_read,
            idle: config.proxy.timeouts.idle,
            limit: Arc::new(Semaphore::new(config.proxy.max_connections)),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            stopping: proxy::conn::stop_signal(&shutdown),
        });
        let mut loops = Vec::new();
        for l in http {
            loops.push(tokio::spawn(acceptor.clone().run_plain(l)));
        }
        let terminators: Vec<Arc<TlsTerminator>> = tls.iter().map(|(_, t)| t.clone()).collect();
        for (i, (l, t)) in tls.into_iter().enumerate() {
            if let Ok(addr) = l.local_addr() {
                info!(%addr, "proxy tls listening");
            }
            loops.push(tokio::spawn(acceptor.clone().run_tls(l, t, i + 1)));
        }
        tokio::spawn(proxy::health::run(
            routes.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(control::controller::run(control.clone(), shutdown.clone()));
        tokio::spawn(control::failover::run(control.clone(), shutdown.clone()));
        if let (Some(store), Some(cfg)) = (fleet, &config.fleet) {
            let members = control::fleet::members::Members::new(
                control.clone(),
                store.clone(),
                cfg,
                stats.clone(),
            );
            tokio::spawn(members.run(shutdown.clone()));
            tokio::spawn(control::fleet::run(
                control.clone(),
                store,
                shutdown.clone(),
            ));
        }
        if !terminators.is_empty() {
            tokio::spawn(proxy::tls::watch_files(terminators, shutdown.clone()));
        }
        if let Some(l) = admin {
            let server = Arc::new(
                AdminServer::new(control.clone(), !strict_admin_lists)
                    .with_sockets(Arc::new(inheritable)),
            );
            info!(path = %config.admin.socket.display(), "admin socket listening");
            tokio::spawn(server.run(l, shutdown.clone()));
        }
        let api_stop = CancellationToken::new();
        if let Some(l) = metrics_listener {
            if let Ok(addr) = l.local_addr() {
                info!(%addr, "metrics listening");
            }
            let api = metrics::http::Api {
                metrics: metrics.clone(),
                control: control.clone(),
                lifecycle: lifecycle.clone(),
            };
            // Serves through the drain (`/ready` answers 503 then), and stops when it ends.
            tokio::spawn(metrics::http::serve(l, Arc::new(api), api_stop.clone()));
        }
        // Whether the old daemon confirmed the hand-over: only then is this one the service
        // (MAINPID=), and only then may `--stop-old` stop it.
        let mut took_over = false;
        let mut confirmed_old = None;
        if let Some(t) = takeover {
            // Every accept loop runs: the old daemon may stop now.
            let old = t.old_pid;
            match tokio::task::spawn_blocking(move || t.complete()).await {
                Ok(Ok(())) => {
                    info!(
                        old.pid = ?old,
                        "took over: serving on the handed-over sockets; stop the old process with SIGTERM (it drains and exits)"
                    );
                    took_over = true;
                    confirmed_old = old;
                }
                Ok(Err(e)) => {
                    warn!(old.pid = ?old, "took over, but the old process did not confirm: {e}")
                }
                Err(e) => warn!(old.pid = ?old, "took over, but confirming failed: {e}"),
            }
        }
        lifecycle.serving(&notify::status_line(&control.status()), took_over);
        if let (true, Some(pid)) = (stop_old, confirmed_old) {
            stop_process(pid);
        }
        tokio::spawn(notify::watchdog(control.clone(), shutdown.clone()));
        tokio::spawn(notify::follow_status(control.clone(), shutdown.clone()));
        let upkeep = {
            let metrics = metrics.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => metrics.upkeep(),
                        _ = shutdown.cancelled() => return,
                    }
                }
            })
        };

        shutdown.cancelled().await;
        // A daemon that handed over is no longer the service: its successor is (it sent
        // MAINPID=), and a STOPPING=1 from here would read as the whole service stopping.
        lifecycle.draining(control.superseded_by().is_none());
        if control.superseded_by().is_some() {
            // The successor accepts on the same metrics socket: leave every probe to it
            // rather than answer half of them `draining`.
            api_stop.cancel();
        }
        // Accept loops return on cancellation and drop their listeners: new connections
        // are refused from here on.
        for l in loops {
            let _ = l.await;
        }
        tracker.close();
        // The reloaded value counts: the grace period is read when it is needed.
        let grace = control.config().proxy.timeouts.shutdown_grace;
        info!(
            in_flight_connections = tracker.len(),
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                remaining = tracker.len(),
                "shutdown grace period over; closing remaining connections"
            );
        }
        upkeep.abort();
        api_stop.cancel();
        if let Some(log) = &edge.access_log {
            if !log.flush(Duration::from_secs(2)).await {
                warn!("access log not flushed within 2s at shutdown");
            }
        }
        Ok(())
    }
}

/// `--stop-old`: SIGTERM to the process that handed its sockets over (it drains and exits).
fn stop_process(pid: u32) {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    let Some(target) = target else {
        warn!(old.pid = pid, "--stop-old: not a process id");
        return;
    };
    match rustix::process::kill_process(target, rustix::process::Signal::TERM) {
        Ok(()) => info!(
            old.pid = pid,
            "--stop-old: sent SIGTERM to the old process; it drains and exits"
        ),
        Err(e) => {
            warn!(old.pid = pid, error = %e, "--stop-old: cannot signal the old process; stop it by hand")
        }
    }
}

/// The handed-over socket for `addr` when taking over, else a new one.
fn listen_tcp(
    takeover: &mut Option<control::handover::Takeover>,
    kind: SocketKind,
    addr: SocketAddr,
    what: &'static str,
    reuse_port: bool,
    admin_socket: &std::path::Path,
) -> Result<TcpListener, StartError> {
    match takeover.as_mut().and_then(|t| t.take(kind, addr)) {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(l))
            .map_err(|source| StartError::Bind { what, addr, source }),
        None => bind_tcp(addr, what, reuse_port).map_err(|e| name_holder(e, admin_socket)),
    }
}

/// An address in use becomes [`StartError::AddrTaken`], naming who holds it.
fn name_holder(e: StartError, admin_socket: &std::path::Path) -> StartError {
    match e {
        StartError::Bind { what, addr, source }
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            StartError::AddrTaken {
                what,
                addr,
                holder: control::occupant::describe(addr, admin_socket),
            }
        }
        e => e,
    }
}

fn bind_tcp(
    addr: SocketAddr,
    what: &'static str,
    reuse_port: bool,
) -> Result<TcpListener, StartError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        if reuse_port {
            // A new process may bind the same address while this one drains.
            socket.set_reuseport(true)?;
        }
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    };
    bind().map_err(|source| StartError::Bind { what, addr, source })
}
