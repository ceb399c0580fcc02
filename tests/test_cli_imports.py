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
