//! `make demo`: see `demo::run`. Options: `--jobs N` (matching jobs to send, default 6),
//! `--binaries DIR` (default target/debug), `--plugin-dir DIR` (Terraform provider mirror),
//! `--logs DIR` (keep the four binaries' logs there).

use std::path::PathBuf;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut options = demo::Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--jobs" => options.jobs = value().parse().unwrap_or(options.jobs),
            "--binaries" => options.binaries = PathBuf::from(value()),
            "--plugin-dir" => options.plugin_dir = PathBuf::from(value()),
            "--logs" => options.logs = Some(PathBuf::from(value())),
            other => {
                eprintln!(
                    "demo: unknown argument `{other}` (use --jobs N, --binaries DIR, --plugin-dir DIR, --logs DIR)"
                );
                return ExitCode::from(2);
            }
        }
    }
    options.print = true;
    match demo::run(&options).await {
        Ok(report) if report.clean() => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("demo: something was left behind, or the tally could not read it all (see the tally)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}
