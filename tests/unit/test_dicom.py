"""DICOM display pipeline on small hand-written DICOMs; expected pixels computed by hand in the comments."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, generate_uid
from pydicom.uid import DigitalXRayImageStorageForPresentation as DX

from medim.data.dicom import DicomError, decode_dicom


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    view: str = "PA",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[list[int], list[int]] | None = None,
    syntax: UID = ExplicitVRLittleEndian,
    encoded: bytes | None = None,
) -> Path:
    """Write a one-frame DX DICOM holding ``pixels`` (uint16 [H, W] unless ``encoded`` frame bytes are given)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition = "DX", view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if encoded is not None else 16
    ds.BitsStored = 8 if encoded is not None else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", voi_lut[0])
        item.add_new(0x00283006, "US", voi_lut[1])
        ds.VOILUTSequence = [item]
    if encoded is not None:
        ds.PixelData = encapsulate([encoded])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)


def test_monochrome2_no_voi_scales_min_to_max(tmp_path):
    img = decode_dicom(write_dicom(tmp_path / "a.dcm", RAMP))
    # (v - 0) / 4000 * 255 -> 0, 63.75, 127.5, 255 -> rint (half to even)
    assert img.pixels.tolist() == [[0, 64], [128, 255]]
    assert img.pixels.dtype == np.uint8
    assert (img.voi, img.inverted, img.view) == ("none", False, "PA")


def test_monochrome1_is_inverted_after_voi(tmp_path):
    img = decode_dicom(write_dicom(tmp_path / "a.dcm", RAMP, photometric="MONOCHROME1"))
    # 255 * (1 - v/4000) -> 255, 191.25, 127.5, 0
    assert img.pixels.tolist() == [[255, 191], [128, 0]]
    assert img.inverted


def test_twelve_bits_in_sixteen_ignore_high_bits(tmp_path):
    dirty = RAMP | np.uint16(0xF000)  # garbage (e.g. overlay) bits above bit 11
    img = decode_dicom(write_dicom(tmp_path / "a.dcm", dirty, bits_stored=12))
    assert img.pixels.tolist() == [[0, 64], [128, 255]]


def test_window_uses_bits_stored_range(tmp_path):
    # window over the full 12-bit range: LINEAR with c=2048, w=4096 -> ((v - 2047.5)/4095 + 0.5) * 4095
    stored = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)
    img = decode_dicom(write_dicom(tmp_path / "a.dcm", stored, window=(2048, 4096)))
    # normalised: v/4095 (to 1e-12), times 255 -> 0, 63.77, 127.53, 255
    assert img.pixels.tolist() == [[0, 64], [128, 255]]
    assert img.voi == "window"


def test_rescale_is_applied_before_window(tmp_path):
    # modality: 2 * v - 1024 -> [-1024, 0], [1024, 2048]; LINEAR window c=0, w=2048 (c'=-0.5, w'=2047):
    # -1024 <= -1024 -> y_min; 1024, 2048 > 1023 -> y_max; 0 -> fraction 0.5 + 0.5/2047 -> 127.56 -> 128
    stored = np.array([[0, 512], [1024, 1536]], dtype=np.uint16)
    img = decode_dicom(
        write_dicom(tmp_path / "a.dcm", stored, slope=2.0, intercept=-1024.0, window=(0, 2048))
    )
    assert img.pixels.tolist() == [[0, 128], [255, 255]]
    # without the rescale, stored 512 would sit at fraction 512.5/2047 + 0.5 -> 191.34 -> 191
    plain = decode_dicom(write_dicom(tmp_path / "b.dcm", stored, window=(0, 2048)))
    assert plain.pixels[0, 1] == 191


def test_voi_lut_sequence_wins_over_window(tmp_path):
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    lut = ([4, 0, 16], [0, 100, 200, 4000])
    # LUT output range 0..4000: 0, 100/4000*255=6.375, 12.75, 255; the window (c=1, w=1) would give 0/255 only
    img = decode_dicom(write_dicom(tmp_path / "a.dcm", stored, window=(1, 1), voi_lut=lut))
    assert img.pixels.tolist() == [[0, 6], [13, 255]]
    assert img.voi == "lut"


def test_voi_lut_after_rescale(tmp_path):
    # modality 1 * v + 1 -> 1..4; LUT first mapped value 1: entries index v-1
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    img = decode_dicom(
        write_dicom(
            tmp_path / "a.dcm", stored, slope=1.0, intercept=1.0, voi_lut=([4, 1, 16], [10, 20, 30, 40])
        )
    )
    # (x - 10) / 30 * 255 -> 0, 85, 170, 255
    assert img.pixels.tolist() == [[0, 85], [170, 255]]


def test_compressed_without_codec_names_the_missing_codec(tmp_path):
    path = write_dicom(
        tmp_path / "ls.dcm", np.zeros((2, 2), np.uint16), syntax=JPEGLSLossless, encoded=b"\xff\xd8\xff\xd9"
    )
    with pytest.raises(DicomError) as err:
        decode_dicom(path)
    assert err.value.reason == "missing_codec"
    assert "JPEG-LS" in str(err.value) and "pylibjpeg" in str(err.value) and str(path) in str(err.value)


def test_jpeg_baseline_is_decoded_with_pillow(tmp_path):
    ramp = np.tile(np.linspace(20, 220, 16).astype(np.uint8), (16, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="JPEG", quality=95)
    path = write_dicom(
        tmp_path / "j.dcm", ramp.astype(np.uint16), syntax=JPEGBaseline8Bit, encoded=buf.getvalue()
    )
    img = decode_dicom(path)
    expected = (ramp.astype(float) - 20) / 200 * 255
    assert np.abs(img.pixels.astype(float) - expected).max() < 12


@pytest.mark.parametrize("cut", [100, 400])
def test_truncated_file_is_a_dicom_error(tmp_path, cut):
    path = write_dicom(tmp_path / "a.dcm", np.full((16, 16), 7, np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    with pytest.raises(DicomError) as err:
        decode_dicom(path)
    assert err.value.reason in {"unreadable_dicom", "unreadable_pixels"}


def test_not_a_dicom(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_text("hello")
    with pytest.raises(DicomError) as err:
        decode_dicom(path)
    assert err.value.reason == "unreadable_dicom" and str(path) in str(err.value)


def test_color_photometric_is_rejected(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", RAMP, photometric="PALETTE COLOR")
    with pytest.raises(DicomError) as err:
        decode_dicom(path)
    assert err.value.reason in {"unsupported_photometric", "unreadable_pixels"}
