"""Correctness of the performance paths: the scored-only training loss, the site trainable-set option, 16-bit
transport, and a smoke run of ``python -m benchmarks --quick`` on the tiny preset."""

import json
import subprocess

import pytest
import torch

import medim
from medim.config import ConfigError, DiffusionConfig
from medim.diffusion import add_noise, diffusion_loss, loss_from_nll
from medim.model.lora import apply_lora, trainable_names, trainable_state
from medim.model.transport import ABSOLUTE_ERROR, RELATIVE_ERROR, decode_state, encode_state, state_nbytes
from medim.privacy_sgd import privatize
from medim.train import compute_loss

torch.set_num_threads(1)


def _batch(model, n: int = 6, seed: int = 1):
    v = model.vocab
    g = torch.Generator().manual_seed(seed)
    x0 = torch.stack(
        [
            v.sequence(
                torch.randint(0, v.codebook_size, (v.image_tokens,), generator=g), list(range(7, 7 + 3 * i))
            )
            for i in range(n)
        ]
    )
    task = torch.arange(n) % 4
    t = torch.linspace(0.2, 0.95, n)
    return add_noise(x0, v, DiffusionConfig(), t=t, task=task, generator=g)


@pytest.mark.parametrize("flat", [True, False])
def test_scored_nll_equals_full_logits_loss_and_gradients(flat):
    model = apply_lora(medim.build_model("tiny", seed=0)).train()
    with torch.no_grad():  # non-zero modulation so the time path matters too
        for p in model.adaln.parameters():
            p.normal_(0, 0.02)
    batch = _batch(model)
    params = dict(model.named_parameters())
    names = trainable_names(model)

    full = diffusion_loss(model(batch.xt, batch.sigma), batch, model.vocab)
    full.total.backward()
    want = {n: params[n].grad.clone() for n in names}
    model.zero_grad(set_to_none=True)

    nll = model.scored_nll(batch.xt, batch.sigma, batch.x0, batch.masked & batch.target, flat=flat)
    cheap = loss_from_nll(nll, batch, model.vocab)
    cheap.total.backward()
    torch.testing.assert_close(cheap.per_sample, full.per_sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cheap.image, full.image, rtol=1e-5, atol=1e-6)
    for n in names:
        torch.testing.assert_close(params[n].grad, want[n], rtol=1e-4, atol=1e-7, msg=n)


def _noiseless_session(model, mode: str, records: int = 4):
    """Opacus on ``model`` without noise or effective clipping: the per-sample gradients as they are."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return privatize(
        model,
        opt,
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        expected_batch_size=records,
        grad_sample_mode=mode,
        noise_generator=torch.Generator().manual_seed(0),
    )


@pytest.mark.parametrize(("mode", "flat"), [("hooks", True), ("ghost", True), ("functorch", False)])
def test_new_head_runs_flat_under_opacus_except_functorch(mode, flat):
    """hooks/ghost: one scored call (image rows, text rows, counts [B, 2]); functorch: one [B, L-1, H] call."""
    model = apply_lora(medim.build_model("tiny", seed=0)).train()
    assert not model.per_sample_hooks_attached()
    session = _noiseless_session(model, mode)
    calls = []
    handle = model.new_head.register_forward_hook(
        lambda _m, inputs, _out: calls.append([x.shape for x in inputs])
    )
    try:
        assert model.per_sample_hooks_attached()
        batch = _batch(model, 4)
        session.backward(compute_loss(model, batch, autocast_bf16=False).per_sample)
        if mode != "ghost":
            assert model.new_head.weight.grad_sample.shape[0] == 4
    finally:
        handle.remove()
        session.close()
    assert not model.per_sample_hooks_attached()
    assert len(calls) == 1
    if flat:
        assert len(calls[0]) == 3 and calls[0][2] == (4, 2)
    else:
        assert calls[0] == [(4, model.vocab.seq_len - 1, model.new_head.in_features)]


def _assert_hooks_per_sample_gradients_exact(model, records: int = 4):
    """Opacus hooks' per-sample gradients of every trainable tensor equal one-record-at-a-time gradients."""
    batch = _batch(model, records)
    params = dict(model.named_parameters())
    names = trainable_names(model)
    reference = []
    for i in range(records):
        sub = type(batch)(**{k: getattr(batch, k)[i : i + 1] for k in batch.__dataclass_fields__})
        model.zero_grad(set_to_none=True)
        compute_loss(model, sub, autocast_bf16=False).total.backward()
        reference.append({n: params[n].grad.clone() for n in names})
    model.zero_grad(set_to_none=True)
    session = _noiseless_session(model, "hooks", records)
    try:
        session.backward(compute_loss(model, batch, autocast_bf16=False).per_sample)
        for n in names:
            for i, ref in enumerate(reference):
                torch.testing.assert_close(params[n].grad_sample[i], ref[n], rtol=1e-5, atol=1e-7, msg=n)
    finally:
        session.close()


