from pathlib import Path

import numpy as np
import pytest

from index.npz_map import read_npz


def test_large_members_are_mapped_and_equal_what_np_load_reads(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    big = np.arange(300_000, dtype=np.int64)
    fortran = np.asfortranarray(np.arange(600, dtype=np.float32).reshape(20, 30))
    np.savez(path, big=big, small=np.arange(3), name=np.array("hq"), fortran=fortran)
    arrays = read_npz(path, map_at_least=1000)
    assert isinstance(arrays["big"].base, np.memmap) and isinstance(arrays["fortran"].base, np.memmap)
    assert not isinstance(arrays["small"].base, np.memmap)
    with np.load(path) as expected:
        assert sorted(arrays) == sorted(expected.files)
        for name in expected.files:
            assert arrays[name].dtype == expected[name].dtype and np.array_equal(arrays[name], expected[name])
    assert not arrays["big"].flags.writeable


def test_compressed_members_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez_compressed(path, big=np.arange(300_000))
    arrays = read_npz(path, map_at_least=1000)
    assert not isinstance(arrays["big"].base, np.memmap) and np.array_equal(arrays["big"], np.arange(300_000))


def test_a_member_whose_header_lies_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, big=np.arange(300_000, dtype=np.int64))
    raw = bytearray(path.read_bytes())
    at = raw.index(b"(300000,)")
    raw[at : at + 9] = b"(300001,)"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not fill"):
        read_npz(path, map_at_least=1000)
