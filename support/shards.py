"""Token shards: the flat files of token ids that corpus.py writes and pretrain.py reads.

A shard is one file: a fixed 32-byte header, then the tokens as one flat little-endian array
(documents joined, each ended by the EOS token). pretrain.py opens it with `np.memmap`, so a
shard of billions of tokens costs no memory until a batch touches it.

    header (32 bytes, little-endian):
      magic    8 bytes   b"DSMTOKEN"
      version  uint32    1
      itemsize uint32    2 (uint16 tokens, vocabularies up to 65,536) or 4 (uint32)
      count    uint64    number of tokens
      reserved 8 bytes   zero
    tokens   count * itemsize bytes

    python -m support.shards out/classroom/corpus/tokens/train-00000.bin   # print a shard's header
"""

import struct
import sys

import numpy as np

from support.fileio import BadInput, atomic_path

MAGIC = b"DSMTOKEN"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, itemsize, count, reserved
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def token_dtype(vocab_size):
    """The smallest shard dtype that holds every id of a vocabulary (DeepSeek's 102,400 needs uint32)."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def write_shard(path, tokens):
    """Write a 1-D uint16 or uint32 array of token ids as a shard (atomically)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"write_shard: expected a 1-D uint16 or uint32 array, got {tokens.dtype} {tokens.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, tokens.dtype.itemsize, len(tokens)))
        f.write(tokens.astype(DTYPES[tokens.dtype.itemsize], copy=False).tobytes())


def read_shard(path):
    """The tokens of a shard as a read-only 1-D np.memmap (uint16 or uint32)."""
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER.size)
            f.seek(0, 2)
            size = f.tell()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such token shard; run corpus.py first or fix the path")
    if len(header) < HEADER.size or header[:8] != MAGIC:
        raise BadInput(f"{path}: not a token shard (no {MAGIC.decode()} header); write it with shards.write_shard")
    _, version, itemsize, count = HEADER.unpack(header)
    if version != VERSION or itemsize not in DTYPES:
        raise BadInput(f"{path}: shard version {version} / itemsize {itemsize} is not supported "
                       f"(this code reads version {VERSION}, itemsize 2 or 4)")
    if size != HEADER.size + count * itemsize:
        raise BadInput(f"{path}: truncated or padded shard ({size} bytes, header says "
                       f"{count} tokens of {itemsize} bytes); rewrite it")
    if count == 0:  # np.memmap cannot map zero bytes
        return np.zeros(0, DTYPES[itemsize])
    return np.memmap(path, dtype=DTYPES[itemsize], mode="r", offset=HEADER.size, shape=(count,))


if __name__ == "__main__":
    for shard_path in sys.argv[1:]:
        shard = read_shard(shard_path)
        print(f"{shard_path}: {len(shard):,} tokens of {shard.dtype}")
