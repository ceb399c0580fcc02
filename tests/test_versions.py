"""The start-up check of the installed TensorFlow / Keras / onnxruntime (tfmarket.versions)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tfmarket import versions
from tfmarket.errors import TfmarketError


class FakeDist:
    """Just what ``installed_runtimes`` reads from an ``importlib.metadata.Distribution``."""

    def __init__(self, name: str, version: str, requires: list[str] | None = None):
        self.metadata = {"Name": name}
        self.version = version
        self.requires = requires


@pytest.fixture
def installed(monkeypatch):
    """Sets what ``importlib.metadata`` finds installed: ``installed(("keras", "3.15.1"), ...)``."""
    def install(*dists: tuple) -> None:
        monkeypatch.setattr(versions.metadata, "distributions",
                            lambda: [FakeDist(*d) for d in dists])
    return install


def refusal(installed, *dists: tuple) -> str:
    installed(*dists)
    with pytest.raises(TfmarketError) as info:
        versions.check_runtime()
    return str(info.value)


def test_tested_set_passes_silently(installed, capsys):
    installed(("tensorflow_cpu", "2.21.0"), ("keras", "3.15.1"), ("onnxruntime", "1.32.0"),
              ("numpy", "2.4.6"))
    versions.check_runtime()
    assert capsys.readouterr().err == ""


def test_colab_like_set_passes(installed, capsys):
    # The machine's TensorFlow 2.20 with its Keras, and onnxruntime-gpu from the [colab] extra.
    installed(("tensorflow", "2.20.0"), ("keras", "3.14.0"), ("onnxruntime-gpu", "1.26.0"))
    versions.check_runtime()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("dists, words", [
    ((("keras", "3.15.1"), ("onnxruntime", "1.32.0")), "TensorFlow is not installed"),
    ((("tensorflow", "2.19.0"), ("keras", "3.15.1")), "TensorFlow 2.19.0 is too old"),
    ((("tensorflow", "2.21.0"), ("keras", "3.13.0")), "Keras 3.13.0 is not supported"),
    ((("tensorflow", "2.21.0"), ("keras", "4.0.0")), "Keras 4.0.0 is not supported"),
    ((("tensorflow", "2.21.0"),), "Keras is not installed"),
])
def test_missing_or_unsupported_runtime_is_refused_in_one_line(installed, dists, words):
    message = refusal(installed, *dists)
    assert words in message and "\n" not in message
    assert "supported: TensorFlow >= 2.20 with Keras 3.14-3.x" in message
    assert 'pip install -e ".[cpu]"' in message  # and how to get a supported set


def test_two_tensorflows_are_refused_with_the_fix(installed):
    message = refusal(installed, ("tensorflow", "2.21.0"), ("tensorflow-cpu", "2.21.0"),
                      ("keras", "3.15.1"), ("onnxruntime", "1.32.0"))
    assert "tensorflow 2.21.0 and tensorflow-cpu 2.21.0 are both installed" in message
    assert ("pip uninstall -y tensorflow-cpu && pip install --force-reinstall --no-deps "
            "tensorflow==2.21.0") in message


def test_two_onnxruntimes_are_refused_keeping_the_gpu_one(installed):
    message = refusal(installed, ("tensorflow", "2.21.0"), ("keras", "3.15.1"),
                      ("onnxruntime", "1.32.0"), ("onnxruntime_gpu", "1.26.0"))
    assert ("pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps "
            "onnxruntime-gpu==1.26.0") in message


def test_a_shim_over_its_payload_is_not_a_clash(installed, capsys):
    # TensorFlow <= 2.19 on Windows: `tensorflow` requires `tensorflow-intel`, which holds the
    # files; the two are one installation. (2.19 is then refused for its age, not as a clash.)
    shim = ["tensorflow-intel ==2.19.0 ; platform_system == \"Windows\""]
    assert versions.clashes({"tensorflow": shim, "tensorflow-intel": []}) == {}
    assert versions.clashes({"tensorflow": [], "tf-nightly": []}) == {
        "tensorflow": ["tensorflow", "tf-nightly"]}
    # An optional extra's requirement is not a payload.
    assert versions.clashes({"tensorflow": ['tensorflow-cpu; extra == "x"'],
                             "tensorflow-cpu": []}) != {}
    assert "too old" in refusal(installed, ("tensorflow", "2.19.0", shim),
                                ("tensorflow-intel", "2.19.0"), ("keras", "3.15.1"))


def test_onnxruntime_addons_are_not_runtimes():
    assert versions.family("onnxruntime-extensions") is None
    assert versions.family("onnxruntime_genai_cuda") is None
    assert versions.family("onnxruntime-directml") == "onnxruntime"
    assert versions.family("tensorflow-datasets") is None
    assert versions.family("tensorflow-metadata") is None


def test_newer_than_tested_is_a_notice(installed, capsys):
    installed(("tf-nightly", "2.23.0.dev20261201"), ("keras", "3.16.0"),
              ("onnxruntime", "1.32.0"))
    versions.check_runtime()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("notice: ") for line in err)
    assert "TensorFlow 2.23.0.dev20261201 is newer than tested (2.21.0)" in err[0]
    assert "Keras 3.16.0 is newer than tested (3.15.1)" in err[1]


def test_missing_onnxruntime_is_a_notice(installed, capsys):
    installed(("tensorflow", "2.21.0"), ("keras", "3.15.1"))
    versions.check_runtime()
    assert "notice: onnxruntime is not installed" in capsys.readouterr().err


def test_ignore_variable_turns_errors_into_notices(installed, monkeypatch, capsys):
    monkeypatch.setenv(versions.IGNORE_ENV, "1")
    installed(("tensorflow", "2.19.0"), ("keras", "3.15.1"), ("onnxruntime", "1.32.0"))
    versions.check_runtime()
    assert "notice: TensorFlow 2.19.0 is too old" in capsys.readouterr().err


def test_this_environment_reads_real_metadata():
    # Unpatched importlib.metadata: this environment's own TensorFlow and Keras are found.
    found = versions.installed_runtimes()
    assert "keras" in found and any(versions.family(n) == "tensorflow" for n in found)


def test_train_refuses_an_unsupported_runtime_before_importing_tensorflow(tmp_path):
    """``python -m tfmarket.train`` prints one error line and exits 2, TensorFlow not imported."""
    code = (
        "import sys\n"
        "from importlib import metadata\n"
        "from tfmarket.versions import family\n"
        "class Old:\n"
        "    metadata = {'Name': 'tensorflow'}\n"
        "    version = '2.18.1'\n"
        "    requires = []\n"
        "real = metadata.distributions\n"
        "metadata.distributions = lambda: [\n"
        "    d for d in real() if family(d.metadata['Name'] or '') != 'tensorflow'] + [Old()]\n"
        "sys.argv = ['tfmarket.train', '--workdir', sys.argv[1]]\n"
        "import runpy\n"
        "try:\n"
        "    runpy.run_module('tfmarket.train', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "    raise\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorFlow 2.18.1 is too old"), lines
    assert not (tmp_path / "run").exists()
