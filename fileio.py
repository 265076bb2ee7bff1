"""Files every stage reads and writes: JSONL / Parquet records, and atomic writes.

Pages, problems and samples are records (dicts) in JSONL files (or Parquet, read through the
`datasets` library's Arrow backend). Every file this project writes appears whole or not at
all: we write to a temporary name in the same folder and `os.replace` it into place, which is
atomic on POSIX, so a crash mid-write never leaves a half-written output.
"""

import contextlib
import json
import os
import tempfile


class BadInput(ValueError):
    """A user-facing input problem; the message names the thing and the fix."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed to `path`, else removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_jsonl(path, records):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_json(path, obj):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path, malformed=None):
    """Yield the JSON objects of a JSONL file. A line that is not a JSON object is skipped and
    counted in malformed[path] when a dict is given, else it is an error naming the line."""
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such file; check the path in your config")
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if malformed is None:
                    raise BadInput(f"{path}:{lineno}: malformed JSON line ({e}); fix or remove it")
                malformed[path] = malformed.get(path, 0) + 1
                continue
            yield record


def read_records(path, malformed=None):
    """Records of a JSONL file, or of a .parquet file (through `datasets`), as dicts."""
    if path.endswith(".parquet"):
        if not os.path.exists(path):
            raise BadInput(f"{path}: no such file; check the path in your config")
        import datasets  # imported here: it is slow to import and only Parquet needs it

        yield from datasets.Dataset.from_parquet(path)
    else:
        yield from read_jsonl(path, malformed)
