"""`python -m benchmarks [--out FILE] [--quick] [--preset small]` (also `medim-bench`): the performance suite.

Runs every section in one process (memory in subprocesses) and writes one JSON file: the machine (with its
load average), library versions, the measured ceilings (bf16/fp32 matmul, memory bandwidth), each section's
details and ``figures`` -- ``mfu``, ``dp_overhead``, ``upload_fraction``, ``sampling_speedup``,
``sampling_fid_rel_diff``, ``sampling_f1_rel_diff``, ``federation_overhead``, ``client_peak_rss_gb`` -- plus a
short table on stdout. Every figure is a ratio of two things measured side by side in this run, or an absolute
number next to a ceiling measured at the start.
CPU only (the training code autocasts on CPU). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import figures
from benchmarks.machine import describe, matmul_flops, memory_bandwidth
from benchmarks.train_throughput import measure

SECTIONS = (
    "mfu",
    "dp",
    "upload",
    "transport",
    "sampling",
    "sampling_quality",
    "memory",
    "seq_scaling",
    "federation",
    "tokenizer",
)
TARGETS = {
    "mfu": (">=", 0.30),
    "dp_overhead": ("<=", 1.3),
    "upload_fraction": ("<=", 0.02),
    "sampling_speedup": (">=", 8.0),
    "sampling_fid_rel_diff": ("<=", 0.10),
    "sampling_f1_rel_diff": ("<=", 0.10),
    "federation_overhead": ("<=", 1.15),
    "client_peak_rss_gb": ("<=", 2.0),
}


def run_suite(
    *,
    preset: str,
    quick: bool,
    sections: tuple[str, ...] = SECTIONS,
    fed_preset: str = "tiny",
    workspace: Path = Path("runs/bench-workspace"),
    transport: str | None = None,
    quality_workspace: Path | None = None,
) -> dict[str, Any]:
    """Run the chosen sections; returns the JSON-able result (see the module docstring). ``transport`` (default:
    the ``fl`` preset named like ``preset``'s ``fl.transport``) is the one ``upload_fraction`` reports."""
    torch.set_num_threads(1)
    transport = transport or configured_transport(preset)
    start = time.perf_counter()
    result: dict[str, Any] = {
        "command": "python -m benchmarks"
        + (" --quick" if quick else "")
        + f" --preset {preset} --transport {transport}",
        "preset": preset,
        "transport": transport,
        "quick": quick,
        "machine": describe(),
        "ceilings": {
            "bf16_matmul_flops": matmul_flops(torch.bfloat16, seconds=1.0),
            "fp32_matmul_flops": matmul_flops(torch.float32, seconds=1.0),
            "memory_bandwidth_bytes_per_s": memory_bandwidth(),
            "threads": 1,
        },
        "sections": {},
    }
    out, figs = result["sections"], {name: None for name in TARGETS}
    steps = 3 if quick else 8
    if "mfu" in sections:
        out["mfu"] = measure(preset, steps=steps).as_dict()
        figs["mfu"] = out["mfu"]["mfu"]
    if "dp" in sections:
        modes = ("hooks",) if quick else ("hooks", "functorch", "ghost")
        out["dp"] = figures.dp_overhead(preset, steps=steps, modes=modes)
        figs["dp_overhead"] = out["dp"]["ratio"]["hooks"]
    if "upload" in sections:
        out["upload"] = figures.upload(preset, transport=transport)
        figs["upload_fraction"] = out["upload"]["sets"]["lora+adaln_offsets"][transport]["fraction"]
    if "transport" in sections:
        out["transport"] = figures.transport_quality(
            fed_preset, rounds=2 if quick else 4, workspace=workspace, local_steps=None if quick else 15
        )
    if "sampling" in sections:
        out["sampling"] = figures.sampling_speed(preset, batch=2 if quick else 4, repeats=1 if quick else 3)
        figs["sampling_speedup"] = out["sampling"]["speedup"]
    if "sampling_quality" in sections:
        out["sampling_quality"] = figures.sampling_quality(
            "tiny" if quick else preset,
            samples=8 if quick else 16,
            seeds=(0, 1) if quick else (0, 1, 2),
            domain_steps=50 if quick else 300,
            workspace=quality_workspace,
            tiny_workspace=workspace,
        )
        figs["sampling_fid_rel_diff"] = out["sampling_quality"]["domain_fid_relative_difference"]
        figs["sampling_f1_rel_diff"] = out["sampling_quality"]["label_f1_relative_difference"]
    if "memory" in sections:
        out["memory"] = figures.memory(preset, steps=2 if quick else 10)
        figs["client_peak_rss_gb"] = out["memory"]["client_peak_rss_gb"]
    if "seq_scaling" in sections:
        out["seq_scaling"] = figures.seq_scaling(preset, steps=1 if quick else 3)
    if "federation" in sections:
        runs = (
            (("serial", 2),) if quick else (("serial", 2), ("parallel", 2), ("parallel", 4), ("parallel", 8))
        )
        out["federation"] = figures.federation(
            fed_preset, runs=runs, rounds=3 if quick else 5, workspace=workspace
        )
        figs["federation_overhead"] = out["federation"]["overhead"]
    if "tokenizer" in sections:
        out["tokenizer"] = figures.tokenizer_training(("small-f8", "small"), steps=2 if quick else 5)
    result["figures"] = figs
    result["targets"] = {k: f"{op} {v}" for k, (op, v) in TARGETS.items()}
    result["machine"]["load_average_end"] = describe()["load_average"]
    result["seconds"] = time.perf_counter() - start
    return result


def configured_transport(preset: str) -> str:
    """``fl.transport`` of the fl preset called ``preset`` (float32 when there is none)."""
    from medim.config import ConfigError, load_preset
    from server.config import FLConfig

    try:
        return load_preset(FLConfig, "fl", preset).transport
    except ConfigError:
        return "float32"


def table(result: dict[str, Any]) -> str:
    lines = [f"{'figure':<22}{'value':>10}  target"]
    for name, value in result["figures"].items():
        op, target = TARGETS[name]
        shown = "-" if value is None else f"{value:.3f}"
        met = (
            ""
            if value is None
            else ("met" if (value >= target if op == ">=" else value <= target) else "NOT met")
        )
        note = f" ({result.get('transport')} transport)" if name == "upload_fraction" else ""
        lines.append(f"{name:<22}{shown:>10}  {op} {target} {met}{note}")
    c, m = result["ceilings"], result["machine"]
    lines.append(
        f"ceilings (1 thread): bf16 {c['bf16_matmul_flops'] / 1e9:.0f} GFLOP/s, fp32 "
        f"{c['fp32_matmul_flops'] / 1e9:.0f} GFLOP/s, copy {c['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; "
        f"{m['cpu']} x{m['cores']}, load {m['load_average'][0]:.1f} -> {m['load_average_end'][0]:.1f}; "
        f"{result['seconds']:.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (about two minutes)")
    parser.add_argument("--preset", default="small", help="model preset of the model sections")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS)
    )
    parser.add_argument(
        "--workspace", type=Path, default=Path("runs/bench-workspace"), help="cached tiny workspace"
    )
    parser.add_argument(
        "--quality-workspace",
        type=Path,
        help="workspace whose base model sampling_quality samples (default: --workspace with --quick, else "
        "runs/bench-workspace-<preset>; bootstrapped there when missing)",
    )
    parser.add_argument(
        "--transport",
        choices=("float32", "bfloat16", "float16"),
        help="transport dtype upload_fraction reports (default: the fl preset's fl.transport)",
    )
    args = parser.parse_args(argv)
    chosen = tuple(s for s in args.sections.split(",") if s)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; allowed {', '.join(SECTIONS)}")
    result = run_suite(
        preset=args.preset,
        quick=args.quick,
        sections=chosen,
        workspace=args.workspace,
        transport=args.transport,
        quality_workspace=args.quality_workspace,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
