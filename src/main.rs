//! The `switchyard` binary: command line, logging, signals, exit codes. Everything else
//! lives in the library.
//!
//! Exit codes: 0 ok, 1 usage or internal error (also an invalid config); `ctl` adds the
//! design's table (2 socket unreachable or permission denied, 3 rolled back by a gate,
//! 4 aborted, 5 timeout, 6 paused, 7 conflict, 8 invalid transition), see
//! `switchyard::ctl::client` and `switchyard::control::follow`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use switchyard::config::Config;
use switchyard::control::{Actor, Control};
use switchyard::ctl::client;
use switchyard::proxy::edge::access_log::AccessLog;
use switchyard::{BindOptions, Switchyard};

// Measured with bench/run.sh (small keep-alive): less CPU per request and less memory per
// idle connection than the system allocator; see bench/RESULTS.md.
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc through its plain entry points whenever the layout allows.
///
/// The `mimalloc` crate's allocator passes every request to `mi_malloc_aligned`. In
/// mimalloc 3 that call takes the plain fast path only when the size class's free list
/// happens to be non-empty; otherwise it over-allocates (a 24-byte request gets a 32-byte
/// block, and the page is marked as holding interior pointers, which slows every free on
/// it). callgrind, plain HTTP/1.1 proxying: 12 allocations per request, 5.2 of them took
/// that over-allocating path. Every mimalloc block is at least word-aligned (sizes are
/// whole words, a page's first block is 16-aligned), so a layout aligned to a word or less
/// needs no aligned call; larger alignments keep it.
struct Mimalloc;

const WORD: usize = std::mem::size_of::<usize>();

// SAFETY (the whole impl): each method forwards to the mimalloc call with the contract it
// needs: `mi_malloc`/`mi_zalloc`/`mi_realloc` return word-aligned blocks of at least the
// size asked (null on failure), which satisfies a layout whose alignment is at most a
// word; the `_aligned` variants honour any power-of-two alignment; `mi_free` accepts a
// pointer from any of them.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                libmimalloc_sys::mi_malloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                libmimalloc_sys::mi_zalloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: see the impl; `ptr` came from this allocator.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from this allocator with `layout`.
        unsafe {
            if layout.align() <= WORD {
                libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// mimalloc 3 gives freed memory back to the OS only 1 s after it was freed, and only when
/// the allocator is next used. Idle keep-alive connections are parked (their codec buffers
/// freed) in a burst and then nothing runs, so those buffers stayed resident. 10 ms (the
/// delay of mimalloc 2) returns them while the parking happens. Measured with
/// `bench/run.sh --scenarios idle` (9,900 idle connections): RSS 204 MB → 82 MB; the
/// throughput scenarios are in bench/RESULTS.md. `MIMALLOC_PURGE_DELAY` in the
/// environment still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // `mi_option_purge_delay` of mimalloc.h (the same index in mimalloc 2 and 3); the Rust
    // bindings do not name it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // A foreign call, like the allocator above. SAFETY: `mi_option_set` stores an
    // integer option that the allocator reads atomically; any value is valid for this one.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10);
    }
}

/// Transparent huge pages are turned off for the process (`PR_SET_THP_DISABLE`). mimalloc
/// asks for them on its arenas (`MADV_HUGEPAGE`), and the kernel's khugepaged then turns
/// each 2 MiB range that has any page in use into a whole huge page, every 10 s: the
/// memory that parking freed came back as resident. With 10,000 idle connections RSS rose
/// from 48 to 75 MB within 20 s of the last one opening and the idle figure read anywhere
/// from 3.1 to 4.5 KiB a connection, depending on when the scan ran; without huge pages it
/// holds at 41.5 MB (2.8 KiB) and the process starts at 14 MB instead of 19 (the first
/// 4 MiB of mimalloc's arena are already huge pages before `main`). No throughput scenario
/// changed beyond noise (bench/RESULTS.md). `MIMALLOC_ALLOW_THP=1` in the
/// environment keeps them (a process started by `run --takeover` inherits the flag, so it
/// is set either way).
fn set_huge_pages() -> rustix::io::Result<()> {
    let allow = std::env::var_os("MIMALLOC_ALLOW_THP").is_some_and(|v| v != "0");
    rustix::thread::disable_transparent_huge_pages(!allow)
}

