#!/usr/bin/env python3
"""IAM security test of the deployment (issue 7 item 4).

Reads `terraform show -json` of a state (the moto apply) and asserts that the policies Terraform produced are
as narrow as the design says:

  * no wildcard action anywhere (no "*", no "ec2:*", no "ec2:Describe*", no NotAction);
  * Resource "*" only for actions AWS cannot scope (a fixed allow-list of read/list actions and the SSM
    agent's message channels), never for terminate, tagging, SendCommand, launches or parameter writes;
  * TerminateInstances, CreateTags (after launch), SendCommand on instances and CancelSpotInstanceRequests are
    conditioned on the `sophons:deployment` tag of this deployment;
  * launches only from this deployment's launch templates, instances tagged with the deployment at launch;
  * iam:PassRole only for the runner role, only to EC2, only in create-runner's role;
  * the runner instance role reads and deletes parameters under /<deployment>/jit/ only (no listing), and of
    those only its own instance's: every GetParameter/DeleteParameter is conditioned on the parameter's
    owner tag being the calling instance's ARN (StringEquals aws:ResourceTag/sophons:instance-arn =
    ${ec2:SourceInstanceARN}); it can never tag or write those parameters, and only create-runner tags them;
    it reads the runner script object (and the optional tarball cache) only, writes the command log group only;
  * each Lambda has its own role, and only the functions that need a secret can read it;
  * DynamoDB only on the launch slots table, the waiting list and the interruptions table (the config document's
    `slots_table`, `waiting_table` and `interruptions_table`), never on an index, another table or "*", and per
    table only what each role's part needs: on the slots table create-runner may GetItem, PutItem, DeleteItem and
    Query (claim, give back), stop-runner GetItem, DeleteItem, Query and Scan (free, sweep; it never claims); on
    the waiting table create-runner may PutItem, Query, UpdateItem and DeleteItem (park, wake, take off),
    stop-runner Query, UpdateItem and DeleteItem (wake; it never parks); on the interruptions table create-runner
    may GetItem, PutItem and Query (re-runs and back-offs launch on-demand, spot losses counted; it never deletes),
    stop-runner PutItem, Query and DeleteItem (record interruptions, follow them; it never scans), the
    autoscaler PutItem only, and only on items whose partition key starts with `ran#` (which job each runner ran):
    its statement must carry ForAllValues:StringLike dynamodb:LeadingKeys = ran#* and a Null test requiring that
    key, or the webhook could write re-run claims, spot losses, back-offs and interrupted jobs; every one of those
    is granted; move-jobs and the runner instances have no DynamoDB action at all;
  * sqs:SendMessage only on the jobs queue (only SQS itself moves messages to the dead-letter queue), and every
    function that puts jobs there may: the autoscaler (new jobs), create-runner (woken jobs), stop-runner
    (relaunches, woken jobs) and move-jobs (jobs back from the dead-letter queue);
  * S3: only move-jobs, only when the config document has `runner_cache`: s3:GetObject, s3:PutObject and
    s3:AbortMultipartUpload on the cache prefix and s3:ListBucket on the script bucket, nothing else;
  * the cold start's one GetParameters call: each function's SOPHONS_SECRET_PARAMS names exactly its secret (the
    autoscaler the webhook secret, the others the GitHub credential), and its role may ssm:GetParameters (and
    ssm:GetParameter) on its config document and on every name listed (GetParameters fails whole if one is denied).

Usage: check_iam.py <terraform-show.json> [--self-test]
Exit status 0 when every assertion holds; 1 with one line per violation otherwise.
Standard library only.
"""

import copy
import json
import re
import sys

# Actions that AWS does not scope to resources (so "*" is the only possible Resource) and that only read.
UNSCOPABLE_ACTIONS = {
    "ec2:DescribeInstances",
    "ec2:DescribeSpotInstanceRequests",
    "ec2:DescribeImages",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeSubnets",
    "ssm:DescribeParameters",
    "ssm:GetCommandInvocation",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    # The SSM agent's message channels (AmazonSSMManagedInstanceCore grants them on "*" as well).
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
}

# create-runner tags each JIT parameter with the ARN of its instance (terraform/iam.tf, local.jit_owner_tag);
# the runner role may touch a JIT parameter only when that tag equals the calling instance's ARN.
JIT_OWNER_TAG = "sophons:instance-arn"
CALLING_INSTANCE = "${ec2:SourceInstanceARN}"
PARAMETER_TAGGING = {"ssm:AddTagsToResource", "ssm:RemoveTagsFromResource"}

