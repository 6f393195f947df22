"""Submit an AzureML command-job spec (docker/azureml/*.yml) with the Azure ML SDK v2 (``pip install .[azureml]``).

    python scripts/azureml_submit.py --subscription SUB --resource_group RG --workspace WS \
        --spec docker/azureml/pretrain_multi_node.yml --compute gpu-cluster --instance_count 2 \
        --set inputs.data=az://datasets/smart-v1 --set display_name=try-2

``--set key=value`` overrides any field of the spec by its dotted path (values are read as YAML scalars, so ``2``
is a number); ``--image REF`` runs a pushed image instead of building the Dockerfile; ``--instance_count N`` sets
``resources.instance_count`` and the spec's ``inputs.num_nodes`` (which becomes ``--trainer.num_nodes``) together.
The overridden spec is checked against the SDK's job schema and for the rank layout docker/README.md explains
(processes per node == ``--trainer.devices``, ``num_nodes`` == ``instance_count``). ``--dry_run`` prints the
resolved job as YAML and stops there, without contacting Azure; otherwise the job is created with
``DefaultAzureCredential`` and its studio URL printed. Exit code 2 on a bad spec or bad arguments, 1 if Azure
rejects the submission.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys

import yaml


class SpecError(Exception):
    """A job spec or override that cannot be used; reported in one message, exit code 2."""


def parse_set(items: list[str]) -> list[dict]:
    """``["a.b=1", "c=x"]`` -> ``[{"a.b": 1}, {"c": "x"}]`` in the form ``load_job(params_override=...)`` takes."""
    overrides = []
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key or any(not part for part in key.split(".")):
            raise SpecError(f"--set expects key=value with a dotted key (e.g. inputs.data=az://c/p), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)):  # `--set x=[1]` or `{a: 1}`: keep text, overrides are scalar
            value = raw
        overrides.append({key: value})
    return overrides


def read_spec(path: str) -> dict:
    if not os.path.isfile(path):
        raise SpecError(f"job spec not found: {path}")
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise SpecError(f"job spec {path} is not valid YAML: {err}") from None
    if not isinstance(spec, dict) or spec.get("type", "command") != "command":
        raise SpecError(f"job spec {path} is not an AzureML command job (type: command)")
    return spec


def build_overrides(spec: dict, args: argparse.Namespace) -> list[dict]:
    overrides = []
    if args.compute:
        compute = args.compute if args.compute.startswith("azureml:") else f"azureml:{args.compute}"
        overrides.append({"compute": compute})
    if args.image:  # a pushed image replaces the Dockerfile build
        overrides.append({"environment": {"image": args.image}})
    if args.instance_count is not None:
        if args.instance_count < 1:
            raise SpecError(f"--instance_count must be at least 1, got {args.instance_count}")
        overrides.append({"resources.instance_count": args.instance_count})
        if "num_nodes" in (spec.get("inputs") or {}):
            overrides.append({"inputs.num_nodes": args.instance_count})
    return overrides + parse_set(args.set)


def load(path: str, overrides: list[dict]):
    """Load the spec with the overrides applied and validate it offline; returns the SDK's job object."""
    try:
        from azure.ai.ml import load_job
    except ImportError:
        raise SpecError("the Azure ML SDK is not installed: pip install '.[azureml]' (azure-ai-ml)") from None
    from azure.core.exceptions import AzureError
    from marshmallow.exceptions import MarshmallowError

    # The SDK announces each experimental class it touches while loading any spec: noise for this script's users.
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    try:
        job = load_job(path, params_override=overrides)
    except (AzureError, MarshmallowError, yaml.YAMLError) as err:  # schema, reference or YAML errors in the spec
        raise SpecError(f"invalid job spec {path}: {schema_message(err)}") from None
    validate = getattr(job, "_validate", None)  # the SDK's offline checks beyond the schema (no public name)
    if validate is not None:
        result = validate(raise_error=False)
        if not result.passed:
            raise SpecError(f"invalid job spec {path}: {result.error_messages}")
    check_ranks(job, path)
    return job


