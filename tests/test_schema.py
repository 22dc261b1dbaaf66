"""probes.schema: one definition of the run directory that writers and readers share."""

import subprocess
import sys

import pytest

from probes import schema


def test_kinds_statuses_and_columns_are_consistent():
    assert schema.RUN_KINDS == ("probe", "vlm", "pretrain")
    assert set(schema.METRIC_COLUMNS) == set(schema.RUN_KINDS) == set(schema.HAS_POSITIONS)
    assert set(schema.FINISHED) < set(schema.STATUSES) and schema.RUNNING in schema.STATUSES
    for kind in schema.RUN_KINDS:
        cols = schema.metric_columns(kind)
        assert cols[0] == "step" and len(cols) == len(set(cols))
    with pytest.raises(ValueError, match="unknown run kind 'text' .allowed: probe, vlm, pretrain"):
        schema.metric_columns("text")


def test_trainers_write_the_schemas_columns():
    """The trainers' columns are the schema's (until the engine imports them from there)."""
    from probes import rundir, train
    from probes.vlm import train as vlm_train

    assert train.METRIC_COLUMNS == schema.PROBE_METRIC_COLUMNS
    assert vlm_train.METRIC_COLUMNS == schema.VLM_METRIC_COLUMNS
    assert rundir.POSITION_COLUMNS is schema.POSITION_COLUMNS and rundir.RUN_FILES is schema.RUN_FILES


def test_schema_and_analysis_load_import_without_torch():
    code = "import sys, probes.schema, analysis.load; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_format_lr_is_one_function_for_run_names_and_figure_labels():
    from probes import train
    from probes.naming import format_lr

    assert train.format_lr is format_lr
    assert [format_lr(x) for x in (2.5e-4, 3e-4, 1e-5, 0.001)] == ["2.5e-4", "3e-4", "1e-5", "1e-3"]