@pytest.mark.parametrize(
    ("site_trains", "lora_targets"),
    [
        (None, None),  # trainable new_head: scored rows + per-sample counts; frozen text head: flat
        (
            ["lora", "adaln_offsets"],
            ["q_proj", "v_proj", "lm_head"],
        ),  # frozen new_head flat; LoRA text head not
    ],
)
def test_per_sample_gradients_with_frozen_and_trainable_heads(site_trains, lora_targets):
    """Under Opacus' hooks the text head runs flat only while it is frozen, new_head always (its grad sampler
    takes the rows' per-sample counts); per-sample gradients equal one-record-at-a-time gradients either way."""
    from dataclasses import replace

    from medim.config import ModelConfig, load_preset
    from medim.model.factory import build_from_config

    cfg = load_preset(ModelConfig, "model", "tiny", **({"site_trains": site_trains} if site_trains else {}))
    if lora_targets:
        cfg = replace(cfg, lora=replace(cfg.lora, target_modules=lora_targets))
    model = build_from_config(cfg, lora=True, seed=0).train()
    text_head = model.backbone.get_output_embeddings()
    trains_text = any(p.requires_grad for p in text_head.parameters())
    assert trains_text == bool(lora_targets) and model.new_head.weight.requires_grad != bool(site_trains)
    _assert_hooks_per_sample_gradients_exact(model)


@pytest.mark.parametrize("adaln", ["per_layer", "single"])
def test_site_trains_lora_and_adaln_offsets(adaln):
    model = medim.build_model("tiny", lora=True, seed=0, adaln=adaln, site_trains=["lora", "adaln_offsets"])
    names = trainable_names(model)
    other = [n for n in names if "lora_" not in n]
    if adaln == "single":
        assert other == ["adaln.offset.weight"]
    else:
        assert other == [f"adaln.proj.{i}.bias" for i in range(model.n_layers)]
    assert set(trainable_state(model)) == set(names)
    default = medim.build_model("tiny", lora=True, seed=0, adaln=adaln)
    assert sum(v.numel() for v in trainable_state(model).values()) < sum(
        v.numel() for v in trainable_state(default).values()
    )
    # only the named tensors change in a step
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    compute_loss(model, _batch(model), autocast_bf16=False).total.backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= set(names)


@pytest.mark.parametrize(
    ("trains", "fragment"),
    [
        (["time", "adaln"], "holding lora"),
        (["lora", "adaln", "adaln_offsets"], "not both"),
        (["lora", "everything"], "model.site_trains"),
        (["lora", "lora"], "distinct"),
    ],
)
def test_site_trains_validation(trains, fragment):
    with pytest.raises(ConfigError, match=fragment):
        medim.build_model("tiny", site_trains=trains)


def test_site_trains_without_new_token_rows_flag_keeps_rows_frozen():
    model = medim.build_model("tiny", lora=True, train_new_token_rows=False)
    assert not any(n.startswith(("new_embed", "new_head")) for n in trainable_names(model))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_transport_round_trip_error_bound(dtype):
    state = trainable_state(medim.build_model("tiny", lora=True, seed=0))
    state["scale"] = torch.tensor([1e-3, 3.0, -1234.5])
    encoded = encode_state(state, dtype)
    assert state_nbytes(encoded) == state_nbytes(state) // (1 if dtype == "float32" else 2)
    decoded = decode_state(encoded, state)
    for name, value in state.items():
        assert decoded[name].dtype == value.dtype
        bound = RELATIVE_ERROR[dtype] * value.abs() + ABSOLUTE_ERROR[dtype]
        assert bool(((decoded[name] - value).abs() <= bound).all()), name


