#!/usr/bin/env bash
# The Terraform checks of `make test`:
#   1. terraform fmt -check -recursive (and of terraform/terraform.tfvars.example)
#   2. terraform init -backend=false (from the local provider mirror) + validate: root, each example, the moto wrapper;
#      plans with one bad input at a time fail with their own message (terraform/test/preconditions), and the optional
#      image_builder pipeline, which moto cannot apply, is planned and checked (terraform/test/check_baked_image.py)
#      after its bake script's tests (shellcheck, terraform/test/bake-runner.bats)
#   3. terraform/terraform.tfvars.example names every variable of the root module and nothing else, and the root
#      module plans with it against moto (a misspelt or removed variable is only a warning to Terraform: caught here)
#   4. checkov over terraform/ with its default frameworks, secrets included: 0 failed checks (every skip is
#      annotated inline with its reason); a generated key planted in a copy must be found, or the scan proves nothing
#   5. terraform apply of the whole root module against moto server (terraform/test/moto), with throwaway secrets
#      generated for the run; image_builder stays off there (moto has no Image Builder)
#   6. a config change reaches the Lambdas: every function carries the SHA-256 of the document it reads; applying
#      again with another max_runners changes that deployment's four functions (after the document is written) and
#      leaves the other deployment's functions exactly as they were (terraform/test/check_config_reaches_functions.py)
#   7. the IAM security test over the applied policies (terraform/test/check_iam.py, with its self-test), and the
#      applied alarms and dashboards (terraform/test/check_monitoring.py, with its self-test)
#   8. the config document read back from moto's SSM: its names point at what was created
#      (terraform/test/check_config.py) and the autoscaler accepts it (`autoscaler --check-config`)
#   9. terraform destroy against moto, when SOPHONS_TF_DESTROY=1 (about a minute more)
#
# Environment:
#   MOTO_ENDPOINT                 use this moto server instead of starting .venv/bin/moto_server on a free port
#   SOPHONS_REQUIRE_CONFIG_CHECK  1: fail when target/debug/autoscaler is missing (else: warn and skip that check)
#   SOPHONS_AUTOSCALER_BIN        the autoscaler binary (default target/debug/autoscaler)
#   SOPHONS_VENV                  the Python venv with moto[server] and checkov (default .venv)
#   TF_PLUGIN_DIR                 the provider mirror (default /opt/tf-plugins)
#   SOPHONS_TF_DESTROY            1: also destroy everything again (the moto server is thrown away anyway)
#
# The checkout is never written to: everything runs on a copy in a temporary directory.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${SOPHONS_VENV:-$REPO/.venv}
PYTHON=$VENV/bin/python
PLUGIN_DIR=${TF_PLUGIN_DIR:-/opt/tf-plugins}
AUTOSCALER=${SOPHONS_AUTOSCALER_BIN:-$REPO/target/debug/autoscaler}
REGION=us-east-1

step() { printf '\n== %s (at %ss)\n' "$*" "$SECONDS"; }
fail() {
  printf 'check-terraform: FAILED: %s\n' "$*" >&2
  exit 1
}

command -v terraform >/dev/null || fail "terraform is not on PATH"
[[ -x $PYTHON && -x $VENV/bin/checkov ]] || fail "$VENV lacks python/checkov: run make setup"
[[ -n ${MOTO_ENDPOINT:-} || -x $VENV/bin/moto_server ]] || fail "$VENV lacks moto_server: run make setup"
[[ -d $PLUGIN_DIR ]] || fail "no provider mirror at $PLUGIN_DIR (set TF_PLUGIN_DIR)"
if [[ ${SOPHONS_REQUIRE_CONFIG_CHECK:-0} == 1 && ! -x $AUTOSCALER ]]; then
  fail "$AUTOSCALER is missing (cargo build first), and SOPHONS_REQUIRE_CONFIG_CHECK=1"
fi

