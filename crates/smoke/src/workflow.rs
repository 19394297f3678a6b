//! The workflow smoke dispatches, and putting it on the ref: read the file, write it only when it
//! is missing or differs, so that repeated smoke runs add no commits.

use base64::prelude::{BASE64_STANDARD, Engine};
use serde_json::{Value, json};

use crate::api::{Github, Method, SmokeError, Step, query_value};

/// The file name GitHub's workflow routes take.
pub const WORKFLOW_FILE: &str = "sophons-smoke.yml";
pub const WORKFLOW_PATH: &str = ".github/workflows/sophons-smoke.yml";

/// One fixed file for every template: the template comes as an input, so the file never changes
/// between runs. `run-name` carries the nonce that tells this run from others when GitHub does not
/// return the run's id. The template reaches the shell through `env`, never spliced into the
/// script, so that an input cannot inject commands.
pub const WORKFLOW: &str = r#"# Written by sophons' `make smoke` (crates/smoke), which dispatches it to prove that a deployment
# serves a template. `make smoke` puts this version back if it is edited; delete it when not needed.
name: sophons smoke
run-name: sophons smoke ${{ inputs.template }} ${{ inputs.nonce }}
on:
  workflow_dispatch:
    inputs:
      template:
        description: The sophons template to run on (runs-on [self-hosted, <template>])
        required: true
        type: string
      nonce:
        description: Set by make smoke to find this run among others
        required: false
        type: string
permissions:
  contents: read
jobs:
  smoke:
    runs-on: [self-hosted, "${{ inputs.template }}"]
    timeout-minutes: 10
    steps:
      - uses: actions/checkout@v4
      - name: Show the runner
        env:
          TEMPLATE: ${{ inputs.template }}
        run: |
          echo "sophons smoke: template $TEMPLATE on runner $RUNNER_NAME"
          uname -a
"#;

/// What `ensure` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    AlreadyAsExpected,
    Created { commit: String },
    Updated { commit: String },
}

/// Makes the ref hold `WORKFLOW` at `WORKFLOW_PATH`.
pub async fn ensure(github: &Github, repository: &str, git_ref: &str) -> Result<Written, SmokeError> {
    let current = read(github, repository, git_ref).await?;
    if current.as_ref().is_some_and(|file| file.content == WORKFLOW.as_bytes()) {
        return Ok(Written::AlreadyAsExpected);
    }
    let route = format!("/repos/{repository}/contents/{WORKFLOW_PATH}");
    let mut body = json!({
        "message": "sophons smoke: the workflow `make smoke` dispatches",
        "content": BASE64_STANDARD.encode(WORKFLOW),
        "branch": git_ref,
    });
    if let Some(file) = &current {
        body["sha"] = json!(file.sha);
    }
    let answer = github
        .send(Step::WriteWorkflowFile, Method::Put, &route, Some(&body))
        .await?;
    match answer.status {
        200 | 201 => {
            let commit = answer.body["commit"]["sha"].as_str().unwrap_or_default();
            let commit = commit.chars().take(7).collect();
            Ok(if current.is_some() {
                Written::Updated { commit }
            } else {
                Written::Created { commit }
            })
        }
        // The file changed since it was read: an earlier attempt of this request whose answer was
        // lost, or someone else. Fine if it now holds what smoke needs.
        409 => match read(github, repository, git_ref).await? {
            Some(file) if file.content == WORKFLOW.as_bytes() => Ok(Written::AlreadyAsExpected),
            _ => Err(SmokeError::from_answer(Step::WriteWorkflowFile, &route, &answer)),
        },
        _ => Err(SmokeError::from_answer(Step::WriteWorkflowFile, &route, &answer)),
    }
}

struct File {
    content: Vec<u8>,
    sha: String,
}

async fn read(github: &Github, repository: &str, git_ref: &str) -> Result<Option<File>, SmokeError> {
    let route = format!(
        "/repos/{repository}/contents/{WORKFLOW_PATH}?ref={}",
        query_value(git_ref)
    );
    let answer = github.send(Step::ReadWorkflowFile, Method::Get, &route, None).await?;
    match answer.status {
        200 => decode(&answer.body).map(Some),
        404 if answer.message() == "Not Found" => Ok(None),
        _ => Err(SmokeError::from_answer(Step::ReadWorkflowFile, &route, &answer)),
    }
}

fn decode(body: &Value) -> Result<File, SmokeError> {
    let malformed = |detail: &str| SmokeError::Malformed {
        step: Step::ReadWorkflowFile,
        detail: format!("{detail}: is {WORKFLOW_PATH} a file?"),
    };
    let sha = body["sha"].as_str().ok_or_else(|| malformed("no `sha`"))?;
    // GitHub sends files over 1 MB without content; such a file is not ours, so it differs.
    let content = match (body["encoding"].as_str(), body["content"].as_str()) {
        (Some("base64"), Some(encoded)) => {
            let compact: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            BASE64_STANDARD
                .decode(compact)
                .map_err(|_| malformed("content is not base64"))?
        }
        _ => Vec::new(),
    };
    Ok(File {
        content,
        sha: sha.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workflow_takes_the_template_as_an_input_and_keeps_it_out_of_the_script() {
        assert!(WORKFLOW.contains("  workflow_dispatch:\n    inputs:\n      template:\n"));
        assert!(WORKFLOW.contains("runs-on: [self-hosted, \"${{ inputs.template }}\"]"));
        assert!(WORKFLOW.contains("run-name: sophons smoke ${{ inputs.template }} ${{ inputs.nonce }}"));
        assert!(WORKFLOW.contains("- uses: actions/checkout@v4"));
        let script = WORKFLOW.split("run: |").nth(1).unwrap();
        assert!(script.contains("uname -a"));
        assert!(!script.contains("${{"), "expressions in a script are an injection risk");
    }

    #[test]
    fn github_content_is_read_across_its_line_breaks() {
        let encoded = BASE64_STANDARD.encode(WORKFLOW);
        let wrapped: Vec<String> = encoded
            .as_bytes()
            .chunks(60)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let body = json!({"sha": "abc", "encoding": "base64", "content": wrapped.join("\n") + "\n"});
        let file = decode(&body).unwrap();
        assert_eq!(
            (file.content.as_slice(), file.sha.as_str()),
            (WORKFLOW.as_bytes(), "abc")
        );
        let large = decode(&json!({"sha": "abc", "encoding": "none", "content": ""})).unwrap();
        assert!(large.content.is_empty());
        assert!(decode(&json!([{"name": "x"}])).is_err(), "a directory");
    }
}
