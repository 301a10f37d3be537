"""medim: federated, privacy-preserving training of MeDiM (discrete diffusion on a bidirectional MLLM)."""

from typing import Any

__version__ = "0.1.0"


def build_model(preset: str = "small", **kwargs: Any) -> Any:
    """Build the MeDiM model of a preset; see :func:`medim.model.factory.build_model`."""
    from medim.model.factory import build_model as _build

    return _build(preset, **kwargs)