# The DynamoDB actions each role may have, per table: the config document's key naming the table -> function ->
# actions (terraform/iam.tf: ClaimLaunchSlots and FreeLaunchSlots on the slots table, ParkJobsWaitingForRoom and
# WakeWaitingJobs on the waiting table, LaunchRerunsAndBackedOffTemplatesOnDemand, FollowInterruptedJobs and
# RecordWhichJobEachRunnerRan on the interruptions table). A role may have each of them, must have all of them, and
# nothing else; roles not named here may have none. Lower case: IAM compares action names case-insensitively.
TABLE_ACTIONS = {
    "slots_table": {
        "create-runner": {"dynamodb:getitem", "dynamodb:putitem", "dynamodb:deleteitem", "dynamodb:query"},
        "stop-runner": {"dynamodb:getitem", "dynamodb:deleteitem", "dynamodb:query", "dynamodb:scan"},
    },
    "waiting_table": {
        "create-runner": {"dynamodb:putitem", "dynamodb:query", "dynamodb:updateitem", "dynamodb:deleteitem"},
        "stop-runner": {"dynamodb:query", "dynamodb:updateitem", "dynamodb:deleteitem"},
    },
    "interruptions_table": {
        "create-runner": {"dynamodb:getitem", "dynamodb:putitem", "dynamodb:query"},
        "stop-runner": {"dynamodb:putitem", "dynamodb:query", "dynamodb:deleteitem"},
        "autoscaler": {"dynamodb:putitem"},
    },
}
# Roles limited to some partitions of a table: (config key of the table, function) -> the one dynamodb:LeadingKeys
# pattern its statements there may allow. The webhook writes which job each runner ran (ran#<instance id>) and
# nothing else of the interruptions table (terraform/iam.tf: RecordWhichJobEachRunnerRan).
LEADING_KEYS = {
    ("interruptions_table", "autoscaler"): "ran#*",
}
# What each table's part is, for the message when a role lacks an action on it.
TABLE_PARTS = {
    "slots_table": "its part in the launch slots",
    "waiting_table": "its part in the waiting list",
    "interruptions_table": "its part in the spot interruptions (re-runs, back-offs, which job each runner ran)",
}

# The functions that send to the jobs queue, each of which must be allowed to (terraform/iam.tf: QueueJobs,
# WakeWaitingJobs, RequeueJobs). No role may send anywhere else.
JOBS_QUEUE_SENDERS = {
    "autoscaler": "queue new jobs",
    "create-runner": "wake jobs from the waiting list",
    "stop-runner": "relaunch jobs and wake jobs from the waiting list",
    "move-jobs": "bring jobs back from the dead-letter queue",
}

# Actions on instances (and spot requests) that must carry the deployment tag condition.
TAG_CONDITIONED = {
    "ec2:TerminateInstances",
    "ec2:CreateTags",
    "ssm:SendCommand",
    "ec2:CancelSpotInstanceRequests",
}


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def resources_of(module):
    """Every resource in a `terraform show -json` module tree."""
    for resource in module.get("resources", []):
        yield resource
    for child in module.get("child_modules", []):
        yield from resources_of(child)


FUNCTIONS = ("autoscaler", "create-runner", "stop-runner", "move-jobs")
# Read at every cold start with the config document, in one GetParameters call (functions.tf).
SECRET_PARAMS = "SOPHONS_SECRET_PARAMS"


class Deployment:
    """One deployment in the state, found from its config document; only its own resources are kept."""

    def __init__(self, resources, config):
        self.resources = resources
        self.config = config
        self.name = name = config["deployment"]
        self.runner_role = self.one("aws_iam_role", lambda v: v["name"] == f"{name}-runner")
        self.bucket = config["runner_script"]["bucket"]
        self.script_key = config["runner_script"]["key"]
        self.command_log_group = config["command"]["log_group"]
        # config key -> table ARN, for each table of TABLE_ACTIONS
        self.table_arns = {}
        for key in TABLE_ACTIONS:
            if key not in config:
                raise SystemExit(f"check_iam: {name}: the config document has no {key}")
            self.table_arns[key] = self.one("aws_dynamodb_table", lambda v, key=key: v["name"] == config[key])["arn"]
        self.slots_table_arn = self.table_arns["slots_table"]
        self.waiting_table_arn = self.table_arns["waiting_table"]
        self.interruptions_table_arn = self.table_arns["interruptions_table"]
        queues = {r["values"].get("url") or r["values"].get("id"): r["values"]["arn"] for r in self.of_type("aws_sqs_queue")}
        if config["queue_url"] not in queues or config["dlq_url"] not in queues:
            raise SystemExit(f"check_iam: {name}: the queues of queue_url and dlq_url are not both in the state")
        self.jobs_queue_arn = queues[config["queue_url"]]
        self.dlq_arn = queues[config["dlq_url"]]
        template_names = {t["launch_template"] for t in config["templates"].values()}
        self.launch_template_arns = sorted(
            r["values"]["arn"] for r in self.of_type("aws_launch_template") if r["values"]["name"] in template_names
        )
        if len(self.launch_template_arns) != len(template_names):
            raise SystemExit(f"check_iam: {name}: launch templates {sorted(template_names)} not all in the state")
        roles = {r["values"]["name"]: r["values"]["arn"] for r in self.of_type("aws_iam_role")}
        own_functions = {f"{name}-{function}" for function in FUNCTIONS}
        self.functions = {}
        self.environments = {}
        for function in self.of_type("aws_lambda_function"):
            if function["values"]["function_name"] not in own_functions:
                continue
            role_arn = function["values"]["role"]
            role_name = next((n for n, a in roles.items() if a == role_arn), role_arn)
            self.functions[function["values"]["function_name"]] = role_name
            environment = function["values"].get("environment") or [{}]
            self.environments[function["values"]["function_name"]] = dict(environment[0].get("variables") or {})
        own_roles = {f"{name}-{function}-lambda" for function in FUNCTIONS} | {f"{name}-runner"}
        # role name -> list of policy documents (inline policies)
        self.role_policies = {}
        for policy in self.of_type("aws_iam_role_policy"):
            if policy["values"]["role"] in own_roles:
                self.role_policies.setdefault(policy["values"]["role"], []).append(json.loads(policy["values"]["policy"]))
        self.resource_policies = []
        for policy in self.of_type("aws_s3_bucket_policy"):
            if policy["values"]["bucket"] == self.bucket:
                self.resource_policies.append(("aws_s3_bucket_policy", json.loads(policy["values"]["policy"])))
        for policy in self.of_type("aws_sqs_queue_policy"):
            if policy["values"]["queue_url"] in (config["queue_url"], config["dlq_url"]):
                self.resource_policies.append(("aws_sqs_queue_policy", json.loads(policy["values"]["policy"])))

    @staticmethod
    def all_in(show):
        resources = list(resources_of(show["values"]["root_module"]))
        deployments = []
        for r in resources:
            values = r.get("values", {})
            if r["type"] == "aws_ssm_parameter" and values.get("type") == "String" and values["name"].endswith("/config"):
                deployments.append(Deployment(resources, json.loads(values["value"])))
        if not deployments:
            raise SystemExit("check_iam: no config document (aws_ssm_parameter <prefix>/config) in the state")
        return deployments

    def of_type(self, kind):
        return [r for r in self.resources if r["type"] == kind and r.get("mode", "managed") == "managed"]

    def one(self, kind, predicate):
        found = [r for r in self.of_type(kind) if predicate(r["values"])]
        if len(found) != 1:
            raise SystemExit(f"check_iam: expected one {kind} matching, found {len(found)}")
        return found[0]["values"]

    def statements(self, role):
        for document in self.role_policies.get(role, []):
            yield from as_list(document.get("Statement"))

    def may(self, role, action, resource_suffix):
        """Whether an unconditional Allow of the role names `action` on a resource ending in `resource_suffix`."""
        return any(
            statement.get("Effect") == "Allow"
            and not statement.get("Condition")
            and action in as_list(statement.get("Action"))
            and any(r.endswith(resource_suffix) for r in as_list(statement.get("Resource")))
            for statement in self.statements(role)
        )


