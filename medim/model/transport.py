"""Optional lossy-but-close transport of a trainable state: fp32 tensors sent as bfloat16 or float16.

A site's update is the trainable state (:func:`medim.model.lora.trainable_state`); sending it in 16 bits halves
the upload. ``encode_state`` casts floating tensors to the transport dtype, ``decode_state`` casts them back to
the receiver's dtypes. Round-trip error per element: <= 2^-8 |x| (bfloat16, 8 significant bits) or
<= 2^-11 |x| + 2^-25 (float16: the absolute part for subnormals below 2^-14; magnitudes beyond 65504 are refused
rather than sent as inf). Measured effect on the
held-out loss after a few federated rounds: ``python -m benchmarks`` (``upload`` section, docs/performance.md).
"""

from __future__ import annotations

import torch

TRANSPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RELATIVE_ERROR = {"float32": 0.0, "bfloat16": 2.0**-8, "float16": 2.0**-11}
ABSOLUTE_ERROR = {"float32": 0.0, "bfloat16": 0.0, "float16": 2.0**-25}


def encode_state(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floating tensors of ``state`` cast to ``dtype`` (one of :data:`TRANSPORT_DTYPES`); others unchanged."""
    if dtype not in TRANSPORT_DTYPES:
        raise ValueError(f"transport dtype {dtype!r} is invalid: allowed {', '.join(TRANSPORT_DTYPES)}")
    target = TRANSPORT_DTYPES[dtype]
    out = {}
    for name, value in state.items():
        if value.is_floating_point():
            if target == torch.float16 and value.numel() and float(value.abs().max()) > 65504.0:
                raise ValueError(f"{name}: values beyond float16's range, send it as bfloat16 or float32")
            value = value.detach().to(target)
        out[name] = value
    return out


def decode_state(encoded: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``encoded`` cast back to the dtypes of ``like`` (same keys required)."""
    if set(encoded) != set(like):
        raise KeyError(f"transport state keys differ: {sorted(set(encoded) ^ set(like))[:5]}")
    return {name: value.to(like[name].dtype) for name, value in encoded.items()}


def state_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Payload bytes of a state's tensors (what crosses the network, framing excluded)."""
    return sum(v.numel() * v.element_size() for v in state.values())