def schema_message(err: Exception) -> str:
    """The SDK wraps schema errors in a JSON report plus links; keep only the field-level messages."""
    text = str(err)
    start = text.find("{")
    try:
        report = json.loads(text[start:text.rfind("}") + 1]) if start >= 0 else None
    except ValueError:
        report = None
    if not isinstance(report, dict) or not report.get("errors"):
        return text.strip()
    return "; ".join(e.get("message", "").split("\n\n If you are trying")[0].strip() for e in report["errors"])


def check_ranks(job, path: str) -> None:
    """Lightning must expect exactly the processes AzureML starts (docker/README.md, "Ranks under AzureML")."""
    command = job.command or ""
    per_node = getattr(job.distribution, "process_count_per_instance", None)
    devices = re.search(r"--trainer\.devices[ =](\d+)", command)
    if per_node is not None and devices and int(devices.group(1)) != per_node:
        raise SpecError(f"{path}: distribution.process_count_per_instance is {per_node} but the command passes "
                        f"--trainer.devices {devices.group(1)}; AzureML starts one process per GPU, so they must match")
    instances = job.resources.instance_count if job.resources is not None else 1
    num_nodes = job.inputs.get("num_nodes") if job.inputs else None
    value = getattr(num_nodes, "_data", num_nodes)
    if value is not None and int(value) != int(instances or 1):
        raise SpecError(f"{path}: inputs.num_nodes ({value}) must equal resources.instance_count ({instances}); "
                        "use --instance_count N to set both")


def dump_yaml(job) -> str:
    """The job as it will be submitted. load_job returns a command *node*, whose own dump files the display and
    experiment names under a nested component; the job it converts into for submission shows them at the top."""
    to_job = getattr(job, "_to_job", None)
    buf = io.StringIO()
    (to_job() if to_job is not None else job).dump(buf)
    return buf.getvalue()


def submit(job, subscription: str, resource_group: str, workspace: str):
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), subscription_id=subscription, resource_group_name=resource_group,
                      workspace_name=workspace)
    return client.jobs.create_or_update(job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--spec", required=True, help="command-job YAML, e.g. docker/azureml/pretrain_multi_node.yml")
    parser.add_argument("--subscription", help="Azure subscription id (not needed with --dry_run)")
    parser.add_argument("--resource_group", help="resource group of the workspace (not needed with --dry_run)")
    parser.add_argument("--workspace", help="AzureML workspace name (not needed with --dry_run)")
    parser.add_argument("--compute", help="compute cluster name (sets `compute: azureml:NAME`)")
    parser.add_argument("--image", help="run this pushed image (e.g. <registry>.azurecr.io/control-pretrain:0.1.0) "
                                            "instead of building the Dockerfile")
    parser.add_argument("--instance_count", type=int, help="nodes: resources.instance_count and inputs.num_nodes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field by dotted path, e.g. inputs.data=az://datasets/smart-v1 "
                             "(repeatable)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the resolved job YAML and validate it, without contacting Azure")
    args = parser.parse_args(argv)

    try:
        spec = read_spec(args.spec)
        job = load(args.spec, build_overrides(spec, args))
        if not args.dry_run:
            missing = [f"--{n}" for n in ("subscription", "resource_group", "workspace") if not getattr(args, n)]
            if missing:
                raise SpecError(f"{', '.join(missing)} needed to submit (or use --dry_run)")
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dump_yaml(job), end="")
        print(f"dry run: {args.spec} is valid; nothing was submitted", file=sys.stderr)
        return 0
    from azure.core.exceptions import AzureError

    try:
        created = submit(job, args.subscription, args.resource_group, args.workspace)
    except AzureError as err:  # authentication, missing workspace/compute, quota: Azure's message says which
        print(f"error: submission failed: {err}", file=sys.stderr)
        return 1
    print(f"submitted {created.name}")
    print(created.studio_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
