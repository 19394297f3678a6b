//! Redelivery: GitHub does not send a failed webhook delivery again by itself
//! (<https://docs.github.com/en/webhooks/using-webhooks/handling-failed-webhook-deliveries>), so a
//! `workflow_job` our webhook missed (an outage, a deploy, a 500 from a refusing queue) would never
//! get a runner. On move-jobs' schedule this lists the hook's recent deliveries and asks GitHub to
//! redeliver each failed `workflow_job` event once.
//!
//! Once means once: an event (a `guid`) is redelivered only while none of its deliveries succeeded
//! and none is a redelivery already. A redelivery that failed again is left for a person to look
//! at, so a webhook that keeps failing is not fed the same events every hour. A redeliver call that
//! fails made no redelivery, so the next run tries that event again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::config::Config;
use crate::github::{Github, GithubError, Hook, HookDelivery};

const DEADLINE_MARGIN: Duration = Duration::from_secs(10);
/// The event sophons serves; deliveries of other events are not ours to redeliver.
pub const WORKFLOW_JOB: &str = "workflow_job";

/// Why an event with a failed delivery was not redelivered (the report's `skipped` keys).
pub mod skip {
    /// Another event than `workflow_job` (the hook may send more than ours).
    pub const NOT_WORKFLOW_JOB: &str = "not_workflow_job";
    /// Another delivery of the event succeeded (2xx).
    pub const DELIVERED: &str = "delivered";
    /// A redelivery of the event exists already, whatever became of it.
    pub const ALREADY_REDELIVERED: &str = "already_redelivered";
}

/// Why a run ended before it went through the whole look-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// GitHub answered 401, 403 or 404 to the list: the credential may not read the hook's
    /// deliveries, or `github.webhook_id` is not the hook's id.
    NoPermission,
    /// A rate limit, a 5xx or no answer: the next run tries again.
    GithubUnavailable,
    /// GitHub refused the request itself (400, 422).
    Rejected,
    /// The Lambda's deadline came first.
    OutOfTime,
}

/// What a run did. `listed` counts deliveries read within the look-back; each event (`guid`) with
/// a failed delivery is then `redelivered`, `skipped` (by reason, `skip`) or `failed` (the
/// redeliver call failed; the next run tries again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedeliveryReport {
    pub listed: usize,
    pub redelivered: usize,
    pub skipped: BTreeMap<&'static str, usize>,
    pub failed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
}

pub struct Redeliver {
    hook: Hook,
    lookback: Duration,
    github: Arc<dyn Github>,
}

impl Redeliver {
    /// `None` when the config names no hook (`github.webhook_id` unset): redelivery is off.
    pub fn new(config: &Config, github: Arc<dyn Github>) -> Option<Self> {
        Some(Self {
            hook: Hook::from_config(&config.github)?,
            lookback: Duration::from_secs(u64::from(config.github.redelivery_lookback_minutes) * 60),
            github,
        })
    }