const DEFAULT_CONFIG: &str = "/etc/switchyard/switchyard.toml";

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Blue-green traffic-switching L7 reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy daemon. SIGHUP re-reads the config; SIGUSR2 upgrades in place; SIGTERM drains.
    ///
    /// Example: switchyard run --config /etc/switchyard/switchyard.toml
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Zero-downtime restart or upgrade: take the listening sockets, the admin socket and
        /// the state over from the daemon running with this config, then SIGTERM the old one
        /// (docs/upgrade.md). Without a running daemon, starts as usual.
        #[arg(long)]
        takeover: bool,
        /// With --takeover: send SIGTERM to the old process once this one serves, so the
        /// whole hand-over is this one command (SIGUSR2 to a daemon starts it this way).
        #[arg(long, requires = "takeover")]
        stop_old: bool,
        /// Daemon log lines: `text`, `json` (one object per line, for journald and log
        /// shippers), or `auto`: text on a terminal, JSON otherwise.
        #[arg(
            long,
            value_enum,
            env = "SWITCHYARD_LOG_FORMAT",
            default_value = "auto"
        )]
        log_format: LogFormat,
    },
    /// Validate a config file and the certificates, keys and CA files it names.
    ///
    /// Errors name the key (or the file) and the fix. Every TLS certificate and key is
    /// loaded as `run` loads it (each pair must match) and the pools' CA files too; a
    /// certificate expiring within 14 days is a warning on stderr. Exit 0 valid, 1 invalid.
    ///
    /// Example: switchyard check --config config/switchyard.toml
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Check the config file alone, without reading the certificates, keys and CA files
        /// it names (to lint a config on a machine that does not hold them).
        #[arg(long)]
        config_only: bool,
    },
    /// Send one command to a running daemon's admin socket (`ctl help` lists them).
    ///
    /// Human output on a terminal, one JSON object per line otherwise or with --json.
    /// Exit: 0 ok, 1 usage/internal (also ambiguous_pool), 2 socket unreachable or permission
    /// denied, 7 conflict or rollout_active, 8 invalid transition, 9 busy (retry shortly),
    /// 10 state_unwritable (refused: the state file cannot be written; `rollback` still
    /// applies and answers "persisted": false). `rollout ... --wait [--timeout D]`
    /// follows the rollout: 0 promoted, 3 rolled back by a gate, 4 aborted, 5 timeout,
    /// 6 paused; its last stdout line is a JSON summary.
    ///
    /// Examples: switchyard ctl status; switchyard ctl weight green 10 expect-gen 4;
    /// switchyard ctl rollout start --to green --wait --timeout 30m;
    /// switchyard ctl rollback to blue; switchyard ctl watch. With [fleet], a change followed
    /// by --wait-applied returns once every live instance runs it (exit 5 after 30 s).
    Ctl {
        /// Admin socket [default: $SWITCHYARD_SOCKET, else /run/switchyard/admin.sock]
        #[arg(long, env = "SWITCHYARD_SOCKET", hide_env = true)]
        socket: Option<PathBuf>,
        /// One JSON object per line, even on a terminal.
        #[arg(long)]
        json: bool,
        /// The command and its arguments, e.g. `weight 10`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
    /// Show the whole job on loopback: one rollout promoted, one rolled back.
    ///
    /// Starts blue and green upstreams, the proxy and a client load in-process; exit 0
    /// only when both rollouts end as they should.
    ///
    /// Example: switchyard demo --fault latency
    Demo {
        /// How the second rollout's build goes bad.
        #[arg(long, value_enum, default_value = "hash")]
        fault: switchyard::demo::Fault,
        /// Short holds (about 20 s in all), for tests.
        #[arg(long)]
        quick: bool,
        /// One JSON event per line instead of the progress display.
        #[arg(long)]
        json: bool,
        /// Only serve a blue and a green demo backend on these addresses (BLUE,GREEN), until
        /// Ctrl-C: backends for trying a config (README, Quick start).
        #[arg(long, value_name = "BLUE,GREEN", value_delimiter = ',')]
        backends: Option<Vec<std::net::SocketAddr>>,
    },
    /// Simulate rollouts of the rollout controller on synthetic traffic (bench/RESULTS.md).
    ///
    /// Prints, per traffic level and candidate change, how often it is rolled back and how
    /// fast: the false-rollback rate (A/A) and the detection rate.
    ///
    /// Example: switchyard simulate --rollouts 2000 --compare
    Simulate(switchyard::sim::Args),
    /// Print a shell completion script.
    ///
    /// Example: switchyard completions bash > /etc/bash_completion.d/switchyard
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The verbs of `ctl`, with their options, for `ctl --help` (no daemon needed): the admin
/// socket's own list, then what the client adds.
fn ctl_verbs_help() -> String {
    use std::fmt::Write;
    let verbs = switchyard::control::command::VERBS;
    let width = verbs
        .iter()
        .map(|(u, _)| u.len())
        .max()
        .unwrap_or(0)
        .min(48);
    let mut out = String::from(
        "Commands (the daemon's `help` verb lists the same; mutations take a trailing `expect-gen N`):\n",
    );
    for (usage, purpose) in verbs {
        if usage.len() > width {
            let _ = writeln!(out, "  {usage}\n  {:width$}  {purpose}", "");
        } else {
            let _ = writeln!(out, "  {usage:width$}  {purpose}");
        }
    }
    out.push_str(
        "\nOptions the client adds:\n  \
         rollout start|status ... --wait [--timeout D]\n      \
         follow the rollout to its end: exit 0 promoted, 3 rolled back by a gate, 4 aborted,\n      \
         5 timeout, 6 paused; the last stdout line is a JSON summary\n  \
         rollout start --to POOL --steps 10,50,100 --hold 60s --bake 5m --expect-gen N\n      \
         the same as the words `to POOL`, `steps ...`, `hold ...`, `bake ...`, `expect-gen N`\n  \
         wait-drained POOL [--timeout D]\n      \
         wait until POOL has nothing in flight (default timeout 5m; exit 5 on timeout)\n  \
         help\n      \
         this list (answered without a daemon)\n",
    );
    out
}

fn main() -> ExitCode {
    quiet_broken_pipe();
    let command = <Cli as clap::CommandFactory>::command()
        .mut_subcommand("ctl", |c| c.after_help(ctl_verbs_help()));
    let parsed = command
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // The design's table: usage errors exit 1 (clap's default would be 2, which
            // means "socket unreachable" to `ctl` callers); --help and --version exit 0.
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match cli.command {
        Command::Run {
            config,
            takeover,
            stop_old,
            log_format,
        } => run(config, takeover, stop_old, log_format),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "switchyard", &mut script);
            // A closed stdout (`| head -0`) is the reader's choice, not a failure.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            ExitCode::SUCCESS
        }
        Command::Demo {
            fault,
            quick,
            json,
            backends,
        } => match backends.as_deref() {
            Some(&[blue, green]) => demo_backends(blue, green),
            Some(_) => {
                eprintln!("--backends takes two addresses: BLUE,GREEN");
                ExitCode::from(1)
            }
            None => demo(switchyard::demo::Options { fault, quick, json }),
        },
        Command::Simulate(args) => match switchyard::sim::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Check {
            config,
            config_only,
        } => check(&config, config_only),
        Command::Ctl {
            socket,
            json,
            mut words,
        } => {
            // `ctl status --json` too: no admin command has a `--json` word.
            let trailing_json = words.iter().any(|w| w == "--json");
            words.retain(|w| w != "--json");
            let json = json || trailing_json;
            if words == ["help"] {
                // The list is static: no need to reach a daemon for it.
                return ctl_help(json);
            }
            ctl(client::socket_path(socket), json, words)
        }
    }
}

