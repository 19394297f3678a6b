//! The command line, parsed by hand: the workspace has no argument parser, and six options do
//! not need one. The token comes from `GITHUB_TOKEN`, never from an argument, so that it stays
//! out of shell history and process lists.

use std::time::Duration;

use crate::api::SmokeError;

pub const HELP: &str = "\
smoke: proves that a sophons deployment serves a template. It puts .github/workflows/sophons-smoke.yml
on the branch (a commit only when the file is missing or differs), dispatches it for the template,
follows its one job until it ends, and prints the job's timeline (queued, runner online, started,
completed) and its result.

Usage: smoke --repository <owner/name> --template <name> [options]

  --repository <owner/name>  a repository the deployment serves
  --template <name>          the template to run on: the job asks for runs-on [self-hosted, <name>]
  --ref <branch>             where to write and run the workflow (default: the repository's default branch)
  --api-url <url>            default https://api.github.com (GitHub Enterprise Server: https://<host>/api/v3)
  --timeout-minutes <n>      how long to wait for the job to end, 1-360 (default 15)
  --poll-seconds <n>         how often to read the job and the runners, 1-60 (default 5)
  -h, --help                 this text

The token is read from the environment variable GITHUB_TOKEN and never printed. A fine-grained token
needs, on the repository:
  Contents: Read and write     to read and write the workflow file
  Workflows: Read and write    GitHub asks for it to write under .github/workflows
  Actions: Read and write      to dispatch the workflow, read its run and job, and cancel it on timeout
  Metadata: Read               every fine-grained token has it
and, only to see the runner come online (without it that line says why it is empty):
  Administration: Read         for runners registered with the repository (github_scope = repo), or
  Self-hosted runners: Read    organization permission, for runners of the organization (github_scope = org)
A classic token needs `repo` and `workflow` (and `admin:org` to see the organization's runners).

Exit status: 0 the job succeeded; 1 it ended otherwise; 2 bad arguments or no token;
3 GitHub refused or failed a request; 4 timed out (the run is then cancelled).
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `owner/name`.
    pub repository: String,
    pub template: String,
    /// The branch; `None` is the repository's default branch.
    pub git_ref: Option<String>,
    pub api_url: String,
    /// From the start until the job ends; dispatching and finding the run count too.
    pub timeout: Duration,
    pub poll_interval: Duration,
    /// Before the second attempt of a failed request; doubled for each next one.
    pub retry_pause: Duration,
    /// How long a dispatch may meet 404 or 422 after the workflow file was written: GitHub takes a
    /// few seconds to register a new workflow.
    pub registration_wait: Duration,
}

impl Options {
    pub fn new(repository: &str, template: &str) -> Self {
        Self {
            repository: repository.into(),
            template: template.into(),
            git_ref: None,
            api_url: "https://api.github.com".into(),
            timeout: Duration::from_secs(15 * 60),
            poll_interval: Duration::from_secs(5),
            retry_pause: Duration::from_secs(1),
            registration_wait: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, SmokeError> {
    let usage = |message: String| SmokeError::Usage(message);
    let (mut repository, mut template, mut git_ref, mut api_url) = (None, None, None, None);
    let (mut timeout_minutes, mut poll_seconds) = (15, 5);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| usage(format!("{name} needs a value")))
        };
        match name.as_str() {
            "--repository" => repository = Some(value()?),
            "--template" => template = Some(value()?),
            "--ref" => git_ref = Some(value()?),
            "--api-url" => api_url = Some(value()?),
            "--timeout-minutes" => timeout_minutes = number(&name, &value()?, 1..=360)?,
            "--poll-seconds" => poll_seconds = number(&name, &value()?, 1..=60)?,
            _ => return Err(usage(format!("unknown argument `{arg}`"))),
        }
    }
    let repository = repository.ok_or_else(|| usage("--repository <owner/name> is required".into()))?;
    let template = template.ok_or_else(|| usage("--template <name> is required".into()))?;
    let name_chars = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !repository
        .split_once('/')
        .is_some_and(|(owner, name)| name_chars(owner) && name_chars(name))
    {
        return Err(usage(format!("--repository `{repository}` is not owner/name")));
    }
    // The rule sophons' config applies to template names.
    if template.is_empty()
        || template.len() > 64
        || !template
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(usage(format!(
            "--template `{template}` is not a template name: 1 to 64 characters of A-Z, a-z, 0-9, _ and -"
        )));
    }
    if git_ref.as_deref() == Some("") {
        return Err(usage(
            "--ref is empty: name a branch, or leave it out for the default branch".into(),
        ));
    }
    let mut options = Options::new(&repository, &template);
    if let Some(url) = api_url {
        if !url.starts_with("https://") && !url.starts_with("http://") {
            return Err(usage(format!("--api-url `{url}` is not an http(s) URL")));
        }
        options.api_url = url.trim_end_matches('/').to_string();
    }
    options.git_ref = git_ref;
    options.timeout = Duration::from_secs(timeout_minutes * 60);
    options.poll_interval = Duration::from_secs(poll_seconds);
    Ok(Command::Run(options))
}

