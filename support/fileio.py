"""Files every stage reads and writes: JSONL / Parquet records, and atomic writes.

Pages, problems and samples are records (dicts) in JSONL files (or Parquet, read through the
`datasets` library's Arrow backend). Every file this project writes appears whole or not at
all: we write to a temporary name in the same folder and `os.replace` it into place, which is
atomic on POSIX, so a crash mid-write never leaves a half-written output. A folder (a
checkpoint, the corpus) is written likewise under a temporary name and swapped into place by
model.staged_folder; `recover_staged_folder` finishes a swap that a kill interrupted.
"""

import contextlib
import json
import os
import re
import shutil
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
    """The JSON value in `path`; a missing, truncated or corrupt file is a BadInput naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file; check the path, or run the stage that writes it")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{path}: not valid JSON ({e}); the file is truncated or corrupt: restore it, "
                       "or delete it and run the stage that writes it again")


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


def recover_staged_folder(folder):
    """Finish what a killed model.staged_folder left beside `folder`, and remove its leftovers.

    staged_folder writes `.NAME.XXXXXXXX`, renames NAME to `.NAME.XXXXXXXX.old`, renames the
    new one to NAME, then removes the old one. Killed between the two renames, NAME is missing
    and the new folder, complete, waits beside its `.old`: it is put in place. Any other
    leftover (a folder killed while being written, an old one killed while being removed) is
    deleted. Run it before reading NAME, in one process only; returns what it recovered, or ""."""
    parent, name = os.path.split(os.path.abspath(folder))
    pattern = re.compile(rf"\.{re.escape(name)}\.([^.]+)(\.old)?")
    if not os.path.isdir(parent):
        return ""
    found = [(m.group(1), bool(m.group(2))) for m in map(pattern.fullmatch, sorted(os.listdir(parent))) if m]
    done = ""
    ready = [key for key, old in found if old and (key, False) in found]
    if ready and not os.path.exists(folder):  # the new folder was written whole before the first rename
        os.replace(os.path.join(parent, f".{name}.{ready[0]}"), folder)
        done = f"recovered {folder} from a save interrupted between its renames"
    for key, old in found:
        path = os.path.join(parent, f".{name}.{key}" + (".old" if old else ""))
        if os.path.exists(path):
            shutil.rmtree(path, ignore_errors=True)
    return done