def test_transport_refuses_float16_overflow_and_key_mismatch():
    with pytest.raises(ValueError, match="float16"):
        encode_state({"w": torch.tensor([1e6])}, "float16")
    with pytest.raises(ValueError, match="allowed"):
        encode_state({"w": torch.tensor([1.0])}, "int8")
    with pytest.raises(KeyError):
        decode_state({"w": torch.tensor([1.0])}, {"v": torch.tensor([1.0])})


@pytest.mark.parametrize("adaln", ["per_layer", "single"])
def test_adaln_offsets_per_sample_gradients_under_opacus(adaln):
    model = medim.build_model("tiny", lora=True, seed=0, adaln=adaln, site_trains=["lora", "adaln_offsets"])
    model.train()
    _assert_hooks_per_sample_gradients_exact(model)


@pytest.mark.parametrize("preset", ["tiny"])
def test_benchmark_suite_quick_logic_runs(preset, tmp_path):
    from benchmarks.__main__ import TARGETS, main

    out = tmp_path / "bench.json"
    args = ["--quick", "--preset", preset, "--sections", "mfu,upload,sampling", "--transport", "bfloat16"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["figures"]) == set(TARGETS)
    for name in ("mfu", "upload_fraction", "sampling_speedup"):
        assert isinstance(result["figures"][name], float) and result["figures"][name] > 0
    assert result["ceilings"]["bf16_matmul_flops"] > 0 and result["machine"]["load_average"]
    upload = result["sections"]["upload"]
    assert result["transport"] == upload["transport"] == "bfloat16"
    row = upload["sets"]["lora+adaln_offsets"]
    assert result["figures"]["upload_fraction"] == row["bfloat16"]["fraction"]
    assert row["bfloat16"]["payload_bytes"] * 2 == row["float32"]["payload_bytes"]
    framing = {t: row[t]["bytes"] - row[t]["payload_bytes"] for t in ("float32", "bfloat16")}
    assert framing["float32"] == framing["bfloat16"] > 0  # .npy headers and names, the same in every dtype


def test_federation_benchmark_helpers(tmp_path):
    """What the federation section adds around a simulation: site replicas for more sites than the workspace
    has, round periods from the audit log, the process-tree memory sampler."""
    from benchmarks.federation import TreeMemory, _audit_periods, replicated_workspace
    from medim.pipeline import SYNTH_FILE, Workspace
    from server.audit import AuditLog

    root = tmp_path / "ws"
    for site in ("hospital-a", "pathlab-c"):
        (root / "synth" / "sites" / site / "mimic-cxr").mkdir(parents=True)
        (root / "prepared" / site / "cxr").mkdir(parents=True)
    for entry in ("heldout", "public"):
        (root / "synth" / entry).mkdir()
        (root / "prepared" / entry).mkdir()
    (root / "synth" / "sites.json").write_text("{}")
    (root / SYNTH_FILE).write_text("{}")
    ws = Workspace(root=root, preset="tiny", seed=0, tokenizer_hash="t", base_hash="b")
    ws.sites = {s: [root / "prepared" / s / "cxr"] for s in ("hospital-a", "pathlab-c")}
    ws.tokenizer.mkdir()
    ws.base_model.mkdir()
    same, names = replicated_workspace(ws, 2, tmp_path / "unused")
    assert (
        same == root.resolve() and names == ["hospital-a", "pathlab-c"] and not (tmp_path / "unused").exists()
    )
    copy, names = replicated_workspace(ws, 5, tmp_path / "copy")
    assert names == ["hospital-a", "pathlab-c", "hospital-a-r1", "pathlab-c-r1", "hospital-a-r2"]
    assert (copy / "prepared" / "pathlab-c-r1").resolve() == (root / "prepared" / "pathlab-c").resolve()
    assert sorted(p.name for p in (copy / "synth" / "sites").iterdir()) == sorted(names)
    assert (copy / "base-b").resolve() == ws.base_model.resolve()

    audit = AuditLog(tmp_path / "audit.jsonl")
    for event, round_ in (("round_start", 1), ("round_end", 1), ("round_start", 2), ("round_end", 2)):
        audit.append(event, round=round_)
    audit.append("finish", round=2)
    periods = _audit_periods(tmp_path)
    assert set(periods) == {1, 2} and all(v >= 0 for v in periods.values())

    with TreeMemory(interval=0.01) as memory:
        torch.zeros(1 << 20).add_(1)
    assert memory.peak_rss >= memory.peak_pss > 0 and memory.peak_processes >= 1
    child = subprocess.Popen(["sleep", "30"])
    try:
        with TreeMemory(interval=0.01) as counted, TreeMemory(interval=0.01, exclude=child.pid) as left_out:
            pass
        assert counted.peak_processes == left_out.peak_processes + 1
    finally:
        child.kill()
        child.wait()


