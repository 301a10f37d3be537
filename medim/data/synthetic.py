"""Synthetic hospitals in the real formats, generated from known findings (``medim-data synth``).

Output layout under ``--out``::

    sites/<site>/mimic-cxr/   MIMIC-CXR tree (see :mod:`medim.data.synth_mimic`), absent without CXR
    sites/<site>/pathgen/     PathGen folder (see :mod:`medim.data.synth_pathgen`), absent without pathology
    heldout/mimic-cxr/, heldout/pathgen/   the coordinator's test sets (split "test")
    public/mimic-cxr/, public/pathgen/     a public pretraining pool with a different distribution
    sites.json                per site: modalities, counts, configured and realised prevalence, scanners

The default federation is non-IID: an outpatient DX hospital (MONOCHROME2, windowed, mostly PA with laterals),
an ICU CR hospital (MONOCHROME1 with a VOI LUT Sequence or rescaled MONOCHROME2, mostly portable AP, many devices
and effusions), a pathology lab (mostly adenocarcinoma; JSON spelled ``WSI_id``) and a hospital with both (DX
MONOCHROME1, narrow window, portrait detector; squamous-rich pathology). The public pool has no pneumothorax,
few nodules and devices, and no squamous carcinoma or necrosis. Everything is derived from ``--seed``: equal
arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from medim.config import ConfigError
from medim.data import findings as F
from medim.data.synth_captions import write_caption
from medim.data.synth_cxr import sample_case
from medim.data.synth_dicom import ScannerConfig
from medim.data.synth_mimic import CxrPlan, IdAllocator, rng_for, write_mimic_site
from medim.data.synth_pathgen import PathologyPlan, write_pathgen_site
from medim.data.synth_pathology import sample_patch_case
from medim.data.synth_reports import write_report

CXR_PREVALENCE_KEYS = (*F.CXR_PATHOLOGIES, F.SUPPORT_DEVICE)
SPLITS = ("train", "test")
WSI_ID_KEYS = ("wsi_id", "WSI_id")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _require(ok: bool, setting: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={value!r} is invalid: allowed {allowed}")


@dataclass
class CxrSiteConfig:
    """Chest X-ray studies of one site. ``prevalence``: per-study probability of each finding (missing = 0)."""

    studies: int = 80
    prevalence: dict[str, float] = field(default_factory=dict)
    scanners: list[ScannerConfig] = field(default_factory=lambda: [ScannerConfig()])
    ap_fraction: float = 0.2
    lateral_fraction: float = 0.5
    max_studies_per_subject: int = 3
    validate_fraction: float = 0.1

    def validate(self, where: str) -> None:
        """Raise :class:`ConfigError` naming ``where.<setting>`` for the first bad value."""
        _require(self.studies >= 1, f"{where}.studies", self.studies, ">= 1")
        for name, p in self.prevalence.items():
            _require(name in CXR_PREVALENCE_KEYS, f"{where}.prevalence", name, f"keys {CXR_PREVALENCE_KEYS}")
            _require(0 <= p <= 1, f"{where}.prevalence[{name}]", p, "[0, 1]")
        _require(len(self.scanners) > 0, f"{where}.scanners", self.scanners, "a non-empty list")
        for key in ("ap_fraction", "lateral_fraction", "validate_fraction"):
            value = getattr(self, key)
            _require(0 <= value <= 1, f"{where}.{key}", value, "[0, 1]")
        _require(
            self.max_studies_per_subject >= 1,
            f"{where}.max_studies_per_subject",
            self.max_studies_per_subject,
            ">= 1",
        )


@dataclass
class PathologySiteConfig:
    """Pathology patches of one lab. ``tissue_mix``: relative weights of tissue types (missing = 0)."""

    patches: int = 80
    tissue_mix: dict[str, float] = field(default_factory=lambda: dict.fromkeys(F.TISSUE_TYPES, 1.0))
    patches_per_slide: int = 6
    wsi_id_key: str = "wsi_id"

    def validate(self, where: str) -> None:
        """Raise :class:`ConfigError` naming ``where.<setting>`` for the first bad value."""
        _require(self.patches >= 1, f"{where}.patches", self.patches, ">= 1")
        for name, w in self.tissue_mix.items():
            _require(name in F.TISSUE_TYPES, f"{where}.tissue_mix", name, f"keys {F.TISSUE_TYPES}")
            _require(w >= 0, f"{where}.tissue_mix[{name}]", w, ">= 0")
        _require(
            sum(self.tissue_mix.values()) > 0, f"{where}.tissue_mix", self.tissue_mix, "a positive total"
        )
        _require(self.patches_per_slide >= 1, f"{where}.patches_per_slide", self.patches_per_slide, ">= 1")
        _require(
            self.wsi_id_key in WSI_ID_KEYS, f"{where}.wsi_id_key", self.wsi_id_key, f"one of {WSI_ID_KEYS}"
        )


@dataclass
class SiteConfig:
    """One data holder: a name (lower-case, ``[a-z0-9_-]``) and at least one modality."""

    name: str
    cxr: CxrSiteConfig | None = None
    pathology: PathologySiteConfig | None = None

    def __post_init__(self) -> None:
        _require(bool(_NAME.match(self.name)), "site.name", self.name, "lower-case letters, digits, '-', '_'")
        where = f"site[{self.name}]"
        _require(
            self.cxr is not None or self.pathology is not None, f"{where}.cxr/pathology", None, "at least one"
        )
        if self.cxr is not None:
            self.cxr.validate(f"{where}.cxr")
        if self.pathology is not None:
            self.pathology.validate(f"{where}.pathology")


def default_scanners() -> dict[str, ScannerConfig]:
    """The four scanner conventions of the default federation, by name."""
    return {
        "dx-m2": ScannerConfig(name="dx-m2", manufacturer="Synthetic Imaging A"),
        "cr-m1-lut": ScannerConfig(
            name="cr-m1-lut",
            modality="CR",
            photometric="MONOCHROME1",
            voi="lut",
            signal_low=500,
            signal_high=3500,
        ),
        "cr-m2-rescale": ScannerConfig(
            name="cr-m2-rescale",
            modality="CR",
            rescale_slope=2.0,
            rescale_intercept=-1024.0,
            aspect=0.875,
            noise=10.0,
        ),
        "dx-m1": ScannerConfig(
            name="dx-m1",
            photometric="MONOCHROME1",
            window_width=0.75,
            window_shift=0.05,
            aspect=0.8,
            noise=4.0,
        ),
    }


def default_sites() -> list[SiteConfig]:
    """The default non-IID federation (see the module docstring)."""
    s = default_scanners()
    uniform = dict.fromkeys(CXR_PREVALENCE_KEYS, 0.0)
    outpatient = {
        **uniform,
        "cardiomegaly": 0.15,
        "left_pleural_effusion": 0.08,
        "right_pleural_effusion": 0.08,
    }
    outpatient |= {"left_pneumothorax": 0.02, "right_pneumothorax": 0.02, "consolidation": 0.15}
    outpatient |= {"nodule": 0.15, "support_device": 0.05}
    icu = {**uniform, "cardiomegaly": 0.4, "left_pleural_effusion": 0.35, "right_pleural_effusion": 0.3}
    icu |= {"left_pneumothorax": 0.12, "right_pneumothorax": 0.1, "consolidation": 0.3}
    icu |= {"nodule": 0.05, "support_device": 0.7}
    mixed = {**uniform, "cardiomegaly": 0.25, "left_pleural_effusion": 0.15, "right_pleural_effusion": 0.15}
    mixed |= {"left_pneumothorax": 0.05, "right_pneumothorax": 0.05, "consolidation": 0.2}
    mixed |= {"nodule": 0.3, "support_device": 0.2}
    return [
        SiteConfig(
            "hospital-a",
            cxr=CxrSiteConfig(80, outpatient, [s["dx-m2"]], ap_fraction=0.1, lateral_fraction=0.7),
        ),
        SiteConfig(
            "hospital-b",
            cxr=CxrSiteConfig(
                80, icu, [s["cr-m1-lut"], s["cr-m2-rescale"]], ap_fraction=0.85, lateral_fraction=0.1
            ),
        ),
        SiteConfig(
            "pathlab-c",
            pathology=PathologySiteConfig(
                100,
                {
                    "normal": 0.15,
                    "adenocarcinoma": 0.55,
                    "squamous_cell_carcinoma": 0.05,
                    "lymphocytic_infiltrate": 0.15,
                    "necrosis": 0.1,
                },
                wsi_id_key="WSI_id",
            ),
        ),
        SiteConfig(
            "hospital-d",
            cxr=CxrSiteConfig(60, mixed, [s["dx-m1"]], ap_fraction=0.4, lateral_fraction=0.4),
            pathology=PathologySiteConfig(
                60,
                {
                    "normal": 0.25,
                    "adenocarcinoma": 0.1,
                    "squamous_cell_carcinoma": 0.4,
                    "lymphocytic_infiltrate": 0.2,
                    "necrosis": 0.05,
                },
            ),
        ),
    ]


def default_heldout() -> SiteConfig:
    """The coordinator's test sets: balanced findings, both scanner conventions."""
    s = default_scanners()
    balanced = {**dict.fromkeys(CXR_PREVALENCE_KEYS, 0.2), "support_device": 0.25}
    return SiteConfig(
        "heldout",
        cxr=CxrSiteConfig(50, balanced, [s["dx-m2"], s["cr-m1-lut"]], ap_fraction=0.4, lateral_fraction=0.4),
        pathology=PathologySiteConfig(50),
    )


