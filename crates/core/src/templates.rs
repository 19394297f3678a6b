//! Which runner template serves a job. GitHub gives a job to any runner that holds all of the
//! job's labels (case-insensitively), so a template serves a job when its full label set (its
//! labels, `self-hosted` and its own name) contains every label of the job.

use std::collections::BTreeMap;

use crate::config::Template;

pub const SELF_HOSTED: &str = "self-hosted";

/// The labels a runner of this template registers with: `self-hosted`, the template's name, then
/// its configured labels, without case-insensitive duplicates.
pub fn runner_labels(name: &str, template: &Template) -> Vec<String> {
    let mut labels: Vec<String> = Vec::with_capacity(template.labels.len() + 2);
    for label in [SELF_HOSTED, name]
        .into_iter()
        .chain(template.labels.iter().map(String::as_str))
    {
        if !labels.iter().any(|known| known.eq_ignore_ascii_case(label)) {
            labels.push(label.to_string());
        }
    }
    labels
}

/// `runner_labels(name, template).len()` without building the list: this runs on the webhook's
/// hot path, once per satisfied template.
fn label_count(name: &str, template: &Template) -> usize {
    let mut count = if name.eq_ignore_ascii_case(SELF_HOSTED) { 1 } else { 2 };
    for (index, label) in template.labels.iter().enumerate() {
        let seen = label.eq_ignore_ascii_case(SELF_HOSTED)
            || label.eq_ignore_ascii_case(name)
            || template.labels[..index]
                .iter()
                .any(|earlier| earlier.eq_ignore_ascii_case(label));
        if !seen {
            count += 1;
        }
    }
    count
}

fn satisfies(name: &str, template: &Template, job_labels: &[impl AsRef<str>]) -> bool {
    job_labels.iter().all(|label| {
        let label = label.as_ref();
        label.eq_ignore_ascii_case(SELF_HOSTED)
            || label.eq_ignore_ascii_case(name)
            || template.labels.iter().any(|own| own.eq_ignore_ascii_case(label))
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoMatch {
    /// The job asks for a GitHub-hosted runner (or names no label at all).
    NotSelfHosted,
    /// No template holds every label of the job.
    NoTemplate,
}

impl NoMatch {
    pub fn reason(&self, job_labels: &[impl AsRef<str>]) -> String {
        let labels: Vec<&str> = job_labels.iter().map(AsRef::as_ref).collect();
        match self {
            Self::NotSelfHosted => format!("job labels {labels:?} do not include `self-hosted`"),
            Self::NoTemplate => format!("no template has all of the job labels {labels:?}"),
        }
    }
}

/// The template that serves a job: of those satisfied, the one with the fewest labels, ties
/// broken by name (the map is ordered by name, and the first minimum wins).
pub fn select<'a>(
    templates: &'a BTreeMap<String, Template>,
    job_labels: &[impl AsRef<str>],
) -> Result<(&'a str, &'a Template), NoMatch> {
    if !job_labels
        .iter()
        .any(|label| label.as_ref().eq_ignore_ascii_case(SELF_HOSTED))
    {
        return Err(NoMatch::NotSelfHosted);
    }
    templates
        .iter()
        .filter(|(name, template)| satisfies(name, template, job_labels))
        .min_by_key(|(name, template)| label_count(name, template))
        .map(|(name, template)| (name.as_str(), template))
        .ok_or(NoMatch::NoTemplate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(labels: &[&str]) -> Template {
        Template {
            labels: labels.iter().map(|l| l.to_string()).collect(),
            launch_template: "lt".into(),
            instance_types: vec!["c7i.large".into()],
            subnet_ids: vec!["subnet-1".into()],
            max_runners: 1,
            on_demand_fallback: false,
            spot_max_price: None,
            packages: vec!["git".into()],
            docker: false,
            rerun_interrupted_jobs: true,
        }
    }

    fn templates() -> BTreeMap<String, Template> {
        BTreeMap::from([
            ("template_cpu".to_string(), template(&["linux", "x64"])),
            ("template_gpu".to_string(), template(&["linux", "x64", "gpu"])),
            ("b_small".to_string(), template(&["linux", "arm64"])),
            ("a_small".to_string(), template(&["linux", "arm64"])),
        ])
    }

    #[test]
    fn a_job_naming_the_template_is_served_by_it() {
        let all = templates();
        assert_eq!(
            select(&all, &["self-hosted", "template_gpu"]).unwrap().0,
            "template_gpu"
        );
    }

    #[test]
    fn labels_compare_case_insensitively() {
        let all = templates();
        assert_eq!(
            select(&all, &["Self-Hosted", "TEMPLATE_CPU", "Linux"]).unwrap().0,
            "template_cpu"
        );
    }

    #[test]
    fn of_several_satisfied_templates_the_one_with_fewest_labels_wins() {
        let all = templates();
        assert_eq!(
            select(&all, &["self-hosted", "linux", "x64"]).unwrap().0,
            "template_cpu"
        );
    }

    #[test]
    fn a_tie_in_label_count_is_broken_by_name() {
        let all = templates();
        assert_eq!(select(&all, &["self-hosted", "arm64"]).unwrap().0, "a_small");
    }

    #[test]
    fn a_job_without_self_hosted_is_not_ours() {
        let all = templates();
        assert_eq!(select(&all, &["linux", "x64"]), Err(NoMatch::NotSelfHosted));
        assert_eq!(select(&all, &["ubuntu-latest"]), Err(NoMatch::NotSelfHosted));
        assert_eq!(select(&all, &[] as &[&str]), Err(NoMatch::NotSelfHosted));
    }

    #[test]
    fn a_job_with_a_label_no_template_has_is_not_served() {
        let all = templates();
        assert_eq!(
            select(&all, &["self-hosted", "linux", "windows"]),
            Err(NoMatch::NoTemplate)
        );
    }

    #[test]
    fn the_label_count_is_the_length_of_the_runner_labels() {
        for (name, labels) in [
            ("cpu", vec!["linux", "x64"]),
            ("cpu", vec!["linux", "Self-Hosted", "x64", "LINUX", "CPU"]),
            ("self-hosted", vec!["a", "A"]),
            ("x", vec![]),
        ] {
            let t = template(&labels);
            assert_eq!(
                label_count(name, &t),
                runner_labels(name, &t).len(),
                "{name} {labels:?}"
            );
        }
    }

    #[test]
    fn runner_labels_hold_self_hosted_the_name_and_the_labels_once_each() {
        let t = template(&["linux", "Self-Hosted", "x64", "LINUX"]);
        assert_eq!(runner_labels("cpu", &t), vec!["self-hosted", "cpu", "linux", "x64"]);
    }
}
