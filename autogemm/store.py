"""tuned/<machine-id>.json: the best kernel per (dtype, shape, threads) for one machine.

The file is small, schema-versioned, reviewable, and carries a hash of its entries. It is written
atomically under a file lock, and a corrupt file is moved aside, never overwritten silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import filelock
import platformdirs

from .params import DTYPES, InvalidParams, KernelParams

SCHEMA = 1
_ENTRY_KEYS = {"dtype", "shape", "threads", "params", "gflops", "numpy_gflops", "vs_numpy", "pct_peak",
               "peak_gflops", "versions", "date", "tuning", "layout", "beta", "bias", "measured_shape",
               "torch_gflops", "vs_torch"}
LAYOUTS = ("nn", "nt", "tn", "tt")


class TunedFileError(ValueError):
    """A tuned file that cannot be trusted: unreadable, another schema, another machine, bad hash."""


def _checkout_tuned() -> Path:
    return Path(__file__).resolve().parent.parent / "tuned"


def _packaged_tuned() -> Path:
    return Path(__file__).resolve().parent / "tuned"


def user_tuned_dir() -> Path:
    return Path(platformdirs.user_data_dir("autogemm")) / "tuned"


def _writable(directory: Path) -> bool:
    return directory.is_dir() and os.access(directory, os.W_OK)


def tuned_dir(override: str | os.PathLike | None = None) -> Path:
    """Where results are written: `override`, else $AUTOGEMM_TUNED_DIR, else the checkout's
    tuned/ when it is writable, else the user data directory (~/.local/share/autogemm/tuned)."""
    chosen = override or os.environ.get("AUTOGEMM_TUNED_DIR")
    if chosen:
        return Path(chosen)
    return _checkout_tuned() if _writable(_checkout_tuned()) else user_tuned_dir()


def search_dirs(override: str | os.PathLike | None = None) -> list[Path]:
    """Where tuned files are read from, first match wins."""
    if override or os.environ.get("AUTOGEMM_TUNED_DIR"):
        return [tuned_dir(override)]
    return [d for d in (_checkout_tuned(), _packaged_tuned(), user_tuned_dir()) if d.is_dir()]


def entries_hash(entries: list) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    dtype: str
    shape: tuple
    threads: int
    params: KernelParams
    record: dict
    layout: str = "nn"
    beta: float = 0.0

    def key(self) -> tuple:
        return entry_key(self.record)

    def distance(self, shape) -> float:
        """Log-scale distance between problem shapes: 2x in one dimension counts as 1."""
        return math.sqrt(sum(math.log2(max(a, 1) / max(b, 1)) ** 2 for a, b in zip(self.shape, shape)))


def _validate_entry(raw) -> Entry:
    if not isinstance(raw, dict) or not {"dtype", "shape", "threads", "params"} <= set(raw):
        raise TunedFileError("an entry lacks dtype, shape, threads or params")
    if set(raw) - _ENTRY_KEYS:
        raise TunedFileError(f"an entry has unknown keys {sorted(set(raw) - _ENTRY_KEYS)}")
    if raw["dtype"] not in DTYPES:
        raise TunedFileError(f"an entry has dtype {raw['dtype']!r}")
    shape = raw["shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(x, int) and x > 0 for x in shape)):
        raise TunedFileError(f"an entry has shape {shape!r}")
    if not isinstance(raw["threads"], int) or raw["threads"] < 1:
        raise TunedFileError(f"an entry has threads {raw['threads']!r}")
    try:
        params = KernelParams.from_dict(raw["params"])
    except (InvalidParams, TypeError) as exc:
        raise TunedFileError(f"an entry has invalid params: {exc}") from None
    if params.dtype != raw["dtype"]:
        raise TunedFileError("an entry's params are for another dtype")
    layout, beta = raw.get("layout", "nn"), raw.get("beta", 0.0)
    if layout not in LAYOUTS or beta not in (0, 1) or not isinstance(raw.get("bias", False), bool):
        raise TunedFileError(f"an entry has layout {layout!r}, beta {beta!r} or bias {raw.get('bias')!r}")
    return Entry(raw["dtype"], tuple(shape), raw["threads"], params, raw, layout, float(beta))


def entry_key(record: dict) -> tuple:
    """What one entry is for: dtype, shape, threads, layout, beta, bias."""
    return (record["dtype"], list(record["shape"]), record["threads"], record.get("layout", "nn"),
            float(record.get("beta", 0.0)), bool(record.get("bias", False)))


def read(path: Path, machine_id: str) -> list[Entry]:
    """Validated entries of one tuned file; TunedFileError says exactly what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TunedFileError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TunedFileError(f"{path}: not a tuned file")
    if data.get("schema") != SCHEMA:
        raise TunedFileError(f"{path}: schema {data.get('schema')!r}, this autogemm reads schema {SCHEMA}")
    if data.get("machine_id") != machine_id:
        raise TunedFileError(f"{path}: tuned on {data.get('machine_id')!r}, this machine is {machine_id!r}")
    entries = data.get("entries")
    if not isinstance(entries, list) or data.get("sha256") != entries_hash(entries):
        raise TunedFileError(f"{path}: its entries do not match their sha256 (edited or corrupt)")
    return [_validate_entry(e) for e in entries]


