#!/usr/bin/env python3
"""The image_builder pipeline as planned (moto has no Image Builder, so it is never applied here).

Reads `terraform show -json` of a saved plan of terraform/test/preconditions with case `baked` (image_builder on for
x86_64 and arm64; template `cpu` on c7i.large and `arm` on t4g.small, both baked) and checks:

  * the component is YAML AWSTOE can read (at most 16,000 characters, no `{{` it would take for its own variables),
    with a build phase that runs terraform/image-builder/bake-runner.sh unchanged with SOPHONS_BAKE_STEP=bake and a
    test phase that runs it with SOPHONS_BAKE_STEP=check;
  * one pipeline per architecture, rebuilding at every tick of its schedule (EXPRESSION_MATCH_ONLY: a new runner
    release changes neither the parent image nor the component), with its image tests on;
  * each distribution publishes the AMI id to /imagebuilder/<deployment>/runner-image/<arch>, the only path Image
    Builder's service-linked role may write, as data type aws:ec2:image, and Terraform creates that parameter;
  * each baked template's launch template resolves the parameter of its instance types' architecture;
  * the build instances' role: trusted by EC2 only, the two documented managed policies and nothing else, and an
    inline policy that only denies reading this deployment's parameters (config, webhook secret, credential);
    the lifecycle role: trusted by Image Builder only, EC2ImageBuilderLifecycleExecutionPolicy only.

Usage: check_baked_image.py <plan-show.json> <bake-runner.sh>
Needs PyYAML (the venv's checkov brings it).
"""

import base64
import gzip
import json
import re
import sys

import yaml

DEPLOYMENT = "sophons"
EXPECTED_ARCHITECTURES = {"cpu": "x86_64", "arm": "arm64"}
INSTANCE_POLICIES = {
    "arn:aws:iam::aws:policy/EC2InstanceProfileForImageBuilder",
    "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
}
LIFECYCLE_POLICIES = {"arn:aws:iam::aws:policy/service-role/EC2ImageBuilderLifecycleExecutionPolicy"}


def resources(module):
    yield from module.get("resources", [])
    for child in module.get("child_modules", []):
        yield from resources(child)


def as_list(value):
    return value if isinstance(value, list) else [value]


