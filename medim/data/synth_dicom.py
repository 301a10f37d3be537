"""Write a drawn chest radiograph as a valid DX or CR DICOM file, the way a given scanner would.

Scanners differ in what a reader must undo: SOP class (DX "For Presentation" or CR), photometric
interpretation (MONOCHROME1 stores dense tissue as *low* values), the modality LUT (RescaleSlope/Intercept; DX
requires 1/0), and the VOI transform (window centre/width, or a non-linear VOI LUT Sequence). Pixels are 12
bits stored in 16 (``BitsStored=12``, ``HighBit=11``, unsigned), explicit VR little endian, uncompressed.
Every UID is derived from the caller's seed material (no clocks), so files are byte-identical across runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from medim.config import ConfigError

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
MODALITIES = ("DX", "CR")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
VOI_KINDS = ("window", "lut")
MAX_STORED = 4095

_VIEW_CODES = {
    "PA": ("399348003", "postero-anterior"),
    "AP": ("272479002", "antero-posterior"),
    "LATERAL": ("399067008", "lateral"),
    "LL": ("399173006", "left lateral"),
}


@dataclass(frozen=True)
class ScannerConfig:
    """How one scanner encodes images (validated; errors name the setting).

    ``signal_low``/``signal_high``: stored values of air and of the densest tissue (before MONOCHROME1
    inversion); ``window_width``: VOI width as a fraction of that range; ``window_shift``: centre offset as a
    fraction of it; ``aspect``: columns/rows of the detector (<= 1, portrait); ``noise``: stored-value std.
    """

    name: str = "dx-m2"
    modality: str = "DX"
    photometric: str = "MONOCHROME2"
    voi: str = "window"
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    signal_low: int = 300
    signal_high: int = 3800
    window_width: float = 0.9
    window_shift: float = 0.0
    aspect: float = 1.0
    noise: float = 6.0
    manufacturer: str = "Synthetic Imaging"

    def __post_init__(self) -> None:
        where = f"scanner[{self.name}]"
        if self.modality not in MODALITIES:
            raise ConfigError(f"{where}.modality={self.modality!r} is invalid: allowed {MODALITIES}")
        if self.photometric not in PHOTOMETRICS:
            raise ConfigError(f"{where}.photometric={self.photometric!r} is invalid: allowed {PHOTOMETRICS}")
        if self.voi not in VOI_KINDS:
            raise ConfigError(f"{where}.voi={self.voi!r} is invalid: allowed {VOI_KINDS}")
        if (self.modality == "DX" or self.voi == "lut") and (self.rescale_slope, self.rescale_intercept) != (
            1,
            0,
        ):
            raise ConfigError(
                f"{where}.rescale_slope/rescale_intercept={self.rescale_slope}/{self.rescale_intercept} is "
                "invalid: DX images and VOI LUT scanners require 1/0"
            )
        if self.rescale_slope <= 0:
            raise ConfigError(f"{where}.rescale_slope={self.rescale_slope} is invalid: allowed > 0")
        if not 0 <= self.signal_low < self.signal_high <= MAX_STORED:
            raise ConfigError(
                f"{where}.signal_low/signal_high={self.signal_low}/{self.signal_high} is invalid: "
                f"allowed 0 <= low < high <= {MAX_STORED}"
            )
        if not 0 < self.window_width <= 2:
            raise ConfigError(f"{where}.window_width={self.window_width} is invalid: allowed (0, 2]")
        if not 0.5 <= self.aspect <= 1:
            raise ConfigError(f"{where}.aspect={self.aspect} is invalid: allowed [0.5, 1]")
        if self.noise < 0:
            raise ConfigError(f"{where}.noise={self.noise} is invalid: allowed >= 0")


@dataclass(frozen=True)
class ImageMeta:
    """Identifiers and acquisition facts of one image (MIMIC ids, de-identified future dates)."""

    subject_id: int
    study_id: int
    dicom_id: str
    view: str
    study_date: str
    study_time: str
    instance_number: int


def derived_uid(*parts: object) -> UID:
    """A deterministic DICOM UID under the 2.25 (UUID-derived) root from any seed material."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


