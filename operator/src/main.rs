//! `wsgiscale-operator`: the binary. Parses the command line and hands over to the library.

use clap::Parser;
use wsgiscale_operator::cli::{Cli, Command};
use wsgiscale_operator::{crd, run, simulate, telemetry};

fn main() -> std::process::ExitCode {
    match run_command(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgiscale-operator: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// One line for an error and its causes: each cause only when its words are not already in
/// the line (kube's errors repeat their sources in their own messages; printed as a chain, a
/// missing kubeconfig said the same thing five times).
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd(args) => {
            let text = if args.helm_template {
                crd::crd_helm_template()
            } else {
                crd::crd_yaml()
            };
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            closed_stdout_is_fine(out.write_all(text.as_bytes()).and_then(|()| out.flush()))?;
            Ok(())
        }
        Command::Simulate(args) => {
            let mut out = std::io::stdout().lock();
            simulate::run_cli(&args, &mut out)?;
            Ok(())
        }
        Command::Run(args) => {
            telemetry::init(args.log_format, &args.log_level)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run::run(args))?;
            Ok(())
        }
    }
}

/// A reader that stopped early (`wsgiscale-operator crd | head -1`) is not an error: the
/// output ends quietly with status 0, as with other Unix tools.
fn closed_stdout_is_fine(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
