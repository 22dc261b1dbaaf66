"""The Triton selective scan at the paper shapes: fwd and fwd+bwd milliseconds, against its memory floor.

    python benchmarks/scan.py --out bench/                  # B=64, L=203, N=16, D = 1536 / 2048 / 4096
    python benchmarks/scan.py --shape 64,1536,203,16 --reps 50 --out bench/
    python benchmarks/scan.py --compare --out bench/        # levers off (old path), tuned, default: side by side

Inputs are laid out as the fused mixer passes them (channel-last views of (B, L, D) tensors, bf16;
A, D, delta_bias float32; softplus, D skip and z gate on). The floor: fwd reads u, delta, z and
writes out (4 x B.D.L values); the backward's two passes read u, delta (pass 1), u, delta, z,
dout and write du, ddelta, dz (pass 2): 13 x B.D.L bf16 values in all (B, C and the chunk states
are N / D of that or less). floor_ms = bytes / the copy bandwidth measured here (a large
device-to-device clone), so `x_floor` = measured / floor says how far the kernels are from the
memory system. Also times the causal conv (fwd+bwd, Mamba's W=4, SiLU) on the same (B, L, D),
and in a second table its fwd and bwd alone on x sliced from a (B, L, 2D) tensor as in the mixer,
against its floor of 5 x B.L.D bf16 values (fwd reads x, writes y; bwd reads x, dy, writes dx):
with --compare for both kernels and several backward row blocks (`FWD_KERNEL`, `BWD_KERNEL`,
`BWD_ROWS` in probes/kernels/causal_conv.py; "tiles / tiles" with rows "L", one backward program
walking all of L, is the conv before issue 17), default launches.

Levers (issue 17): launch tuning of the scan and conv kernels and chunk states saved by the
forward (the backward then skips its recompute pass). Saved states are on by default, launch
tuning off (CONFIG.autotune). PROBES_SCAN_LEVERS=0 switches both off, PROBES_SCAN_SAVE_MB=0 the
saved states only; --compare times each shape with levers off ("off"), with launch tuning switched
on and no saved states ("tuned"), and with the defaults ("on"), in one process; then the defaults with a
few scan CONFIG fields changed (`CONFIG_ROWS`: the backward in 2-step pieces, `sub_bwd = 2`, with and
without prefetch, with one channel per thread, with a register cap; dB/dC in per-lane atomic slots,
`bc_mode = 2`; 2-step chunks of 4 channels per thread). Writes OUT/scan.json and OUT/scan.md.
Needs a CUDA GPU.

    ncu --kernel-name regex:_ssm_ --launch-count 2 python benchmarks/scan.py --once --shape 64,1536,203,16

--once runs each mode's (--rows) training forward and backward once per shape, untimed: what a profiler
such as Nsight Compute (ncu) should see.

    python benchmarks/scan.py --registers --out bench/      # no GPU: ptxas registers of the backward's variants

--registers compiles the scan backward for sm_90 here (REGISTER_ROWS x REGISTER_CAPS, with the launch's
specialisations: unit strides constant, multiples of 16 marked) and writes OUT/scan_registers.md.

    python benchmarks/scan.py --sass --out bench/           # no GPU: what one loop iteration issues

--sass compiles the training forward and the backward the same way, disassembles them (nvdisasm, shipped
with triton), counts the instructions of each kernel's main loop by kind (fp32, shuffles, MUFU, barriers,
shared and global memory) and prints the ms each kernel would take at each shape if its busiest unit never
waited (sm_90 per-SM rates; --sms, --ghz), to set beside the measured ms. Writes OUT/scan_sass.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch

PAPER_SHAPES = [(64, 1536, 203, 16), (64, 2048, 203, 16), (64, 4096, 203, 16)]  # mamba-130m, -370m, -1.4b
VALUES_MOVED = 13  # x B.D.L, fwd + bwd (module docstring)
CONV_VALUES_MOVED = 5  # x B.L.D, conv fwd + bwd
# --compare rows after off / tuned / on: the defaults ("on") with these scan CONFIG fields changed.
# prefetch also switches the forward's prefetch off (its fwd ms shows that part). Registers of the
# backward from --registers (ptxas, sm_90; the defaults: 251, 8 one-warp programs per SM).
CONFIG_ROWS = {
    "sub2": {"sub_bwd": 2},  # backward pieces of 2 steps (ScanConfig.sub_bwd): 218 registers, 9 warps per SM
    "sub2 nopf": {"sub_bwd": 2, "prefetch": False},  # 168 (+4 B spill): 12
    "dh1 nopf": {"dh_bwd": 1, "prefetch": False},  # one piece, one channel per thread: 162, 12
    "sub2 dh1 nopf": {"sub_bwd": 2, "dh_bwd": 1, "prefetch": False},  # 141: 14
    "sub2 dh1 nopf r128": {"sub_bwd": 2, "dh_bwd": 1, "prefetch": False, "maxnreg_bwd": 128},  # 128 (+12 B): 16
    "bc2": {"bc_mode": 2},  # dB/dC per-lane atomic slots: 8% fewer loop instructions, 56 shuffles not 152 (--sass)
    "dh1 bc2": {"dh_bwd": 1, "bc_mode": 2},  # 168 registers (12 warps per SM) and 28 shuffles
    # 2-step chunks of 4 channels per thread: 5% fewer loop instructions, 100 shuffles (--sass), 8 B spilled;
    # the saved states are 2 steps apart, so the forward writes twice the state bytes
    "c2 dh4": {"chunk_bwd": 2, "dh_bwd": 4},
}
# conv (forward kernel, backward kernel, backward steps per program) timed with --compare; None: all of L
# (tiles, tiles, None: the conv before issue 17)
CONV_COMPARE = (("tiles", "tiles", None), ("tiles", "tiles", 32), ("tiles", "stream", 64), ("tiles", "stream", 32),
                ("tiles", "stream", 16), ("stream", "stream", 32))


def inputs(batch: int, dim: int, L: int, N: int, device: str = "cuda", dtype=torch.bfloat16, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def bld(scale=1.0, shift=0.0):  # (B, D, L) view of a contiguous (B, L, D) tensor
        t = torch.randn(batch, L, dim, generator=g) * scale + shift
        return t.to(device, dtype).transpose(1, 2).requires_grad_()

    def bnl():
        return torch.randn(batch, L, N, generator=g).to(device, dtype).transpose(1, 2).requires_grad_()

    return {"u": bld(), "delta": bld(0.5, -1.0), "A": (-torch.exp(torch.randn(dim, N, generator=g) * 0.5)).to(device),
            "B": bnl(), "C": bnl(), "D": torch.randn(dim, generator=g).to(device),
            "z": bld(), "delta_bias": (torch.randn(dim, generator=g) * 0.1).to(device)}


def cuda_ms(fn, reps: int, warmup: int = 3) -> float:
    """Median milliseconds of fn() over `reps` CUDA-event-timed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth(gib: float = 2.0, reps: int = 10) -> float:
    """Bytes per second of a device-to-device clone (read + write) of `gib` GiB."""
    x = torch.empty(int(gib * 2**30) // 2, dtype=torch.bfloat16, device="cuda")
    ms = cuda_ms(lambda: x.clone(), reps)
    return 2 * x.numel() * x.element_size() / (ms / 1e3)


@contextlib.contextmanager
def scan_mode(levers: str):
    """The scan as `levers` names it (off, tuned, on or a CONFIG_ROWS name) inside the block; restored after."""
    from probes.kernels.selective_scan import CONFIG

    env_before = {k: os.environ.get(k) for k in ("PROBES_SCAN_LEVERS", "PROBES_SCAN_SAVE_MB")}
    os.environ["PROBES_SCAN_LEVERS"] = "0" if levers == "off" else "1"
    os.environ.pop("PROBES_SCAN_SAVE_MB", None)
    config_before = dict(CONFIG.__dict__)
    CONFIG.__dict__.update(CONFIG_ROWS.get(levers, {}))
    if levers == "tuned":  # launch tuning only (off by default, so switched on here), no saved chunk states
        os.environ["PROBES_SCAN_SAVE_MB"] = "0"
        CONFIG.autotune = True
    try:
        yield
    finally:
        CONFIG.__dict__.update(config_before)
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def scan_fwd_bwd(shape):
    """fwd() and fwd_bwd() of the scan on inputs of `shape`, as the fused mixer passes them."""
    from probes.kernels.selective_scan import selective_scan_fn

    ins = inputs(*shape)
    args = [ins[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    dout = torch.randn_like(ins["u"])

    def fwd():
        with torch.no_grad():
            selective_scan_fn(*args, delta_softplus=True)

    def fwd_bwd():
        out = selective_scan_fn(*args, delta_softplus=True)
        torch.autograd.grad(out, [ins["u"], ins["delta"], ins["B"], ins["C"], ins["z"]], dout)

    return fwd, fwd_bwd


def time_shape(shape, reps: int, bandwidth: float, levers: str = "on") -> dict:
    from probes.kernels.causal_conv import causal_conv1d_fn

    batch, dim, L, N = shape
    x = torch.randn(batch, L, dim, device="cuda", dtype=torch.bfloat16).requires_grad_()  # unit channel stride
    w = torch.randn(dim, 4, device="cuda", requires_grad=True)
    cb = torch.randn(dim, device="cuda", requires_grad=True)
    gx = torch.randn_like(x)

    def conv_fwd_bwd():
        torch.autograd.grad(causal_conv1d_fn(x, w, cb, "silu"), [x, w, cb], gx)

    floor_ms = VALUES_MOVED * batch * dim * L * 2 / bandwidth * 1e3
    with scan_mode(levers):
        fwd, fwd_bwd = scan_fwd_bwd(shape)
        ms_f, ms_fb, ms_conv = cuda_ms(fwd, reps), cuda_ms(fwd_bwd, reps), cuda_ms(conv_fwd_bwd, reps)
    return {"levers": levers, "B": batch, "D": dim, "L": L, "N": N, "fwd_ms": ms_f, "fwd_bwd_ms": ms_fb,
            "floor_ms": floor_ms, "x_floor": ms_fb / floor_ms, "pct_of_floor": 100 * floor_ms / ms_fb,
            "conv_fwd_bwd_ms": ms_conv}


def run_once(shapes, modes) -> None:
    """--once: each mode's training forward and backward once per shape, untimed, for a profiler."""
    for shape in shapes:
        for mode in modes:
            with scan_mode(mode):
                scan_fwd_bwd(shape)[1]()
            torch.cuda.synchronize()
            print(f"ran {mode} at B,D,L,N = {','.join(map(str, shape))}")


def time_conv(shape, reps: int, bandwidth: float, fwd: str, bwd: str, rows: int | None) -> dict:
    """Conv fwd, bwd and both (default launches) with the given kernels, `rows` backward steps per program
    (None: all of L)."""
    from probes.kernels.causal_conv import BWD_KERNEL, BWD_ROWS, FWD_KERNEL, bwd_rows, conv_bwd, conv_fwd

    batch, dim, L, _ = shape
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, L, 2 * dim, generator=g).to("cuda", torch.bfloat16)[..., :dim]  # in_proj's x half
    w, cb = torch.randn(dim, 4, generator=g).cuda(), torch.randn(dim, generator=g).cuda()
    dy = torch.randn(batch, L, dim, generator=g).to("cuda", torch.bfloat16)
    steps = L if rows is None else rows
    saved = os.environ.get("PROBES_SCAN_LEVERS")
    os.environ["PROBES_SCAN_LEVERS"] = "0"  # default launches: the schedule, not the tuner's pick
    try:
        ms_f = cuda_ms(lambda: conv_fwd(x, w, cb, True, kernel=fwd), reps)
        ms_b = cuda_ms(lambda: conv_bwd(x, w, cb, True, dy, rows=steps, kernel=bwd), reps)
        ms_fb = cuda_ms(lambda: (conv_fwd(x, w, cb, True, kernel=fwd),
                                 conv_bwd(x, w, cb, True, dy, rows=steps, kernel=bwd)), reps)
    finally:
        os.environ.pop("PROBES_SCAN_LEVERS")
        if saved is not None:
            os.environ["PROBES_SCAN_LEVERS"] = saved
    label = "L" if bwd_rows(L, steps) >= L else str(bwd_rows(L, steps))
    default = (fwd, bwd, steps) == (FWD_KERNEL, BWD_KERNEL, BWD_ROWS)
    floor_ms = CONV_VALUES_MOVED * batch * dim * L * 2 / bandwidth * 1e3
    return {"kernels": f"{fwd} / {bwd}" + (" (default)" if default else ""), "rows": label, "B": batch, "D": dim,
            "L": L, "fwd_ms": ms_f, "bwd_ms": ms_b, "fwd_bwd_ms": ms_fb, "floor_ms": floor_ms,
            "x_floor": ms_fb / floor_ms}


def conv_markdown(rows: list[dict]) -> str:
    lines = [(f"Causal conv (W=4, SiLU, bf16); floor = {CONV_VALUES_MOVED} x B.L.D bf16 values; rows = backward "
              "steps per program (L: one program walks all of L; tiles / tiles at L = the conv before issue 17)."),
             "",
             "| conv kernels fwd / bwd | bwd rows | B | D | L | fwd ms | bwd ms | fwd+bwd ms | floor ms | x floor |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['kernels']} | {r['rows']} | {r['B']} | {r['D']} | {r['L']} | {r['fwd_ms']:.3f} | "
              f"{r['bwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {r['floor_ms']:.3f} | {r['x_floor']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def to_markdown(rows: list[dict], bandwidth: float, env: dict, conv_rows: list[dict] = ()) -> str:
    title = (f"{env['gpu']}; torch {env['torch']}, triton {env['triton']}; copy bandwidth "
             f"{bandwidth / 1e12:.2f} TB/s; floor = {VALUES_MOVED} x B.D.L bf16 values at that bandwidth.")
    lines = [title, "",
             ("| levers | B | D | L | N | fwd ms | fwd+bwd ms | floor ms | x floor | floor as % of measured "
             "| conv fwd+bwd ms |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['levers']} | {r['B']} | {r['D']} | {r['L']} | {r['N']} | {r['fwd_ms']:.3f} | "
                     f"{r['fwd_bwd_ms']:.3f} | {r['floor_ms']:.3f} | {r['x_floor']:.1f} | {r['pct_of_floor']:.0f}% | "
                     f"{r['conv_fwd_bwd_ms']:.3f} |")
    return "\n".join(lines) + "\n" + ("\n" + conv_markdown(conv_rows) if conv_rows else "")


# --registers: backward variants (scan CONFIG fields over the defaults) and register caps compiled for sm_90
REGISTER_ROWS = {"default": {}, "nopf": {"prefetch": False}, "sub2": {"sub_bwd": 2},
                 "sub2 nopf": {"sub_bwd": 2, "prefetch": False}, "dh1 nopf": {"dh_bwd": 1, "prefetch": False},
                 "sub2 dh1 nopf": {"sub_bwd": 2, "dh_bwd": 1, "prefetch": False}}
REGISTER_CAPS = (0, 168, 144, 128)  # 0: no cap; 168, 144, 128 registers: 12, 14, 16 one-warp programs per SM
FP32_ARGS = ("A_ptr", "D_ptr", "bias_ptr", "chk_ptr", "dA_ptr", "dD_ptr", "dbias_ptr", "dB_ptr", "dC_ptr")
UNIT_STRIDES = ("su_d", "sdt_d", "sz_d", "sdo_d", "sdu_d", "sddt_d", "sdz_d", "so_d", "sA_n", "sB_n", "sC_n")
ODD_INTS = ("L", "NBATCH")  # L = 203: not a multiple of 16; every other int of the paper shape is
FWD_FP32_ARGS = ("A_ptr", "D_ptr", "bias_ptr", "chk_ptr", "last_ptr")
FWD_UNIT_STRIDES = ("su_d", "sdt_d", "sz_d", "so_d", "sA_n", "sB_n", "sC_n")


def compile_sm90(kernel, consts: dict, fp32_args: tuple, odd_ints: tuple, num_warps: int, cap: int = 0):
    """(the kernel compiled for sm_90 here, no GPU; ptxas's log): `consts` as constexprs, pointers bf16 but
    `fp32_args`, ints 32-bit and marked multiples of 16 but `odd_ints`, as the launch specialises them."""
    import contextlib
    import io

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    sig = {n: "constexpr" if n in consts else "*fp32" if n in fp32_args else "*bf16" if n.endswith("_ptr") else "i32"
           for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in consts and n not in odd_ints}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    options = {"num_warps": num_warps, **({"maxnreg": cap} if cap else {})}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    return compiled, log.getvalue()


def backward_consts(cfg, write_out: bool = False) -> dict:
    """The backward's constexprs at the paper shape (N = 16), all flags on, channel-last bf16 inputs."""
    from probes.kernels.selective_scan import bwd_sub

    return {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True, "WRITE_OUT": write_out,
            "BC_MODE": cfg.bc_mode, "DH": cfg.dh_bwd, "DL": cfg.dl_bwd, "BLOCK_N": 16, "CHUNK": cfg.chunk_bwd,
            "PREFETCH": cfg.prefetch, "SUB": bwd_sub(cfg), **dict.fromkeys(UNIT_STRIDES, 1)}


def forward_consts(cfg) -> dict:
    """The training forward's constexprs (writes out and saves the chunk states), as `backward_consts`."""
    return {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True, "WRITE_OUT": True,
            "WRITE_LAST": False, "WRITE_CHUNKS": True, "DH": cfg.dh_fwd, "DL": cfg.dl_fwd, "BLOCK_N": 16,
            "CHUNK": cfg.chunk_fwd, "PREFETCH": cfg.prefetch, "SAVE_EVERY": cfg.chunk_bwd,
            **dict.fromkeys(FWD_UNIT_STRIDES, 1)}


def backward_usage(fields: dict, cap: int, write_out: bool = False) -> dict:
    """ptxas's registers and spill-store bytes for the scan backward on sm_90 (compiled here, no GPU):
    the defaults with `fields` changed, bf16 channel-last inputs as the mixer passes them (unit channel
    and state strides, the launch's specialisations), all flags on."""
    from dataclasses import replace

    from probes.kernels.selective_scan import CONFIG, backward_kernel

    cfg = replace(CONFIG, **fields)
    _, text = compile_sm90(backward_kernel(), backward_consts(cfg, write_out), FP32_ARGS, ODD_INTS, cfg.warps_bwd, cap)
    return ptxas_usage(text)


def ptxas_usage(log: str) -> dict:
    """Registers per thread and spill-store bytes from ptxas's log (`offline_compilation` switches it on)."""
    import re

    return {"registers": int(re.search(r"Used (\d+) registers", log).group(1)),
            "spill_bytes": int(re.search(r"(\d+) bytes spill stores", log).group(1))}


def offline_compilation(option: str) -> None:
    """Set triton up to compile for sm_90 here and log ptxas's usage; one line and exit 2 in the interpreter."""
    import triton

    from probes.kernels.selective_scan import backward_kernel

    if type(backward_kernel()).__name__ == "InterpretedFunction":
        print(f"error: {option} compiles the kernels for sm_90; unset TRITON_INTERPRET", file=sys.stderr)
        raise SystemExit(2)
    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v's log: registers and spills
    triton.knobs.compilation.always_compile = True  # a cached kernel would skip ptxas


def registers_markdown(write_out: bool = False) -> str:
    """The REGISTER_ROWS x REGISTER_CAPS table of `backward_usage` (each cell a compilation, a few seconds)."""
    import triton

    offline_compilation("--registers")
    caps = ["no cap" if c == 0 else f"cap {c}" for c in REGISTER_CAPS]
    lines = [(f"Scan backward, ptxas for sm_90 (triton {triton.__version__}, bf16, all flags, "
              f"write_out={write_out}): registers per thread, + spill-store bytes."), "",
             "| backward | " + " | ".join(caps) + " |", "|---|" + "---|" * len(caps)]
    for name, fields in REGISTER_ROWS.items():
        cells = []
        for cap in REGISTER_CAPS:
            u = backward_usage(fields, cap, write_out)
            cells.append(f"{u['registers']}" + (f" + {u['spill_bytes']} B" if u["spill_bytes"] else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --sass: the instruction mix of each kernel's main loop (one iteration: CHUNK steps of one program)
SASS_GROUPS = {"fp32": ("FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL"), "shfl": ("SHFL",), "mufu": ("MUFU",),
               "bar": ("BAR",), "shared": ("LDS", "STS", "LDSM", "STSM"), "global": ("LDG", "STG", "RED", "ATOM", "ATOMG")}
# sm_90 per SM and clock, in warp instructions: issue (4 schedulers), fp32 (128 lanes), shuffles (32 lanes),
# MUFU (exp2 etc., 16 lanes) (CUDA C++ Programming Guide, arithmetic instruction throughput, cc 9.0)
PER_CLOCK = {"issue": 4.0, "fp32": 4.0, "shfl": 1.0, "mufu": 0.5}


def main_loop(sass: str) -> dict[str, int]:
    """Opcode counts of the longest loop in nvdisasm output: the instructions from a label up to a branch
    back to it (the kernel's runtime loop over chunks; everything inside it is unrolled)."""
    import re
    from collections import Counter

    ins, at, label = [], {}, None
    for line in sass.splitlines():
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            label = m.group(1)
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2)))
            if label:
                at[label], label = ins[-1][0], None
    loops = []
    for addr, text in ins:
        target = re.search(r"BRA\S*\s+.*?(\.L_x_\d+)", text)
        if target and at.get(target.group(1), addr + 1) <= addr:
            loops.append([t for a, t in ins if at[target.group(1)] <= a <= addr])
    if not loops:
        raise ValueError("no loop in this SASS")
    body = max(loops, key=len)
    return dict(Counter((t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0] for t in body))


def loop_costs(ops: dict[str, int]) -> dict[str, float]:
    """Instructions per group and the SM clocks one iteration of one warp needs from each limited unit."""
    groups = {g: sum(ops.get(o, 0) for o in names) for g, names in SASS_GROUPS.items()}
    total = sum(ops.values())
    clocks = {"issue": total / PER_CLOCK["issue"], **{u: groups[u] / PER_CLOCK[u] for u in ("fp32", "shfl", "mufu")}}
    return {"instructions": total, **groups, **{f"clk_{u}": c for u, c in clocks.items()}}


def issue_bound_ms(clocks_per_iteration: float, programs: int, iterations: int, sms: int, ghz: float) -> float:
    """The kernel's time if its busiest unit never waited: every program's loop iterations spread over the SMs."""
    return clocks_per_iteration * programs * iterations / sms / (ghz * 1e9) * 1e3


# --sass: backward variants (scan CONFIG fields over the defaults) whose main loop is counted too
SASS_ROWS = {"default": {}, "bc2": {"bc_mode": 2}, "sub2": {"sub_bwd": 2}, "dh1 nopf": {"dh_bwd": 1, "prefetch": False},
             "dh1 bc2": {"dh_bwd": 1, "bc_mode": 2}, "dl16 dh1 bc2": {"dl_bwd": 16, "dh_bwd": 1, "bc_mode": 2},
             "c2 dh4": {"chunk_bwd": 2, "dh_bwd": 4}}


def compile_kernel(name: str, fields: dict | None = None):
    """(the `name` kernel, "forward" or "backward", compiled for sm_90 here with CONFIG's `fields` changed;
    ptxas's log; the launch constants). `offline_compilation` first."""
    from dataclasses import replace

    from probes.kernels.selective_scan import CONFIG, backward_kernel, forward_kernel

    cfg = replace(CONFIG, **(fields or {}))
    kernel, consts, fp32_args, odd, warps = (
        (forward_kernel(), forward_consts(cfg), FWD_FP32_ARGS, ("L",), cfg.warps_fwd) if name == "forward" else
        (backward_kernel(), backward_consts(cfg), FP32_ARGS, ODD_INTS, cfg.warps_bwd))
    return *compile_sm90(kernel, consts, fp32_args, odd, warps), consts


def kernel_loop(name: str, fields: dict | None = None) -> dict:
    """The `name` kernel ("forward" or "backward") compiled for sm_90 with CONFIG's `fields` changed: its
    main loop's `loop_costs`, ptxas's registers and spill stores, and the launch constants."""
    import os
    import subprocess
    import tempfile

    import triton

    compiled, log, consts = compile_kernel(name, fields)
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    return {**loop_costs(main_loop(sass)), **ptxas_usage(log), "consts": consts}


def loop_row(name: str, loop: dict, shape, sms: int, ghz: float) -> dict:
    """`loop` at one (B, D, L, N): per-element instructions, the busiest unit and the kernel's unwaited ms."""
    import math

    batch, dim, length, n = shape
    c = loop["consts"]
    channels = c["DH"] * c["DL"]
    bound = max(("issue", "fp32", "shfl", "mufu"), key=lambda u: loop[f"clk_{u}"])
    programs, iterations = math.ceil(dim / channels) * batch, math.ceil(length / c["CHUNK"])
    return {"kernel": name, "B": batch, "D": dim, "L": length, "N": n, "steps": c["CHUNK"], "channels": channels,
            **{k: v for k, v in loop.items() if k != "consts"}, "bound": bound,
            "per_element": loop["instructions"] / (c["CHUNK"] * channels * c["BLOCK_N"]),
            "bound_ms": issue_bound_ms(loop[f"clk_{bound}"], programs, iterations, sms, ghz)}


def sass_markdown(shapes, sms: int, ghz: float) -> str:
    """The defaults' forward and backward at each shape, then the backward variants (SASS_ROWS) at the first."""
    import triton

    offline_compilation("--sass")
    loops = {"forward": kernel_loop("forward"), "backward": kernel_loop("backward")}
    head = (f"Scan kernels' main loop, SASS for sm_90 (triton {triton.__version__}, bf16, all flags; one iteration = "
            f"one warp's `steps` x `channels` x N = 16 states). bound ms: every loop iteration of every program at "
            f"the busiest unit's rate, {sms} SMs at {ghz} GHz, no waiting.")
    cols = "instructions (per element) | fp32 | shfl | mufu | bar | shared | global | busiest unit | bound ms |"
    lines = [head, "", "| kernel | B | D | L | steps x channels | " + cols, "|" + "---|" * 14]
    cells = ("{instructions} ({per_element:.2f}) | {fp32} | {shfl} | {mufu} | {bar} | {shared} | {global} | "
             "{bound} | {bound_ms:.3f} |")
    for name, loop in loops.items():
        for shape in shapes:
            r = loop_row(name, loop, shape, sms, ghz)
            lines.append("| {kernel} | {B} | {D} | {L} | {steps} x {channels} | ".format(**r) + cells.format(**r))
    b, d, length, n = shapes[0]
    lines += ["", f"Backward variants (CONFIG changes), B = {b}, D = {d}, L = {length}, N = {n}:", "",
              "| backward | registers (+ spill) | steps x channels | " + cols, "|" + "---|" * 12]
    for label, fields in SASS_ROWS.items():
        loop = kernel_loop("backward", fields)
        r = loop_row("backward", loop, shapes[0], sms, ghz)
        regs = f"{r['registers']}" + (f" + {r['spill_bytes']} B" if r["spill_bytes"] else "")
        lines.append(f"| {label} | {regs} | {r['steps']} x {r['channels']} | " + cells.format(**r))
    return "\n".join(lines) + "\n"


def positive(kind):
    """An argparse type: a number of `kind` above 0, else one line naming the value."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"bad value {text!r} (allowed: a number above 0)")
        return value
    return parse


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"bad shape {text!r} (allowed: four positive integers B,D,L,N)")
    return tuple(int(p) for p in parts)


ALL_MODES = ("off", "tuned", "on", *CONFIG_ROWS)


def scan_rows(text: str) -> tuple[str, ...]:
    """--rows: comma-separated scan modes, each one of ALL_MODES."""
    modes = tuple(m.strip() for m in text.split(","))
    bad = [m for m in modes if m not in ALL_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"unknown scan mode {bad[0] if bad else text!r} "
                                         f"(allowed: {', '.join(ALL_MODES)})")
    return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=parse_shape, action="append", help="B,D,L,N (repeat; default: paper)")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--compare", action="store_true",
                        help="time each shape with levers off, launch tuning only, the defaults, then the "
                             "defaults with the CONFIG_ROWS changes (backward pieces); the conv's kernels and "
                             "backward row blocks (CONV_COMPARE)")
    parser.add_argument("--rows", type=scan_rows, metavar="MODE[,MODE]",
                        help="time only these scan modes (of off, tuned, on and the CONFIG_ROWS names, e.g. "
                             "'on,bc2,dh1 bc2'); the conv table: --compare's rows with --compare, else the default")
    parser.add_argument("--once", action="store_true",
                        help="no timing: run each mode's (--rows) training forward and backward once per shape, "
                             "for a profiler, e.g. ncu --kernel-name regex:_ssm_ --launch-count 2 python "
                             "benchmarks/scan.py --once --shape 64,1536,203,16")
    parser.add_argument("--registers", action="store_true",
                        help="no timing and no GPU: compile the scan backward's variants (REGISTER_ROWS) for sm_90 "
                             "and print ptxas's registers and spills per register cap (a few minutes)")
    parser.add_argument("--sass", action="store_true",
                        help="no timing and no GPU: compile the forward and backward (and the backward's SASS_ROWS "
                             "variants) for sm_90, count their main loop's instructions by kind and print the ms "
                             "they would take if never waiting (under a minute)")
    parser.add_argument("--sms", type=positive(int), default=132, help="--sass: SMs of the GPU (H100/H200 SXM: 132)")
    parser.add_argument("--ghz", type=positive(float), default=1.98, help="--sass: SM clock (H100/H200 SXM boost: 1.98)")
    args = parser.parse_args(argv)
    if args.sass:
        md = sass_markdown(args.shape or PAPER_SHAPES[::2], args.sms, args.ghz)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scan_sass.md").write_text(md)
        print(md)
        return 0
    if args.registers:
        md = registers_markdown() + "\n" + registers_markdown(write_out=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scan_registers.md").write_text(md)
        print(md)
        return 0
    if not torch.cuda.is_available():
        print("error: benchmarks/scan.py times CUDA kernels and needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from probes.kernels.causal_conv import BWD_KERNEL, BWD_ROWS, FWD_KERNEL
    from probes.kernels.selective_scan import levers_on

    modes = args.rows or (ALL_MODES if args.compare else ("on" if levers_on() else "off",))
    shapes = args.shape or PAPER_SHAPES
    if args.once:
        run_once(shapes, modes)
        return 0
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    bandwidth = copy_bandwidth()
    rows = [time_shape(s, args.reps, bandwidth, m) for s in shapes for m in modes]
    default = (FWD_KERNEL, BWD_KERNEL, BWD_ROWS)
    conv_runs = tuple(dict.fromkeys((*CONV_COMPARE, default))) if args.compare else (default,)
    conv_rows = [time_conv(s, args.reps, bandwidth, *run) for s in shapes for run in conv_runs]
    args.out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows, bandwidth, env, conv_rows)
    (args.out / "scan.md").write_text(md)
    (args.out / "scan.json").write_text(json.dumps({"env": env, "bandwidth": bandwidth, "rows": rows,
                                                    "conv_rows": conv_rows}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
