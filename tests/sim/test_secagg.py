"""SecAgg+ (Flower's legacy workflow, in-process simulation, tiny preset): the securely aggregated state equals
plain FedAvg of the sites' trained states within quantization error, also when one site drops out mid-protocol."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from flwr.simulation import run_simulation
from safetensors.numpy import load_file

from client.config import SiteConfig, save_site_config
from client.protocol import TrainInstructions
from client.secagg import make_secagg_client_app
from client.train import run_site_round
from medim.config import load_preset
from medim.model.lora import apply_lora, trainable_state
from medim.pipeline import Workspace
from medim.privacy import PrivacyConfig
from server.config import FLConfig
from server.secagg import SecAggConfig, fit_config, make_secagg_server_app

SITES = ["hospital-a", "hospital-b", "pathlab-c"]
DROPPED = "hospital-b"


def test_secagg_average_equals_fedavg_with_a_site_dropping_out(workspace: Path, tmp_path: Path):
    ws = Workspace.load(workspace)
    sites = {}
    for name in SITES:
        cfg = replace(
            load_preset(SiteConfig, "site", "default"),
            name=name,
            data=[str(p) for p in ws.sites[name]] if name != DROPPED else [str(tmp_path / "gone")],
            base_model=str(ws.base_model),
            tokenizer=str(ws.tokenizer),
            state_dir=str(tmp_path / "sites" / name / "state"),
            autocast_bf16=False,
            privacy=load_preset(PrivacyConfig, "dp", "off"),
        )
        save_site_config(cfg, tmp_path / "sites" / name / "site.yaml")
        sites[name] = cfg
    overrides = {"rounds": 1, "local_steps": 2}
    run_config = {
        "out": str(tmp_path / "out"),
        "workspace": str(workspace),
        "sites": ",".join(SITES),
        "sites-dir": str(tmp_path / "sites"),
        "fl-preset": "tiny",
        "fl-overrides": json.dumps(overrides),
    }
    secagg = SecAggConfig(num_shares=3, reconstruction_threshold=2, clipping_range=8.0, timeout_s=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(
            server_app=make_secagg_server_app(run_config, secagg=secagg),
            client_app=make_secagg_client_app(run_config),
            num_supernodes=len(SITES),
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},  # type: ignore[arg-type]
        )
    secure = load_file(str(tmp_path / "out" / "secagg" / "trainable.safetensors"))

    # plain FedAvg of what the surviving sites trained (DP off: a site round is deterministic)
    fl = load_preset(FLConfig, "fl", "tiny", **overrides)
    model = ws.load_base()
    torch.manual_seed(fl.seed)
    apply_lora(model)
    initial = trainable_state(model)
    instructions = TrainInstructions(**{k.replace("-", "_"): v for k, v in fit_config(fl, 1).items()})
    rounds = [run_site_round(sites[s], instructions, initial) for s in SITES if s != DROPPED]
    weights = np.array([r.metrics["num-examples"] for r in rounds], dtype=np.float64)
    assert set(secure) == set(initial)
    worst = 0.0
    for key in initial:
        stacked = np.stack([r.state[key].numpy().astype(np.float64) for r in rounds])  # type: ignore[index]
        plain = np.tensordot(weights / weights.sum(), stacked, axes=1)
        worst = max(worst, float(np.abs(secure[key] - plain).max()))
        assert secure[key].dtype == initial[key].numpy().dtype and secure[key].shape == plain.shape
    # each site's weighted arrays (weight num-examples / max_weight) are quantized with step
    # 2 * clipping_range / (quantization_range - 1); dividing the sum by the total weight scales the error up
    step = 2 * secagg.clipping_range / (secagg.quantization_range - 1)
    bound = len(rounds) * step * secagg.max_weight / weights.sum() * 1.5
    assert worst <= bound < 1e-3, (worst, bound)
    changed = max(float(np.abs(secure[k] - initial[k].numpy()).max()) for k in initial)
    assert changed > 10 * worst  # the sites' training moved the state far beyond the error
