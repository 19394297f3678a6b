#!/usr/bin/env python3
"""The alarms and the dashboard of each deployment, as applied (issue 16 item 2; terraform/monitoring.tf).

Reads `terraform show -json` of a state (the moto apply of terraform/test/moto) and asserts, per deployment:

  * the alarms are all there: dead-letter jobs, oldest job, webhook 5xx, errors and throttles of each of the four
    functions, jobs waiting while nothing launches, and the oldest job waiting for room in each template's waiting
    list;
  * every alarm treats missing data deliberately, as `notBreaching` or `ignore`: an idle deployment publishes no
    data, so `missing` (the provider's default) would leave it INSUFFICIENT_DATA and `breaching` would page for
    nothing; and none notifies on INSUFFICIENT_DATA;
  * every alarm notifies exactly the topics the deployment was given or created (its `monitoring` output), on ALARM
    and on OK, and no topic when none is configured;
  * each alarm watches this deployment's queue, function or API; the no-launch alarm reads the jobs queue's two
    metrics and one `Launches`, summed, by deployment alone (every launch of any template and capacity:
    create-runner launches on-demand on any template for re-runs and spot back-offs), and counts it; each
    oldest-waiting alarm reads its own template's `OldestWaiting` (Maximum, over a period that holds a sweep) at the
    oldest-job alarm's threshold, since both stand for monitoring.oldest_job_seconds;
  * the dashboard names every metric of the contract below with its dimensions and this deployment (as a metric
    or inside a SEARCH expression), every template's line of each per-template metric, the AWS metrics it promises
    (both queues, each function, the webhook's 5xx), and every alarm in its alarm widget.

Usage: check_monitoring.py <terraform-show.json> [--self-test]
--self-test breaks the applied data in each of the ways above, one at a time, and fails unless each is caught.
Exit status 0 when every assertion holds; 1 with one line per violation otherwise. Standard library only.
"""

import copy
import json
import re
import sys

NAMESPACE = "sophons"

# The metric contract (issue 16 item 1): what the Lambdas write in Embedded Metric Format, with its dimensions.
CONTRACT = {
    "EnqueuedAfter": {"deployment", "template"},
    "LaunchedAfter": {"deployment", "template"},
    "CommandSentAfter": {"deployment", "template"},
    "JobStartedAfter": {"deployment", "template"},
    "JobDuration": {"deployment", "template"},
    "Launches": {"deployment", "template", "capacity"},
    "HandBacks": {"deployment", "template", "reason"},
    "DeadLetters": {"deployment", "template", "reason"},
    "Relaunches": {"deployment", "template"},
    "SpotReclaims": {"deployment", "template"},
    "WebhookAnswers": {"deployment", "decision"},
    "LiveInstances": {"deployment", "template"},
    "FreeSlots": {"deployment", "template"},
    "OldestWaiting": {"deployment", "template"},
}

# Smaller dimension sets some metrics are also written under (`Emf::also_by`), each a CloudWatch metric of its own.
ALSO_BY = {
    "Launches": {"deployment"},
}

FUNCTIONS = ("autoscaler", "create-runner", "stop-runner", "move-jobs")
DELIBERATE_MISSING_DATA = {"notBreaching", "ignore"}
MAX_ALARM_METRICS = 10
# The sweep writes OldestWaiting once per run, every 15 minutes by default (sweep_schedule): a shorter alarm period
# would read most periods as "nothing waits".
SWEEP_MINUTES = 15


def walk(module):
    for resource in module.get("resources", []):
        yield module.get("address", ""), resource
    for child in module.get("child_modules", []):
        yield from walk(child)