WORK=$(mktemp -d)
MOTO_PID=""
cleanup() {
  # Background checks still running when something failed.
  jobs -p | xargs -r kill 2>/dev/null || true
  if [[ -n $MOTO_PID ]]; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

export TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1
export TF_CLI_CONFIG_FILE=$WORK/terraformrc
: >"$TF_CLI_CONFIG_FILE"

# A copy of the module (and the script it uploads) without any local .terraform/, lock files or state.
mkdir -p "$WORK/repo/scripts"
tar -C "$REPO" --exclude='.terraform' --exclude='.terraform.lock.hcl' --exclude='*.tfstate*' -cf - terraform |
  tar -C "$WORK/repo" -xf -
cp "$REPO/scripts/runner.sh" "$WORK/repo/scripts/runner.sh"
TF=$WORK/repo/terraform

tf() {
  local dir=$1
  shift
  TF_DATA_DIR="$WORK/data/${dir//\//_}" terraform -chdir="$TF/$dir" "$@"
}

# Throwaway secrets for the moto fixtures (terraform/test/moto, variable `secrets`), generated for this run so that
# nothing secret-shaped is committed. cryptography comes with moto.
"$PYTHON" - "$WORK/secrets.tfvars.json" <<'EOF' || fail "could not generate the fixtures' secrets"
import json, secrets, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
with open(sys.argv[1], "w") as out:
    json.dump({"secrets": {
        "github_token": "ghp_" + secrets.token_hex(18),
        "github_app_private_key": key.decode(),
        "webhook_secret": secrets.token_hex(32),
    }}, out)
EOF

step "terraform fmt -check -recursive"
terraform fmt -check -recursive -diff "$REPO/terraform" || fail "terraform fmt: run terraform fmt -recursive terraform"
EXAMPLE=$REPO/terraform/terraform.tfvars.example
[[ -f $EXAMPLE ]] || fail "terraform/terraform.tfvars.example is missing"
if ! terraform fmt - <"$EXAMPLE" >"$WORK/example.fmt" || ! diff -u "$EXAMPLE" "$WORK/example.fmt"; then
  fail "terraform/terraform.tfvars.example is not formatted: terraform fmt - <terraform/terraform.tfvars.example"
fi

step "the baked image's bake script: shellcheck and its tests"
for tool in shellcheck bats; do
  command -v "$tool" >/dev/null || fail "$tool is missing: make setup"
done
shellcheck --severity=style "$REPO"/terraform/image-builder/*.sh || fail "shellcheck terraform/image-builder"
shellcheck --severity=style --shell=bats "$REPO"/terraform/test/*.bats || fail "shellcheck terraform/test/*.bats"
bats "$REPO"/terraform/test/*.bats || fail "terraform/test/bake-runner.bats"

step "docs/deploy.md lists every variable and output"
"$PYTHON" - "$REPO/terraform" "$REPO/docs/deploy.md" <<'EOF' || fail "docs/deploy.md is out of date: add the rows to its Reference tables"
import pathlib, re, sys
module, doc = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
missing = []
for kind, file in (("variable", "variables.tf"), ("output", "outputs.tf")):
    for name in re.findall(rf'^{kind} "([^"]+)"', (module / file).read_text(), re.M):
        if f"| `{name}` |" not in doc:
            missing.append(f"{kind} {name}")
for line in missing:
    print(f"docs/deploy.md has no row for {line}")
sys.exit(1 if missing else 0)
EOF

step "terraform/terraform.tfvars.example names every variable and template field"
"$PYTHON" - "$REPO/terraform/variables.tf" "$EXAMPLE" <<'EOF' || fail "terraform/terraform.tfvars.example is out of date"
import pathlib, re, sys
variables_tf, example = pathlib.Path(sys.argv[1]).read_text(), pathlib.Path(sys.argv[2]).read_text()
variables = re.findall(r'^variable "([^"]+)"', variables_tf, re.M)
template_type = re.search(r'^variable "runner_templates" \{.*?type = map\(object\(\{(.*?)\}\)\)', variables_tf, re.S | re.M)
fields = re.findall(r"^\s+([a-z_]+)\s*=", template_type.group(1), re.M)
# What the example names, set or commented out: variables at the start of a line, template fields indented.
named = set(re.findall(r"^(?:# )?([a-z][a-z0-9_]*)\s*=", example, re.M))
named_fields = set(re.findall(r"^\s+(?:# )?([a-z][a-z0-9_]*)\s*=", example, re.M))
problems = [f"names `{n}`, which the root module does not declare (misspelt, or gone from variables.tf?)" for n in sorted(named - set(variables))]
problems += [f"does not mention the variable `{v}`: set it, or add it commented out at its default" for v in variables if v not in named]
problems += [f"does not mention the template field `{f}`: add it to the template, commented out" for f in fields if f not in named_fields]
for problem in problems:
    print(f"terraform/terraform.tfvars.example {problem}")
if not problems:
    print(f"terraform.tfvars.example: all {len(variables)} variables and {len(fields)} template fields named, nothing else")
sys.exit(1 if problems else 0)
EOF

validate() {
  local dir=$1 log="$WORK/init-${1//\//_}.log"
  tf "$dir" init -backend=false -plugin-dir="$PLUGIN_DIR" -no-color >"$log" 2>&1 ||
    { cat "$log"; fail "terraform init in terraform/$dir"; }
  tf "$dir" validate -no-color >/dev/null || { tf "$dir" validate -no-color || true; fail "terraform validate in terraform/$dir"; }
  echo "valid: terraform/$dir"
}

# checkov with its default frameworks (Terraform, secrets, ...) over a copy of terraform/ into which this run's
# App key is planted: the scan must report that key and nothing else, so a run that skipped the secrets framework
# (or could no longer find a key) fails instead of passing quietly.
checkov_report() {
  local copy=$WORK/checkov/terraform canary=test/secrets-canary/main.tf
  mkdir -p "$copy/$(dirname "$canary")"
  tar -C "$REPO" --exclude='.terraform' --exclude='.terraform.lock.hcl' --exclude='*.tfstate*' -cf - terraform |
    tar -C "$WORK/checkov" -xf -
  "$PYTHON" - "$WORK/secrets.tfvars.json" "$copy/$canary" <<'EOF'
import json, sys
key = json.load(open(sys.argv[1]))["secrets"]["github_app_private_key"]
with open(sys.argv[2], "w") as out:
    out.write(f"# Generated by check-terraform.sh for one run: the secrets scan must find it.\nlocals {{\n  canary = <<-EOT\n{key}  EOT\n}}\n")
EOF
  "$VENV/bin/checkov" -d "$copy" --skip-download --download-external-modules false \
    --skip-path '\.terraform' --skip-path 'test/preconditions' -o json >"$WORK/checkov.json" 2>"$WORK/checkov.err" || true
  "$PYTHON" - "$WORK/checkov.json" "/$canary" <<'EOF' || { tail -20 "$WORK/checkov.err"; fail "checkov"; }
import collections, json, sys
data, canary = json.load(open(sys.argv[1])), sys.argv[2]
reports = data if isinstance(data, list) else [data]
failed = passed = skipped = errors = 0
skips, frameworks, caught = collections.Counter(), [], []
for report in reports:
    summary = report["summary"]
    frameworks.append(report["check_type"])
    errors += summary["parsing_errors"]
    for check in report["results"]["failed_checks"]:
        if report["check_type"] == "secrets" and check["file_path"] == canary:
            caught.append(check["check_id"])
            continue
        print(f"FAILED {check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}")
        failed += 1
    passed += summary["passed"]; skipped += summary["skipped"]
    for check in report["results"]["skipped_checks"]:
        skips[check["check_id"]] += 1
        if not check["check_result"].get("suppress_comment", "").strip():
            print(f"SKIPPED WITHOUT A REASON {check['check_id']} {check['resource']}"); failed += 1
if not caught:
    print(f"FAILED the secrets scan did not report the key planted in {canary}: it proves nothing"); failed += 1
print(f"checkov ({', '.join(sorted(frameworks))}): {passed} passed, {failed} failed, {skipped} skipped, {errors} parsing errors")
print(f"checkov secrets: the planted key was found ({', '.join(sorted(caught)) or 'no check'}), nothing else")
print("checkov skips: " + ", ".join(f"{k} x{v}" for k, v in sorted(skips.items())))
sys.exit(1 if failed or errors else 0)
EOF
}

# The moto apply is the long pole and mostly waits on the provider: validate the other configurations and run
# checkov meanwhile, and report them after it.
step "terraform init + validate of the moto wrapper (the others and checkov run alongside the apply)"
dirs=(. test/moto)
for example in "$TF"/examples/*/; do
  dirs+=("examples/$(basename "$example")")
done
validate test/moto
(for dir in "${dirs[@]}"; do [[ $dir == test/moto ]] || validate "$dir"; done) >"$WORK/validate.log" 2>&1 &
validate_pid=$!
checkov_report >"$WORK/checkov.log" 2>&1 &
checkov_pid=$!

# Each bad input of terraform/test/preconditions/cases.txt must fail its plan with its own message; each good one
# must plan. The plan of case `baked` (the image_builder pipeline, which moto cannot apply) is also checked. The
# plans mostly wait on the provider and moto: three run at a time.
precondition_plans() {
  local case expected cases=() expectations=() refused=0 planned=0 status
  validate test/preconditions
  while IFS='|' read -r case expected; do
    [[ -z $case || $case == \#* ]] && continue
    cases+=("$case")
    expectations+=("$expected")
    (
      status=0
      tf test/preconditions plan -no-color -lock=false -refresh=false -var "case=$case" \
        -var "moto_endpoint=$endpoint" -var "lambda_zip_dir=$WORK/lambda" -out="$WORK/plan-$case" \
        >"$WORK/plan-$case.log" 2>&1 || status=$?
      echo "$status" >"$WORK/plan-$case.status"
    ) &
    while (($(jobs -rp | wc -l) >= 3)); do wait -n || true; done
  done <"$TF/test/preconditions/cases.txt"
  wait
  for i in "${!cases[@]}"; do
    case=${cases[$i]} expected=${expectations[$i]}
    status=$(<"$WORK/plan-$case.status")
    if [[ $status == 0 ]]; then
      [[ -z $expected ]] || fail "plan with bad input '$case' succeeded; expected: $expected"
      planned=$((planned + 1))
    else
      # Terraform wraps long messages: compare with whitespace collapsed.
      if [[ -z $expected ]] || ! tr -s ' \n' '  ' <"$WORK/plan-$case.log" | grep -qF "$expected"; then
        tail -20 "$WORK/plan-$case.log"
        fail "plan with input '$case': expected ${expected:-success}"
      fi
      refused=$((refused + 1))
    fi
    echo "plan '$case': ${expected:-plans cleanly}"
  done
  echo "bad inputs refused: $refused of $refused; good inputs planned: $planned"
  [[ -f $WORK/plan-baked ]] || fail "terraform/test/preconditions/cases.txt lost its case baked"
  tf test/preconditions show -json "$WORK/plan-baked" >"$WORK/plan-baked.json"
  "$PYTHON" "$TF/test/check_baked_image.py" "$WORK/plan-baked.json" "$TF/image-builder/bake-runner.sh" ||
    fail "the planned image_builder pipeline (terraform/test/check_baked_image.py)"
}

# The root module planned as docs/deploy.md has a platform engineer do it, with terraform.tfvars.example and the
# provider configured from the environment (the root module has no provider block); only the zips are elsewhere.
# Terraform takes a tfvars entry no variable declares with just a warning: here that warning fails.
example_plan() {
  local copy=$WORK/example output
  mkdir -p "$copy/scripts"
  tar -C "$REPO" --exclude='.terraform' --exclude='.terraform.lock.hcl' --exclude='*.tfstate*' \
    --exclude='terraform/test' --exclude='terraform/examples' -cf - terraform | tar -C "$copy" -xf -
  cp "$REPO/scripts/runner.sh" "$copy/scripts/runner.sh"
  export TF_DATA_DIR=$WORK/data/example
  terraform -chdir="$copy/terraform" init -backend=false -plugin-dir="$PLUGIN_DIR" -no-color >"$WORK/init-example.log" 2>&1 ||
    { cat "$WORK/init-example.log"; fail "terraform init of the root module for terraform.tfvars.example"; }
  if ! output=$(AWS_ENDPOINT_URL=$endpoint AWS_REGION=$REGION AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
    AWS_EC2_METADATA_DISABLED=true terraform -chdir="$copy/terraform" plan -no-color -lock=false \
    -var-file=terraform.tfvars.example -var "lambda_zip_dir=$WORK/lambda" 2>&1); then
    echo "$output" | grep -A12 'Error' || echo "$output" | tail -30
    fail "the root module does not plan with terraform/terraform.tfvars.example"
  fi
  if grep -q 'undeclared variable' <<<"$output"; then
    echo "$output" | grep -A4 'undeclared variable'
    fail "terraform/terraform.tfvars.example sets a variable the root module does not declare"
  fi
  echo "terraform.tfvars.example plans: $(grep -o 'Plan: [0-9]* to add' <<<"$output")"
}

step "terraform apply against moto"
if [[ -n ${MOTO_ENDPOINT:-} ]]; then
  endpoint=${MOTO_ENDPOINT%/}
  # A shared server may hold earlier runs: give this one its own deployment names.
  prefix="t$(date +%s | tail -c 7)"
else
  port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$WORK/moto.log" 2>&1 &
  MOTO_PID=$!
  endpoint="http://127.0.0.1:$port"
  prefix="sophons"
  "$PYTHON" - "$endpoint" <<'EOF' || { cat "$WORK/moto.log"; fail "moto server did not start"; }
import sys, time, urllib.request
for _ in range(150):
    try:
        urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.2)
sys.exit(1)
EOF
fi
echo "moto: $endpoint, deployments $prefix-pat (org, token) and $prefix-app (repo, GitHub App)"

# Placeholder Lambda packages: `make build` is not part of `make test`, and moto never runs them.
"$PYTHON" - "$WORK/lambda" <<'EOF'
import os, sys, zipfile
for binary in ("autoscaler", "create-runner", "stop-runner", "move-jobs"):
    os.makedirs(os.path.join(sys.argv[1], binary), exist_ok=True)
    with zipfile.ZipFile(os.path.join(sys.argv[1], binary, "bootstrap.zip"), "w") as archive:
        entry = zipfile.ZipInfo("bootstrap")
        entry.external_attr = 0o755 << 16
        archive.writestr(entry, "#!/bin/sh\nexit 1\n")
EOF

precondition_plans >"$WORK/preconditions.log" 2>&1 &
preconditions_pid=$!
example_plan >"$WORK/example.log" 2>&1 &
example_pid=$!

moto_vars=(-var "moto_endpoint=$endpoint" -var "lambda_zip_dir=$WORK/lambda" -var "deployment_prefix=$prefix"
  -var-file "$WORK/secrets.tfvars.json")
if ! tf test/moto apply -auto-approve -no-color -parallelism=30 "${moto_vars[@]}" >"$WORK/apply.log" 2>&1; then
  grep -A12 'Error' "$WORK/apply.log" || tail -40 "$WORK/apply.log"
  fail "terraform apply against moto"
fi
applied=$(grep -o 'Resources: [0-9]* added' "$WORK/apply.log" | grep -o '[0-9]*')
echo "moto apply: $applied resources created"
! grep -q 'aws_imagebuilder_' "$WORK/apply.log" || fail "the moto apply touched Image Builder resources: moto has none; keep image_builder off in terraform/test/moto"


# The functions read their document once per cold start: a changed document must change every function reading it.
step "a config change reaches the Lambdas (apply again with another max_runners)"
reaches=$TF/test/check_config_reaches_functions.py
tf test/moto output -json functions_by_config_parameter >"$WORK/functions.json"
"$PYTHON" "$reaches" snapshot "$endpoint" "$REGION" "$WORK/functions.json" "$WORK/before.json" ||
  fail "the functions do not carry the hash of their config document"
if ! tf test/moto apply -auto-approve -no-color -parallelism=30 "${moto_vars[@]}" -var cpu_max_runners=21 \
  >"$WORK/apply-change.log" 2>&1; then
  grep -A12 'Error' "$WORK/apply-change.log" || tail -40 "$WORK/apply-change.log"
  fail "terraform apply of a changed max_runners against moto"
fi
"$PYTHON" "$reaches" snapshot "$endpoint" "$REGION" "$WORK/functions.json" "$WORK/after.json" ||
  fail "after the change, the functions do not carry the hash of their config document"
# Only the pat deployment's document changed: its functions must follow, the app deployment's must not move.
reached=$("$PYTHON" "$reaches" compare "$WORK/before.json" "$WORK/after.json" "/$prefix-pat/config") ||
  { echo "$reached"; fail "a config change does not reach the Lambdas"; }
echo "$reached"
# ...and only after the new document is in SSM, or a cold start in between would keep the old one.
written=$(grep -n "module.pat.aws_ssm_parameter.config: Modifications complete" "$WORK/apply-change.log" | cut -d: -f1)
first_update=$(grep -n "module.pat.module.[a-z_]*.aws_lambda_function.this: Modifying" "$WORK/apply-change.log" |
  head -1 | cut -d: -f1)
[[ -n $written && -n $first_update && $written -lt $first_update ]] ||
  fail "the functions were updated before the new config document was written (log lines ${written:-none} and ${first_update:-none})"
echo "the functions were updated after the new document was written"

step "terraform init + validate"
wait "$validate_pid" || { cat "$WORK/validate.log"; fail "terraform init/validate"; }
cat "$WORK/validate.log"

step "checkov"
wait "$checkov_pid" || { cat "$WORK/checkov.log"; fail "checkov"; }
cat "$WORK/checkov.log"

step "bad inputs (terraform/test/preconditions)"
wait "$preconditions_pid" || { cat "$WORK/preconditions.log"; fail "bad inputs"; }
cat "$WORK/preconditions.log"

step "terraform.tfvars.example plans against the root module"
wait "$example_pid" || { cat "$WORK/example.log"; fail "terraform.tfvars.example"; }
cat "$WORK/example.log"

step "IAM security test"
tf test/moto show -json >"$WORK/show.json"
"$PYTHON" "$TF/test/check_iam.py" "$WORK/show.json" --self-test || fail "IAM security test"

step "alarms and dashboard"
"$PYTHON" "$TF/test/check_monitoring.py" "$WORK/show.json" --self-test || fail "alarms and dashboard (terraform/test/check_monitoring.py)"

step "config document"
mapfile -t config_params < <(tf test/moto output -json config_parameter_names | "$PYTHON" -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
for config_param in "${config_params[@]}"; do
  "$PYTHON" "$TF/test/check_config.py" "$endpoint" "$REGION" "$config_param" || fail "config document $config_param"
done
if [[ -x $AUTOSCALER ]]; then
  check_env=(env -u SOPHONS_CONFIG AWS_ENDPOINT_URL="$endpoint" AWS_REGION="$REGION"
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true RUST_LOG=warn)
  for config_param in "${config_params[@]}"; do
    "${check_env[@]}" SOPHONS_CONFIG_PARAM="$config_param" "$AUTOSCALER" --check-config ||
      fail "the autoscaler rejects the config document Terraform wrote to $config_param"
  done
  # ...and the check is not a rubber stamp: a document without templates is refused.
  if "${check_env[@]}" SOPHONS_CONFIG='{"deployment":"sophons"}' "$AUTOSCALER" --check-config >/dev/null 2>&1; then
    fail "autoscaler --check-config accepted an incomplete document"
  fi
  config_check="${#config_params[@]} documents accepted by $(basename "$AUTOSCALER") --check-config"
elif [[ ${SOPHONS_REQUIRE_CONFIG_CHECK:-0} == 1 ]]; then
  fail "$AUTOSCALER is missing (cargo build first), and SOPHONS_REQUIRE_CONFIG_CHECK=1"
else
  echo "WARNING: $AUTOSCALER is missing: the config documents were not checked by the Lambdas' own parser"
  config_check="NOT checked by the autoscaler (binary missing)"
fi

destroyed="skipped"
if [[ ${SOPHONS_TF_DESTROY:-0} == 1 ]]; then
  step "terraform destroy against moto"
  tf test/moto destroy -auto-approve -no-color "${moto_vars[@]}" >"$WORK/destroy.log" 2>&1 ||
    { tail -40 "$WORK/destroy.log"; fail "terraform destroy against moto"; }
  destroyed=$(grep -o 'Resources: [0-9]* destroyed' "$WORK/destroy.log" | grep -o '[0-9]*')
fi

step "summary"
echo "terraform: fmt ok; ${#dirs[@]} configurations valid; moto apply: $applied resources, destroy: $destroyed"
echo "config document: $config_check"
echo "config change: ${reached//$'\n'/; }; the functions updated after the document"
echo "check-terraform: ok (${SECONDS}s)"