def condition_values(statement, key):
    """Values a statement's Condition requires for `key` (any operator), case-insensitive on the key."""
    values = []
    for operator, conditions in (statement.get("Condition") or {}).items():
        for condition_key, value in conditions.items():
            if condition_key.lower() == key.lower():
                values.extend(as_list(value))
    return values


def own_instance_only(statement):
    """Whether a statement applies only when the parameter's owner tag is the calling instance's ARN.

    Exactly StringEquals (no ...IfExists, which would pass an untagged parameter; no set operator), on the
    owner tag (aws: or ssm: prefix), with the calling instance's ARN as the only value.
    """
    for operator, conditions in (statement.get("Condition") or {}).items():
        if operator != "StringEquals":
            continue
        for key, value in conditions.items():
            if key.lower() in (f"aws:resourcetag/{JIT_OWNER_TAG}", f"ssm:resourcetag/{JIT_OWNER_TAG}"):
                if as_list(value) == [CALLING_INSTANCE]:
                    return True
    return False


def leading_keys_only(statement, pattern):
    """Whether a statement applies only to items whose partition key matches `pattern`.

    ForAllValues:StringLike on dynamodb:LeadingKeys with `pattern` as its only value, and Null = false on the same
    key: ForAllValues is true of a request that has no such key at all. Any other test of the key (another
    operator, ...IfExists, another value) does not count as the limit.
    """
    limited = required = False
    for operator, conditions in (statement.get("Condition") or {}).items():
        for key, value in conditions.items():
            if key.lower() != "dynamodb:leadingkeys":
                continue
            if operator == "ForAllValues:StringLike" and as_list(value) == [pattern]:
                limited = True
            elif operator == "Null" and [str(v).lower() for v in as_list(value)] == ["false"]:
                required = True
            else:
                return False
    return limited and required