fn demo_backends(blue: std::net::SocketAddr, green: std::net::SocketAddr) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(switchyard::demo::serve_backends(blue, green)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// `check`: the config, then what `run` loads besides it (certificates and keys, the pools'
/// CA files); exit 0 valid (warnings on stderr), 1 invalid.
fn check(path: &std::path::Path, config_only: bool) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        let _ = writeln!(std::io::stderr(), "{}: {e}", path.display());
        ExitCode::from(1)
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if config_only {
        client::print_line(&format!("{}: ok (config only)", path.display()));
        return ExitCode::SUCCESS;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let notes = match switchyard::proxy::tls::check::check_certificates(&config, now) {
        Ok(n) => n,
        Err(e) => return fail(&e),
    };
    if let Err(e) = switchyard::proxy::initial_table(&config) {
        return fail(&format!("pools: {e}"));
    }
    for n in &notes {
        if n.warning {
            let _ = writeln!(std::io::stderr(), "{}: warning: {}", path.display(), n.text);
        } else {
            client::print_line(&format!("{}: {}", path.display(), n.text));
        }
    }
    client::print_line(&format!("{}: ok", path.display()));
    ExitCode::SUCCESS
}

fn demo(opts: switchyard::demo::Options) -> ExitCode {
    // Warnings only: the demo's own display is the story.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(switchyard::demo::run(opts)) {
        Ok(outcome) if outcome.ok => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

/// Under systemd, stderr is a pipe to journald: `auto` picks JSON there, so each line keeps
/// its fields (`journalctl -o cat | jq`, log shippers) rather than a text rendering of them.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = match format {
        LogFormat::Auto => !terminal,
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.with_ansi(terminal).init();
    }
}

