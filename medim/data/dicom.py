"""Decode a radiograph DICOM into a display-oriented 8-bit grayscale image (bones bright).

The display pipeline follows DICOM PS3.3 C.11 with pydicom 3:

1. stored values (``BitsStored`` honoured: 12 bits in a 16-bit word are masked / sign-extended by pydicom),
2. modality LUT (``ModalityLUTSequence`` or ``RescaleSlope``/``RescaleIntercept``) via
   :func:`pydicom.pixels.apply_modality_lut`,
3. VOI LUT via :func:`pydicom.pixels.apply_voi_lut`, the *VOI LUT Sequence* preferred over
   *Window Center/Width*,
4. scaling to [0, 1] over the output range of the step that ran last (see :func:`display_range`),
5. MONOCHROME1 inverted (once: for DX, *Presentation LUT Shape* INVERSE is how MONOCHROME1 is expressed),
6. rounding to uint8.

Compressed transfer syntaxes are decoded by whatever pydicom pixel plugins are installed (Pillow handles JPEG
baseline and JPEG 2000; JPEG-LS and lossless JPEG need ``pylibjpeg`` + ``pylibjpeg-libjpeg``, ``pyjpegls`` or
``gdcm``). A missing codec is a :class:`DicomError` with reason ``missing_codec`` naming the packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class DicomError(ValueError):
    """A DICOM file cannot be turned into an image; ``reason`` is a short code for skipped.jsonl."""

    def __init__(self, path: Path, reason: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class DisplayImage:
    """A decoded radiograph.

    ``pixels``: uint8 array [H, W], 0 = black, bones bright. ``voi``: which VOI step ran
    (``"lut"``, ``"window"`` or ``"none"``). ``inverted``: whether MONOCHROME1 was inverted.
    ``view``: the header's ViewPosition ("" when absent).
    """

    pixels: np.ndarray
    photometric: str
    voi: str
    inverted: bool
    view: str


@dataclass(frozen=True)
class ValueRange:
    """The closed interval of values a pipeline step can output."""

    low: float
    high: float


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as err:  # pydicom raises many types for damaged files
        raise DicomError(path, "unreadable_dicom", f"not a readable DICOM file ({err})") from None


def _check_codec(path: Path, ds: Dataset) -> None:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        if syntax is None or not syntax.is_compressed:
            return
    except ValueError:  # pydicom: "UID is not a transfer syntax"
        raise DicomError(
            path, "unsupported_transfer_syntax", f"transfer syntax UID {syntax} is not a transfer syntax"
        ) from None
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(
            path,
            "unsupported_transfer_syntax",
            f"transfer syntax {syntax.name} ({syntax}) has no pixel decoder",
        ) from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "a pydicom pixel data plugin"
        raise DicomError(
            path,
            "missing_codec",
            f"transfer syntax {syntax.name} ({syntax}) needs a codec that is not installed: install one of: "
            f"{options}",
        )


def _voi_kind(ds: Dataset) -> str:
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return "none"


def display_range(ds: Dataset, voi: str, values: np.ndarray) -> ValueRange:
    """The output range to scale to [0, 1] after the VOI step ``voi``.

    ``"lut"``: the range of the LUT's entries (descriptors often declare 16 bits for 12-bit data).
    ``"window"``: the range pydicom's windowing maps onto: the stored-value range of ``BitsStored`` (or of the
    modality LUT's entries) passed through the rescale. ``"none"``: the image's own minimum and maximum.
    """
    if voi == "lut":
        lut = np.asarray(apply_voi_lut(np.asarray(_lut_inputs(ds)), ds), dtype=np.float64)
        return ValueRange(float(lut.min()), float(lut.max()))
    if voi == "window":
        modality_seq = ds.get("ModalityLUTSequence")
        if modality_seq:
            low, high = 0.0, float(2 ** int(modality_seq[0].LUTDescriptor[2]) - 1)
        elif int(ds.PixelRepresentation) == 0:
            low, high = 0.0, float(2 ** int(ds.BitsStored) - 1)
        else:
            low, high = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            low, high = sorted(
                (low * float(slope) + float(intercept), high * float(slope) + float(intercept))
            )
        return ValueRange(low, high)
    return ValueRange(float(values.min()), float(values.max()))


def _lut_inputs(ds: Dataset) -> range:
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries = int(descriptor[0]) or 2**16
    return range(int(descriptor[1]), int(descriptor[1]) + entries)


def to_display(ds: Dataset, stored: np.ndarray, path: Path) -> DisplayImage:
    """Run modality LUT -> VOI LUT -> scale -> MONOCHROME1 inversion on ``stored`` values [H, W]."""
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in MONOCHROME:
        raise DicomError(
            path, "unsupported_photometric", f"PhotometricInterpretation {photometric!r} is not MONOCHROME1/2"
        )
    values = apply_modality_lut(stored, ds)
    voi = _voi_kind(ds)
    if voi == "lut" and not np.issubdtype(values.dtype, np.integer):
        values = np.rint(values).astype(np.int64)
    values = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
    span = display_range(ds, voi, values)
    if span.high > span.low:
        unit = np.clip((values - span.low) / (span.high - span.low), 0.0, 1.0)
    else:
        unit = np.zeros_like(values)
    inverted = photometric == "MONOCHROME1"
    if inverted:
        unit = 1.0 - unit
    pixels = np.rint(unit * 255.0).astype(np.uint8)
    return DisplayImage(
        pixels=pixels,
        photometric=photometric,
        voi=voi,
        inverted=inverted,
        view=str(ds.get("ViewPosition", "")),
    )


def decode_dicom(path: Path) -> DisplayImage:
    """Read ``path`` and return its display image; raise :class:`DicomError` (with a reason) on any failure."""
    ds = _read(path)
    if "PixelData" not in ds:
        raise DicomError(path, "no_pixel_data", "has no PixelData element")
    _check_codec(path, ds)
    try:
        stored = ds.pixel_array
    except Exception as err:  # truncated data, bad encapsulation, codec failures
        raise DicomError(path, "unreadable_pixels", f"pixel data cannot be decoded ({err})") from None
    if stored.ndim != 2:
        raise DicomError(
            path, "unsupported_shape", f"pixel array has shape {stored.shape}; expected one grayscale frame"
        )
    try:
        return to_display(ds, stored, path)
    except DicomError:
        raise
    except Exception as err:  # malformed LUT / window attributes
        raise DicomError(
            path, "bad_display_attributes", f"modality/VOI attributes are unusable ({err})"
        ) from None