class Deployment:
    """What one module call of the root module applied: its config document, alarms, dashboard and topics."""

    def __init__(self, address, resources, expected_topics):
        self.address = address
        self.expected_topics = expected_topics
        by_type = {}
        for module, resource in resources:
            by_type.setdefault(resource["type"], []).append((module, resource))
        config = next(r for m, r in by_type.get("aws_ssm_parameter", []) if m == address and r["name"] == "config")
        self.config = json.loads(config["values"]["value"])
        self.name = self.config["deployment"]
        self.jobs_queue = self.config["queue_url"].rsplit("/", 1)[-1]
        self.dlq = self.config["dlq_url"].rsplit("/", 1)[-1]
        self.templates = {name: t.get("on_demand_fallback", True) for name, t in self.config["templates"].items()}
        self.functions = {f"{self.name}-{f}" for f in FUNCTIONS}
        apis = [r for m, r in by_type.get("aws_apigatewayv2_api", []) if m == address]
        self.api_id = apis[0]["values"]["id"] if apis else None
        self.alarms = {r["values"]["alarm_name"]: r["values"] for m, r in by_type.get("aws_cloudwatch_metric_alarm", [])}
        dashboards = [r["values"] for m, r in by_type.get("aws_cloudwatch_dashboard", [])]
        self.dashboards = {d["dashboard_name"]: json.loads(d["dashboard_body"]) for d in dashboards}

    @classmethod
    def all_in(cls, show):
        root = show["values"]["root_module"]
        outputs = show["values"].get("outputs", {}).get("monitoring", {}).get("value") or {}
        deployments = []
        for child in root.get("child_modules", []):
            resources = list(walk(child))
            if not any(r["type"] == "aws_ssm_parameter" and r["name"] == "config" for _, r in resources):
                continue
            key = child["address"].removeprefix("module.")
            monitoring = outputs.get(key)
            topics = sorted(monitoring["alarm_topic_arns"]) if monitoring else None
            deployments.append(cls(child["address"], resources, topics))
        return deployments


def dimensions_of(entry):
    """(namespace, metric, {dimension: value}, options) of a dashboard metric array, or None for an expression."""
    if not entry or isinstance(entry[0], dict):
        return None
    options = entry[-1] if isinstance(entry[-1], dict) else {}
    fields = entry[:-1] if options else entry
    namespace, metric, rest = fields[0], fields[1], fields[2:]
    return namespace, metric, dict(zip(rest[0::2], rest[1::2])), options


SEARCH = re.compile(r"SEARCH\(\s*'\{([^}]*)\}(.*?)'\s*,")


def malformed(body):
    """Metric entries CloudWatch would refuse: each must be an array, of fields then options, or of one expression."""
    problems = []
    for widget in body.get("widgets", []):
        title = widget.get("properties", {}).get("title", widget.get("type"))
        for entry in widget.get("properties", {}).get("metrics", []) or []:
            if not isinstance(entry, list) or not entry:
                problems.append(f"widget {title!r}: metrics entry {entry!r} is not an array")
            elif not isinstance(entry[0], dict) and (len(entry) < 2 or not all(isinstance(v, str) for v in entry[:-1])):
                problems.append(f"widget {title!r}: metrics entry {entry!r} is not [namespace, metric, dimension, value, ..., options]")
    return problems


def references(body):
    """Every metric the dashboard body names: (namespace, metric, frozenset of dimension names, dimension values)."""
    found = []
    for widget in body.get("widgets", []):
        previous = []
        for entry in widget.get("properties", {}).get("metrics", []) or []:
            if not isinstance(entry, list) or not entry:
                continue
            # "." repeats the previous entry's field at that position (the console's shorthand).
            entry = [previous[i] if value == "." and i < len(previous) else value for i, value in enumerate(entry)]
            previous = entry
            parsed = dimensions_of(entry)
            if parsed:
                namespace, metric, dims, _ = parsed
                found.append((namespace, metric, frozenset(dims), dims))
                continue
            expression = entry[0].get("expression", "")
            for schema, terms in SEARCH.findall(expression):
                parts = [p.strip().strip('"') for p in schema.split(",")]
                values = dict(re.findall(r'(\w+)\s*=\s*"?([^"\s)]+)"?', terms))
                metric = values.pop("MetricName", None)
                found.append((parts[0], metric, frozenset(parts[1:]), values))
    return found


