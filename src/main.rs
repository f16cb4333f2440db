//! The `switchyard` binary: command line, logging, signals, exit codes. Everything else
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use switchyard::config::Config;
use switchyard::Switchyard;

const DEFAULT_CONFIG: &str = "/etc/switchyard/switchyard.toml";
const DEFAULT_SOCKET: &str = "/run/switchyard/admin.sock";

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Blue-green traffic-switching L7 reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy daemon.
    ///
    /// Example: switchyard run --config /etc/switchyard/switchyard.toml
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file; errors name the key and the fix. Exit 0 valid, 1 invalid.
    ///
    /// Example: switchyard check --config config/switchyard.toml
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Send one command to a running daemon's admin socket.
    ///
    /// Example: switchyard ctl --socket /run/switchyard/admin.sock weight 10
    Ctl {
        #[arg(long, env = "SWITCHYARD_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the raw JSON reply.
        #[arg(long)]
        json: bool,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
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
        Command::Ctl { socket, json: _, words } => ctl(socket, words.join(" ")),
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

fn run(path: PathBuf) -> ExitCode {
    init_logging();
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            error!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.proxy.workers > 0 {
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
        let server = match Switchyard::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                error!("{e}");
                return ExitCode::from(1);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
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

/// SIGTERM and SIGINT stop the daemon gracefully.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

fn ctl(socket: PathBuf, line: String) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(switchyard::control::admin::request(&socket, &line)) {
        Ok(reply) => {
            print!("{reply}");
            let ok = serde_json::from_str::<serde_json::Value>(&reply).ok().and_then(|v| v["ok"].as_bool());
            if ok == Some(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", socket.display());
            ExitCode::from(2)
        }
    }
}
