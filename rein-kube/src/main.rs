//! `rein-kube`: rein's Kubernetes node agent. Parses the command line and starts the agent;
//! the agent itself is the library's (`rein_kube::agent`).
use std::net::TcpListener;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rein::Instance;
use rein_kube::agent;

#[derive(Parser)]
#[command(name = "rein-kube", version, about = "rein's Kubernetes node agent")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Limits the pods of one node from their annotations and labels (and the BandwidthPolicy
    /// and RateLimit resources), live, until SIGTERM or SIGINT; the limits stay after it.
    Agent {
        /// The node whose pods to limit (the DaemonSet passes spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// The rein instance to apply to (as rein's REIN_INSTANCE).
        #[arg(long, env = "REIN_INSTANCE", default_value = Instance::DEFAULT_NAME)]
        instance: String,
        /// Where the pods' cgroups are, a path from the cgroup v2 root (default:
        /// `/kubepods.slice` or `/kubepods`, whichever is there).
        #[arg(long)]
        kubepods_root: Option<String>,
        /// Where to serve /metrics (host:port), or `off`.
        #[arg(long, default_value = "0.0.0.0:9471")]
        metrics: MetricsAddr,
    },
}

/// `--metrics`: an address, or `off`.
#[derive(Clone, Debug)]
enum MetricsAddr {
    Off,
    At(std::net::SocketAddr),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Self::Off);
        }
        text.parse()
            .map(Self::At)
            .map_err(|_| format!("{text:?} is neither host:port nor `off`"))
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REIN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match execute(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line: kube's errors repeat their sources' messages in their own.
            let mut line = error.to_string();
            for cause in error.chain().skip(1).map(ToString::to_string) {
                if !line.contains(&cause) {
                    line = format!("{line}: {cause}");
                }
            }
            eprintln!("rein-kube: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn execute(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Agent {
            node,
            instance,
            kubepods_root,
            metrics,
        } => {
            let instance = Instance::from_env()?.renamed(&instance)?;
            let metrics = match metrics {
                MetricsAddr::Off => None,
                MetricsAddr::At(addr) => Some(
                    TcpListener::bind(addr)
                        .with_context(|| format!("cannot listen on {addr} for metrics"))?,
                ),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
                let options = agent::Options {
                    node,
                    instance,
                    kubepods_root,
                    metrics,
                };
                agent::run(client, options, stop_signal()).await?;
                anyhow::Ok(())
            })
        }
    }
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