def main(plan_file, script_file):
    plan = json.load(open(plan_file))
    script = open(script_file).read()
    errors = []
    found = {}
    for resource in resources(plan["planned_values"]["root_module"]):
        found.setdefault(resource["type"], []).append(resource)

    def of_type(kind):
        return [r["values"] for r in found.get(kind, [])]

    # The component.
    components = of_type("aws_imagebuilder_component")
    if len(components) != 1:
        errors.append(f"expected one component, found {len(components)}")
    for component in components:
        data = component["data"]
        if len(data) > 16000:
            errors.append(f"the component is {len(data)} characters; Image Builder takes at most 16,000")
        if "{{" in data:
            errors.append("the component contains `{{`, which AWSTOE reads as its own variables")
        document = yaml.safe_load(data)
        phases = {phase["name"]: phase for phase in document["phases"]}
        if set(phases) != {"build", "test"}:
            errors.append(f"the component's phases are {sorted(phases)}, expected build and test")
        for phase, step in (("build", "bake"), ("test", "check")):
            commands = [c for s in phases.get(phase, {}).get("steps", []) for c in s["inputs"]["commands"]]
            packed = re.search(r"echo '([A-Za-z0-9+/=]+)' \| base64 -d \| gunzip > (\S+)", " ".join(commands))
            if not packed or gzip.decompress(base64.b64decode(packed.group(1))).decode() != script:
                errors.append(f"the {phase} phase does not carry image-builder/bake-runner.sh unchanged")
                continue
            if not any(f"SOPHONS_BAKE_STEP={step} " in c and c.endswith(f"bash {packed.group(2)}") for c in commands):
                errors.append(f"the {phase} phase does not run the script with SOPHONS_BAKE_STEP={step}")
        print(f"component: {len(data)} characters, phases {', '.join(phases)}, bake-runner.sh carried unchanged")

    # Pipelines, distributions, parameters.
    parameters = {p["name"]: p for p in of_type("aws_ssm_parameter")}
    pipelines = of_type("aws_imagebuilder_image_pipeline")
    for pipeline in pipelines:
        schedule = pipeline["schedule"][0]
        if schedule["pipeline_execution_start_condition"] != "EXPRESSION_MATCH_ONLY":
            errors.append(f"{pipeline['name']} builds only when its parent image or component change, not at every tick")
        if not pipeline["image_tests_configuration"][0]["image_tests_enabled"]:
            errors.append(f"{pipeline['name']} does not test its image")
    published = {}
    for distribution in of_type("aws_imagebuilder_distribution_configuration"):
        for region in distribution["distribution"]:
            for output in region["ssm_parameter_configuration"]:
                name = output["parameter_name"]
                arch = name.rsplit("/", 1)[-1]
                published[arch] = name
                if name != f"/imagebuilder/{DEPLOYMENT}/runner-image/{arch}":
                    errors.append(f"{distribution['name']} publishes to {name}, outside /imagebuilder/{DEPLOYMENT}/")
                if output.get("data_type") != "aws:ec2:image":
                    errors.append(f"{name} is not of data type aws:ec2:image")
                if parameters.get(name, {}).get("data_type") != "aws:ec2:image":
                    errors.append(f"Terraform does not create {name} (aws:ec2:image) for the first launches")
    if set(published) != set(EXPECTED_ARCHITECTURES.values()) or len(pipelines) != len(published):
        errors.append(f"expected one pipeline and parameter per architecture, found {len(pipelines)} and {sorted(published)}")
    print(f"pipelines: {', '.join(sorted(p['name'] for p in pipelines))}; AMI ids published to {', '.join(sorted(published.values()))}")

    # Templates.
    launch_templates = {lt["name"]: lt for lt in of_type("aws_launch_template")}
    for template, arch in EXPECTED_ARCHITECTURES.items():
        image = launch_templates.get(f"{DEPLOYMENT}-{template}", {}).get("image_id")
        if image != f"resolve:ssm:/imagebuilder/{DEPLOYMENT}/runner-image/{arch}":
            errors.append(f"template {template} ({arch}) launches from {image}")
    print(f"templates: {', '.join(f'{t} from the {a} image' for t, a in EXPECTED_ARCHITECTURES.items())}")

    # IAM.
    roles = {r["name"]: r for r in of_type("aws_iam_role")}
    attached = {}
    for attachment in of_type("aws_iam_role_policy_attachment"):
        attached.setdefault(attachment["role"], set()).add(attachment["policy_arn"])
    for role, service, policies in (
        (f"{DEPLOYMENT}-image-builder", "ec2.amazonaws.com", INSTANCE_POLICIES),
        (f"{DEPLOYMENT}-image-lifecycle", "imagebuilder.amazonaws.com", LIFECYCLE_POLICIES),
    ):
        trust = json.loads(roles.get(role, {}).get("assume_role_policy", "{}"))
        principals = {p for s in trust.get("Statement", []) for p in as_list(s.get("Principal", {}).get("Service", []))}
        if principals != {service}:
            errors.append(f"{role} is trusted by {sorted(principals)}, not only {service}")
        if attached.get(role, set()) != policies:
            errors.append(f"{role} has {sorted(attached.get(role, set()))}, expected exactly {sorted(policies)}")
    inline = [json.loads(p["policy"]) for p in of_type("aws_iam_role_policy") if p.get("name") == f"{DEPLOYMENT}-image-builder"]
    denied = set()
    for document in inline:
        for statement in as_list(document["Statement"]):
            if statement["Effect"] != "Deny":
                errors.append(f"the build instances' inline policy allows {statement.get('Action')}")
                continue
            if {"ssm:GetParameter", "ssm:GetParameters"} <= set(as_list(statement["Action"])):
                denied |= {r.split(":parameter", 1)[-1] for r in as_list(statement["Resource"])}
    for name in (f"/{DEPLOYMENT}/config", f"/{DEPLOYMENT}/*", "/sophons/github/token", "/sophons/github/webhook-secret"):
        if name not in denied:
            errors.append(f"the build instances are not denied reading {name}")
    print(f"IAM: build instances {' + '.join(sorted(p.rsplit('/', 1)[-1] for p in INSTANCE_POLICIES))}, "
          f"denied this deployment's parameters; lifecycle EC2ImageBuilderLifecycleExecutionPolicy")

    for line in errors:
        print(f"baked image: {line}")
    print(f"baked image: {len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