def encode_pixels(image: np.ndarray, scanner: ScannerConfig, rng: np.random.Generator) -> np.ndarray:
    """Density image (rows, cols) in [0, 1], bright = dense -> stored uint16 values in [0, 4095]."""
    span = scanner.signal_high - scanner.signal_low
    brightness = image if scanner.photometric == "MONOCHROME2" else 1.0 - image
    raw = scanner.signal_low + span * brightness + rng.normal(0.0, scanner.noise, image.shape)
    return np.clip(np.rint(raw), 0, MAX_STORED).astype(np.uint16)


def _window(scanner: ScannerConfig) -> tuple[float, float]:
    """VOI window (centre, width) in modality units."""
    span = scanner.signal_high - scanner.signal_low
    centre = (scanner.signal_low + scanner.signal_high) / 2 + scanner.window_shift * span
    return (
        scanner.rescale_intercept + scanner.rescale_slope * centre,
        scanner.rescale_slope * span * scanner.window_width,
    )


def _voi(ds: Dataset, scanner: ScannerConfig) -> None:
    centre, width = _window(scanner)
    if scanner.voi == "window":
        ds.WindowCenter = f"{centre:.1f}"
        ds.WindowWidth = f"{width:.1f}"
        ds.VOILUTFunction = "LINEAR"
        return
    x = np.arange(MAX_STORED + 1, dtype=np.float64)
    lut = np.rint(65535 / (1.0 + np.exp(-4.0 * (x - centre) / width))).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [MAX_STORED + 1, 0, 16]
    item.LUTExplanation = "SIGMOID CHEST"
    item.add(DataElement(0x00283006, "OW", lut.astype("<u2").tobytes()))
    ds.VOILUTSequence = [item]


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def write_dicom(
    path: Path, stored: np.ndarray, *, scanner: ScannerConfig, meta: ImageMeta, uid_seed: str
) -> None:
    """Write stored pixels (rows, cols) uint16 from :func:`encode_pixels` as a DX/CR file at ``path``."""
    sop_class = UID(DX_SOP_CLASS if scanner.modality == "DX" else CR_SOP_CLASS)
    sop_uid = derived_uid(uid_seed, "sop", meta.dicom_id)
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.MediaStorageSOPInstanceUID = sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), Dataset(), file_meta=file_meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = meta.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = meta.study_time
    ds.AccessionNumber = ""
    ds.Modality = scanner.modality
    ds.Manufacturer = scanner.manufacturer
    ds.ManufacturerModelName = scanner.name
    ds.ReferringPhysicianName = ""
    ds.PatientName = ""
    ds.PatientID = str(meta.subject_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = meta.view
    ds.StudyInstanceUID = derived_uid(uid_seed, "study", meta.study_id)
    ds.SeriesInstanceUID = derived_uid(uid_seed, "series", meta.study_id, meta.view)
    ds.StudyID = str(meta.study_id)
    ds.SeriesNumber = 1
    ds.InstanceNumber = meta.instance_number
    ds.PatientOrientation = ["P", "F"] if meta.view in ("LATERAL", "LL") else ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = scanner.photometric
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = f"{scanner.rescale_intercept:g}"
    ds.RescaleSlope = f"{scanner.rescale_slope:g}"
    ds.RescaleType = "US"
    if scanner.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = -1 if scanner.photometric == "MONOCHROME2" else 1
        ds.PresentationLUTShape = "IDENTITY" if scanner.photometric == "MONOCHROME2" else "INVERSE"
        ds.ImageLaterality = "U"
        ds.AnatomicRegionSequence = [_code("43799004", "Chest")]
        ds.DetectorType = "SCINTILLATOR"
        ds.ImagerPixelSpacing = ["0.6", "0.6"]
        ds.PositionerType = "COLUMN"
        code, meaning = _VIEW_CODES[meta.view]
        ds.ViewCodeSequence = [_code(code, meaning)]
        ds.AcquisitionContextSequence = []
    _voi(ds, scanner)
    ds.PixelData = stored.astype("<u2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