def default_public() -> SiteConfig:
    """A public pretraining pool whose distribution differs from the hospitals'."""
    s = default_scanners()
    prevalence = {
        **dict.fromkeys(CXR_PREVALENCE_KEYS, 0.0),
        "cardiomegaly": 0.2,
        "left_pleural_effusion": 0.1,
    }
    prevalence |= {
        "right_pleural_effusion": 0.1,
        "consolidation": 0.15,
        "nodule": 0.02,
        "support_device": 0.02,
    }
    tissue = {"normal": 0.45, "adenocarcinoma": 0.35, "lymphocytic_infiltrate": 0.2}
    return SiteConfig(
        "public",
        cxr=CxrSiteConfig(
            150, prevalence, [s["dx-m2"], s["cr-m2-rescale"]], ap_fraction=0.3, lateral_fraction=0.5
        ),
        pathology=PathologySiteConfig(150, tissue),
    )


@dataclass
class SynthConfig:
    """Everything ``medim-data synth`` generates. Counts are multiplied by ``scale`` (at least 1 each), the
    hospitals' counts also by ``site_scale`` (the held-out sets and the public pool keep theirs: more records per
    site is what DP-SGD needs, see docs/privacy.md); images are drawn at ``native_scale * image_size`` pixels
    (rows)."""

    seed: int = 0
    image_size: int = 64
    native_scale: int = 4
    scale: float = 1.0
    site_scale: float = 1.0
    sites: list[SiteConfig] = field(default_factory=default_sites)
    heldout: SiteConfig = field(default_factory=default_heldout)
    public: SiteConfig = field(default_factory=default_public)

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "synth.seed", self.seed, ">= 0")
        _require(8 <= self.image_size <= 1024, "synth.image_size", self.image_size, "[8, 1024]")
        _require(1 <= self.native_scale <= 8, "synth.native_scale", self.native_scale, "[1, 8]")
        _require(self.scale > 0, "synth.scale", self.scale, "> 0")
        _require(self.site_scale > 0, "synth.site_scale", self.site_scale, "> 0")
        _require(len(self.sites) > 0, "synth.sites", self.sites, "a non-empty list")
        names = [s.name for s in self.sites]
        _require(len(set(names)) == len(names), "synth.sites", names, "unique names")
        _require(
            not {"heldout", "public"} & set(names), "synth.sites", names, "names other than heldout/public"
        )

    def count(self, n: int, role: str) -> int:
        """A configured count after ``scale`` (and ``site_scale`` for a hospital, ``role`` "site")."""
        return max(1, round(n * self.scale * (self.site_scale if role == "site" else 1.0)))


