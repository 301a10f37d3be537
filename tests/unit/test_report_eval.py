import numpy as np
import pytest
import torch

import medim
from medim.config import DiffusionConfig
from medim.evaluate import heldout_loss
from medim.report import Page, image_grid, svg_curves


def test_image_grid_places_tiles():
    a = np.zeros((4, 4), dtype=np.uint8)
    b = np.full((4, 4, 3), 200, dtype=np.uint8)
    grid = np.asarray(image_grid([[a, b]], pad=1))
    assert grid.shape == (6, 11, 3)
    assert (grid[1:5, 1:5] == 0).all() and (grid[1:5, 6:10] == 200).all() and (grid[0] == 255).all()


def test_svg_and_page(tmp_path):
    svg = svg_curves({"loss": [(0, 2.0), (1, 1.0)], "nan": [(0, float("nan"))]})
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    page = Page("t <run>")
    page.table("tab", [("a&b", 0.123456)], ["k", "v"])
    page.write(tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert "a&amp;b" in text and "0.1235" in text and "t &lt;run&gt;" in text


def test_heldout_loss_is_deterministic_and_splits_by_modality():
    model = medim.build_model("tiny", seed=0)
    v = model.vocab
    x0 = torch.stack(
        [v.sequence(torch.arange(v.image_tokens) % v.codebook_size, [1, 2, 3]) for _ in range(5)]
    )
    a = heldout_loss(model, x0, diffusion=DiffusionConfig(), batch_size=2, autocast_bf16=False)
    b = heldout_loss(model, x0, diffusion=DiffusionConfig(), batch_size=2, autocast_bf16=False)
    assert a == b and a.n == 5
    assert a.loss == pytest.approx(a.image + a.text)
    # untrained model: per-token NELBO near log(allowed ids) averaged over regions
    assert 3.0 < a.loss < 10.0