fn run(path: PathBuf, takeover: bool, stop_old: bool, log_format: LogFormat) -> ExitCode {
    let huge_pages = set_huge_pages();
    tune_allocator();
    init_logging(log_format);
    if let Err(e) = huge_pages {
        // Not fatal: huge pages stay as the system has them.
        warn!(error = %e, "could not set transparent huge pages for the process; idle connections may hold more memory");
    }
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            error!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    // One worker: a single-threaded scheduler does the same work with less coordination
    // (no work-stealing queues, no wake-ups across threads).
    let mut rt = if config.proxy.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.proxy.workers > 1 {
        rt.worker_threads(config.proxy.workers);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        // Installed before anything can tell a supervisor this daemon is up: systemd may
        // send SIGHUP right after READY=1, and SIGHUP's default action ends the process.
        let Some(sigs) = Signals::install() else {
            error!("cannot install signal handlers");
            return ExitCode::from(1);
        };
        let upgrade = Upgrade {
            config: path.clone(),
            log_format,
        };
        let options = BindOptions {
            config_path: Some(path),
            takeover,
            stop_old,
            ..BindOptions::default()
        };
        let server = match Switchyard::bind_with(config, options).await {
            Ok(s) => s,
            Err(e) => {
                error!("{e}");
                return ExitCode::from(1);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(reopen_access_log(sigs.usr1, server.access_log()));
        tokio::spawn(signals(
            sigs.main,
            shutdown.clone(),
            server.control(),
            upgrade,
        ));
        match server.run(shutdown).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("{e}");
                ExitCode::from(1)
            }
        }
    })
}

/// SIGTERM and SIGINT stop the daemon gracefully; SIGHUP reloads the config; SIGUSR2
/// starts a successor that takes over (zero-downtime upgrade, see [`Upgrade`]).
/// SIGUSR1 reopens the access log file (logrotate's `postrotate`). The handler is installed
/// even when the log is off, so that the signal never kills the daemon.
async fn reopen_access_log(mut usr1: Signal, log: Option<AccessLog>) {
    while usr1.recv().await.is_some() {
        match &log {
            Some(log) => {
                info!("SIGUSR1: reopening the access log");
                log.reopen();
            }
            None => info!("SIGUSR1: the access log is off; nothing to reopen"),
        }
    }
}

/// What SIGUSR2 needs to start the successor.
struct Upgrade {
    config: PathBuf,
    log_format: LogFormat,
}

impl Upgrade {
    /// Starts `<the binary at this daemon's command path> run --config … --takeover
    /// --stop-old` as a child: it takes the sockets over, tells systemd `MAINPID=` (the unit
    /// has `NotifyAccess=all`), then SIGTERMs this daemon. The path is the one this daemon
    /// was started by, so a binary installed over it since is the one that starts. If the
    /// child fails, this daemon serves on unchanged.
    fn start(&self) {
        let Some(bin) = std::env::args_os().next() else {
            error!("SIGUSR2: cannot tell which binary this daemon was started from");
            return;
        };
        let format = match self.log_format {
            LogFormat::Auto => "auto",
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(["--takeover", "--stop-old", "--log-format", format])
            // systemd's WATCHDOG_PID names this process: the successor pings for itself.
            .env_remove("WATCHDOG_PID")
            .stdin(std::process::Stdio::null());
        match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                info!(successor.pid = pid, binary = %std::path::Path::new(&bin).display(), "SIGUSR2: started a successor with --takeover --stop-old");
                // Reaped here, so a successor that fails leaves no zombie.
                std::thread::spawn(move || match child.wait() {
                    Ok(status) if status.success() => {}
                    Ok(status) => {
                        error!(successor.pid = pid, %status, "the successor exited; this daemon serves on (its log says why)")
                    }
                    Err(e) => {
                        error!(successor.pid = pid, error = %e, "cannot wait for the successor")
                    }
                });
            }
            Err(e) => {
                error!(binary = %std::path::Path::new(&bin).display(), error = %e, "SIGUSR2: cannot start a successor")
            }
        }
    }
}

