"""`probes --help`, `probes plot` and `probes generate` start without importing torch or transformers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "analysis"))  # synthetic.py: hand-written run directories

from synthetic import write_run  # noqa: E402 - after the path it lives on

HEAVY = ("torch", "transformers")
PROBE = f"""
import json, sys
from cli import app
code = None
try:
    app(json.loads(sys.argv[1]), prog_name="probes")
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def run_cli(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["plot", "--help"], ["generate", "--help"], ["vlm", "--help"]])
def test_help_does_not_import_torch(args):
    assert run_cli(args) == {"code": 0, "heavy": []}


def test_generate_does_not_import_torch(tmp_path):
    args = ["generate", "--n", "4", "--train-size", "8", "--eval-size", "8", "--out", str(tmp_path / "d")]
    assert run_cli(args) == {"code": 0, "heavy": []}
    assert (tmp_path / "d" / "train.npz").is_file()


def test_plot_does_not_import_torch(tmp_path):
    write_run(tmp_path / "runs", n=4, learn_at=20, max_steps=40)
    args = ["plot", str(tmp_path / "runs"), "--kind", "curves", "--format", "png", "--out", str(tmp_path / "f")]
    assert run_cli(args) == {"code": 0, "heavy": []}
    assert (tmp_path / "f" / "curves.png").is_file()


def test_the_check_can_fail():
    """The probe sees torch when a command does import it (so a pass above means something)."""
    res = subprocess.run([sys.executable, "-c", "import torch\n" + PROBE, json.dumps(["--help"])],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert json.loads(res.stdout.strip().splitlines()[-1])["heavy"] == ["torch"]
