"""Typed federation settings (the ``fl`` config group, presets under ``configs/fl/``).

Everything the coordinator decides: the strategy and its parameters, rounds, sampling, what each site is asked to
do per round (local steps, learning rate, batch size, FedProx's mu), how often the global model is evaluated, and
the bounds an update must respect to be aggregated, and the generation metrics of the global evaluation. A site's privacy settings are *not* here: they are the site's
own (:class:`client.config.SiteConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medim.config import check, check_choice, check_positive, check_unit

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedtrimmedavg", "fedmedian", "krum")
TRANSPORTS = ("float32", "bfloat16", "float16")  # client.protocol.TRANSPORTS


@dataclass
class ValidationConfig:
    """Bounds an update must respect to be aggregated (see :mod:`server.validation`)."""

    max_update_norm: float = 1000.0
    max_update_bytes: int = 512 * 1024 * 1024
    max_num_examples: int = 100_000

    def __post_init__(self) -> None:
        check_positive("fl.validation.max_update_norm", self.max_update_norm)
        check_positive("fl.validation.max_update_bytes", self.max_update_bytes)
        check_positive("fl.validation.max_num_examples", self.max_num_examples)


@dataclass
class GenerationConfig:
    """Generation metrics of the global evaluation (:mod:`server.evaluation`), on a fixed held-out subset.

    Every ``every`` rounds and at the last (0 = never): report->image and image->report generations of the
    first ``samples`` pairs per held-out set (sampler preset ``sampler``, ``sampler_steps`` > 0 overrides its
    steps), report metrics and label F1; at the last round only, FID (``fid``) and domain FID (``domain_fid``,
    classifier trained ``domain_steps`` steps once and cached in the workspace). These settings do not change
    training, so they are not part of the run's configuration hash.
    """

    every: int = 2
    samples: int = 8
    sampler: str = "default"
    sampler_steps: int = 0
    fid: bool = True
    domain_fid: bool = True
    domain_steps: int = 300

    def __post_init__(self) -> None:
        check(self.every >= 0, "fl.generation.every", self.every, ">= 0 (0 = never)")
        check(self.samples >= 2, "fl.generation.samples", self.samples, ">= 2")
        check(self.sampler_steps >= 0, "fl.generation.sampler_steps", self.sampler_steps, ">= 0")
        check_positive("fl.generation.domain_steps", self.domain_steps)


@dataclass
class FLConfig:
    """One federated run: strategy, rounds, sampling, the per-round site task, evaluation and validation.

    ``transport`` is the dtype the trainable tensors travel in, both ways (``bfloat16``/``float16`` halve the
    bytes; :mod:`client.protocol`); the coordinator validates, aggregates and keeps float32.
    """

    strategy: str = "fedavg"
    rounds: int = 3
    fraction: float = 1.0
    min_sites: int = 1
    local_steps: int = 20
    lr: float = 1e-3
    batch_size: int = 8
    warmup_steps: int = 2
    proximal_mu: float = 0.0
    server_lr: float = 0.1
    server_tau: float = 1e-3
    trim_beta: float = 0.2
    krum_malicious: int = 0
    eval_every: int = 1
    eval_rows: int = 64
    seed: int = 0
    timeout_s: float = 3600.0
    connect_timeout_s: float = 3600.0
    keep_checkpoints: int = 2
    transport: str = "float32"
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        if isinstance(self.validation, dict):
            self.validation = ValidationConfig(**self.validation)
        if isinstance(self.generation, dict):
            self.generation = GenerationConfig(**self.generation)
        check_choice("fl.strategy", self.strategy, STRATEGIES)
        check_positive("fl.rounds", self.rounds)
        check_unit("fl.fraction", self.fraction, open_low=True)
        check_positive("fl.min_sites", self.min_sites)
        check_positive("fl.local_steps", self.local_steps)
        check_positive("fl.lr", self.lr)
        check_positive("fl.batch_size", self.batch_size)
        check(self.warmup_steps >= 0, "fl.warmup_steps", self.warmup_steps, ">= 0")
        check(self.proximal_mu >= 0, "fl.proximal_mu", self.proximal_mu, ">= 0")
        check(
            self.strategy != "fedprox" or self.proximal_mu > 0,
            "fl.proximal_mu",
            self.proximal_mu,
            "> 0 with fl.strategy=fedprox",
        )
        check_positive("fl.server_lr", self.server_lr)
        check_positive("fl.server_tau", self.server_tau)
        check(0 <= self.trim_beta < 0.5, "fl.trim_beta", self.trim_beta, "[0, 0.5)")
        check(self.krum_malicious >= 0, "fl.krum_malicious", self.krum_malicious, ">= 0")
        check_positive("fl.eval_every", self.eval_every)
        check(self.eval_rows >= 0, "fl.eval_rows", self.eval_rows, ">= 0 (0 = every held-out row)")
        check_positive("fl.timeout_s", self.timeout_s)
        check_positive("fl.connect_timeout_s", self.connect_timeout_s)
        check_positive("fl.keep_checkpoints", self.keep_checkpoints)
        check_choice("fl.transport", self.transport, TRANSPORTS)