def check(deployment):
    errors = []
    name = deployment.name
    tag_keys = (f"ec2:ResourceTag/sophons:deployment", "ssm:resourceTag/sophons:deployment")

    def error(role, statement, message):
        errors.append(f"{role} [{statement.get('Sid', '?')}]: {message}")

    # 1. Each Lambda has its own role.
    roles = list(deployment.functions.values())
    if len(deployment.functions) != 4:
        errors.append(f"expected 4 Lambda functions, found {sorted(deployment.functions)}")
    if len(set(roles)) != len(roles):
        errors.append(f"Lambda functions share roles: {deployment.functions}")
    if deployment.runner_role["name"] in roles:
        errors.append("a Lambda function uses the runner instance role")

    all_roles = set(deployment.role_policies)
    for role in sorted(all_roles):
        for statement in deployment.statements(role):
            if statement.get("Effect") != "Allow":
                continue
            if "NotAction" in statement or "NotResource" in statement:
                error(role, statement, "NotAction/NotResource grants more than it names")
            actions = as_list(statement.get("Action"))
            resources = as_list(statement.get("Resource"))

            # 2. No wildcard action.
            for action in actions:
                if "*" in action:
                    error(role, statement, f"wildcard action {action}")

            # 3. Resource "*" only for unscopable read actions.
            if "*" in resources:
                for action in actions:
                    if action not in UNSCOPABLE_ACTIONS:
                        error(role, statement, f"{action} on Resource \"*\"")

            # 4. Instance-changing actions only on this deployment's tagged resources.
            for action in set(actions) & TAG_CONDITIONED:
                for resource in resources:
                    if action == "ssm:SendCommand" and re.search(r":document/AWS-RunShellScript$", resource):
                        continue
                    if action == "ec2:CreateTags" and condition_values(statement, "ec2:CreateAction"):
                        if set(condition_values(statement, "ec2:CreateAction")) - {"CreateFleet", "RunInstances"}:
                            error(role, statement, "CreateTags on create for other actions than launches")
                        continue
                    tagged = any(condition_values(statement, key) == [name] for key in tag_keys)
                    if not tagged:
                        error(role, statement, f"{action} on {resource} without a sophons:deployment={name} condition")

            # 5. Launches only from our launch templates; instances tagged with the deployment. An instant
            # fleet launches with the caller's RunInstances rights, so RunInstances is the gate; CreateFleet may
            # name no launch template but ours.
            if "ec2:CreateFleet" in actions:
                for resource in resources:
                    if ":launch-template/" in resource and resource not in deployment.launch_template_arns:
                        error(role, statement, f"ec2:CreateFleet with a launch template that is not ours: {resource}")
            for action in set(actions) & {"ec2:RunInstances"}:
                for resource in resources:
                    if resource in deployment.launch_template_arns:
                        continue
                    templates = condition_values(statement, "ec2:LaunchTemplate")
                    if not templates or not set(templates) <= set(deployment.launch_template_arns):
                        error(role, statement, f"{action} on {resource} not limited to this deployment's launch templates")
                    if re.search(r":instance/\*$", resource) and condition_values(
                        statement, "aws:RequestTag/sophons:deployment"
                    ) != [name]:
                        error(role, statement, f"{action} launches instances without the sophons:deployment tag")

            # 6. PassRole: the runner role, to EC2, from create-runner only.
            if "iam:PassRole" in actions:
                if resources != [deployment.runner_role["arn"]]:
                    error(role, statement, f"iam:PassRole on {resources}, not only the runner role")
                if condition_values(statement, "iam:PassedToService") != ["ec2.amazonaws.com"]:
                    error(role, statement, "iam:PassRole not limited to ec2.amazonaws.com")
                if role != f"{name}-create-runner-lambda":
                    error(role, statement, "iam:PassRole outside create-runner's role")

            # 7. Secrets: which role may read which parameter.
            for action in actions:
                if not action.startswith("ssm:Get") or action == "ssm:GetCommandInvocation":
                    continue
                for resource in resources:
                    parameter = resource.split(":parameter", 1)[-1] if ":parameter" in resource else None
                    if parameter is None:
                        continue
                    if parameter.startswith("/aws/service/"):
                        continue  # public AMI parameters
                    if parameter.startswith(f"/{name}/jit"):
                        continue
                    if role == deployment.runner_role["name"]:
                        error(role, statement, f"the runner role may read {parameter}")
                    webhook = deployment.config["webhook_secret_param"]
                    github = deployment.config["github"]
                    credential = github.get("token_param") or github.get("app", {}).get("private_key_param")
                    if parameter == webhook and role != f"{name}-autoscaler-lambda":
                        error(role, statement, "only the autoscaler may read the webhook secret")
                    if parameter == credential and role == f"{name}-autoscaler-lambda":
                        error(role, statement, "the autoscaler must not read the GitHub credential")

    # 7b. Tags on JIT parameters decide which instance reads them: only create-runner may set them, only on
    # this deployment's JIT parameters, only sophons: keys.
    jit_arn = re.compile(rf"^arn:aws:ssm:[a-z0-9-]+:\d{{12}}:parameter/{re.escape(name)}/jit/\*$")
    for role in sorted(all_roles):
        for statement in deployment.statements(role):
            if statement.get("Effect") != "Allow":
                continue
            for action in set(as_list(statement.get("Action"))) & PARAMETER_TAGGING:
                resources = as_list(statement.get("Resource"))
                if role != f"{name}-create-runner-lambda":
                    error(role, statement, f"{action} outside create-runner's role: the owner tag of a JIT parameter is its access check")
                elif not all(jit_arn.match(r) for r in resources):
                    error(role, statement, f"{action} beyond /{name}/jit/*: {resources}")
                elif condition_values(statement, "aws:TagKeys") != ["sophons:*"]:
                    error(role, statement, f"{action} not limited to sophons: tag keys")

    # 8. The runner instance role, in full.
    runner = deployment.runner_role["name"]
    script_arn = f"arn:aws:s3:::{deployment.bucket}/{deployment.script_key}"
    cache_arn = f"arn:aws:s3:::{deployment.bucket}/actions-runner/*"
    log_group = re.compile(rf"^arn:aws:logs:[a-z0-9-]+:\d{{12}}:log-group:{re.escape(deployment.command_log_group)}:\*$")
    if not list(deployment.statements(runner)):
        errors.append(f"the runner role {runner} has no policy")
    for statement in deployment.statements(runner):
        if statement.get("Effect") != "Allow":
            continue
        actions = as_list(statement.get("Action"))
        resources = as_list(statement.get("Resource"))
        for action in actions:
            service = action.split(":")[0]
            if action in UNSCOPABLE_ACTIONS and service in ("ec2messages", "ssmmessages"):
                continue
            if action in ("ssm:UpdateInstanceInformation", "ssm:ListInstanceAssociations", "ssm:UpdateInstanceAssociationStatus"):
                if not all(re.search(r":instance/\*$", r) for r in resources):
                    error(runner, statement, f"{action} beyond instances")
            elif action in ("ssm:GetDocument", "ssm:DescribeDocument"):
                if not all(re.search(r":document/", r) for r in resources):
                    error(runner, statement, f"{action} beyond documents")
            elif action in ("ssm:GetParameter", "ssm:DeleteParameter"):
                if not all(jit_arn.match(r) for r in resources):
                    error(runner, statement, f"{action} beyond /{name}/jit/*: {resources}")
                if not own_instance_only(statement):
                    error(
                        runner,
                        statement,
                        f"{action} on any instance's JIT parameter: needs StringEquals "
                        f"aws:ResourceTag/{JIT_OWNER_TAG} = {CALLING_INSTANCE}",
                    )
            elif action == "s3:GetObject":
                if not all(r in (script_arn, cache_arn) for r in resources):
                    error(runner, statement, f"s3:GetObject beyond the runner script: {resources}")
            elif action in ("logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"):
                if not all(log_group.match(r) for r in resources):
                    error(runner, statement, f"{action} beyond the command log group: {resources}")
            elif action == "logs:DescribeLogGroups":
                if "*" in resources:
                    error(runner, statement, "logs:DescribeLogGroups on \"*\"")
            elif action == "kms:Decrypt":
                if not condition_values(statement, "kms:ViaService"):
                    error(runner, statement, "kms:Decrypt not limited to SSM")
            else:
                error(runner, statement, f"unexpected action {action} for the runner instances")

    # 8b. ...and an explicit Deny keeps the owner tags out of the runner's reach even if a broader policy is
    # attached to its role later.
    retag_denied = set()
    for statement in deployment.statements(runner):
        if statement.get("Effect") == "Deny" and all(jit_arn.match(r) for r in as_list(statement.get("Resource"))):
            if not statement.get("Condition"):
                retag_denied |= set(as_list(statement.get("Action")))
    for action in sorted(PARAMETER_TAGGING - retag_denied):
        errors.append(f"{runner}: no unconditional Deny of {action} on /{name}/jit/*")

    # 9. Resource policies: no wildcard actions, no public Allow.
    for kind, document in deployment.resource_policies:
        for statement in as_list(document.get("Statement")):
            for action in as_list(statement.get("Action")):
                if "*" in action:
                    errors.append(f"{kind} [{statement.get('Sid', '?')}]: wildcard action {action}")
            principal = statement.get("Principal")
            if statement.get("Effect") == "Allow" and (principal == "*" or "*" in as_list((principal or {}).get("AWS"))):
                errors.append(f"{kind} [{statement.get('Sid', '?')}]: Allow for every principal")

    # 10. DynamoDB: the slots, waiting and interruptions tables only, and per role and table only what its part
    # there needs.
    table_of = {arn: key for key, arn in deployment.table_arns.items()}
    granted = {}  # (role, config key of the table) -> actions
    for role in sorted(all_roles):
        function = role.removeprefix(f"{name}-").removesuffix("-lambda")
        for statement in deployment.statements(role):
            if statement.get("Effect") != "Allow":
                continue
            resources = as_list(statement.get("Resource"))
            for action in as_list(statement.get("Action")):
                if not action.lower().startswith("dynamodb:"):
                    continue
                if not resources:
                    error(role, statement, f"{action} without a resource")
                for resource in resources:
                    key = table_of.get(resource)
                    if key is None:
                        error(role, statement, f"{action} on {resource}, which is none of the slots, waiting and interruptions tables")
                        continue
                    allowed = TABLE_ACTIONS[key].get(function, set())
                    pattern = LEADING_KEYS.get((key, function))
                    if action.lower() not in allowed:
                        error(role, statement, f"{action} on the {key.removesuffix('_table')} table: this role may have "
                                               f"{sorted(allowed) or 'no DynamoDB action'} there")
                    elif pattern and not leading_keys_only(statement, pattern):
                        error(role, statement, f"{action} on the {key.removesuffix('_table')} table not limited to partition "
                                               f"keys {pattern}: needs ForAllValues:StringLike dynamodb:LeadingKeys = "
                                               f"{pattern} and Null dynamodb:LeadingKeys = false")
                    else:
                        granted.setdefault((role, key), set()).add(action.lower())
    for key, functions in TABLE_ACTIONS.items():
        for function, needed in functions.items():
            role = f"{name}-{function}-lambda"
            for action in sorted(needed - granted.get((role, key), set())):
                errors.append(f"{role}: no {action} on the {key.removesuffix('_table')} table: {function} cannot do {TABLE_PARTS[key]}")

    # 10b. sqs:SendMessage: only to the jobs queue, and by every function that puts jobs there.
    senders = set()
    for role in sorted(all_roles):
        for statement in deployment.statements(role):
            if statement.get("Effect") != "Allow":
                continue
            if not any(a.lower() == "sqs:sendmessage" for a in as_list(statement.get("Action"))):
                continue
            resources = as_list(statement.get("Resource"))
            if resources != [deployment.jobs_queue_arn]:
                error(role, statement, f"sqs:SendMessage on {resources}, not only the jobs queue {deployment.jobs_queue_arn}")
            elif not statement.get("Condition"):
                senders.add(role)
    for function, why in JOBS_QUEUE_SENDERS.items():
        role = f"{name}-{function}-lambda"
        if role not in senders:
            errors.append(f"{role}: no sqs:SendMessage on the jobs queue: {function} cannot {why}")

    # 11. The cold start reads the document and the function's secret in one GetParameters call, which fails whole
    # when the role may not read one of the names: each function lists exactly its secret, and may read all of them.
    webhook = deployment.config["webhook_secret_param"]
    github = deployment.config["github"]
    credential = github.get("token_param") or github.get("app", {}).get("private_key_param")
    for function in FUNCTIONS:
        function_name = f"{name}-{function}"
        if function_name not in deployment.environments:
            continue
        environment = deployment.environments[function_name]
        listed = [n for n in environment.get(SECRET_PARAMS, "").split(",") if n]
        expected = [webhook] if function == "autoscaler" else [credential]
        if listed != expected:
            errors.append(f"{function_name}: {SECRET_PARAMS} is {listed}, expected {expected}")
        role = deployment.functions[function_name]
        for parameter in [environment.get("SOPHONS_CONFIG_PARAM", f"/{name}/config")] + listed:
            for action in ("ssm:GetParameters", "ssm:GetParameter"):
                if not deployment.may(role, action, f":parameter{parameter}"):
                    errors.append(f"{role}: no {action} on {parameter}, which {function_name} reads at every cold start")

    # 12. S3: only move-jobs, only for the runner cache (config `runner_cache`): HeadObject and a multipart upload
    # under the cache prefix, ListBucket on the bucket (so a missing package is a 404); no delete, nothing else.
    cache = deployment.config.get("runner_cache")
    move_jobs_role = f"{name}-move-jobs-lambda"
    cache_objects = f"arn:aws:s3:::{deployment.bucket}/{(cache or {}).get('prefix', '')}*"
    cache_grants = {"s3:getobject": cache_objects, "s3:putobject": cache_objects, "s3:abortmultipartupload": cache_objects,
                    "s3:listbucket": f"arn:aws:s3:::{deployment.bucket}"}
    s3_granted = set()
    for role in sorted(all_roles - {deployment.runner_role["name"]}):
        for statement in deployment.statements(role):
            if statement.get("Effect") != "Allow":
                continue
            resources = as_list(statement.get("Resource"))
            for action in as_list(statement.get("Action")):
                if not action.lower().startswith("s3:"):
                    continue
                if role != move_jobs_role or not cache:
                    error(role, statement, f"{action}: only move-jobs touches S3, and only for the runner cache")
                elif action.lower() not in cache_grants:
                    error(role, statement, f"{action}: the runner cache needs only {sorted(cache_grants)}")
                elif resources != [cache_grants[action.lower()]]:
                    error(role, statement, f"{action} on {resources}, not only {cache_grants[action.lower()]}")
                else:
                    s3_granted.add(action.lower())
    if cache:
        for action in sorted(set(cache_grants) - s3_granted):
            errors.append(f"{move_jobs_role}: no {action}: move-jobs cannot keep the runner cache")

    return errors


