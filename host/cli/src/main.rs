//! `gantry-cli`: the `gantry` command. It owns argument parsing, progress bars, tables and plots,
//! the demo and the benchmarks (`bench`); the work itself is the core's (`gantry`) and, for
//! `gantry up` and the commands that talk to it, the daemon's (`gantry-daemon`).

// The CLI is the edge: it prints results to stdout by design.
#![allow(clippy::print_stdout)]

mod bench;
mod cli;
mod local;

use std::process::ExitCode;

fn main() -> ExitCode {
    // A command run's lease guard is this binary started again (see `runguard`).
    gantry_daemon::runguard::main_if_asked();
    let args = match cli::Cli::parse_refusing_tokens() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Like other Unix tools, end quietly when a reader closes the pipe (`gantry ... | head`)
    // instead of panicking in `println!`. Not the daemon: it must never die of a signal.
    #[cfg(unix)]
    if !args.is_daemon() {
        // SAFETY: called before any thread starts; restores the signal's default action.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    cli::init_tracing(args.verbose);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
