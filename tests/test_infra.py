"""infra/ without Docker or Kubernetes: what can be checked here is checked for real.

The manifests are re-rendered from their values and compared with the committed files; every
command a container runs must exist in this environment (console scripts of the installed
packages, or the shims infra/Dockerfile creates); the Dockerfile copies the folders the package
is built from and its weight-fetching script runs; the DaskCluster matches the operator's own
spec helper and the KubeCluster example binds to KubeCluster's signature.  Not run here: building
the image, applying the manifests, starting the compose stack.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import loopback
import pytest
import yaml

from matteforge.config import load_config

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("matteforge_infra_render", K8S / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "values.yaml").read_text())


def _manifests() -> dict[str, list[dict[str, Any]]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted((K8S / "manifests").glob("*.yaml"))}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "DaskCluster":
        return [*doc["spec"]["worker"]["spec"]["containers"],
                *doc["spec"]["scheduler"]["spec"]["containers"]]
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    return []


def _dockerfile_shims() -> dict[str, list[str]]:
    """``/usr/local/bin/<name>`` scripts the Dockerfile writes → the command each one execs."""
    text = (INFRA / "Dockerfile").read_text()
    shim = r"printf '#!/bin/sh\\nexec ([^\"]+) \"\$@\"\\n' > /usr/local/bin/(\S+)"
    found = re.findall(shim, text)
    return {name: target.split() for target, name in found}


def _assert_command_exists(argv: list[str]) -> None:
    """A console script installed here or a Dockerfile shim onto one, and its subcommand."""
    shims = _dockerfile_shims()
    if argv[0] in shims:
        argv = shims[argv[0]] + argv[1:]
    assert Path(loopback.venv_command(argv[0])).exists() or shutil.which(argv[0]), argv
    if argv[0] in ("dask", "prefect"):
        depth = 2 if argv[0] == "dask" else 3  # `dask worker`, `prefect worker start`
        words = [a for a in argv[:depth] if not a.startswith("-")]
        helped = subprocess.run([loopback.venv_command(words[0]), *words[1:], "--help"],
                                capture_output=True, text=True, timeout=120)
        assert helped.returncode == 0, (argv, helped.stderr[-1000:])
        for flag in (a for a in argv if a.startswith("--")):
            assert flag in helped.stdout, (flag, argv)


def test_committed_manifests_are_what_values_yaml_renders():
    rendered = _renderer().render(_values())
    assert _manifests() == rendered
    for name, docs in rendered.items():  # byte-identical too, header included
        assert (K8S / "manifests" / name).read_text() == _renderer().dump(docs)


@pytest.mark.slow  # runs the CLIs (`--help`) or fetches weights
def test_every_container_runs_the_image_and_a_command_that_exists():
    values = _values()
    containers = [c for docs in _manifests().values() for d in docs for c in _containers(d)]
    assert {c["name"] for c in containers} == {"worker", "scheduler", "prefect-worker"}
    for container in containers:
        assert container["image"] == values["image"]
        _assert_command_exists(container.get("command") or container["args"])
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["PREFECT_API_URL"] == values["prefect"]["api_url"]


def test_dask_cluster_matches_the_operators_own_spec():
    operator = pytest.importorskip("dask_kubernetes.operator")
    values = _values()
    ours = _manifests()["dask-cluster.yaml"][0]
    d = values["dask"]
    theirs = operator.make_cluster_spec(name=d["cluster_name"], image=values["image"],
                                        n_workers=d["workers"], resources=d["resources"])
    assert (ours["apiVersion"], ours["kind"]) == (theirs["apiVersion"], theirs["kind"])
    assert ours["spec"]["scheduler"]["service"] == theirs["spec"]["scheduler"]["service"]
    assert ours["spec"]["worker"]["replicas"] == theirs["spec"]["worker"]["replicas"]
    for role in ("scheduler", "worker"):
        (mine,) = ours["spec"][role]["spec"]["containers"]
        (ref,) = theirs["spec"][role]["spec"]["containers"]
        assert mine["ports"] == ref["ports"]
        assert mine["args"][:3] == ref["args"][:3]  # dask-scheduler --host / dask-worker --name
    # what prefect.yaml for Kubernetes gives the build as --dask-address
    k8s = yaml.safe_load((K8S / "prefect.yaml").read_text())
    address = k8s["definitions"]["dask_address"]
    assert address.startswith(f"tcp://{d['cluster_name']}-scheduler.{values['namespace']}.")
    assert address.endswith(":8786")


@pytest.mark.slow  # runs the CLIs (`--help`) or fetches weights
def test_kubecluster_config_drives_dask_task_runner():
    """The cluster_class example validates, shapes outputs like comp1k, and binds to KubeCluster."""
    from matteforge.flows.build import make_task_runner

    cfg = load_config(K8S / "kubecluster.yaml")
    assert cfg.config_hash() == load_config("comp1k").config_hash()
    assert cfg.run.cluster_class == "dask_kubernetes.operator.KubeCluster"
    _assert_command_exists(cfg.run.cluster_kwargs["worker_command"])
    operator = pytest.importorskip("dask_kubernetes.operator")
    runner = make_task_runner(cfg.run)
    assert runner.resolved_cluster_class is operator.KubeCluster
    assert runner.adapt_kwargs == {"minimum": 1, "maximum": 16}
    inspect.signature(operator.KubeCluster).bind(**runner.cluster_kwargs)  # no unknown argument


def test_cluster_class_without_kubernetes_uses_the_named_class():
    from distributed import LocalCluster

    from matteforge.config import RunConfig
    from matteforge.flows.build import make_task_runner

    run = RunConfig(cluster_class="distributed.LocalCluster", cluster_kwargs={"n_workers": 1})
    runner = make_task_runner(run)
    assert runner.resolved_cluster_class is LocalCluster
    assert runner.cluster_kwargs == {"n_workers": 1}
    # an address wins over a class: a scheduler that already exists is used as is
    assert make_task_runner(run.model_copy(update={"dask_address": "tcp://x:8786"})).address


@pytest.mark.slow  # runs the CLIs (`--help`) or fetches weights
def test_dockerfile_copies_the_package_and_runs_as_a_user():
    text = (INFRA / "Dockerfile").read_text()
    copied = {src for line in re.findall(r"^COPY (.+)$", text, re.M)
              for src in line.split()[:-1]}
    for src in copied:
        assert (REPO / src).exists(), src
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs <= copied, package_dirs - copied
    assert "kubernetes" in pyproject["project"]["optional-dependencies"]
    assert '".[kubernetes]"' in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    entry = yaml.safe_load(re.findall(r"^CMD (.+)$", text, re.M)[-1])
    _assert_command_exists(entry)
    assert set(_dockerfile_shims()) == {"dask-scheduler", "dask-worker"}


@pytest.mark.slow  # runs the CLIs (`--help`) or fetches weights
def test_image_weight_fetch_step_runs():
    """The Dockerfile's `python infra/fetch_weights.py` step, with the pip-hosted model."""
    text = (INFRA / "Dockerfile").read_text()
    assert "python infra/fetch_weights.py $MATTEFORGE_MODELS" in text
    proc = subprocess.run([sys.executable, str(INFRA / "fetch_weights.py"), "mediapipe-selfie"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.match(r"mediapipe-selfie\S* sha256=[0-9a-f]{64} license=\S+", proc.stdout)


@pytest.mark.slow  # runs the CLIs (`--help`) or fetches weights
def test_compose_services_use_existing_commands_and_reach_each_other():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    ours = {name: s for name, s in services.items() if s.get("image") == "matteforge-worker:local"}
    assert set(ours) == {"prefect-server", "dask-scheduler", "dask-worker", "prefect-worker"}
    for service in ours.values():
        assert service["build"]["dockerfile"] == "infra/Dockerfile"
        assert (REPO / "infra" / service["build"]["context"] / "infra/Dockerfile").is_file()
        _assert_command_exists(service["command"])
    worker_env = ours["dask-worker"]["environment"]
    assert worker_env["PREFECT_API_URL"].startswith("http://prefect-server:4200/")
    assert "tcp://dask-scheduler:8786" in ours["dask-worker"]["command"]
    assert worker_env["FSSPEC_S3_ENDPOINT_URL"].startswith("http://minio:")
    assert ours["dask-worker"]["deploy"]["replicas"] == 2
