//! `smoke` (`make smoke`): dispatches a tiny workflow on a real deployment and follows its job.
//! The work is in the library; this reads the command line and the token.

use std::process::ExitCode;

use smoke::api::Github;
use smoke::cli::{self, Command};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Err(error) => return fail(&error.to_string(), smoke::EXIT_USAGE, true),
    };
    let github = match cli::token(std::env::var("GITHUB_TOKEN").ok())
        .and_then(|token| Github::connect(&options.api_url, &token, options.retry_pause))
    {
        Ok(github) => github,
        Err(error) => return fail(&error.to_string(), error.exit_code(), false),
    };
    match smoke::smoke(&options, &github, &mut std::io::stdout()).await {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(error) => fail(&error.to_string(), error.exit_code(), false),
    }
}

fn fail(message: &str, code: u8, show_usage: bool) -> ExitCode {
    eprintln!("smoke: {message}");
    if show_usage {
        eprintln!("Run `smoke --help` for the options and the token's permissions.");
    }
    ExitCode::from(code)
}
