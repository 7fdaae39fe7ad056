"""The IDX reader and writer: round trips, a hand-built file as oracle, every error message."""

from __future__ import annotations

import gzip
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from bnprop._validate import InputError
from bnprop.data.idx import IDX_DTYPES, atomic_writer, read_idx, write_idx

NATIVE_DTYPES = [dt.newbyteorder("=") for dt in IDX_DTYPES.values()]


def header(code: int, *sizes: int) -> bytes:
    return bytes([0, 0, code, len(sizes)]) + b"".join(s.to_bytes(4, "big") for s in sizes)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.sampled_from(NATIVE_DTYPES).flatmap(
        lambda dt: arrays(dt, array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
    ),
    compress=st.booleans(),
)
def test_round_trip_every_dtype_and_ndim(tmp_path, data, compress):
    path = tmp_path / "a.idx"
    write_idx(path, data, compress=compress)
    back = read_idx(path)
    assert back.dtype == data.dtype
    assert back.shape == data.shape
    assert back.tobytes() == data.tobytes()  # bitwise: NaN payloads and -0.0 survive
    assert back.flags.writeable


@pytest.mark.parametrize("dtype", NATIVE_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4), (1, 2, 1, 3)])
def test_round_trip_each_dtype_each_ndim(tmp_path, dtype, shape):
    data = (np.arange(np.prod(shape)) - 3).reshape(shape).astype(dtype)
    write_idx(tmp_path / "a", data)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), data)
    assert read_idx(tmp_path / "a").dtype == dtype


def test_reads_a_hand_built_file_big_endian(tmp_path):
    # int16 vector [258, -2]: 0x0102 and 0xFFFE, big-endian.
    (tmp_path / "v").write_bytes(header(0x0B, 2) + b"\x01\x02\xff\xfe")
    np.testing.assert_array_equal(read_idx(tmp_path / "v"), np.array([258, -2], np.int16))


def test_writes_the_documented_layout(tmp_path):
    write_idx(tmp_path / "m", np.array([[1.5], [-2.0]], dtype=np.float32))
    expected = header(0x0D, 2, 1) + np.array([1.5, -2.0], dtype=">f4").tobytes()
    assert (tmp_path / "m").read_bytes() == expected


def test_gzip_variant_round_trip_and_detection_by_magic(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-no-gz-suffix"
    write_idx(path, data, compress=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(path), data)
    # A gzip file made by another tool is read the same way.
    (tmp_path / "x.gz").write_bytes(gzip.compress(header(0x08, 3) + b"\x01\x02\x03"))
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), [1, 2, 3])


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a"
    write_idx(path, np.zeros(3, np.uint8))
    write_idx(path, np.ones(5, np.uint8))
    assert os.listdir(tmp_path) == ["a"]
    np.testing.assert_array_equal(read_idx(path), np.ones(5, np.uint8))


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a"
    write_idx(path, np.zeros(3, np.uint8))
    with pytest.raises(InputError, match=r"^array: expected one of the IDX dtypes .* int64"):
        write_idx(path, np.zeros(3, np.int64))
    assert os.listdir(tmp_path) == ["a"]
    np.testing.assert_array_equal(read_idx(path), np.zeros(3, np.uint8))


# -- every error, its message pinned -----------------------------------------------------


def check_error(path, content: bytes, message: str):
    path.write_bytes(content)
    with pytest.raises(InputError, match="^" + re.escape(f"{path}: {message}") + "$"):
        read_idx(path)


def test_bad_magic(tmp_path):
    check_error(
        tmp_path / "f",
        b"\x00\x01\x08\x01" + bytes(4),
        "not an IDX file: expected magic bytes 00 00, got 00 01 instead.",
    )


def test_unknown_type_code(tmp_path):
    check_error(
        tmp_path / "f",
        header(0x0A, 1) + b"\x00",
        "unknown IDX type code 0x0A: expected one of 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E.",
    )


def test_zero_dimensions(tmp_path):
    check_error(tmp_path / "f", header(0x08), "header gives 0 dimensions: expected at least 1.")


def test_shorter_than_the_header(tmp_path):
    check_error(
        tmp_path / "f", b"\x00\x00", "truncated: 2 bytes, shorter than the 4-byte IDX header."
    )


def test_truncated_sizes(tmp_path):
    check_error(
        tmp_path / "f",
        header(0x08, 60000, 28, 28)[:10],
        "truncated: header promises 3 dimension sizes (12 bytes), file has 6.",
    )


def test_truncated_data(tmp_path):
    check_error(
        tmp_path / "train-images-idx3-ubyte",
        header(0x08, 60000, 28, 28) + bytes(1000),
        "truncated: header promises 47040000 data bytes, file has 1000 "
        "(shape (60000, 28, 28), uint8).",
    )


def test_truncated_data_of_wide_items(tmp_path):
    check_error(
        tmp_path / "f",
        header(0x0E, 2, 3) + bytes(47),
        "truncated: header promises 48 data bytes, file has 47 (shape (2, 3), float64).",
    )


def test_trailing_bytes(tmp_path):
    check_error(
        tmp_path / "f",
        header(0x08, 3) + bytes(5),
        "2 trailing bytes: header promises 3 data bytes, file has 5 (shape (3,), uint8).",
    )


def test_truncated_inside_gzip_names_the_decompressed_file(tmp_path):
    check_error(
        tmp_path / "f.gz",
        gzip.compress(header(0x08, 4) + bytes(3)),
        "truncated: header promises 4 data bytes, decompressed file has 3 (shape (4,), uint8).",
    )


def test_broken_gzip_stream(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(header(0x08, 100) + bytes(100))[:20])
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: gzip-compressed but cannot"):
        read_idx(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope"
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: no such file.$"):
        read_idx(path)


def test_directory_is_not_readable(tmp_path):
    with pytest.raises(InputError, match=f"^{re.escape(str(tmp_path))}: cannot read"):
        read_idx(tmp_path)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (
            np.zeros(3, np.int64),
            r"array: expected one of the IDX dtypes uint8, int8, int16, "
            r"int32, float32, float64, got int64 instead\.",
        ),
        (np.zeros(3, bool), r"array: expected one of the IDX dtypes .* got bool instead\."),
        (np.uint8(3), r"array: expected 1 to 255 dimensions, got a 0D array instead\."),
    ],
)
def test_write_rejects(tmp_path, array, message):
    with pytest.raises(InputError, match="^" + message + "$"):
        write_idx(tmp_path / "a", array)
    assert not os.listdir(tmp_path)


def test_write_accepts_big_endian_input(tmp_path):
    data = np.array([1, -2, 3], dtype=">i4")
    write_idx(tmp_path / "a", data)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), [1, -2, 3])


def test_atomic_writer_failure_leaves_target_and_no_temporary(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_writer(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a"]
    with atomic_writer(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o644
