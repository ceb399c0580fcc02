"""Which TensorFlow, Keras and onnxruntime this project supports, checked without importing them.

``python -m tfmarket.train`` calls :func:`check_runtime` before TensorFlow is imported, so an
unsupported or doubly installed runtime gets one plain line (and the install line that fixes
it) instead of an import-time traceback deep inside TensorFlow. Everything here reads package
metadata (``importlib.metadata``): importing this module imports no TensorFlow.

TensorFlow and onnxruntime each come as several distributions that install the same import
package (``tensorflow`` / ``tensorflow-cpu`` / ``tf-nightly``, ``onnxruntime`` /
``onnxruntime-gpu``). With two installed, files of the last one installed overwrite the other's
and the result is neither, so two from one family are refused.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata

from tfmarket.errors import TfmarketError

# The range the code supports: TensorFlow 2.19 needs protobuf < 6 and numpy < 2.2, which
# onnx 1.23 (protobuf >= 6.31.1) rules out, so 2.20 is the oldest that can share an environment
# with this project's dependencies.
TF_MIN = (2, 20)
KERAS_MIN = (3, 14)  # the oldest seen training, exporting and ranking here (with TF 2.20)
KERAS_BELOW = (4, 0)  # Keras 4 may change the APIs used here
# The versions of the README's [cpu] / [gpu] installs, which the test suite runs on.
TF_TESTED = "2.21.0"
KERAS_TESTED = "3.15.1"

# On Colab ".[gpu]" upgrades its `tensorflow` in place (one distribution name, so still one).
INSTALL_HINT = 'install the tested set: pip install -e ".[cpu]" (a CUDA machine or Colab: ".[gpu]")'
# Set to 1 to turn the refusals into notices (a TensorFlow built from source, say).
IGNORE_ENV = "TFMARKET_IGNORE_VERSIONS"

# Distributions that install the `tensorflow` import package.
TENSORFLOW_DISTS = frozenset({
    "tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos",
    "tensorflow-aarch64", "tensorflow-cpu-aws", "intel-tensorflow", "tf-nightly",
    "tf-nightly-cpu", "tf-nightly-gpu", "tf-nightly-intel", "tf-nightly-macos",
})
# onnxruntime-* add-ons with import packages of their own, not another onnxruntime.
_ORT_ADDONS = ("onnxruntime-extensions", "onnxruntime-tools", "onnxruntime-genai")


def normalize(name: str) -> str:
    """A distribution name in PEP 503 form (``tensorflow_cpu`` -> ``tensorflow-cpu``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def family(name: str) -> str | None:
    """``"tensorflow"`` / ``"onnxruntime"`` for a distribution installing that import, else None."""
    name = normalize(name)
    if name in TENSORFLOW_DISTS:
        return "tensorflow"
    if name.startswith(_ORT_ADDONS):
        return None
    if name == "onnxruntime" or name.startswith(("onnxruntime-", "ort-nightly")):
        return "onnxruntime"
    return None


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``tensorflow-intel==2.19.0 ;
    platform_system == "Windows"`` -> ``tensorflow-intel``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return normalize(match.group(1)) if match else ""


def clashes(installed: dict[str, list[str]]) -> dict[str, list[str]]:
    """The families with more than one distribution in ``installed``.

    ``installed`` maps each distribution name to its requirement strings. A distribution that
    another member of its family requires is the other's payload, not a rival (Windows'
    ``tensorflow`` 2.19 is a shim over ``tensorflow-intel``), so it is not counted.
    """
    members: dict[str, list[str]] = {}
    for name in installed:
        kind = family(name)
        if kind:
            members.setdefault(kind, []).append(normalize(name))
    out = {}
    for kind, names in members.items():
        required = {requirement_name(r) for n in names for r in installed.get(n, [])
                    if not re.search(r"\bextra\s*==", r)}  # optional extras don't count
        rivals = sorted(n for n in names if n not in required)
        if len(rivals) > 1:
            out[kind] = rivals
    return out


def _major_minor(version: str) -> tuple[int, int]:
    # Only the release's first two numbers count: 2.22.0.dev20261201 and 2.21.0rc1 read as
    # (2, 22) and (2, 21); this avoids a dependency on `packaging` before TensorFlow is there.
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _dotted(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


def installed_runtimes() -> dict[str, tuple[str, list[str]]]:
    """The installed TensorFlow/Keras/onnxruntime distributions: name -> (version, requires)."""
    found = {}
    for dist in metadata.distributions():
        name = normalize(dist.metadata["Name"] or "")
        if family(name) or name == "keras":
            found[name] = (dist.version, list(dist.requires or []))
    return found


def problems(found: dict[str, tuple[str, list[str]]]) -> tuple[list[str], list[str]]:
    """(errors, notices) for the distributions :func:`installed_runtimes` found."""
    errors, notices = [], []
    doubled = clashes({name: requires for name, (_, requires) in found.items()})
    for kind, names in doubled.items():
        listed = " and ".join(f"{n} {found[n][0]}" for n in names)
        keep = "onnxruntime-gpu" if kind == "onnxruntime" and "onnxruntime-gpu" in names \
            else names[0]
        drop = " ".join(n for n in names if n != keep)
        errors.append(f"{listed} are both installed and overwrite each other's `{kind}` "
                      f"package; keep one: pip uninstall -y {drop} && pip install "
                      f"--force-reinstall --no-deps {keep}=={found[keep][0]}")
    tensorflow = [n for n in found if family(n) == "tensorflow"]
    supported = f"supported: TensorFlow >= {_dotted(TF_MIN)} with Keras {_dotted(KERAS_MIN)}" \
                f"-3.x; tested: {TF_TESTED} / {KERAS_TESTED}"
    if not tensorflow:
        errors.append(f"TensorFlow is not installed ({supported}); {INSTALL_HINT}")
    elif "tensorflow" not in doubled:
        version = found[tensorflow[0]][0]
        if _major_minor(version) < TF_MIN:
            errors.append(f"TensorFlow {version} is too old ({supported}); {INSTALL_HINT}")
        elif _major_minor(version) > _major_minor(TF_TESTED):
            notices.append(f"TensorFlow {version} is newer than tested ({TF_TESTED}); "
                           "if something fails, the tested set is pip install -e \".[cpu]\"")
    keras = found.get("keras")
    if keras is None:
        errors.append(f"Keras is not installed ({supported}); {INSTALL_HINT}")
    elif not KERAS_MIN <= _major_minor(keras[0]) < KERAS_BELOW:
        errors.append(f"Keras {keras[0]} is not supported ({supported}); {INSTALL_HINT}")
    elif _major_minor(keras[0]) > _major_minor(KERAS_TESTED):
        notices.append(f"Keras {keras[0]} is newer than tested ({KERAS_TESTED})")
    if not any(family(n) == "onnxruntime" for n in found):
        notices.append("onnxruntime is not installed: training works, but export --onnx and "
                       'rank need it (pip install -e ".[cpu]", or ".[colab]" on a GPU)')
    return errors, notices


def check_runtime() -> None:
    """Raises :class:`TfmarketError` (one line) when the runtime is missing, too old or doubly
    installed; prints a one-line notice to stderr for each softer finding (newer than tested).

    ``TFMARKET_IGNORE_VERSIONS=1`` turns the errors into notices.
    """
    errors, notices = problems(installed_runtimes())
    if errors and os.environ.get(IGNORE_ENV) == "1":
        notices, errors = errors + notices, []
    for notice in notices:
        print(f"notice: {notice}", file=sys.stderr)
    for error in errors[1:]:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        raise TfmarketError(f"{errors[0]} (set {IGNORE_ENV}=1 to try anyway)")