def check(deployment):
    errors = []
    name = deployment.name

    def error(alarm, message):
        errors.append(f"alarm {alarm}: {message}")

    # 1. The alarms are all there.
    expected = {f"{name}-dead-letter-jobs", f"{name}-oldest-job", f"{name}-webhook-5xx"}
    expected |= {f"{function}-{kind}" for function in deployment.functions for kind in ("errors", "throttles")}
    expected.add(f"{name}-no-launch-while-jobs-wait")
    expected |= {f"{name}-oldest-waiting-{template}" for template in deployment.templates}
    for missing in sorted(expected - set(deployment.alarms)):
        errors.append(f"alarm {missing} is missing")

    # 2. and 3. Missing data and actions, for every alarm of the deployment.
    topics = deployment.expected_topics
    if topics is None:
        errors.append(f"{deployment.address}: the root module has no `monitoring` output for it: the alarms' topics are unknown")
    for alarm, values in sorted(deployment.alarms.items()):
        missing_data = values.get("treat_missing_data")
        if missing_data not in DELIBERATE_MISSING_DATA:
            error(alarm, f"treat_missing_data is {missing_data!r}: an idle deployment publishes no data, set notBreaching "
                         "(or ignore) deliberately")
        if values.get("insufficient_data_actions"):
            error(alarm, "notifies on INSUFFICIENT_DATA, which every idle deployment is in")
        if not values.get("actions_enabled", True):
            error(alarm, "actions are disabled")
        if topics is not None:
            for field in ("alarm_actions", "ok_actions"):
                actions = sorted(values.get(field) or [])
                if actions != topics:
                    error(alarm, f"{field} is {actions}, expected the deployment's topics {topics}")

    # 4. What each alarm watches.
    watched = {
        f"{name}-dead-letter-jobs": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": deployment.dlq}),
        f"{name}-oldest-job": ("AWS/SQS", "ApproximateAgeOfOldestMessage", {"QueueName": deployment.jobs_queue}),
        f"{name}-webhook-5xx": ("AWS/ApiGateway", "5xx", {"ApiId": deployment.api_id}),
    }
    for function in deployment.functions:
        watched[f"{function}-errors"] = ("AWS/Lambda", "Errors", {"FunctionName": function})
        watched[f"{function}-throttles"] = ("AWS/Lambda", "Throttles", {"FunctionName": function})
    for template in deployment.templates:
        watched[f"{name}-oldest-waiting-{template}"] = (NAMESPACE, "OldestWaiting", {"deployment": name, "template": template})
    for alarm, (namespace, metric, dims) in watched.items():
        values = deployment.alarms.get(alarm)
        if values is None:
            continue
        got = (values.get("namespace"), values.get("metric_name"), values.get("dimensions") or {})
        if got != (namespace, metric, dims):
            error(alarm, f"watches {got}, expected {(namespace, metric, dims)}")

    # 4b. The waiting list's alarms: the oldest job of each template, held to the oldest-job alarm's threshold.
    oldest_job = deployment.alarms.get(f"{name}-oldest-job")
    for template in sorted(deployment.templates):
        alarm = f"{name}-oldest-waiting-{template}"
        values = deployment.alarms.get(alarm)
        if values is None:
            continue
        if values.get("statistic") != "Maximum":
            error(alarm, f"reads the {values.get('statistic')!r} of OldestWaiting, expected 'Maximum' (the oldest job)")
        if oldest_job is not None and values.get("threshold") != oldest_job.get("threshold"):
            error(alarm, f"threshold is {values.get('threshold')} s, the oldest-job alarm's is {oldest_job.get('threshold')} s: "
                         "both are monitoring.oldest_job_seconds")
        if (values.get("period") or 0) < SWEEP_MINUTES * 60:
            error(alarm, f"period is {values.get('period')} s: the sweep writes OldestWaiting every {SWEEP_MINUTES} "
                         "minutes, so most periods would read as nothing waiting")

    # 5. The no-launch alarm: every launch of the deployment (one metric), the jobs queue, one answer.
    no_launch = deployment.alarms.get(f"{name}-no-launch-while-jobs-wait")
    if no_launch is not None:
        alarm = no_launch["alarm_name"]
        queries = no_launch.get("metric_query") or []
        stats = [(q, q["metric"][0]) for q in queries if q.get("metric")]
        launches = []
        for query, stat in stats:
            dims = stat.get("dimensions") or {}
            if stat.get("metric_name") == "Launches":
                launches.append(query["id"])
                # By template or capacity it would count only those launches: on-demand ones of any template
                # (re-runs of interrupted jobs, spot back-off) would read as nothing launched.
                if stat.get("namespace") != NAMESPACE or set(dims) != ALSO_BY["Launches"] or dims.get("deployment") != name:
                    error(alarm, f"{query['id']} reads Launches as {stat.get('namespace')} {dims}, expected by "
                                 f"deployment {name} alone: every launch of every template and capacity")
                if stat.get("stat") != "Sum":
                    error(alarm, f"{query['id']} reads the {stat.get('stat')!r} of Launches, expected 'Sum'")
            elif stat.get("namespace") == "AWS/SQS" and dims != {"QueueName": deployment.jobs_queue}:
                error(alarm, f"{query['id']} reads {dims}, not the jobs queue {deployment.jobs_queue}")
        if len(launches) != 1:
            error(alarm, f"reads Launches {len(launches)} times, expected once, by deployment alone")
        expressions = " ".join(q.get("expression") or "" for q in queries)
        for query_id in launches:
            if not re.search(rf"\b{re.escape(query_id)}\b", expressions):
                error(alarm, f"no expression uses {query_id}: launches are read but never counted")
        queues = {stat.get("metric_name") for _, stat in stats if stat.get("namespace") == "AWS/SQS"}
        for metric in sorted({"ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible"} - queues):
            error(alarm, f"does not read the jobs queue's {metric}")
        if len(stats) > MAX_ALARM_METRICS:
            error(alarm, f"reads {len(stats)} metrics; CloudWatch takes at most {MAX_ALARM_METRICS}")
        if len({stat.get("period") for _, stat in stats}) > 1:
            error(alarm, "its metrics have different periods")
        if sum(1 for q in queries if q.get("return_data")) != 1:
            error(alarm, "must return exactly one expression")

    # 6. The dashboard.
    body = deployment.dashboards.get(name)
    if body is None:
        errors.append(f"dashboard {name} is missing")
        return errors
    errors += [f"dashboard {name}: {problem}" for problem in malformed(body)]
    found = references(body)
    for metric, dims in CONTRACT.items():
        mine = [values for namespace, m, names, values in found
                if namespace == NAMESPACE and m == metric and names == dims and values.get("deployment") == name]
        if not mine:
            errors.append(f"dashboard {name}: no {metric} with dimensions {sorted(dims)} of deployment {name}")
            continue
        searched = any("template" not in values for values in mine)
        if "template" in dims and not searched:
            for template in sorted(set(deployment.templates) - {values.get("template") for values in mine}):
                errors.append(f"dashboard {name}: no {metric} line of template {template}")
    aws = [("AWS/SQS", metric, {"QueueName": queue})
           for queue in (deployment.jobs_queue, deployment.dlq)
           for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage")]
    aws += [("AWS/Lambda", metric, {"FunctionName": f}) for f in sorted(deployment.functions) for metric in ("Errors", "Throttles")]
    aws.append(("AWS/ApiGateway", "5xx", {"ApiId": deployment.api_id}))
    for namespace, metric, dims in aws:
        if not any(n == namespace and m == metric and values == dims for n, m, _, values in found):
            errors.append(f"dashboard {name}: no {namespace} {metric} of {dims}")
    shown = {alarm for widget in body.get("widgets", []) if widget.get("type") == "alarm"
             for alarm in widget.get("properties", {}).get("alarms", [])}
    for alarm, values in sorted(deployment.alarms.items()):
        if values.get("arn") not in shown:
            errors.append(f"dashboard {name}: the alarm widget does not show {alarm}")
    return errors


def self_test(deployment):
    """Each way of breaking the alarms or the dashboard must be caught; a check that passes everything proves nothing."""
    name = deployment.name
    cases = {}

    def widgets(d):
        return d.dashboards[name]["widgets"]

    def drop_metric(metric):
        def edit(d):
            for widget in widgets(d):
                properties = widget.get("properties", {})
                if "metrics" in properties:
                    properties["metrics"] = [
                        entry for entry in properties["metrics"]
                        if not ((dimensions_of(entry) or (None, None, None, None))[1] == metric
                                or (isinstance(entry[0], dict) and f'"{metric}"' in entry[0].get("expression", "")))
                    ]
        return edit

    for metric in CONTRACT:
        cases[f"the dashboard without {metric}"] = drop_metric(metric)
    for metric in ("ApproximateAgeOfOldestMessage", "Throttles", "5xx"):
        cases[f"the dashboard without {metric}"] = drop_metric(metric)

    def flattened(d):
        for widget in widgets(d):
            properties = widget.get("properties", {})
            if properties.get("metrics"):
                properties["metrics"] = [field for entry in properties["metrics"] for field in entry]
                return
    cases["a widget's metric arrays flattened into one list"] = flattened

    def search_without_reason(d):
        for widget in widgets(d):
            for entry in widget.get("properties", {}).get("metrics", []):
                if isinstance(entry[0], dict) and "HandBacks" in entry[0].get("expression", ""):
                    entry[0]["expression"] = entry[0]["expression"].replace(",reason", "")
    cases["HandBacks searched without its reason dimension"] = search_without_reason

    def edit_lines(metric, keep=lambda dims: True, change=lambda entry: entry):
        """Every dashboard line of `metric`: dropped unless keep(its dimensions), else replaced by change(it)."""
        def edit(d):
            for widget in widgets(d):
                properties = widget.get("properties", {})
                kept = []
                for entry in properties.get("metrics", []):
                    parsed = dimensions_of(entry)
                    if parsed and parsed[1] == metric:
                        if not keep(parsed[2]):
                            continue
                        entry = change(entry)
                    kept.append(entry)
                if "metrics" in properties:
                    properties["metrics"] = kept
        return edit

    template = sorted(deployment.templates)[0]
    cases["LaunchedAfter charted without one template"] = edit_lines(
        "LaunchedAfter", keep=lambda dims: dims.get("template") != template)
    cases["JobDuration charted with a dimension the Lambdas do not write"] = edit_lines(
        "JobDuration", change=lambda entry: ["Template" if v == "template" else v for v in entry])
    cases["OldestWaiting charted without one template"] = edit_lines(
        "OldestWaiting", keep=lambda dims: dims.get("template") != template)
    cases["LiveInstances charted for another deployment"] = edit_lines(
        "LiveInstances", change=lambda entry: ["other" if v == name else v for v in entry])

    def on_alarm(alarm, edit):
        def apply(d):
            edit(d.alarms[alarm])
        return apply

    some = f"{name}-dead-letter-jobs"
    cases["an alarm left at treat_missing_data = missing"] = on_alarm(some, lambda a: a.__setitem__("treat_missing_data", "missing"))
    cases["an alarm treating missing data as breaching"] = on_alarm(
        f"{name}-oldest-job", lambda a: a.__setitem__("treat_missing_data", "breaching"))
    cases["an alarm without treat_missing_data"] = on_alarm(f"{name}-webhook-5xx", lambda a: a.pop("treat_missing_data"))
    cases["an alarm that notifies nobody"] = on_alarm(f"{name}-autoscaler-errors", lambda a: a.__setitem__("alarm_actions", []))
    cases["an alarm whose OK goes to another topic"] = on_alarm(
        f"{name}-move-jobs-throttles", lambda a: a.__setitem__("ok_actions", ["arn:aws:sns:us-east-1:123456789012:elsewhere"]))
    cases["an alarm notifying on INSUFFICIENT_DATA"] = on_alarm(
        f"{name}-stop-runner-errors", lambda a: a.__setitem__("insufficient_data_actions", list(a["alarm_actions"]) or ["x"]))
    cases["the dead-letter alarm on the jobs queue"] = on_alarm(
        some, lambda a: a.__setitem__("dimensions", {"QueueName": deployment.jobs_queue}))
    cases["the errors alarm of another function"] = on_alarm(
        f"{name}-create-runner-errors", lambda a: a.__setitem__("dimensions", {"FunctionName": f"{name}-autoscaler"}))
    cases["an alarm gone"] = lambda d: d.alarms.pop(f"{name}-stop-runner-throttles")
    cases["an alarm missing from the alarm widget"] = lambda d: [
        w["properties"]["alarms"].pop() for w in widgets(d) if w.get("type") == "alarm"]

    no_launch = f"{name}-no-launch-while-jobs-wait"
    if no_launch in deployment.alarms:
        def launch_queries(a):
            return [q for q in a["metric_query"] if q.get("metric") and q["metric"][0]["metric_name"] == "Launches"]

        def by_template_and_capacity(a):
            for q in launch_queries(a):
                q["metric"][0]["dimensions"] = {"deployment": name, "template": template, "capacity": "spot"}
        cases["the no-launch alarm counting only one template's spot launches"] = on_alarm(no_launch, by_template_and_capacity)

        def without_launches(a):
            a["metric_query"] = [q for q in a["metric_query"] if q not in launch_queries(a)]
        cases["the no-launch alarm without Launches"] = on_alarm(no_launch, without_launches)

        def other_deployment(a):
            for q in launch_queries(a):
                q["metric"][0]["dimensions"] = {"deployment": "other"}
        cases["the no-launch alarm reading another deployment's Launches"] = on_alarm(no_launch, other_deployment)

        def launches_twice(a):
            twin = copy.deepcopy(launch_queries(a)[0])
            twin["id"] = "launches_again"
            a["metric_query"].append(twin)
        cases["the no-launch alarm reading Launches twice"] = on_alarm(no_launch, launches_twice)

        def averaged(a):
            for q in launch_queries(a):
                q["metric"][0]["stat"] = "Average"
        cases["the no-launch alarm averaging Launches"] = on_alarm(no_launch, averaged)

        def not_counted(a):
            ids = {q["id"] for q in launch_queries(a)}
            for q in a["metric_query"]:
                if q.get("expression"):
                    q["expression"] = re.sub(r"\b(" + "|".join(map(re.escape, ids)) + r")\b", "0", q["expression"])
        cases["the no-launch alarm's sum leaving Launches out"] = on_alarm(no_launch, not_counted)

        def other_queue(a):
            for q in a["metric_query"]:
                if q.get("metric") and q["metric"][0]["namespace"] == "AWS/SQS":
                    q["metric"][0]["dimensions"] = {"QueueName": deployment.dlq}
        cases["the no-launch alarm reading the dead-letter queue"] = on_alarm(no_launch, other_queue)
        cases["the no-launch alarm gone"] = lambda d: d.alarms.pop(no_launch)

    waiting = f"{name}-oldest-waiting-{template}"
    cases["the oldest-waiting alarm on the wrong metric"] = on_alarm(
        waiting, lambda a: a.__setitem__("metric_name", "FreeSlots"))
    cases["the oldest-waiting alarm of another template"] = on_alarm(
        waiting, lambda a: a.__setitem__("dimensions", {**a["dimensions"], "template": "other"}))
    cases["the oldest-waiting alarm averaging the waits"] = on_alarm(
        waiting, lambda a: a.__setitem__("statistic", "Average"))
    cases["the oldest-waiting alarm at another threshold than the oldest-job alarm"] = on_alarm(
        waiting, lambda a: a.__setitem__("threshold", a["threshold"] * 2))
    cases["the oldest-waiting alarm over 5 minutes, shorter than the sweep"] = on_alarm(
        waiting, lambda a: a.__setitem__("period", 300))
    cases["the oldest-waiting alarm missing for a template"] = lambda d: d.alarms.pop(waiting)

    missed = []
    for label, edit in cases.items():
        broken = copy.deepcopy(deployment)
        edit(broken)
        if not check(broken):
            missed.append(label)
    return missed, len(cases)


def main(argv):
    if len(argv) < 2:
        print("usage: check_monitoring.py <terraform-show.json> [--self-test]", file=sys.stderr)
        return 2
    with open(argv[1]) as handle:
        show = json.load(handle)
    deployments = Deployment.all_in(show)
    if not deployments:
        print("monitoring: no deployment found in the state")
        return 1
    failed = False
    for deployment in deployments:
        errors = check(deployment)
        for line in errors:
            print(f"monitoring {deployment.name}: {line}")
        if "--self-test" in argv:
            missed, tried = self_test(deployment)
            for label in missed:
                print(f"monitoring {deployment.name} self-test: the check did not catch: {label}")
            print(f"monitoring {deployment.name} self-test: {tried - len(missed)} of {tried} breakages caught")
            errors += missed
        print(f"monitoring {deployment.name}: {len(deployment.alarms)} alarms, {len(CONTRACT)} contract metrics on the "
              f"dashboard, topics {deployment.expected_topics}: {len(errors)} violation(s)")
        failed = failed or bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
