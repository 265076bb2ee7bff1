"""support/shards.py: token shards round-trip through np.memmap, and damaged files are clear errors."""

import numpy as np
import pytest

from support.fileio import BadInput
from support.shards import HEADER, read_shard, token_dtype, write_shard


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_round_trip_is_a_memmap_of_the_same_tokens(tmp_path, dtype):
    tokens = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, 10_001).astype(dtype)
    path = tmp_path / "train-00000.bin"
    write_shard(path, tokens)
    shard = read_shard(path)
    assert isinstance(shard, np.memmap) and shard.dtype == dtype
    np.testing.assert_array_equal(shard, tokens)
    assert path.stat().st_size == HEADER.size + tokens.nbytes


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "val.bin", np.zeros(0, np.uint16))
    assert len(read_shard(tmp_path / "val.bin")) == 0


def test_token_dtype_fits_the_vocabulary():
    assert token_dtype(4096) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(102400) == np.uint32  # DeepSeek's vocabulary


def test_wrong_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint16 or uint32"):
        write_shard(tmp_path / "x.bin", np.arange(5, dtype=np.int64))
    with pytest.raises(ValueError, match="1-D"):
        write_shard(tmp_path / "x.bin", np.zeros((2, 2), np.uint16))


def test_damaged_files_are_clear_errors(tmp_path):
    with pytest.raises(BadInput, match="no such token shard"):
        read_shard(tmp_path / "missing.bin")
    (tmp_path / "text.bin").write_bytes(b"not a shard at all, just some bytes here")
    with pytest.raises(BadInput, match="not a token shard"):
        read_shard(tmp_path / "text.bin")
    path = tmp_path / "cut.bin"
    write_shard(path, np.arange(100, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BadInput, match="truncated"):
        read_shard(path)
