//! Watching for the runner: GitHub's runner lists say which runners are online now but not since
//! when, so smoke lists them while the job waits and notes when one carrying the template's
//! label first shows up online, in GitHub's clock (the answer's `Date`). Best effort: a list the
//! token may not read is dropped with a note, and the rest of smoke goes on without it.

use std::collections::HashSet;

use serde::Deserialize;

use crate::api::{Github, Method, SmokeError, Step};
use crate::time::Timestamp;

/// A runner seen online after the dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRunner {
    pub name: String,
    /// The `Date` of the first list that showed it online (the local clock if GitHub sent none).
    pub first_online: Timestamp,
}

/// Where runners register: a sophons deployment uses one of the two, per its `github.scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Repository,
    Organization,
}

pub struct RunnerWatch {
    repository: String,
    template: String,
    /// The lists still read; one is dropped when GitHub refuses it.
    scopes: Vec<Scope>,
    refusals: Vec<String>,
    /// Runners online before the dispatch, with the template's label: not launched for this job.
    online_before: HashSet<String>,
    seen: Vec<SeenRunner>,
}

#[derive(Deserialize)]
struct RunnerPage {
    total_count: usize,
    runners: Vec<ListedRunner>,
}

#[derive(Deserialize)]
struct ListedRunner {
    name: String,
    status: String,
    #[serde(default)]
    labels: Vec<Label>,
}

#[derive(Deserialize)]
struct Label {
    name: String,
}

impl RunnerWatch {
    /// Reads the lists once, before the dispatch, to know which runners were online already.
    pub async fn start(github: &Github, repository: &str, template: &str) -> Result<Self, SmokeError> {
        let mut watch = Self {
            repository: repository.to_string(),
            template: template.to_string(),
            scopes: vec![Scope::Repository, Scope::Organization],
            refusals: Vec::new(),
            online_before: HashSet::new(),
            seen: Vec::new(),
        };
        let (online, _) = watch.online_with_template(github).await?;
        watch.online_before = online.into_iter().collect();
        Ok(watch)
    }

    /// Lists the runners again; returns those seen online for the first time.
    pub async fn poll(&mut self, github: &Github) -> Result<Vec<SeenRunner>, SmokeError> {
        let (online, date) = self.online_with_template(github).await?;
        let mut new = Vec::new();
        for name in online {
            if !self.online_before.contains(&name) && !self.seen.iter().any(|s| s.name == name) {
                new.push(SeenRunner {
                    name,
                    first_online: date,
                });
            }
        }
        self.seen.extend(new.iter().cloned());
        Ok(new)
    }

    pub fn was_online_before_dispatch(&self, name: &str) -> bool {
        self.online_before.contains(name)
    }

    /// The runner named `name` as first seen online, or, without a name, the first runner seen.
    pub fn seen(&self, name: Option<&str>) -> Option<&SeenRunner> {
        match name {
            Some(name) => self.seen.iter().find(|s| s.name == name),
            None => self.seen.first(),
        }
    }

    /// Whether any list can still be read.
    pub fn visible(&self) -> bool {
        !self.scopes.is_empty()
    }

    /// Why lists were dropped, one line each.
    pub fn refusals(&self) -> &[String] {
        &self.refusals
    }

    /// The names of runners online now with the template's label, and GitHub's time of the list.
    async fn online_with_template(&mut self, github: &Github) -> Result<(Vec<String>, Timestamp), SmokeError> {
        let mut online = Vec::new();
        let mut date = None;
        for scope in self.scopes.clone() {
            match self.list(github, scope).await {
                Ok((runners, listed_at)) => {
                    date = date.or(listed_at);
                    online.extend(
                        runners
                            .into_iter()
                            .filter(|r| r.status == "online")
                            .filter(|r| r.labels.iter().any(|l| l.name.eq_ignore_ascii_case(&self.template)))
                            .map(|r| r.name),
                    );
                }
                Err(error @ SmokeError::BadCredentials { .. }) => return Err(error),
                Err(error) => {
                    self.scopes.retain(|s| *s != scope);
                    self.refusals.push(error.to_string());
                }
            }
        }
        Ok((online, date.unwrap_or_else(Timestamp::now)))
    }

    /// Every runner of one list, across pages.
    async fn list(&self, github: &Github, scope: Scope) -> Result<(Vec<ListedRunner>, Option<Timestamp>), SmokeError> {
        let (base, step) = match scope {
            Scope::Repository => (
                format!("/repos/{}/actions/runners", self.repository),
                Step::ListRepositoryRunners,
            ),
            Scope::Organization => {
                let owner = self.repository.split('/').next().unwrap_or_default();
                (format!("/orgs/{owner}/actions/runners"), Step::ListOrganizationRunners)
            }
        };
        let (mut runners, mut date) = (Vec::new(), None);
        for page in 1.. {
            let route = format!("{base}?per_page=100&page={page}");
            let answer = github.call(step, Method::Get, &route, None).await?;
            date = date.or(answer.date);
            let listed: RunnerPage = serde_json::from_value(answer.body).map_err(|e| SmokeError::Malformed {
                step,
                detail: e.to_string(),
            })?;
            let done = listed.runners.len() < 100 || runners.len() + listed.runners.len() >= listed.total_count;
            runners.extend(listed.runners);
            if done {
                break;
            }
        }
        Ok((runners, date))
    }
}
