"""Every extra in pyproject.toml resolves on the package registry to one runtime of each kind.

``pip install --dry-run --ignore-installed --report`` resolves the requirement strings read from
pyproject.toml (tomllib, so the project itself is not built) as into an empty environment, and
the report's install list is checked: the pins exist, and no two distributions of the same
import package (tensorflow / tensorflow-cpu / tensorflow-intel / tf-nightly, onnxruntime /
onnxruntime-gpu / onnxruntime-*) are installed together.

Marked ``resolution``: ``pytest -m resolution`` runs only these, ``-m "not resolution"`` leaves
them out. They skip, saying why, when the registry cannot be reached. This machine's registry
serves no separate wheel metadata, so pip downloads whole wheels to resolve (the [gpu] set is
~3.5 GB, 45-75 s alone); the five resolutions run in parallel, about 2 minutes in all here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib

from tfmarket.versions import clashes, family, normalize, requirement_name

pytestmark = pytest.mark.resolution

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
BASE = PROJECT["dependencies"]
EXTRAS = PROJECT["optional-dependencies"]

# The environments the README sets up, plus the extras no README line installs, each with the
# number of TensorFlow and onnxruntime distributions it must end with.
CASES = {
    "cpu,dev": (1, 1),  # README: the CPU commands (and .ci/run)
    "gpu": (1, 1),  # README: the GPU line
    "colab": (0, 1),  # TensorFlow comes from the machine (Colab)
    "dev,bench": (0, 0),  # neither may bring a TensorFlow of its own
}
# pip's words when it could not reach an index (as opposed to: the index lacks a version).
OFFLINE = re.compile(
    r"NewConnectionError|Could not fetch URL|ConnectTimeout|ReadTimeout|Max retries exceeded|"
    r"Temporary failure in name resolution|Name or service not known|Network is unreachable|"
    r"ProxyError|SSLError|Connection refused|connection broken|No route to host")
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^;\s,]+)")


def _pip(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # --timeout/--retries override PIP_DEFAULT_TIMEOUT (180 s here): an unreachable registry
    # should cost seconds, not minutes, before the test skips.
    return subprocess.run([sys.executable, "-m", "pip", *args, "--timeout", "30",
                           "--retries", "2", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=timeout)


def _skip_if_offline(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if OFFLINE.search(line)]
        if lines:
            pytest.skip(f"package registry not reachable: {lines[0].strip()[:200]}")


def _requirements(extras: str) -> list[str]:
    reqs = list(BASE)
    for extra in extras.split(","):
        reqs += EXTRAS[extra]
    return reqs


def _resolve(extras: str, report: Path, *, ignore_installed: bool = True):
    args = ["install", "--dry-run", "--quiet", "--report", str(report)]
    if ignore_installed:
        args.append("--ignore-installed")
    return _pip(*args, *_requirements(extras))


# The Colab case: [colab] resolved against this environment as it is (its TensorFlow kept).
IN_PLACE = "colab (into this environment)"


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case resolved once, all at the same time (pip spends much of it downloading)."""
    folder = tmp_path_factory.mktemp("resolution")
    jobs = {case: folder / f"{i}.json" for i, case in enumerate([*CASES, IN_PLACE])}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {case: pool.submit(_resolve, case.split()[0], report,
                                     ignore_installed=case != IN_PLACE)
                   for case, report in jobs.items()}
        return {case: (future.result(), jobs[case]) for case, future in futures.items()}


@pytest.fixture(scope="module")
def resolved(resolutions):
    """The cases resolved as into an empty environment."""
    return {case: result for case, result in resolutions.items() if case in CASES}


def _installs(proc: subprocess.CompletedProcess, report: Path) -> dict[str, tuple[str, list]]:
    _skip_if_offline(proc)
    assert proc.returncode == 0, f"pip could not resolve:\n{proc.stderr[-3000:]}"
    items = json.loads(report.read_text())["install"]
    return {normalize(i["metadata"]["name"]): (i["metadata"]["version"],
                                               i["metadata"].get("requires_dist") or [])
            for i in items}


@pytest.mark.parametrize("extras", list(CASES))
def test_extra_resolves_to_one_runtime_of_each_kind(resolved, extras):
    installs = _installs(*resolved[extras])
    doubled = clashes({name: requires for name, (_, requires) in installs.items()})
    assert not doubled, f".[{extras}] installs clashing distributions: {doubled}"
    want_tf, want_ort = CASES[extras]
    found = {kind: sorted(n for n in installs if family(n) == kind)
             for kind in ("tensorflow", "onnxruntime")}
    assert len(found["tensorflow"]) == want_tf, (extras, found)
    assert len(found["onnxruntime"]) == want_ort, (extras, found)
    # Each pin of the case that applies on this machine is what pip chose.
    for requirement in _requirements(extras):
        match = PIN.match(requirement)
        name = requirement_name(requirement)
        if match and name in installs:
            assert installs[name][0] == match.group(2), (requirement, installs[name][0])


def test_every_pin_exists_on_the_registry(resolved):
    """Pins no resolution above installed (a marker false on this machine, like tensorflow for
    aarch64) are looked up in the registry's list of versions."""
    seen = set()
    for proc, report in resolved.values():
        seen |= {(name, version) for name, (version, _) in _installs(proc, report).items()}
    pins = {(normalize(m.group(1)), m.group(2))
            for requirement in BASE + [r for reqs in EXTRAS.values() for r in reqs]
            if (m := PIN.match(requirement))}
    for name, version in sorted(pins - seen):
        proc = _pip("index", "versions", name, timeout=120)
        _skip_if_offline(proc)
        assert proc.returncode == 0, proc.stderr[-2000:]
        available = re.search(r"Available versions: (.*)", proc.stdout)
        assert available and version in [v.strip() for v in available.group(1).split(",")], \
            f"{name}=={version} is not on the registry: {proc.stdout.strip()[:300]}"


def test_colab_extra_keeps_an_installed_tensorflow(resolutions):
    """As on Colab: where a supported TensorFlow is installed (this environment's), resolving
    the base dependencies + [colab] against it installs no TensorFlow and replaces none, nor
    the Keras, numpy, protobuf or TensorBoard it came with."""
    from tfmarket.versions import TF_MIN, installed_runtimes, problems

    found = installed_runtimes()
    errors, _ = problems(found)
    if not any(family(n) == "tensorflow" for n in found) or errors:
        pytest.skip(f"needs a supported TensorFlow installed here (>= {TF_MIN}): {errors}")
    installs = _installs(*resolutions[IN_PLACE])
    kept = [n for n in installs if family(n) == "tensorflow"
            or n in ("keras", "numpy", "protobuf", "tensorboard")]
    assert not kept, f"[colab] would install or replace {kept} where TensorFlow is installed"
    assert [n for n in installs if family(n) == "onnxruntime"] == ["onnxruntime-gpu"]
