"""A site's AdamW moments between rounds (:mod:`medim.moments`), kept in its state dir, never sent.

One file per round the site trained, ``moments/round-NNNN.safetensors``, written atomically after the round's
training; the last :data:`KEEP` are kept. Round r starts from the newest file of a round before r, so a round
that is run again (the coordinator crashed and resumed, or re-sent the round) starts from exactly the moments it
started from the first time, and the run stays reproducible. A file that cannot be read or does not fit the
trainable set is reported and the round starts with a fresh optimizer: moments are an optimisation, never a
reason to refuse a round.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medim.model.medim import MeDiM
from medim.moments import Moments

KEEP = 2
_NAME = re.compile(r"round-(\d{4,})\.safetensors")


def _rounds(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def load_moments(folder: Path, server_round: int, model: MeDiM) -> Moments:
    """The moments round ``server_round`` starts from: the newest saved before it that fits ``model``'s
    trainable set; empty (a fresh optimizer) when there is none or it is unusable (with a warning)."""
    earlier = {r: p for r, p in _rounds(folder).items() if r < server_round}
    if not earlier:
        return Moments()
    path = earlier[max(earlier)]
    try:
        moments = Moments(load_file(str(path)))
        moments.check(model)
    except (OSError, ValueError, SafetensorError) as err:
        warnings.warn(
            f"{path}: optimizer moments not used ({err}); this round starts a fresh optimizer", stacklevel=2
        )
        return Moments()
    return moments


def save_moments(folder: Path, server_round: int, moments: Moments) -> Path | None:
    """Write round ``server_round``'s final moments atomically and drop all but the newest :data:`KEEP`."""
    if not moments.tensors:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{server_round:04d}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in moments.tensors.items()}, str(tmp))
    os.replace(tmp, path)
    for _, old in sorted(_rounds(folder).items())[:-KEEP]:
        old.unlink(missing_ok=True)
    return path