    pub async fn run(&self, deadline: Instant) -> RedeliveryReport {
        let stop_at = deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline);
        let mut report = RedeliveryReport::default();
        match self.recent(stop_at).await {
            Ok(deliveries) => {
                report.listed = deliveries.len();
                self.redeliver_failed(&deliveries, stop_at, &mut report).await;
            }
            Err(stopped) => report.stopped = Some(stopped),
        }
        let skipped: usize = report.skipped.values().sum();
        tracing::info!(
            listed = report.listed,
            redelivered = report.redelivered,
            skipped,
            failed = report.failed,
            stopped = ?report.stopped,
            "redelivery: {} failed workflow_job deliveries redelivered, {skipped} skipped, {} failed",
            report.redelivered,
            report.failed
        );
        report
    }

    /// The hook's deliveries within the look-back, newest first: pages are read until one reaches
    /// past it. A walk cut short redelivers nothing, since the events it did not read could hold a
    /// redelivery or a success of those it did.
    async fn recent(&self, stop_at: Instant) -> Result<Vec<HookDelivery>, Stopped> {
        let since = SystemTime::now()
            .checked_sub(self.lookback)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut recent = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            if Instant::now() >= stop_at {
                tracing::warn!(hook = %self.hook, "redelivery: out of time while listing deliveries; the next run tries again");
                return Err(Stopped::OutOfTime);
            }
            let page = match tokio::time::timeout_at(
                stop_at,
                self.github.hook_deliveries(&self.hook, cursor.as_deref()),
            )
            .await
            {
                Err(_) => {
                    tracing::warn!(hook = %self.hook, "redelivery: out of time while listing deliveries; the next run tries again");
                    return Err(Stopped::OutOfTime);
                }
                Ok(Err(error)) => return Err(self.list_failed(&error)),
                Ok(Ok(page)) => page,
            };
            let mut past_lookback = false;
            for delivery in page.deliveries {
                match crate::job::parse_rfc3339(&delivery.delivered_at) {
                    Some(at) if at < since => past_lookback = true,
                    Some(_) => recent.push(delivery),
                    None => tracing::warn!(
                        delivery_id = %delivery.guid,
                        "redelivery: delivery {} has no readable delivered_at (`{}`); left alone",
                        delivery.id,
                        delivery.delivered_at
                    ),
                }
            }
            match page.next_cursor {
                Some(next) if !past_lookback => cursor = Some(next),
                _ => return Ok(recent),
            }
        }
    }

    /// One warning for the run, saying what to do.
    fn list_failed(&self, error: &GithubError) -> Stopped {
        let permission = match &self.hook {
            Hook::Org { .. } => {
                "a GitHub App needs the organisation permission \"Webhooks: read and write\", a classic token `admin:org_hook` \
                 (and an organisation owner)"
            }
            Hook::Repo { .. } => {
                "a GitHub App needs the repository permission \"Webhooks: read and write\", a classic token `admin:repo_hook`"
            }
        };
        match error {
            GithubError::NotFound(_) | GithubError::Unauthorized(_) => {
                tracing::warn!(
                    hook = %self.hook,
                    %error,
                    "redelivery: GitHub will not list the deliveries of {}: {permission}; or github.webhook_id{} is not \
                     the hook's id. Nothing is redelivered; everything else goes on",
                    self.hook,
                    if matches!(self.hook, Hook::Repo { .. }) { "/webhook_repository" } else { "" }
                );
                Stopped::NoPermission
            }
            error if error.is_retryable() => {
                tracing::warn!(hook = %self.hook, %error, "redelivery: cannot list deliveries now; the next run tries again");
                Stopped::GithubUnavailable
            }
            error => {
                tracing::warn!(hook = %self.hook, %error, "redelivery: GitHub refused the deliveries list; the next run tries again");
                Stopped::Rejected
            }
        }
    }

    /// Long because the walk through GitHub's pages, the deadline and each kind of GitHub error are handled
    /// where they happen, so that a walk cut short redelivers nothing.
    async fn redeliver_failed(&self, deliveries: &[HookDelivery], stop_at: Instant, report: &mut RedeliveryReport) {
        // Grouped by event, oldest event first so that the longest-waiting job goes first.
        let mut events: Vec<(&str, Vec<&HookDelivery>)> = Vec::new();
        for delivery in deliveries.iter().rev() {
            match events.iter_mut().find(|(guid, _)| *guid == delivery.guid) {
                Some((_, group)) => group.push(delivery),
                None => events.push((&delivery.guid, vec![delivery])),
            }
        }
        for (guid, group) in events {
            // The newest failed delivery; an event without one needs nothing.
            let Some(failed) = group.iter().rev().find(|d| !d.succeeded()) else {
                continue;
            };
            let action = failed.action.as_deref().unwrap_or_default();
            let reason = if group.iter().any(|d| d.event != WORKFLOW_JOB) {
                Some(skip::NOT_WORKFLOW_JOB)
            } else if group.iter().any(|d| d.succeeded()) {
                Some(skip::DELIVERED)
            } else if group.iter().any(|d| d.redelivery) {
                Some(skip::ALREADY_REDELIVERED)
            } else {
                None
            };
            if let Some(reason) = reason {
                *report.skipped.entry(reason).or_default() += 1;
                if reason == skip::ALREADY_REDELIVERED {
                    // The one case a person should look at: redelivered and failed again.
                    tracing::warn!(
                        delivery_id = guid,
                        event = %failed.event,
                        action,
                        outcome = reason,
                        "redelivery: delivery {guid} was redelivered already and failed again (status {}); \
                         not redelivered twice: see the webhook's log for why",
                        failed.status_code
                    );
                }
                continue;
            }
            if Instant::now() >= stop_at {
                tracing::warn!("redelivery: out of time; the failed deliveries left are redelivered by the next run");
                report.stopped = Some(Stopped::OutOfTime);
                return;
            }
            match tokio::time::timeout_at(stop_at, self.github.redeliver(&self.hook, failed.id)).await {
                Ok(Ok(())) => {
                    report.redelivered += 1;
                    tracing::info!(
                        delivery_id = guid,
                        github_delivery_id = failed.id,
                        event = %failed.event,
                        action,
                        outcome = "redelivered",
                        "redelivery: asked GitHub to redeliver {guid} (delivered {}, status {})",
                        failed.delivered_at,
                        failed.status_code
                    );
                }
                Ok(Err(error)) => {
                    report.failed += 1;
                    tracing::warn!(
                        delivery_id = guid,
                        github_delivery_id = failed.id,
                        event = %failed.event,
                        action,
                        outcome = "failed",
                        %error,
                        "redelivery: GitHub did not take the redelivery of {guid}; the next run tries again"
                    );
                }
                Err(_) => {
                    // The call was cut off: GitHub may have taken it, and the next run sees it
                    // listed as a redelivery if so.
                    report.failed += 1;
                    report.stopped = Some(Stopped::OutOfTime);
                    tracing::warn!(
                        delivery_id = guid,
                        github_delivery_id = failed.id,
                        event = %failed.event,
                        action,
                        outcome = "failed",
                        "redelivery: out of time asking GitHub to redeliver {guid}; the next run sees whether it did"
                    );
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeGithub;

    fn ago(minutes: u64) -> String {
        use aws_sdk_sqs::primitives::{DateTime, DateTimeFormat};
        let at = SystemTime::now() - Duration::from_secs(minutes * 60);
        DateTime::from(at).fmt(DateTimeFormat::DateTime).unwrap()
    }

    fn delivery(id: u64, guid: &str, status_code: u16, minutes_ago: u64) -> HookDelivery {
        HookDelivery {
            id,
            guid: guid.into(),
            delivered_at: ago(minutes_ago),
            redelivery: false,
            status_code,
            event: WORKFLOW_JOB.into(),
            action: Some("queued".into()),
        }
    }

    fn redeliverer(github: &Arc<FakeGithub>) -> Redeliver {
        let mut config = crate::config::tests::sample();
        config.github.webhook_id = Some(7);
        Redeliver::new(&config, github.clone()).expect("a hook is configured")
    }

    fn in_a_minute() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn redelivery_is_off_without_a_webhook_id() {
        let config = crate::config::tests::sample();
        assert!(Redeliver::new(&config, Arc::new(FakeGithub::new())).is_none());
    }

    #[tokio::test]
    async fn a_failed_delivery_is_redelivered_exactly_once_over_two_runs() {
        let github = Arc::new(FakeGithub::new());
        github.add_delivery(delivery(1, "g-1", 502, 30));
        let redeliver = redeliverer(&github);
        let first = redeliver.run(in_a_minute()).await;
        assert_eq!((first.listed, first.redelivered, first.failed), (1, 1, 0), "{first:?}");
        assert_eq!(github.redelivered(), vec![1]);
        let second = redeliver.run(in_a_minute()).await;
        assert_eq!(second.redelivered, 0, "{second:?}");
        assert_eq!(
            second.skipped.get(skip::DELIVERED),
            Some(&1),
            "the redelivery succeeded"
        );
        assert_eq!(github.redelivered(), vec![1], "one attempt in all");
    }

    #[tokio::test]
    async fn an_event_that_later_succeeded_is_not_redelivered() {
        let github = Arc::new(FakeGithub::new());
        github.add_delivery(delivery(1, "g-1", 500, 30));
        github.add_delivery(delivery(2, "g-1", 202, 20));
        let report = redeliverer(&github).run(in_a_minute()).await;
        assert_eq!(report.redelivered, 0);
        assert_eq!(report.skipped.get(skip::DELIVERED), Some(&1));
        assert!(github.redelivered().is_empty());
    }

    #[tokio::test]
    async fn a_redelivery_that_failed_again_is_not_redelivered_again() {
        let github = Arc::new(FakeGithub::new());
        github.set_redelivery_status(500);
        github.add_delivery(delivery(1, "g-1", 500, 30));
        let redeliver = redeliverer(&github);
        assert_eq!(redeliver.run(in_a_minute()).await.redelivered, 1);
        let again = redeliver.run(in_a_minute()).await;
        assert_eq!(again.redelivered, 0);
        assert_eq!(again.skipped.get(skip::ALREADY_REDELIVERED), Some(&1));
        assert_eq!(github.redelivered(), vec![1]);
    }

    #[tokio::test]
    async fn a_failed_delivery_of_another_event_is_left_alone() {
        let github = Arc::new(FakeGithub::new());
        let mut push = delivery(1, "g-push", 500, 10);
        push.event = "push".into();
        push.action = None;
        github.add_delivery(push);
        github.add_delivery(delivery(2, "g-ok", 202, 5));
        let report = redeliverer(&github).run(in_a_minute()).await;
        assert_eq!(report.redelivered, 0);
        assert_eq!(report.skipped.get(skip::NOT_WORKFLOW_JOB), Some(&1));
        assert_eq!(report.skipped.len(), 1, "a delivered event needs nothing: {report:?}");
        assert!(github.redelivered().is_empty());
    }

    #[tokio::test]
    async fn each_failed_event_is_redelivered_once_by_its_newest_failed_delivery() {
        let github = Arc::new(FakeGithub::new());
        github.add_delivery(delivery(1, "g-1", 500, 40));
        github.add_delivery(delivery(2, "g-2", 502, 35));
        // GitHub's own retry of the first event is no redelivery, and failed too.
        github.add_delivery(delivery(3, "g-1", 504, 30));
        let report = redeliverer(&github).run(in_a_minute()).await;
        assert_eq!(report.redelivered, 2, "{report:?}");
        assert_eq!(
            github.redelivered(),
            vec![3, 2],
            "oldest event first, its newest failure"
        );
    }

    #[tokio::test]
    async fn a_failed_delivery_older_than_the_look_back_is_left_alone() {
        let github = Arc::new(FakeGithub::new());
        github.add_delivery(delivery(1, "g-old", 500, 181));
        github.add_delivery(delivery(2, "g-new", 500, 179));
        let report = redeliverer(&github).run(in_a_minute()).await;
        assert_eq!((report.listed, report.redelivered), (1, 1), "{report:?}");
        assert_eq!(github.redelivered(), vec![2]);
    }

    #[tokio::test]
    async fn paging_walks_every_page_within_the_look_back_and_stops_past_it() {
        let github = Arc::new(FakeGithub::new());
        github.set_delivery_page_size(2);
        // Oldest first: four past the look-back (two pages' worth), then five within it.
        for id in 1..=4 {
            github.add_delivery(delivery(id, &format!("old-{id}"), 500, 200 - id));
        }
        for id in 5..=9 {
            github.add_delivery(delivery(id, &format!("new-{id}"), 500, 20 - id));
        }
        let report = redeliverer(&github).run(in_a_minute()).await;
        assert_eq!((report.listed, report.redelivered), (5, 5), "{report:?}");
        // Pages of 2, newest first: [9,8] [7,6] [5,4] — the third reaches past the look-back.
        assert_eq!(github.delivery_pages_read(), 3);
        assert_eq!(github.redelivered(), vec![5, 6, 7, 8, 9]);
    }

    #[tokio::test]
    async fn a_failed_redeliver_call_is_counted_not_retried_and_the_next_run_tries_again() {
        let github = Arc::new(FakeGithub::new());
        github.add_delivery(delivery(1, "g-1", 500, 30));
        github.fail_redeliver([GithubError::Unavailable("502".into())]);
        let redeliver = redeliverer(&github);
        let first = redeliver.run(in_a_minute()).await;
        assert_eq!((first.redelivered, first.failed), (0, 1), "{first:?}");
        assert!(github.redelivered().is_empty());
        assert_eq!(redeliver.run(in_a_minute()).await.redelivered, 1);
        assert_eq!(github.redelivered(), vec![1]);
    }

    #[tokio::test]
    async fn no_permission_to_list_is_one_stop_and_nothing_else() {
        let github = Arc::new(FakeGithub::new());
        github.add_delivery(delivery(1, "g-1", 500, 30));
        github.fail_hook_deliveries([GithubError::NotFound("hook".into())]);
        let report = redeliverer(&github).run(in_a_minute()).await;
        assert_eq!(report.stopped, Some(Stopped::NoPermission));
        assert_eq!((report.listed, report.redelivered), (0, 0));
        assert_eq!(github.delivery_pages_read(), 1);
    }

    #[tokio::test]
    async fn a_rate_limit_or_a_5xx_on_the_list_stops_the_run_and_a_later_run_redelivers() {
        let github = Arc::new(FakeGithub::new());
        github.set_delivery_page_size(1);
        github.add_delivery(delivery(1, "g-1", 500, 30));
        github.add_delivery(delivery(2, "g-2", 500, 20));
        github.fail_hook_deliveries([
            GithubError::RateLimited("secondary".into()),
            GithubError::Unavailable("502".into()),
        ]);
        let redeliver = redeliverer(&github);
        assert_eq!(
            redeliver.run(in_a_minute()).await.stopped,
            Some(Stopped::GithubUnavailable)
        );
        assert_eq!(
            redeliver.run(in_a_minute()).await.stopped,
            Some(Stopped::GithubUnavailable)
        );
        assert!(github.redelivered().is_empty());
        assert_eq!(redeliver.run(in_a_minute()).await.redelivered, 2);
    }

    #[tokio::test]
    async fn a_run_past_its_deadline_stops_before_asking_github() {
        let github = Arc::new(FakeGithub::new());
        github.add_delivery(delivery(1, "g-1", 500, 30));
        let report = redeliverer(&github).run(Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(report.stopped, Some(Stopped::OutOfTime));
        assert_eq!(github.delivery_pages_read(), 0);
        assert!(github.redelivered().is_empty());
    }
}
