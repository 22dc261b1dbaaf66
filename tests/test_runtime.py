"""probes.runtime: device, precision, autocast, RNG state, batch order, timing."""

import io
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probes import runtime
from probes.errors import UserError
from probes.rundir import new_record, run_summary


def test_rng_state_round_trips_every_generator_and_loads_with_weights_only():
    device = torch.device("cpu")
    buffer = io.BytesIO()
    torch.save(runtime.rng_state(device), buffer)
    first = (torch.rand(3), np.random.rand(3), random.random())
    buffer.seek(0)
    runtime.set_rng_state(torch.load(buffer, weights_only=True), device)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_an_old_checkpoints_bare_cpu_state_restores_torch():
    saved = torch.get_rng_state()  # what VLM checkpoints held before the engine
    first = torch.rand(3)
    runtime.set_rng_state(saved, torch.device("cpu"))
    assert torch.equal(torch.rand(3), first)


def test_precision_and_autocast():
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) is None and runtime.resolve_precision("bf16", cpu) is torch.bfloat16
    assert runtime.precision_name(None) == "fp32" and runtime.precision_name(torch.bfloat16) == "bf16"
    with runtime.autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with runtime.autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_a_cuda_device_without_cuda_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="'cuda:1' asked but CUDA is not available"):
        runtime.resolve_device("cuda:1")


def test_batch_order_state_names_what_fixes_its_rows():
    order = runtime.BatchOrder(10, 4, seed=3)
    assert order.state() == {"size": 10, "batch_size": 4, "seed": 3}
    again = runtime.BatchOrder(**order.state())
    assert all(np.array_equal(order.rows(s), again.rows(s)) for s in range(6))


def test_an_interval_adds_steps_examples_and_seconds_to_the_record():
    rec = new_record()
    runtime.end_train_interval(rec, torch.device("cpu"), 0.0, steps=3, examples=30)
    runtime.end_train_interval(rec, torch.device("cpu"), 0.0, steps=2, examples=8)
    assert rec["train_steps"] == 5 and rec["train_examples"] == 38 and rec["train_seconds"] > 0


def test_summary_throughput_counts_the_examples_seen_not_steps_times_one_batch_size():
    rec = {**new_record(), "train_steps": 10, "train_examples": 300, "train_seconds": 3.0}
    cfg = SimpleNamespace(threshold=0.9, max_steps=10, batch_size=999)  # a VLM's stages: batch_size is not it
    assert run_summary(rec, cfg, "running", "", 1.0, kind="vlm")["train_examples_per_s"] == 100.0


def test_a_scan_that_sums_with_float_atomics_on_cuda_is_not_the_same_bits_each_run():
    assert not runtime.same_bits_each_run("triton", "cuda")
    assert not runtime.same_bits_each_run("mamba-ssm", "cuda:1")
    assert not runtime.same_bits_each_run("torch,triton", "cuda")  # a VLM whose parts chose differently
    assert runtime.same_bits_each_run("torch", "cuda")  # the PyTorch scan: no atomics
    assert runtime.same_bits_each_run(None, "cuda")  # no Mamba in the run
    assert runtime.same_bits_each_run("triton", "cpu")  # the interpreter runs the atomics one by one


def test_summary_says_a_run_is_bit_reproducible_only_with_one_thread_count_and_same_bit_kernels():
    cfg = SimpleNamespace(threshold=0.9, max_steps=10)

    def summary(threads_used, same_bits=True):
        rec = {**new_record(), "threads_used": threads_used}
        return run_summary(rec, cfg, "running", "", 1.0, kind="probe", same_bits=same_bits)["bit_reproducible"]

    assert summary([2, 2]) is True
    assert summary([2, 1]) is False
    assert summary([2], same_bits=False) is False
