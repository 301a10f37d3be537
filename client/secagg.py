"""The site side of secure aggregation (SecAgg+, Flower 1.42's legacy path): a legacy ClientApp whose ``fit``
runs :func:`client.train.run_site_round` and hands the trainable state to ``secaggplus_mod``, which clips it to
``[-clipping_range, clipping_range]``, quantizes it, multiplies it by the site's weight and masks it, so that the
coordinator can only recover the weighted sum over the sites.

The legacy path carries a *list* of arrays: the order is ``medim.model.lora.trainable_names`` of the site's
base model (the coordinator builds the same list from the same base model), and the names do not travel.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod

from client.app import Scalar, site_config_path
from client.config import SiteConfig, load_site_config
from client.protocol import METRIC_KEYS, TrainInstructions
from client.train import run_site_round
from medim.model.checkpoint import load_checkpoint
from medim.model.lora import apply_lora, trainable_names


def site_names(site: SiteConfig) -> list[str]:
    """The order of the arrays on the wire: the trainable names of the site's base model with LoRA."""
    model = load_checkpoint(Path(site.base_model))
    apply_lora(model)
    return trainable_names(model)


class SecAggSite(NumPyClient):
    """One site's ``fit``: the received list -> named state -> a private local round -> list + num-examples."""

    def __init__(self, site: SiteConfig) -> None:
        self.site = site

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        names = site_names(self.site)
        if len(names) != len(parameters):
            raise ValueError(f"received {len(parameters)} arrays, the trainable set has {len(names)}")
        state = {n: torch.from_numpy(np.array(a, copy=True)) for n, a in zip(names, parameters, strict=True)}
        instructions = TrainInstructions.from_record(ConfigRecord(dict(config)))
        result = run_site_round(self.site, instructions, state)
        if result.state is None:
            raise RuntimeError(f"site {self.site.name} refused the round: {result.reason}")
        metrics = {k: v for k, v in result.metrics.items() if k in METRIC_KEYS}
        arrays = [result.state[n].numpy() for n in names]
        return arrays, int(result.metrics["num-examples"]), metrics


def make_secagg_client_app(defaults: Mapping[str, Scalar] | None = None) -> ClientApp:
    """A legacy ClientApp with ``secaggplus_mod``; the site file is found as in :mod:`client.app`."""
    fallback = dict(defaults or {})

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return SecAggSite(load_site_config(site_config_path(context, fallback))).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
