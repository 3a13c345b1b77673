"""Shared helpers for the SPEC §7 benchmark scripts: machine facts, timing, synthetic data and
writing bench/results/<name>.json + <name>.md (machine, command, date and timed region)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache"  # git-ignored scratch: embeddings, synthetic stores
VENV_BIN = Path(sys.executable).parent


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        # Other engineers share this machine; the load average at the start says how busy it was.
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
    }


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_results(
    name: str,
    *,
    summary: str,
    timed_region: str,
    results: dict,
    table: list[list],
    header: list[str],
    notes: list[str] = (),
    started: str | None = None,
) -> None:
    """bench/results/<name>.json (everything) and <name>.md (a short table with the context)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "benchmark": name,
        "command": command(),
        "date": started or now_utc(),
        "git_commit": git_commit(),
        "machine": machine(),
        "timed_region": timed_region,
        "summary": summary,
    }
    (RESULTS / f"{name}.json").write_bytes(
        orjson.dumps(
            {**meta, "results": results, "notes": list(notes)},
            option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
        )
        + b"\n"
    )
    m = meta["machine"]
    lines = [
        f"# {name}",
        "",
        summary,
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']} (commit {meta['git_commit']})",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Python {m['python']}, "
        f"numpy {m['numpy']}, load average at start {m['loadavg_at_start']}",
        f"- timed region: {timed_region}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cell(c) -> str:
    if isinstance(c, float):
        if c == 0 or 1e-3 <= abs(c) < 1e5:
            return f"{c:.4g}"
        return f"{c:.3e}"
    return str(c)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def clustered_unit(
    n: int, d: int, *, seed: int, n_centres: int = 64, spread: float = 0.6, chunk: int = 65536, first_chunk: int = 0
):
    """Yield float32 chunks of n unit-norm vectors around n_centres random unit directions.

    Row i depends on (seed, n, i // chunk) only, so a run can regenerate any slice (first_chunk); the noise norm
    is about `spread`, which gives clusters about as tight as sentence embeddings of one topic.
    """
    centres = np.random.default_rng([seed, 0]).standard_normal((n_centres, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for c in range(first_chunk, -(-n // chunk)):
        lo, hi = c * chunk, min((c + 1) * chunk, n)
        rng = np.random.default_rng([seed, 1, c])
        which = rng.integers(0, n_centres, hi - lo)
        x = centres[which] + spread / np.sqrt(d) * rng.standard_normal((hi - lo, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x.astype(np.float32)


def rid(i: int) -> str:
    return f"r{i:07d}"


def median_ms(samples_s) -> float:
    return float(np.median(samples_s) * 1000)


class WithoutSource:
    """A qkmeans Source over `base` minus some rows, filtered lazily on each pass like the store's
    StoreSource, so building it costs nothing when forget never reads the survivors."""

    def __init__(self, base, drop_rows):
        self.base = base
        self.drop = np.unique(np.asarray(drop_rows, dtype=np.int64))
        self.n = base.n - len(self.drop)

    def blocks(self):
        from erase_cli.qkmeans import Block

        for b in self.base.blocks():
            keep = ~np.isin(b.rows, self.drop, assume_unique=True)
            if keep.all():
                yield b
            else:
                xf = getattr(b, "xf", None)
                yield Block(
                    b.rows[keep], b.ids[keep], b.idh[keep], b.x[keep], **({} if xf is None else {"xf": xf[keep]})
                )

    def vectors(self):
        from erase_cli.qkmeans import _xf

        for b in self.blocks():
            yield _xf(b)