use tokio::signal::unix::Signal;

/// The daemon's signal handlers, installed at once.
struct Signals {
    main: MainSignals,
    /// Reopen the access log.
    usr1: Signal,
}

/// Stop (SIGTERM, SIGINT), reload (SIGHUP), upgrade (SIGUSR2).
struct MainSignals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Signals {
            main: MainSignals {
                term: signal(SignalKind::terminate()).ok()?,
                int: signal(SignalKind::interrupt()).ok()?,
                hup: signal(SignalKind::hangup()).ok()?,
                usr2: signal(SignalKind::user_defined2()).ok()?,
            },
            usr1: signal(SignalKind::user_defined1()).ok()?,
        })
    }
}

async fn signals(
    main: MainSignals,
    shutdown: CancellationToken,
    control: Arc<Control>,
    upgrade: Upgrade,
) {
    let MainSignals {
        mut term,
        mut int,
        mut hup,
        mut usr2,
    } = main;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = usr2.recv() => {
                if control.superseded_by().is_some() {
                    info!("SIGUSR2: this daemon already handed over; ignored");
                } else {
                    upgrade.start();
                }
            }
            _ = hup.recv() => {
                info!("SIGHUP: reloading the config");
                let control = control.clone();
                // The outcome (and a failing key) is logged by `reload` itself.
                let _ = tokio::task::spawn_blocking(move || control.reload(&Actor::internal("signal"), "reload (SIGHUP)", None)).await;
            }
        }
    }
    shutdown.cancel();
}

fn ctl_help(json: bool) -> ExitCode {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if json || !terminal {
        let reply = switchyard::control::admin::reply_ok(switchyard::control::execute::help());
        print!("{reply}");
    } else {
        print!("{}", ctl_verbs_help());
    }
    ExitCode::SUCCESS
}

fn ctl(socket: PathBuf, json: bool, words: Vec<String>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard ctl: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    ExitCode::from(rt.block_on(client::run(&socket, &words, json)))
}

/// Output that is still printed with `println!` (the demo's report) panics when stdout's
/// reader has gone away (`switchyard demo | head -1`); end quietly instead, with the status
/// a shell reports for a process ended by SIGPIPE (141), rather than a panic message and 101.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::GLOBAL;

    #[test]
    #[allow(unsafe_code)]
    fn allocator_honours_every_alignment_through_alloc_zeroing_and_realloc() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 8, 24, 40, 48, 100, 1000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                let aligned = |p: *mut u8| !p.is_null() && (p as usize) % align == 0;
                // SAFETY: the layouts are non-zero in size; every pointer is used within its
                // size and given back once, with the layout it was allocated with.
                unsafe {
                    let p = GLOBAL.alloc(layout);
                    assert!(aligned(p), "alloc size {size} align {align}: {p:?}");
                    p.write_bytes(0xA5, size);
                    let grown = GLOBAL.realloc(p, layout, size * 3);
                    assert!(aligned(grown), "realloc size {size} align {align}");
                    assert_eq!(*grown.add(size - 1), 0xA5, "realloc kept the bytes");
                    let grown_layout =
                        Layout::from_size_align(size * 3, align).expect("a valid layout");
                    GLOBAL.dealloc(grown, grown_layout);

                    let z = GLOBAL.alloc_zeroed(layout);
                    assert!(aligned(z), "alloc_zeroed size {size} align {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0), "zeroed");
                    GLOBAL.dealloc(z, layout);
                }
            }
        }
    }
}
