"""Fuzzing the readers and the coordinator's update decoding (hypothesis).

Every input either loads or is refused with the reader's documented error type / a verdict with a reason: no other
exception, no hang (each example has a deadline, each test a timeout).
"""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medim.config import ConfigError
from medim.data.archive import ArchiveError
from medim.data.dicom import DicomError, decode_dicom
from medim.data.pathgen import PathGenOptions, index_pathgen
from medim.data.reports import ReportSections, TextConfig, parse_report, training_text
from server.config import ValidationConfig
from server.validation import ACCEPTED, REFUSED, REJECTED, check_content

FUZZ = settings(
    max_examples=80,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
SEED_DICOM = Path(__file__).with_name("test_dicom.py")


def valid_dicom(tmp: Path) -> bytes:
    """A small valid radiograph DICOM written by the DICOM tests' own writer."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dicom_tests", SEED_DICOM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.write_dicom(tmp / "seed.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8) * 40)
    return path.read_bytes()


@pytest.fixture(scope="module")
def seed_dicom(tmp_path_factory) -> bytes:
    return valid_dicom(tmp_path_factory.mktemp("dicom"))


mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12)


@pytest.mark.timeout(120)
@FUZZ
@given(cut=st.integers(0, 10_000), flips=mutations, junk=st.binary(max_size=64))
def test_dicom_reader_loads_or_refuses_with_a_reason(seed_dicom, tmp_path, cut, flips, junk):
    data = bytearray(seed_dicom[: max(cut, 132)] + junk)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(bytes(data))
    try:
        img = decode_dicom(path)
    except DicomError as err:
        assert err.reason and str(path) in str(err)
    else:
        assert img.pixels.dtype == np.uint8 and img.pixels.ndim == 2


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.binary(max_size=512))
def test_dicom_reader_refuses_random_bytes(tmp_path, data):
    path = tmp_path / "random.dcm"
    path.write_bytes(data)
    with pytest.raises(DicomError):
        decode_dicom(path)


section = st.sampled_from(
    ["FINDINGS:", "IMPRESSION:", "INDICATION:", "ADDENDUM", "WET READ:", "\n\n", ":", " "]
)


@pytest.mark.timeout(60)
@FUZZ
@given(parts=st.lists(st.one_of(st.text(max_size=80), section), max_size=20))
def test_report_parser_never_fails(parts):
    report = parse_report("".join(parts))
    assert isinstance(report, ReportSections)
    text = training_text(report, TextConfig())
    assert text is None or isinstance(text, str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
entries = st.lists(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {
                "wsi_id": st.one_of(st.just("TCGA-AA-0001"), json_values),
                "position": st.one_of(
                    st.lists(st.one_of(st.text(max_size=6), st.integers(-5, 10**6)), max_size=3),
                    st.just(["²", "1"]),
                    st.just(["9" * 5000, "1"]),
                ),
                "caption": st.one_of(st.text(max_size=40), json_values),
            }
        ),
    ),
    max_size=6,
)


@pytest.mark.timeout(120)
@FUZZ
@given(entries=entries, raw=st.one_of(st.none(), st.binary(max_size=64), st.just(b"[" * 100_000)))
def test_pathgen_reader_indexes_or_skips_with_a_reason(tmp_path_factory, entries, raw):
    root = tmp_path_factory.mktemp("pathgen")
    Image.new("RGB", (4, 4)).save(root / "TCGA-AA-0001_0_0.png")
    (root / "captions.json").write_bytes(raw if raw is not None else json.dumps(entries).encode())
    try:
        index = index_pathgen(root, options=PathGenOptions())
    except (ArchiveError, ConfigError) as err:
        assert str(root) in str(err)
        return
    assert all(s.reason for s in index.skipped)
    assert len(index.candidates) <= 1


GLOBAL = {"w.lora_A": np.zeros((3, 4), np.float32), "w.lora_B": np.ones((4,), np.float32)}
BOUNDS = ValidationConfig(max_update_norm=10.0, max_num_examples=100)


def npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def npz() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("a.npy", npy(np.zeros(3, np.float32)))
    return buffer.getvalue()


def pickled() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


payloads = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([npz(), pickled(), npy(np.zeros((3, 4), np.float32))[:-7]]),
    st.builds(
        lambda a: npy(np.asarray(a, np.float32).reshape(3, 4)),
        st.lists(st.floats(width=32), min_size=12, max_size=12),
    ),
)
array = st.builds(
    lambda data, dtype, shape: Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data),
    payloads,
    st.sampled_from(["float32", "float64", "int8"]),
    st.sampled_from([(3, 4), (4,), ()]),
)
arrays = st.one_of(
    st.fixed_dictionaries({k: array for k in GLOBAL}),
    st.dictionaries(st.sampled_from([*GLOBAL, "backbone.embed.weight", ""]), array, max_size=3),
)
scalars = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True))
metrics = st.one_of(
    st.fixed_dictionaries({"num-examples": scalars, "server-round": st.just(1)}),
    st.dictionaries(
        st.sampled_from(["num-examples", "server-round", "refused", "epsilon", "x"]), scalars, max_size=5
    ),
)


@pytest.mark.timeout(120)
@FUZZ
@given(arrays=st.one_of(st.none(), arrays), metrics=st.one_of(st.none(), metrics), name=st.text(max_size=8))
def test_update_validation_never_raises(arrays, metrics, name):
    content = RecordDict({"site": ConfigRecord({"name": name, "reason": ""})})
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    verdict = check_content(content, global_arrays=GLOBAL, server_round=1, bounds=BOUNDS)
    assert verdict.status in (ACCEPTED, REJECTED, REFUSED)
    assert verdict.status != REJECTED or verdict.reason
    if verdict.status == ACCEPTED:
        assert verdict.arrays is not None and 1 <= verdict.weight <= BOUNDS.max_num_examples
