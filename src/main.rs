//! The `ferry` binary: parses the command line and runs it on a tokio runtime.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::run(args));
    // Do not hang on a stray blocking task once the command is over.
    runtime.shutdown_timeout(Duration::from_secs(10));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: an error whose message already
/// quotes its cause (a path and the I/O error on it) is not followed by
/// that cause again.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let config = ferry::config::ConfigError::Read { path: "a.toml".into(), source: io };
        let e = anyhow::Error::new(config).context("node a.toml");
        assert_eq!(describe(&e), "node a.toml: cannot read config a.toml: No such file or directory (os error 2)");
    }
}