fn number(name: &str, value: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, SmokeError> {
    value.parse().ok().filter(|n| range.contains(n)).ok_or_else(|| {
        SmokeError::Usage(format!(
            "{name} `{value}` is not a whole number from {} to {}",
            range.start(),
            range.end()
        ))
    })
}

/// The token, from the value of `GITHUB_TOKEN`.
pub fn token(value: Option<String>) -> Result<String, SmokeError> {
    value
        .map(|token| token.trim().to_string())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            SmokeError::Usage(
                "GITHUB_TOKEN is not set: export a token with the permissions `smoke --help` lists".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_defaults_are_github_com_15_minutes_and_5_seconds() {
        let Command::Run(options) = parse(args("--repository acme/app --template cpu")).unwrap() else {
            panic!("a run");
        };
        assert_eq!(options, Options::new("acme/app", "cpu"));
        assert_eq!(options.api_url, "https://api.github.com");
        assert_eq!((options.timeout.as_secs(), options.poll_interval.as_secs()), (900, 5));
        assert_eq!(options.git_ref, None);
    }

    #[test]
    fn every_option_is_taken_with_a_space_or_an_equals_sign() {
        let line = "--repository=acme/app --template gpu_large --ref release/1.2 \
                    --api-url https://ghe.example.com/api/v3/ --timeout-minutes=30 --poll-seconds 10";
        let Command::Run(options) = parse(args(line)).unwrap() else {
            panic!("a run");
        };
        assert_eq!(options.template, "gpu_large");
        assert_eq!(options.git_ref.as_deref(), Some("release/1.2"));
        assert_eq!(options.api_url, "https://ghe.example.com/api/v3");
        assert_eq!((options.timeout.as_secs(), options.poll_interval.as_secs()), (1800, 10));
        assert_eq!(parse(args("--template cpu --help")).unwrap(), Command::Help);
    }

    #[test]
    fn bad_arguments_say_which_and_why() {
        let error = |line: &str| parse(args(line)).unwrap_err().to_string();
        assert!(error("--template cpu").contains("--repository <owner/name> is required"));
        assert!(error("--repository acme/app").contains("--template <name> is required"));
        assert!(error("--repository acme --template cpu").contains("is not owner/name"));
        assert!(error("--repository acme/app --template a.b").contains("is not a template name"));
        assert!(error("--repository acme/app --template cpu --timeout-minutes 0").contains("from 1 to 360"));
        assert!(error("--repository acme/app --template cpu --api-url ftp://x").contains("not an http(s) URL"));
        assert!(error("--repository acme/app --template cpu --verbose").contains("unknown argument `--verbose`"));
        assert!(error("--repository acme/app --template").contains("--template needs a value"));
    }

    #[test]
    fn the_token_must_be_set_and_not_blank() {
        assert_eq!(token(Some(" ghp_x\n".into())).unwrap(), "ghp_x");
        for missing in [None, Some("  ".to_string())] {
            assert!(
                token(missing)
                    .unwrap_err()
                    .to_string()
                    .starts_with("GITHUB_TOKEN is not set")
            );
        }
    }
}