@dataclass(frozen=True)
class _Target:
    site: SiteConfig
    root: Path
    split: str
    role: str


def _targets(config: SynthConfig, out: Path) -> list[_Target]:
    return [
        *(_Target(site, out / "sites" / site.name, "train", "site") for site in config.sites),
        _Target(config.heldout, out / "heldout", "test", "heldout"),
        _Target(config.public, out / "public", "train", "public"),
    ]


def generate(config: SynthConfig, out: Path, *, show_progress: bool = True) -> dict[str, object]:
    """Write every site, the held-out sets and the public pool under ``out``; returns the sites.json content."""
    targets = _targets(config, out)
    total = sum(
        (config.count(t.site.cxr.studies, t.role) if t.site.cxr else 0)
        + (config.count(t.site.pathology.patches, t.role) if t.site.pathology else 0)
        for t in targets
    )
    ids = IdAllocator(config.seed)
    rows = config.native_scale * config.image_size
    summary: dict[str, object] = {"seed": config.seed, "image_size": config.image_size, "native_size": rows}
    described: dict[str, object] = {}
    with tqdm(total=total, desc="synth", unit="sample", disable=not show_progress) as bar:
        for target in targets:
            site = target.site
            entry: dict[str, object] = {"role": target.role}
            entry["modalities"] = [m for m, c in (("mimic-cxr", site.cxr), ("pathgen", site.pathology)) if c]
            if site.cxr:
                bar.set_postfix_str(f"{site.name} cxr")
                plan = CxrPlan(
                    config.count(site.cxr.studies, target.role),
                    site.cxr.prevalence,
                    site.cxr.scanners,
                    site.cxr.ap_fraction,
                    site.cxr.lateral_fraction,
                    site.cxr.max_studies_per_subject,
                    target.split,
                    site.cxr.validate_fraction,
                    rows,
                )
                cxr = write_mimic_site(
                    target.root / "mimic-cxr",
                    plan,
                    seed=config.seed,
                    site=site.name,
                    ids=ids,
                    progress=bar.update,
                )
                entry["mimic-cxr"] = {**asdict(cxr), "config": asdict(site.cxr)}
            if site.pathology:
                bar.set_postfix_str(f"{site.name} pathgen")
                path_plan = PathologyPlan(
                    config.count(site.pathology.patches, target.role),
                    site.pathology.tissue_mix,
                    site.pathology.patches_per_slide,
                    site.pathology.wsi_id_key,
                    target.split,
                    rows,
                )
                path = write_pathgen_site(
                    target.root / "pathgen", path_plan, seed=config.seed, site=site.name, progress=bar.update
                )
                entry["pathgen"] = {**asdict(path), "config": asdict(site.pathology)}
            described[site.name] = entry
    summary["sites"] = described
    out.mkdir(parents=True, exist_ok=True)
    (out / "sites.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medim-data synth``."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (sites/, heldout/, public/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything generated (default 0)")
    parser.add_argument(
        "--image-size", type=int, default=64, help="training image size in pixels (default 64)"
    )
    parser.add_argument(
        "--native-scale",
        type=int,
        default=4,
        help="files are drawn at native-scale x image-size pixels (default 4)",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every study/patch count (default 1.0)"
    )
    parser.add_argument(
        "--site-scale",
        type=float,
        default=1.0,
        help="multiply the hospitals' counts once more (not held-out, not public; default 1.0)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate the synthetic federation from parsed arguments; prints counts per site; returns the exit code."""
    try:
        config = SynthConfig(
            seed=args.seed,
            image_size=args.image_size,
            native_scale=args.native_scale,
            scale=args.scale,
            site_scale=args.site_scale,
        )
    except ConfigError as err:
        print(f"medim-data synth: {err}")
        return 2
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        print(f"medim-data synth: {out} is not empty; choose a new --out folder")
        return 2
    summary = generate(config, out, show_progress=not args.no_progress)
    sites = summary["sites"]
    assert isinstance(sites, dict)
    for name, entry in sites.items():
        parts = []
        if "mimic-cxr" in entry:
            cxr = entry["mimic-cxr"]
            parts.append(f"{cxr['studies']} CXR studies / {cxr['images']} DICOMs")
        if "pathgen" in entry:
            parts.append(f"{entry['pathgen']['patches']} pathology patches")
        print(f"{name:12s} {', '.join(parts)}")
    print(f"wrote {out} (sites.json describes every site)")
    return 0


def vocabulary_corpus(*, seed: int = 0, reports: int = 2000, captions: int = 1000) -> list[str]:
    """Synthetic report and caption texts (no images) covering the whole generator vocabulary.

    Used to train the text tokenizer; findings are drawn with balanced prevalence so every phrasing occurs.
    """
    prevalence = {**dict.fromkeys(CXR_PREVALENCE_KEYS, 0.25), F.SUPPORT_DEVICE: 0.3}
    texts = []
    for i in range(reports):
        rng = rng_for(seed, "corpus", "report", i)
        case = sample_case(rng, prevalence)
        view = "AP" if rng.random() < 0.4 else "PA"
        texts.append(write_report(case, view=view, lateral=bool(rng.random() < 0.5), rng=rng).text)
    mix = dict.fromkeys(F.TISSUE_TYPES, 1.0)
    for i in range(captions):
        rng = rng_for(seed, "corpus", "caption", i)
        texts.append(write_caption(sample_patch_case(rng, mix), rng))
    return texts
