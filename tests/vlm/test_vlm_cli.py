"""`probes vlm train | eval`: the commands a user types, config + flags, and one-line errors."""

import json

import pytest
from PIL import Image

from cli import app
from probes.vlm.config import VLMTrainConfig
from probes.vlm.data import SyntheticScenes, export_records

TINY = ["--max-steps", "4", "--stage1-steps", "2", "--eval-every", "2", "--batch-size", "4", "--train-size", "16",
        "--eval-size", "4", "--image-size", "32", "--instruction", "", "--lr", "1e-3"]


def run(cli_runner, *args):
    return cli_runner.invoke(app, [str(a) for a in args])


def test_help_lists_every_option_with_its_default(cli_runner):
    r = run(cli_runner, "vlm", "--help")
    assert r.exit_code == 0 and "train" in r.stdout and "eval" in r.stdout
    r = run(cli_runner, "vlm", "train", "--help")
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    for field in VLMTrainConfig.model_fields:
        if field != "data":
            assert f"--{field.replace('_', '-')}" in text, field
    for option in ("--data", "--train-file", "--eval-file", "--box-format", "--data-seed", "--overwrite", "--config"):
        assert option in text
    assert "[default: pythia-tiny]" in text and "[default: 0.001]" in text
    assert run(cli_runner, "vlm", "eval", "--help").exit_code == 0


def test_train_then_eval_from_config_and_flags(cli_runner, tmp_path):
    (tmp_path / "c.yaml").write_text("model: pythia-tiny\nconnector: vss-mlp\nscan: csm\nseed: 3\n")
    out = tmp_path / "run"
    r = run(cli_runner, "vlm", "train", "--config", tmp_path / "c.yaml", *TINY, "--seed", "1", "--out", out)
    assert r.exit_code == 0, r.output
    assert "not_reached" in r.output and "step      4 stage 2" in r.output
    cfg = json.loads((out / "summary.json").read_text())
    assert cfg["status"] == "not_reached"
    saved = VLMTrainConfig.model_validate(__import__("yaml").safe_load((out / "config.yaml").read_text()))
    assert (saved.connector, saved.scan, saved.seed, saved.data.train_size) == ("vss-mlp", "csm", 1, 16)

    r = run(cli_runner, "vlm", "train", "--config", tmp_path / "c.yaml", *TINY, "--seed", "1", "--out", out)
    assert r.exit_code == 2 and "holds a finished run" in r.output

    r = run(cli_runner, "vlm", "eval", out)
    assert r.exit_code == 0, r.output
    assert "acc@0.5=" in r.stdout and "n=4" in r.stdout
    assert len((out / "eval" / "predictions.jsonl").read_text().splitlines()) == 4

    records = export_records(SyntheticScenes(9, 3, 40), tmp_path / "refs", "val")
    r = run(cli_runner, "vlm", "eval", out, "--eval-file", records, "--out", tmp_path / "p.jsonl")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {"prediction", "target", "iou", "correct", "parsed"} <= set(rows[0])


def test_training_on_refcoco_records(cli_runner, tmp_path):
    train = export_records(SyntheticScenes(0, 8, 32), tmp_path / "d", "train")
    val = export_records(SyntheticScenes(1, 4, 32), tmp_path / "d", "val")
    r = run(cli_runner, "vlm", "train", *TINY, "--data", "refcoco", "--train-file", train, "--eval-file", val,
            "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output


def _bad_records(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "missing.jsonl").write_text(json.dumps({"image": "nope.png", "expression": "x", "box": [0, 0, 4, 4]}))
    (tmp_path / "malformed.jsonl").write_text(json.dumps({"image": "ok.png", "expression": "x", "box": [0, 0]}))


@pytest.mark.parametrize("args, message", [
    (["--encoder", "vit-huge"], "unknown encoder 'vit-huge' (known: siglip-tiny"),
    (["--connector", "qformer"], "unknown connector 'qformer' (known: mlp, vss-mlp, vss-l2, mamba-projector)"),
    (["--model", "gpt-5"], "unknown model 'gpt-5'"),
    (["--connector", "mamba-projector"], "connector mamba-projector takes 2 encoder(s), got 1; set encoder2"),
    (["--connector", "vss-l2", "--encoder2", "dinov2-tiny"], "connector vss-l2 takes 1 encoder(s), got 2"),
    (["--connector", "vss-mlp", "--scan", "cross-cat"], "connector vss-mlp scans with bsm or csm, got scan 'cross-cat'"),
    (["--layout", "sideways"], "layout: Input should be 'task-agnostic', 'task-aware' or 'query-first'"),
    (["--data", "refcoco"], "data.kind=refcoco needs data.train_file and data.eval_file"),
    (["--data", "refcoco", "--train-file", "{tmp}/missing.jsonl", "--eval-file", "{tmp}/missing.jsonl"],
     "missing.jsonl:1: image not found"),
    (["--data", "refcoco", "--train-file", "{tmp}/malformed.jsonl", "--eval-file", "{tmp}/malformed.jsonl"],
     "malformed.jsonl:1: box must be 4 numbers"),
    (["--stage1-steps", "9"], "stage1_steps=9 is more than max_steps=4"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(cli_runner, tmp_path, args, message):
    _bad_records(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run(cli_runner, "vlm", "train", *TINY, *args, "--out", tmp_path / "run")
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.strip().count("\n") == 0, r.output
    assert "Traceback" not in r.output


def test_unknown_config_keys_and_runs_without_checkpoints(cli_runner, tmp_path):
    (tmp_path / "c.yaml").write_text("connecter: mlp\n")
    r = run(cli_runner, "vlm", "train", "--config", tmp_path / "c.yaml")
    assert r.exit_code == 2 and "unknown config key 'connecter'" in r.output
    r = run(cli_runner, "vlm", "eval", tmp_path / "nothing")
    assert r.exit_code == 2 and "holds no VLM run" in r.output
