"""``import tfmarket`` and every CLI's --help must not import TensorFlow (fast start-up)."""

import subprocess
import sys

import pytest

CHECK = (
    "import sys, runpy\n"
    "sys.argv = [{module!r}, '--help']\n"
    "try:\n"
    "    runpy.run_module({module!r}, run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    "assert 'keras' not in sys.modules, 'keras imported'\n"
    "assert 'ray' not in sys.modules, 'ray imported'\n"
)


def test_import_tfmarket_does_not_import_tensorflow():
    code = ("import sys, tfmarket, tfmarket.data, tfmarket.config\n"
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", ["tfmarket.data", "tfmarket.train", "tfmarket.export",
                                    "tfmarket.gallery", "tfmarket.calibrate",
                                    "tfmarket.rank", "tfmarket.adapt"])
def test_help_does_not_import_tensorflow(module):
    proc = subprocess.run([sys.executable, "-c", CHECK.format(module=module)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


# The library modules docs/architecture.md says import no TensorFlow: the serving side, the
# retrieval rules and metrics, the dataset readers, and what adapt checks before TF loads.
TF_FREE = [
    "tfmarket.serving.predictor", "tfmarket.serving.ranking", "tfmarket.serving.embed",
    "tfmarket.serving.store", "tfmarket.serving.calibration", "tfmarket.serving.export",
    "tfmarket.serving.report", "tfmarket.serving.submission", "tfmarket.serving.quantize",
    "tfmarket.serving.onnx_ops", "tfmarket.serving.openvino_runtime",
    "tfmarket.serving.parquet_store", "tfmarket.serving.ray_embed",
    "tfmarket.retrieval.metrics", "tfmarket.retrieval.attribute_metrics",
    "tfmarket.retrieval.search", "tfmarket.retrieval.rerank", "tfmarket.retrieval.cluster",
    "tfmarket.retrieval.retrieval_rule", "tfmarket.retrieval.attribute_rule",
    "tfmarket.data.registry", "tfmarket.data.split", "tfmarket.data.summary",
    "tfmarket.data.synthetic", "tfmarket.data.synthetic.formats",
    "tfmarket.training.data", "tfmarket.training.rundir", "tfmarket.training.resume",
    "tfmarket.training.adapt_plan",
]


def test_library_modules_import_no_tensorflow():
    code = (f"import sys\nfor m in {TF_FREE!r}:\n    __import__(m)\n"
            "    assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, m\n"
            "import tfmarket\nassert tfmarket.load.__module__ == 'tfmarket.serving.predictor'\n"
            "assert 'tensorflow' not in sys.modules and 'onnxruntime' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
