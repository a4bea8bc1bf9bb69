//! The `dr-orchestrator` command: parses the command line and calls into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dr_orchestrator::auth::{parse_ttl, Role};
use dr_orchestrator::config::Config;

#[derive(Parser)]
#[command(
    name = "dr-orchestrator",
    version,
    about = "Orchestrates disaster recovery drills and failovers."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the REST service (with a private PostgreSQL under ./data when DATABASE_URL is unset).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI document as JSON.
    Openapi,
    /// Print a bearer token (on the last line) signed with the service's secret.
    Token {
        #[arg(long, value_enum, default_value = "admin")]
        role: Role,
        #[arg(long, default_value = "admin")]
        subject: String,
        /// Lifetime such as 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: chrono::Duration,
    },
    /// Run scenario 1 as a drill on this machine: the service (as `serve` runs it), the
    /// HyperBDR simulator, the example loaded over the API, the drill's log and its report.
    Demo {
        /// Address the service listens on (default: DRO_BIND, else 127.0.0.1:8080).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Stop once the report is printed instead of serving until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// Run the HyperBDR simulator: HyperBDR's API v2 over the hosts of a YAML file.
    Simulator {
        #[arg(long, default_value = "127.0.0.1:8086")]
        bind: SocketAddr,
        /// Settings and hosts (see examples/simulator-hosts.yaml); none: no hosts.
        #[arg(long)]
        hosts: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        println!("{}", dr_orchestrator::api::openapi_json());
        return ExitCode::SUCCESS;
    }
    if let Command::Simulator { bind, hosts } = &cli.command {
        return match dr_orchestrator::providers::simulator::run_cli(hosts.as_deref(), *bind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let mut config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => return fail(&format!("configuration: {e}")),
    };
    if let Command::Demo { bind, .. } = &cli.command {
        config.bind = bind.unwrap_or(config.bind);
        // The demo's own output is the story; the access log of its polling would drown it.
        if std::env::var_os("DRO_LOG").is_none() {
            config.log_filter = "warn".into();
        }
    }
    dr_orchestrator::init_tracing(&config);
    let result = match cli.command {
        Command::Serve => dr_orchestrator::serve(&config),
        Command::Migrate => dr_orchestrator::migrate(&config),
        Command::Demo { exit, .. } => dr_orchestrator::demo::run(
            &config,
            &dr_orchestrator::demo::DemoOptions {
                keep_running: !exit,
            },
        ),
        Command::Token { role, subject, ttl } => {
            dr_orchestrator::issue_token(&config, role, &subject, ttl)
                .map(|token| println!("{token}"))
        }
        Command::Openapi | Command::Simulator { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("dr-orchestrator: {message}");
    ExitCode::from(2)
}
