#!/usr/bin/env python3
"""A config change reaches the Lambdas: the functions read their document once per cold start, so an apply that
changes the document must change every function that reads it (which retires its warm instances).
scripts/check-terraform.sh applies to moto, takes a snapshot, applies again and compares.

  snapshot <endpoint-url> <region> <functions.json> <out.json>
      functions.json is the moto wrapper's `functions_by_config_parameter` output ({parameter: [function]}).
      Reads each document back from SSM and each function's environment from Lambda, checks that every
      function's SOPHONS_CONFIG_SHA256 is the SHA-256 of the document it reads, and writes them to out.json.

  compare <before.json> <after.json> [<changed-parameter>...]
      Every function of a changed parameter has a new SOPHONS_CONFIG_SHA256; every other function has exactly
      the environment it had.

Needs boto3 (the venv's moto[server] brings it).
"""

import hashlib
import json
import sys

import boto3

HASH = "SOPHONS_CONFIG_SHA256"


def snapshot(endpoint, region, functions_file, out):
    def client(service):
        return boto3.client(
            service,
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    ssm, lambda_ = client("ssm"), client("lambda")
    errors, taken = [], {}
    for parameter, functions in json.load(open(functions_file)).items():
        document = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
        digest = hashlib.sha256(document.encode()).hexdigest()
        environments = {}
        for function in functions:
            configuration = lambda_.get_function_configuration(FunctionName=function)
            environment = configuration.get("Environment", {}).get("Variables", {})
            environments[function] = environment
            if environment.get(HASH) != digest:
                errors.append(f"{function}: {HASH} is {environment.get(HASH)!r}, the document {parameter} hashes to {digest}")
            if environment.get("SOPHONS_CONFIG_PARAM") != parameter:
                errors.append(f"{function}: SOPHONS_CONFIG_PARAM is {environment.get('SOPHONS_CONFIG_PARAM')!r}, not {parameter}")
        taken[parameter] = {"document_sha256": digest, "document": json.loads(document), "functions": environments}
        print(f"{parameter}: sha256 {digest[:12]}..., {len(functions)} functions carry it")
    json.dump(taken, open(out, "w"), indent=1, sort_keys=True)
    return errors


def compare(before_file, after_file, changed):
    before, after = json.load(open(before_file)), json.load(open(after_file))
    errors = []
    if set(before) != set(after):
        errors.append(f"the config parameters differ: {sorted(before)} then {sorted(after)}")
    for parameter in sorted(set(before) & set(after)):
        old, new = before[parameter], after[parameter]
        if set(old["functions"]) != set(new["functions"]):
            errors.append(f"{parameter}: the functions differ: {sorted(old['functions'])} then {sorted(new['functions'])}")
            continue
        if parameter in changed:
            if old["document"] == new["document"]:
                errors.append(f"{parameter}: the document did not change, so this comparison proves nothing")
            kept = [f for f in new["functions"] if new["functions"][f].get(HASH) == old["functions"][f].get(HASH)]
            errors += [f"{f}: the document {parameter} changed but the function did not: warm instances keep the old one" for f in kept]
            print(f"{parameter}: document changed, {len(new['functions']) - len(kept)} of {len(new['functions'])} functions changed with it")
        else:
            if old["document"] != new["document"]:
                errors.append(f"{parameter}: the document changed though nothing it depends on did")
            moved = [f for f in new["functions"] if new["functions"][f] != old["functions"][f]]
            errors += [f"{f}: the environment changed though the document {parameter} did not" for f in moved]
            print(f"{parameter}: document unchanged, {len(new['functions']) - len(moved)} of {len(new['functions'])} functions unchanged")
    return errors


def main(argv):
    if len(argv) == 5 and argv[0] == "snapshot":
        errors = snapshot(*argv[1:])
    elif len(argv) >= 3 and argv[0] == "compare":
        errors = compare(argv[1], argv[2], set(argv[3:]))
    else:
        sys.exit(__doc__)
    for error in errors:
        print(f"FAILED: {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
