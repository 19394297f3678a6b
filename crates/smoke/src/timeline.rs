//! The job's timeline, in GitHub's clock: queued → runner online → started → completed, each with
//! its offset from queued.

use std::fmt;
use std::time::Duration;

use crate::runners::SeenRunner;
use crate::time::{Timestamp, duration_text, offset};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    /// The job's `created_at`.
    pub queued: Option<Timestamp>,
    /// When the runner that took the job (or, before one did, the first runner with the
    /// template's label) was first listed online.
    pub runner_online: Option<SeenRunner>,
    /// The job's `started_at`, once a runner has it (GitHub sets it to `created_at` while queued).
    pub started: Option<Timestamp>,
    pub completed: Option<Timestamp>,
    /// The runner that took the job.
    pub runner_name: Option<String>,
    pub conclusion: Option<String>,
    /// Why a line is empty, or what to make of one.
    pub notes: Vec<String>,
    /// How often runners were listed: `runner online` is as late as one interval.
    pub poll_interval: Duration,
}

const WIDTH: usize = 14;

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "timeline (GitHub's clock; offsets from queued):")?;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, at: Option<Timestamp>, detail: &str| {
            let (shift, when) = match at {
                Some(at) => (
                    self.queued.map_or_else(|| "?".to_string(), |queued| offset(queued, at)),
                    at.rfc3339(),
                ),
                None => ("-".to_string(), String::new()),
            };
            let text = format!("  {name:<WIDTH$} {shift:<7} {when:<20}  {detail}");
            writeln!(f, "{}", text.trim_end())
        };
        line(
            f,
            "queued",
            self.queued,
            if self.queued.is_some() { "" } else { "not seen" },
        )?;
        match &self.runner_online {
            Some(seen) => {
                let detail = format!(
                    "{} (first listed online; runners are listed every {})",
                    seen.name,
                    duration_text(self.poll_interval)
                );
                line(f, "runner online", Some(seen.first_online), &detail)?;
            }
            None => line(f, "runner online", None, "not seen")?,
        }
        let started = self.runner_name.as_ref().map(|name| format!("on {name}"));
        line(f, "started", self.started, started.as_deref().unwrap_or("not started"))?;
        line(
            f,
            "completed",
            self.completed,
            if self.completed.is_some() { "" } else { "not completed" },
        )?;
        writeln!(
            f,
            "  {:<WIDTH$} {}",
            "result",
            self.conclusion.as_deref().unwrap_or("none")
        )?;
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// Sophons names a runner `<deployment>-<EC2 instance id>`; a job taken by a runner named
/// otherwise did not prove the deployment works.
pub fn looks_like_a_sophons_runner(name: &str) -> bool {
    name.rsplit_once("-i-").is_some_and(|(deployment, id)| {
        !deployment.is_empty() && (8..=17).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp(1_772_359_200 + seconds)
    }

    #[test]
    fn a_finished_job_reads_as_four_moments_and_its_result() {
        let timeline = Timeline {
            queued: Some(at(0)),
            runner_online: Some(SeenRunner {
                name: "sophons-i-0123456789abcdef0".into(),
                first_online: at(41),
            }),
            started: Some(at(48)),
            completed: Some(at(62)),
            runner_name: Some("sophons-i-0123456789abcdef0".into()),
            conclusion: Some("success".into()),
            notes: Vec::new(),
            poll_interval: Duration::from_secs(5),
        };
        let expected = "\
timeline (GitHub's clock; offsets from queued):
  queued         +0s     2026-03-01T10:00:00Z
  runner online  +41s    2026-03-01T10:00:41Z  sophons-i-0123456789abcdef0 (first listed online; runners are listed every 5s)
  started        +48s    2026-03-01T10:00:48Z  on sophons-i-0123456789abcdef0
  completed      +1m02s  2026-03-01T10:01:02Z
  result         success
";
        assert_eq!(timeline.to_string(), expected);
    }

    #[test]
    fn a_job_never_picked_up_shows_what_did_not_happen() {
        let timeline = Timeline {
            queued: Some(at(0)),
            notes: vec!["runners: not visible".into()],
            poll_interval: Duration::from_millis(20),
            ..Timeline::default()
        };
        let text = timeline.to_string();
        // An empty moment leaves its offset `-` and its time blank, so the details stay in a column.
        let blank = " ".repeat(29);
        assert!(text.contains(&format!("  runner online  -{blank}not seen\n")), "{text}");
        assert!(
            text.contains(&format!("  started        -{blank}not started\n")),
            "{text}"
        );
        assert!(
            text.contains("  result         none\n  note: runners: not visible\n"),
            "{text}"
        );
    }

    #[test]
    fn sophons_runners_are_named_after_their_instance() {
        assert!(looks_like_a_sophons_runner("sophons-i-0123456789abcdef0"));
        assert!(looks_like_a_sophons_runner("prod-ci-i-0abc1234"));
        assert!(!looks_like_a_sophons_runner("GitHub Actions 5"));
        assert!(!looks_like_a_sophons_runner("my-laptop"));
        assert!(!looks_like_a_sophons_runner("-i-0123456789abcdef0"));
    }
}
