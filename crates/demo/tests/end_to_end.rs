//! The demo's scenario as a test, asserting from moto's and the fake GitHub's state (the report's
//! tally is read from them, not from logs): each matching job got exactly one instance, now ended,
//! its parameter deleted, its runner removed; the forged and non-matching deliveries produced
//! nothing; the redelivery produced no second instance; a job whose launch EC2 refused reached the
//! DLQ after 3 receives and move-jobs brought it back; the jobs beyond a template's `max_runners` (cpu 4, gpu 2:
//! 9 jobs make 6 cpu and 3 gpu) waited in the waiting list and were woken as runners ended.

use demo::tally::Read;

#[tokio::test]
async fn the_whole_system_serves_every_matching_job_once_and_leaves_nothing_behind() {
    let options = demo::Options {
        jobs: 9,
        ..Default::default()
    };
    let report = demo::run(&options)
        .await
        .unwrap_or_else(|error| panic!("the demo failed: {error}"));
    let tally = &report.tally;
    let instances = tally
        .instances
        .complete()
        .unwrap_or_else(|| panic!("the tally read every instance: {}", tally.instances));

    let by_kind = |kind: &'static str| report.deliveries.iter().filter(move |d| d.kind == kind);
    for delivery in by_kind("matching") {
        assert_eq!(delivery.status, 202, "{delivery:?}");
        assert_eq!(
            instances.per_job[&delivery.job_id], 1,
            "job {} had exactly one instance",
            delivery.job_id
        );
    }
    for kind in ["non-matching", "forged"] {
        for delivery in by_kind(kind) {
            assert_eq!(
                instances.per_job[&delivery.job_id], 0,
                "{kind} delivery produced nothing"
            );
        }
    }
    assert_eq!(by_kind("forged").next().unwrap().status, 401);
    let redelivered = by_kind("redelivered").next().unwrap();
    assert_eq!(
        instances.per_job[&redelivered.job_id], 1,
        "the redelivery gave no second instance"
    );

    assert!(report.dlq.reached_dlq, "the refused job reached the DLQ");
    assert!(
        report.dlq.receives_before_dlq >= 3,
        "after 3 receives: {:?}",
        report.dlq
    );
    assert_eq!(report.dlq.moved_back, 1, "move-jobs brought it back");
    assert!(report.dlq.served_after, "and it was then served");

    for (template, peak) in &report.peak_live {
        assert!(peak <= &report.max_runners[template], "{template}: {peak} live at once");
    }
    let none = Read::Complete(0);
    assert_eq!(instances.live, 0, "no instance left running");
    assert_eq!(tally.parameters_left, none, "no JIT parameter left");
    assert_eq!(tally.slots_left, none, "no launch slot left claimed");
    assert_eq!(tally.runners_left, none, "no GitHub runner left");
    assert_eq!(tally.jobs_queue_left, none, "no message left in the jobs queue");
    assert_eq!(tally.dlq_left, none, "no message left in the DLQ");
    assert_eq!(tally.waiting_left, none, "no job left in the waiting list");

    // Jobs beyond max_runners waited (parked), and a freed slot woke each into a launch.
    let waited: Vec<_> = report.timelines.iter().filter(|t| t.waited()).collect();
    assert!(
        waited.len() >= 3,
        "2 cpu and 1 gpu job wait for room: {} did",
        waited.len()
    );
    for timeline in &waited {
        // The last wake can follow the launch: a duplicate delivery of the job (the scenario
        // redelivers one) may park and be woken after the first copy launched.
        let parked_to_woken = timeline.between("parked", "woken");
        let parked_to_launched = timeline.between("parked", "launched");
        assert!(
            parked_to_woken.is_some() && parked_to_launched.is_some(),
            "job {} parked, then was woken and launched: {:?}",
            timeline.job_id,
            timeline.stages
        );
    }
    // Every runner's in_progress delivery was kept: the interruptions table (Terraform's, named in
    // the document) names the job each runner took, for a re-run if EC2 took it back.
    let ran: std::collections::BTreeSet<u64> = instances
        .per_job
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(job_id, _)| *job_id)
        .collect();
    assert_eq!(
        report.started.get("recorded").copied(),
        Some(ran.len()),
        "{:?}",
        report.started
    );
    assert_eq!(report.started_kept, ran, "the table names each runner's job");
    let queue_time = demo::QueueTime::of(&report.timelines);
    assert_eq!(queue_time.jobs, instances.per_job.values().filter(|n| **n > 0).count());
    assert!(report.clean());

    // The metrics the Lambdas wrote, read as CloudWatch reads them, agree with what happened.
    let sum = |name: &str| {
        report
            .metrics
            .iter()
            .filter(|d| d.name == name)
            .map(|d| d.value)
            .sum::<f64>()
    };
    let launched: usize = instances.per_job.values().sum();
    // Each launch is written by template and capacity, and by deployment alone (the no-launch alarm's).
    let launches = |dimensions: usize| {
        report
            .metrics
            .iter()
            .filter(|d| d.name == "Launches" && d.dimensions.len() == dimensions)
            .map(|d| d.value)
            .sum::<f64>() as usize
    };
    assert_eq!(launches(3), launched, "one Launches point per instance");
    assert_eq!(launches(1), launched, "and one by deployment alone");
    assert_eq!(
        report.metrics.iter().filter(|d| d.name == "CommandSentAfter").count(),
        launched,
        "one time to command per runner started"
    );
    let launch_failed = report
        .metrics
        .iter()
        .any(|d| d.name == "HandBacks" && d.dimensions.iter().any(|(k, v)| k == "reason" && v == "launch_failed"));
    assert!(launch_failed, "the refused launches were counted as hand-backs");
    assert!(
        sum("DeadLetters") >= 1.0,
        "move-jobs counted the job it found in the DLQ"
    );
    assert!(sum("WebhookAnswers") as usize >= report.deliveries.len());
}
