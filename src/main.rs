//! The `switchyard` binary: command line, logging, signals, exit codes. Everything else
//! lives in the library.
//!
//! Exit codes: 0 ok, 1 usage or internal error (also an invalid config); `ctl` adds the
//! design's table (2 socket unreachable or permission denied, 3 rolled back by a gate,
//! 4 aborted, 5 timeout, 6 paused, 7 conflict, 8 invalid transition), see
//! `switchyard::control::client` and `switchyard::control::follow`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use switchyard::config::Config;
use switchyard::control::{client, Actor, Control};
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
    /// Run the proxy daemon. SIGHUP re-reads the config; SIGTERM drains and exits.
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
    },
    /// Validate a config file; errors name the key and the fix. Exit 0 valid, 1 invalid.
    ///
    /// Example: switchyard check --config config/switchyard.toml
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Send one command to a running daemon's admin socket (`ctl help` lists them).
    ///
    /// Human output on a terminal, one JSON object per line otherwise or with --json.
    /// Exit: 0 ok, 1 usage/internal, 2 socket unreachable or permission denied,
    /// 7 conflict or rollout_active, 8 invalid transition. `rollout ... --wait [--timeout D]`
    /// follows the rollout: 0 promoted, 3 rolled back by a gate, 4 aborted, 5 timeout,
    /// 6 paused; its last stdout line is a JSON summary.
    ///
    /// Examples: switchyard ctl status; switchyard ctl weight 10 expect-gen 4;
    /// switchyard ctl rollout start --to green --wait --timeout 30m;
    /// switchyard ctl rollback to blue; switchyard ctl watch
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // The design's table: usage errors exit 1 (clap's default would be 2, which
            // means "socket unreachable" to `ctl` callers); --help and --version exit 0.
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match cli.command {
        Command::Run { config, takeover } => run(config, takeover),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "switchyard", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Demo { fault, quick, json } => {
            demo(switchyard::demo::Options { fault, quick, json })
        }
        Command::Simulate(args) => match switchyard::sim::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::from(1)
            }
        },
        Command::Ctl {
            socket,
            json,
            mut words,
        } => {
            // `ctl status --json` too: no admin command has a `--json` word.
            let trailing_json = words.iter().any(|w| w == "--json");
            words.retain(|w| w != "--json");
            ctl(client::socket_path(socket), json || trailing_json, words)
        }
    }
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(path: PathBuf, takeover: bool) -> ExitCode {
    tune_allocator();
    init_logging();
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
        let options = BindOptions {
            config_path: Some(path),
            takeover,
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
        tokio::spawn(signals(shutdown.clone(), server.control()));
        tokio::spawn(reopen_access_log(server.access_log()));
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

/// SIGTERM and SIGINT stop the daemon gracefully; SIGHUP reloads the config.
/// SIGUSR1 reopens the access log file (logrotate's `postrotate`). The handler is installed
/// even when the log is off, so that the signal never kills the daemon.
async fn reopen_access_log(log: Option<AccessLog>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        error!("cannot install the SIGUSR1 handler");
        return;
    };
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

async fn signals(shutdown: CancellationToken, control: Arc<Control>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
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