def self_test(deployment):
    """The checker must catch each kind of broadening; a checker that passes everything proves nothing."""
    name = deployment.name
    create_role = f"{name}-create-runner-lambda"
    stop_role = f"{name}-stop-runner-lambda"
    table = deployment.slots_table_arn
    waiting = deployment.waiting_table_arn
    interruptions = deployment.interruptions_table_arn
    autoscaler_role = f"{name}-autoscaler-lambda"
    ran = "RecordWhichJobEachRunnerRan"

    def mutated(role, edit):
        broken = copy.deepcopy(deployment)
        edit(broken.role_policies[role][0]["Statement"])
        return check(broken)

    def drop_condition(sid):
        def edit(statements):
            for statement in statements:
                if statement.get("Sid") == sid:
                    statement.pop("Condition", None)
        return edit

    def drop_statement(sid):
        def edit(statements):
            statements[:] = [statement for statement in statements if statement.get("Sid") != sid]
        return edit

    def rename_operator(sid, operator, new_operator):
        def edit(statements):
            for statement in statements:
                if statement.get("Sid") == sid and operator in statement.get("Condition", {}):
                    statement["Condition"][new_operator] = statement["Condition"].pop(operator)
        return edit

    def set_condition(sid, operator, key, value):
        def edit(statements):
            for statement in statements:
                if statement.get("Sid") == sid:
                    conditions = statement.setdefault("Condition", {}).setdefault(operator, {})
                    for existing in [k for k in conditions if k.lower() == key.lower()]:
                        del conditions[existing]
                    conditions[key] = value
        return edit

    def drop_operator(sid, operator):
        def edit(statements):
            for statement in statements:
                if statement.get("Sid") == sid:
                    statement.get("Condition", {}).pop(operator, None)
        return edit

    def set_resource(sid, resource):
        def edit(statements):
            for statement in statements:
                if statement.get("Sid") == sid:
                    statement["Resource"] = resource
        return edit

    def grant(action, resource):
        return lambda s: s.append({"Effect": "Allow", "Action": action, "Resource": resource})

    def drop_action(sid, action):
        def edit(statements):
            for statement in statements:
                if statement.get("Sid") == sid:
                    statement["Action"] = [a for a in as_list(statement["Action"]) if a != action]
        return edit

    webhook = deployment.config["webhook_secret_param"]
    github = deployment.config["github"]
    credential = github.get("token_param") or github.get("app", {}).get("private_key_param")

    def environment_cases():
        """Broken SOPHONS_SECRET_PARAMS: (label, function, value)."""
        return {
            "the autoscaler reads the GitHub credential at its cold start": ("autoscaler", f"{webhook},{credential}"),
            "create-runner reads the webhook secret at its cold start": ("create-runner", webhook),
            "stop-runner reads no secret at its cold start": ("stop-runner", ""),
        }

    cases = {
        "wildcard action": (stop_role, lambda s: s.append({"Effect": "Allow", "Action": "ec2:*", "Resource": "arn:aws:ec2:::instance/x"})),
        "terminate without tag condition": (stop_role, drop_condition("TerminateOwnInstances")),
        "SendCommand without tag condition": (create_role, drop_condition("RunScriptOnOwnInstances")),
        "CreateTags on *": (create_role, lambda s: s.append({"Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*"})),
        "PassRole on *": (create_role, lambda s: s.append({"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*",
                                                          "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}})),
        "launch without template condition": (create_role, drop_condition("LaunchResourcesOfOwnTemplates")),
        "untagged instance launch": (create_role, drop_condition("LaunchTaggedInstances")),
        "fleet from any template": (create_role, lambda s: s.append({"Effect": "Allow", "Action": "ec2:CreateFleet",
                                                                     "Resource": "arn:aws:ec2:us-east-1:123456789012:launch-template/*"})),
        "RunInstances from any template": (create_role, lambda s: s.append({"Effect": "Allow", "Action": "ec2:RunInstances",
                                                                            "Resource": "arn:aws:ec2:us-east-1:123456789012:launch-template/*"})),
        "runner reads all parameters": (deployment.runner_role["name"], lambda s: s.append(
            {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": f"arn:aws:ssm:us-east-1:123456789012:parameter/{name}/*"})),
        "runner reads the bucket": (deployment.runner_role["name"], lambda s: s.append(
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{deployment.bucket}/*"})),
        "runner lists parameters": (deployment.runner_role["name"], lambda s: s.append(
            {"Effect": "Allow", "Action": "ssm:GetParametersByPath", "Resource": f"arn:aws:ssm:us-east-1:123456789012:parameter/{name}/jit"})),
        "runner reads any instance's JIT parameter": (deployment.runner_role["name"], drop_condition("ReadAndDeleteOwnJitConfig")),
        "runner reads an untagged JIT parameter": (deployment.runner_role["name"], rename_operator(
            "ReadAndDeleteOwnJitConfig", "StringEquals", "StringEqualsIfExists")),
        "runner reads JIT parameters tagged for another instance": (deployment.runner_role["name"], set_condition(
            "ReadAndDeleteOwnJitConfig", "StringEquals", f"aws:ResourceTag/{JIT_OWNER_TAG}", "arn:aws:ec2:*")),
        "runner role without the Deny on retagging": (deployment.runner_role["name"], drop_statement("NeverRetagJitConfig")),
        "runner retags JIT parameters": (deployment.runner_role["name"], lambda s: s.append(
            {"Effect": "Allow", "Action": "ssm:AddTagsToResource", "Resource": f"arn:aws:ssm:us-east-1:123456789012:parameter/{name}/jit/*"})),
        "stop-runner tags JIT parameters": (stop_role, lambda s: s.append(
            {"Effect": "Allow", "Action": "ssm:AddTagsToResource", "Resource": f"arn:aws:ssm:us-east-1:123456789012:parameter/{name}/jit/*",
             "Condition": {"ForAllValues:StringLike": {"aws:TagKeys": "sophons:*"}}})),
        "dynamodb:* on the slots table": (create_role, grant("dynamodb:*", table)),
        "slot claims on every table": (create_role, set_resource("ClaimLaunchSlots", table.rsplit("/", 1)[0] + "/*")),
        "slot claims on the table's indexes": (create_role, set_resource("ClaimLaunchSlots", [table, f"{table}/index/*"])),
        "create-runner batch-writes the slots table": (create_role, grant("dynamodb:BatchWriteItem", table)),
        "stop-runner claims slots": (stop_role, grant("DynamoDB:PutItem", table)),
        "the sweep on \"*\"": (stop_role, set_resource("FreeLaunchSlots", "*")),
        "the webhook's autoscaler writes slots": (f"{name}-autoscaler-lambda", grant("dynamodb:PutItem", table)),
        "move-jobs reads slots": (f"{name}-move-jobs-lambda", grant("dynamodb:Scan", table)),
        "runner reads slots": (deployment.runner_role["name"], grant("dynamodb:GetItem", table)),
        "dynamodb:* on the waiting table": (create_role, grant("dynamodb:*", waiting)),
        "stop-runner parks jobs": (stop_role, grant("dynamodb:PutItem", waiting)),
        "create-runner scans the waiting list": (create_role, grant("dynamodb:Scan", waiting)),
        "create-runner claims slots in the waiting table": (create_role, set_resource("ClaimLaunchSlots", [table, waiting])),
        "wakes on every table": (stop_role, set_resource("WakeWaitingJobs", waiting.rsplit("/", 1)[0] + "/*")),
        "wakes on the waiting table's indexes": (stop_role, set_resource("WakeWaitingJobs", [waiting, f"{waiting}/index/*"])),
        "the webhook's autoscaler parks jobs": (f"{name}-autoscaler-lambda", grant("dynamodb:PutItem", waiting)),
        "move-jobs reads the waiting list": (f"{name}-move-jobs-lambda", grant("dynamodb:Query", waiting)),
        "runner reads the waiting list": (deployment.runner_role["name"], grant("dynamodb:Query", waiting)),
        "create-runner cannot park": (create_role, drop_action("ParkJobsWaitingForRoom", "dynamodb:PutItem")),
        "stop-runner cannot wake": (stop_role, drop_statement("WakeWaitingJobs")),
        "create-runner cannot send woken jobs": (create_role, drop_statement("WakeWaitingJobs")),
        "dynamodb:* on the interruptions table": (stop_role, grant("dynamodb:*", interruptions)),
        "create-runner ends the following of interrupted jobs": (create_role, grant("dynamodb:DeleteItem", interruptions)),
        "stop-runner scans the interruptions table": (stop_role, grant("dynamodb:Scan", interruptions)),
        "stop-runner updates interruptions in place": (stop_role, grant("dynamodb:UpdateItem", interruptions)),
        "create-runner batch-writes spot losses": (create_role, grant("dynamodb:BatchWriteItem", interruptions)),
        "interruptions on every table": (stop_role, set_resource("FollowInterruptedJobs", interruptions.rsplit("/", 1)[0] + "/*")),
        "interruptions on the table's indexes": (create_role, set_resource(
            "LaunchRerunsAndBackedOffTemplatesOnDemand", [interruptions, f"{interruptions}/index/*"])),
        "stop-runner frees slots in the interruptions table": (stop_role, set_resource("FreeLaunchSlots", [table, interruptions])),
        "the webhook's autoscaler reads back-offs": (f"{name}-autoscaler-lambda", grant("dynamodb:GetItem", interruptions)),
        "move-jobs reads the interruptions": (f"{name}-move-jobs-lambda", grant("dynamodb:Query", interruptions)),
        "runner records its own interruption": (deployment.runner_role["name"], grant("dynamodb:PutItem", interruptions)),
        "the webhook writes any item of the interruptions table": (autoscaler_role, drop_condition(ran)),
        "the webhook writes every partition (LeadingKeys *)": (autoscaler_role, set_condition(
            ran, "ForAllValues:StringLike", "dynamodb:LeadingKeys", "*")),
        "the webhook writes re-run claims too": (autoscaler_role, set_condition(
            ran, "ForAllValues:StringLike", "dynamodb:LeadingKeys", ["ran#*", "rerun#*"])),
        "the webhook writes a request without a partition key (no Null test)": (autoscaler_role, drop_operator(ran, "Null")),
        "the webhook reads which job ran": (autoscaler_role, lambda s: s.append(
            {"Effect": "Allow", "Action": "dynamodb:Query", "Resource": interruptions,
             "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": "ran#*"}, "Null": {"dynamodb:LeadingKeys": "false"}}})),
        "the webhook cannot record which job each runner ran": (autoscaler_role, drop_statement(ran)),
        "create-runner cannot tell a re-run": (create_role, drop_action("LaunchRerunsAndBackedOffTemplatesOnDemand", "dynamodb:Query")),
        "create-runner cannot record spot losses": (create_role, drop_action("LaunchRerunsAndBackedOffTemplatesOnDemand", "dynamodb:PutItem")),
        "stop-runner cannot record interruptions": (stop_role, drop_statement("FollowInterruptedJobs")),
        "the sweep cannot end the following of a concluded job": (stop_role, drop_action("FollowInterruptedJobs", "dynamodb:DeleteItem")),
        "create-runner sends to the dead-letter queue": (create_role, grant("sqs:SendMessage", deployment.dlq_arn)),
        "woken jobs sent to every queue": (create_role, set_resource("WakeWaitingJobs", deployment.jobs_queue_arn.rsplit(":", 1)[0] + ":*")),
        "move-jobs writes the runner script": (f"{name}-move-jobs-lambda", set_resource(
            "CopyRunnerPackages", f"arn:aws:s3:::{deployment.bucket}/*")),
        "move-jobs deletes runner packages": (f"{name}-move-jobs-lambda", grant(
            "s3:DeleteObject", f"arn:aws:s3:::{deployment.bucket}/actions-runner/*")),
        "move-jobs lists every bucket": (f"{name}-move-jobs-lambda", set_resource("TellMissingRunnerPackages", "arn:aws:s3:::*")),
        "move-jobs without HeadObject's 404": (f"{name}-move-jobs-lambda", drop_statement("TellMissingRunnerPackages")),
        "create-runner writes the bucket": (create_role, grant("s3:PutObject", f"arn:aws:s3:::{deployment.bucket}/actions-runner/*")),
        "create-runner's cold start without GetParameters": (create_role, drop_action("ReadConfigAndGitHubCredential", "ssm:GetParameters")),
        "the autoscaler's cold start without GetParameters": (f"{name}-autoscaler-lambda", drop_action("ReadConfigAndWebhookSecret", "ssm:GetParameters")),
    }
    failures = []
    for label, (role, edit) in cases.items():
        if not mutated(role, edit):
            failures.append(label)
    for label, (function, value) in environment_cases().items():
        broken = copy.deepcopy(deployment)
        broken.environments[f"{name}-{function}"][SECRET_PARAMS] = value
        if not check(broken):
            failures.append(label)
    return failures, len(cases) + len(environment_cases())


def main(argv):
    if len(argv) < 2:
        print("usage: check_iam.py <terraform-show.json> [--self-test]", file=sys.stderr)
        return 2
    with open(argv[1]) as handle:
        show = json.load(handle)
    failed = False
    for deployment in Deployment.all_in(show):
        errors = check(deployment)
        for line in errors:
            print(f"IAM {deployment.name}: {line}")
        if "--self-test" in argv:
            missed, tried = self_test(deployment)
            for label in missed:
                print(f"IAM {deployment.name} self-test: the checker did not catch: {label}")
            print(f"IAM {deployment.name} self-test: {tried - len(missed)} of {tried} broadenings caught")
            errors += missed
        statements = sum(len(list(deployment.statements(role))) for role in deployment.role_policies)
        print(
            f"IAM {deployment.name}: {len(deployment.role_policies)} roles, {statements} statements checked, "
            f"{len(errors)} violation(s)"
        )
        failed = failed or bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