def path_for(machine_id: str, directory: Path) -> Path:
    return directory / f"{machine_id}.json"


def find_entries(machine_id: str, override=None) -> list[Entry]:
    """This machine's entries from the first tuned file found. A bad file is reported and skipped."""
    for directory in search_dirs(override):
        path = path_for(machine_id, directory)
        if path.exists():
            try:
                return read(path, machine_id)
            except TunedFileError as exc:
                warnings.warn(f"autogemm: ignoring tuned file: {exc}; using the default kernel", stacklevel=3)
    return []


#: How far (Entry.distance) from its own shape a tuned entry still serves a shape: beyond it, the
#: analytic default does. Far from its shape an entry is no evidence: float64, two threads, the 256^3
#: entry's 13x16 kernel against the default ran at 1.02x at 300^3, but 0.96x at 100^3 (2.4 away),
#: 0.95x at 2000 x 50 x 50 and 0.77x at 16 x 1469 x 1303 (5.3 away).
NEAR = 2.0


def nearest(entries: list[Entry], dtype: str, shape=None, threads: int | None = None, layout: str | None = None,
            beta: float | None = None) -> Entry | None:
    """The entry for `dtype` closest to `shape` (largest if no shape), preferring equal `threads`,
    then the same layout and beta, then the nearest shape; None where that is more than NEAR away."""
    candidates = [e for e in entries if e.dtype == dtype]
    if not candidates:
        return None

    def mismatch(e: Entry) -> tuple:
        return (bool(threads) and e.threads != threads, layout is not None and e.layout != layout,
                beta is not None and e.beta != beta)

    if shape is None:
        return min(candidates, key=lambda e: (mismatch(e), -math.prod(e.shape)))
    best = min(candidates, key=lambda e: (mismatch(e)[0], e.distance(shape) + 0.5 * sum(mismatch(e)[1:])))
    return best if best.distance(shape) <= NEAR else None


def _file_mode(path: Path) -> int:
    """The permissions a rewritten file keeps: its own, or for a new one what open() gives (0666
    less the umask), not mkstemp's 0600, so a shared tuned directory stays readable to its team."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save(machine: dict, record: dict, directory: Path) -> Path:
    """Adds or replaces the entry for (dtype, shape, threads) in this machine's file, atomically.

    A corrupt existing file is kept as `<name>.corrupt-<time>` before a fresh one is written.
    """
    _validate_entry(record)
    machine_id = machine["machine_id"]
    directory.mkdir(parents=True, exist_ok=True)
    path = path_for(machine_id, directory)
    with filelock.FileLock(str(path) + ".lock", timeout=120):
        entries = []
        if path.exists():
            try:
                entries = [e.record for e in read(path, machine_id)]
            except TunedFileError as exc:
                backup = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, backup)
                warnings.warn(f"autogemm: {exc}; kept it as {backup}", stacklevel=2)
        entries = [e for e in entries if entry_key(e) != entry_key(record)] + [record]
        entries.sort(key=lambda e: [str(x) for x in entry_key(e)])
        data = {"schema": SCHEMA, "machine_id": machine_id, "machine": machine, "entries": entries,
                "sha256": entries_hash(entries)}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        try:
            os.fchmod(fd, _file_mode(path))
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path
