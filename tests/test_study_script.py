"""benchmarks/study_pretrained.sh (README Findings b): its environment settings are checked before
anything is written or started."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "study_pretrained.sh"
PATH = "/usr/local/bin:/usr/bin:/bin"  # python3 and bash, not a GPU driver's own directories


def _study(tmp_path, **env):
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "study")], capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, timeout=60)


def test_an_unknown_model_is_refused_with_the_pairs_there_are(tmp_path):
    out = _study(tmp_path, MODELS="mamba-20m mamba-7b")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: MODELS: no configs/pretrain-mamba-7b.yaml for 'mamba-7b' "
                                  "(allowed: mamba-20m, mamba-90m, pythia-20m, pythia-85m)")
    assert not (tmp_path / "study").exists()


def test_mps_without_its_control_program_is_refused(tmp_path):
    if shutil.which("nvidia-cuda-mps-control", path=PATH):  # a GPU host: the script would start MPS
        pytest.skip("nvidia-cuda-mps-control is installed here")
    out = _study(tmp_path, MODELS="mamba-20m", MPS="1", PATH=PATH)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: MPS=1 but nvidia-cuda-mps-control is not installed"
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("cells", ["16:sufix", "16", "n16:suffix", "16:suffix:prefix"])
def test_a_cell_that_is_not_n_colon_layout_is_refused(tmp_path, cells):
    out = _study(tmp_path, MODELS="mamba-20m", CELLS=f"32:prefix {cells}")
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: CELLS: '{cells}' is not N:LAYOUT (e.g. 16:suffix; layouts: suffix, "
                                  "prefix)")
    assert not (tmp_path / "study").exists()