class _Workspace:
    """What the sampling-quality section reads of a workspace, without a bootstrap: the tiny model (random
    weights), an untrained tiny image tokenizer and held-out rows made of real report texts."""

    REPORTS = {
        "cxr": ["FINDINGS: Cardiomegaly. Small left pleural effusion.", "FINDINGS: The lungs are clear."],
        "pathology": [
            "Invasive carcinoma with dense nuclei and marked atypia.",
            "Normal tissue, sparse nuclei.",
        ],
    }

    def __init__(self, root):
        self.root, self.preset, self.base_model = root, "tiny", root / "base"
        self.heldout = {m: root / m for m in self.REPORTS}

    def load_base(self):
        return medim.build_model("tiny", seed=0)

    def load_vq(self):
        from medim.config import load_preset
        from medim.tokenize.vq import VQTokenizer
        from medim.tokenize.vq_config import TokenizerConfig

        return VQTokenizer(load_preset(TokenizerConfig, "tokenizer", "tiny")).eval()

    def sequences(self, folders, model):
        from types import SimpleNamespace

        from medim.tokenize.text import TextTokenizer

        text, v = TextTokenizer.builtin(), model.vocab
        g = torch.Generator().manual_seed(0)
        reports = self.REPORTS[folders[0].name] * 2
        codes = [torch.randint(0, v.codebook_size, (v.image_tokens,), generator=g) for _ in reports]
        return SimpleNamespace(
            x0=torch.stack([v.sequence(c, text.encode(r)) for c, r in zip(codes, reports, strict=True)])
        )


def test_sampling_quality_compares_both_samplers_on_both_sets(tmp_path):
    from benchmarks.sampling_quality import FAST_STEPS, sampling_quality

    result = sampling_quality(
        _Workspace(tmp_path), samples=3, seeds=(0, 1), domain_steps=1, bootstrap_rounds=5
    )
    v = medim.build_model("tiny", seed=0).vocab
    assert result["steps"] == {"fast": FAST_STEPS, "slow": v.image_tokens + v.text_tokens}
    assert result["forward_pass_ratio"] == (v.image_tokens + v.text_tokens) / (2 * FAST_STEPS)
    assert set(result["sets"]) == {"cxr", "pathology"}
    for row in result["sets"].values():
        assert row["samples"] == 3
        for name in ("domain_fid", "label_f1"):
            cell = row[name]
            assert len(cell["fast_seeds"]) == 2 and cell["fast"] == pytest.approx(sum(cell["fast_seeds"]) / 2)
            if cell["slow"]:
                assert cell["relative_difference"] == pytest.approx(
                    (cell["fast"] - cell["slow"]) / cell["slow"]
                )
        assert (
            row["domain_fid"]["slow"] > 0
            and row["metrics"]["slow"]["domain_fid"] == row["domain_fid"]["slow"]
        )
        assert "bleu1" not in row["metrics"]["fast"]  # no Java text metrics
    assert (tmp_path / "domain-classifiers").is_dir()  # cached where the coordinator caches them
    for name in ("domain_fid", "label_f1"):
        value = result[f"{name}_relative_difference"]
        assert value is None or value >= 0
    assert result["seconds"]["slow"] > 0 and result["speedup"] > 0


def test_gpu_script_runs_its_step_on_cpu_with_the_tiny_shape(tmp_path):
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--shape", "tiny", "--steps", "1", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["seq_len"] == 16 + 14 + 2 and result["layers"] == 2
    assert 0 < result["mfu"] < 1 and result["seconds_per_step"] > 0 and result["peak_memory_gb"] > 0
    model = gpu.build("tiny", torch.device("cpu"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "time" in n or "adaln" in n for n in trainable), sorted(
        trainable
    )[:5]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    with pytest.raises(SystemExit):
        gpu.main(["--shape", "liquid-7b", "--device", "cpu", "--out", str(out)])
