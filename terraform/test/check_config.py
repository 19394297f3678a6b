#!/usr/bin/env python3
"""Reads the config document Terraform wrote back from (moto's) SSM and checks that every name in it points
at something the same apply created: the queues, the launch slots, waiting and interruptions tables, the
parameters, the script object, the log group and the launch templates. The autoscaler's `--check-config` then
checks it is a document the Lambdas accept.

Usage: check_config.py <endpoint-url> <region> <config-parameter-name>
Needs boto3 (the venv's moto[server] brings it).
"""

import json
import sys

import boto3


def main(endpoint, region, parameter):
    def client(service):
        return boto3.client(
            service,
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    ssm, sqs, s3, ec2, logs, dynamodb = (client(s) for s in ("ssm", "sqs", "s3", "ec2", "logs", "dynamodb"))
    errors = []

    stored = ssm.get_parameter(Name=parameter)["Parameter"]
    if stored["Type"] != "String":
        errors.append(f"{parameter} is a {stored['Type']}, expected a String (it holds no secret)")
    config = json.loads(stored["Value"])

    required = [
        "deployment", "queue_url", "dlq_url", "slots_table", "waiting_table", "interruptions_table", "webhook_secret_param",
        "max_body_bytes", "github", "repositories", "allow_public_repositories", "runner_script", "retry_delay_seconds",
        "command", "sweep", "max_job_relaunches", "spot_backoff", "instance_arn_prefix", "templates",
    ]
    for key in required:
        if key not in config:
            errors.append(f"config key {key} is missing (Terraform writes every key explicitly)")

    # runner_pin only when the variable is set: absent, create-runner follows GitHub's current release.
    pin = config.get("runner_pin")
    if pin is not None and sorted(pin) != ["sha256_arm64", "sha256_x64", "version"]:
        errors.append(f"runner_pin has the keys {sorted(pin)}, expected version, sha256_x64 and sha256_arm64")

    deployment = config["deployment"]
    if parameter != f"/{deployment}/config":
        errors.append(f"config parameter {parameter} is not /{deployment}/config")

    queues = {name: sqs.get_queue_url(QueueName=name)["QueueUrl"] for name in (f"{deployment}-jobs", f"{deployment}-jobs-dlq")}
    if config["queue_url"] != queues[f"{deployment}-jobs"]:
        errors.append(f"queue_url {config['queue_url']} is not the jobs queue {queues[f'{deployment}-jobs']}")
    if config["dlq_url"] != queues[f"{deployment}-jobs-dlq"]:
        errors.append(f"dlq_url {config['dlq_url']} is not the dead-letter queue")

    # The launch slots: one item per (template, slot); create-runner and stop-runner address items by that key.
    # The waiting list: one item per (template, place), read in sort-key order, removed by TTL on expires_at.
    # The interruptions: items keyed by a partition (interrupted, rerun#<repo>#<run>, spot#<template>, backoff) and
    # a sort key within it, removed by TTL on expires_at. The waiting list and the interruptions hold what exists
    # nowhere else (a parked job, the record that a job was interrupted): point-in-time recovery is on for them.
    tables = (
        # config key, name suffix, hash key, sort key, sort key type, TTL and point-in-time recovery
        ("slots_table", "slots", "template", "slot", "N", False),
        ("waiting_table", "waiting", "template", "place", "S", True),
        ("interruptions_table", "interruptions", "pk", "sk", "S", True),
    )
    for key, what, hash_key, sort_key, sort_type, kept in tables:
        if config.get(key) != f"{deployment}-{what}":
            errors.append(f"{key} {config.get(key)} is not {deployment}-{what}")
            continue
        table = dynamodb.describe_table(TableName=config[key])["Table"]
        schema = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
        types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
        if schema != {hash_key: "HASH", sort_key: "RANGE"} or types != {hash_key: "S", sort_key: sort_type}:
            errors.append(f"{what} table {config[key]} is keyed {schema} {types}, not {hash_key} (S) + {sort_key} ({sort_type})")
        if table.get("BillingModeSummary", {}).get("BillingMode") != "PAY_PER_REQUEST":
            errors.append(f"{what} table {config[key]} is not on-demand (PAY_PER_REQUEST)")
        if kept:
            ttl = dynamodb.describe_time_to_live(TableName=config[key])["TimeToLiveDescription"]
            if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or ttl.get("AttributeName") != "expires_at":
                errors.append(f"{what} table {config[key]} has no TTL on expires_at: {ttl}")
            backups = dynamodb.describe_continuous_backups(TableName=config[key])["ContinuousBackupsDescription"]
            recovery = backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
            if recovery != "ENABLED":
                errors.append(f"{what} table {config[key]} has no point-in-time recovery ({recovery})")

    # The spot back-off: three whole numbers; after = 0 turns it off, else the window and the on-demand time are
    # at least a minute (the variables' validations).
    backoff = config.get("spot_backoff", {})
    if sorted(backoff) != ["after", "on_demand_minutes", "within_minutes"] or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in backoff.values()
    ):
        errors.append(f"spot_backoff is {backoff!r}, expected whole numbers after, within_minutes and on_demand_minutes")
    elif backoff["after"] > 0 and min(backoff["within_minutes"], backoff["on_demand_minutes"]) < 1:
        errors.append(f"spot_backoff {backoff!r} backs off with a window or an on-demand time under a minute")

    github = config["github"]
    credential = github.get("token_param") or github.get("app", {}).get("private_key_param")
    if ("token_param" in github) == ("app" in github):
        errors.append("github must have exactly one of token_param and app")
    for name in (config["webhook_secret_param"], credential):
        found = ssm.get_parameter(Name=name, WithDecryption=False)["Parameter"]
        if found["Type"] != "SecureString":
            errors.append(f"secret parameter {name} is a {found['Type']}, not a SecureString")

    script = config["runner_script"]
    head = s3.head_object(Bucket=script["bucket"], Key=script["key"])
    if head["ContentLength"] < 1000:
        errors.append(f"s3://{script['bucket']}/{script['key']} looks empty ({head['ContentLength']} bytes)")
    body = s3.get_object(Bucket=script["bucket"], Key=script["key"])["Body"].read().decode()
    if "SOPHONS_RUNNER_CACHE_URI:=" not in body or not body.startswith("#!/usr/bin/env bash"):
        errors.append("the script object is not scripts/runner.sh")

    groups = [g["logGroupName"] for g in logs.describe_log_groups(logGroupNamePrefix=config["command"]["log_group"])["logGroups"]]
    if config["command"]["log_group"] not in groups:
        errors.append(f"command.log_group {config['command']['log_group']} does not exist")

    templates = {lt["LaunchTemplateName"]: lt for lt in ec2.describe_launch_templates()["LaunchTemplates"]}
    for name, template in config["templates"].items():
        # Terraform writes each template's packages, docker and rerun_interrupted_jobs explicitly (the variable's
        # defaults: ["git"], false, true).
        if not isinstance(template.get("packages"), list) or not all(isinstance(p, str) for p in template["packages"]):
            errors.append(f"templates.{name}.packages is {template.get('packages')!r}, not a list of package names")
        if not isinstance(template.get("docker"), bool):
            errors.append(f"templates.{name}.docker is {template.get('docker')!r}, not a bool")
        if not isinstance(template.get("rerun_interrupted_jobs"), bool):
            errors.append(f"templates.{name}.rerun_interrupted_jobs is {template.get('rerun_interrupted_jobs')!r}, not a bool")
        lt_name = template["launch_template"]
        if lt_name not in templates:
            errors.append(f"templates.{name}.launch_template {lt_name} does not exist")
            continue
        version = ec2.describe_launch_template_versions(LaunchTemplateName=lt_name, Versions=["$Latest"])
        data = version["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        if data.get("MetadataOptions", {}).get("HttpTokens") != "required":
            errors.append(f"launch template {lt_name} does not require IMDSv2")
        for mapping in data.get("BlockDeviceMappings", []):
            ebs = mapping.get("Ebs", {})
            if not ebs.get("Encrypted") or ebs.get("VolumeType") != "gp3":
                errors.append(f"launch template {lt_name} has a root volume that is not encrypted gp3")
        for interface in data.get("NetworkInterfaces", []):
            if interface.get("AssociatePublicIpAddress"):
                errors.append(f"launch template {lt_name} gives runners a public IP")
        subnets = ec2.describe_subnets(SubnetIds=template["subnet_ids"])["Subnets"]
        if len(subnets) != len(template["subnet_ids"]):
            errors.append(f"templates.{name}.subnet_ids name subnets that do not exist")

    for line in errors:
        print(f"config: {line}")
    runner = f"the runner pinned to {pin['version']}" if pin else "GitHub's current runner"
    print(
        f"config: /{deployment}/config names {len(config['templates'])} template(s) and {runner}, "
        f"{len(errors)} problem(s)"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
