"""Where things live and the defaults: a flag beats its ERASE_* variable, which beats the default."""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import InvalidParameter

# Chosen from the crossing / prompt-change curves in bench/results/ and the eval table; the README
# says why. k = number of demonstrations; eps = lattice step in unit-norm embedding space; dim = the
# seeded +-1 projection (data-independent, so exactness holds); max_iter = Lloyd iterations T.
DEFAULT_K = 8
DEFAULT_EPS = 0.05
DEFAULT_DIM = 32
DEFAULT_MAX_ITER = 3
# Demonstrations per route (cluster prompt): the eval table and the route-change rate in
# bench/results/ are measured at this value; the README says why.
DEFAULT_ROUTE_SIZE = 8
DEFAULT_SEED = 0
DEFAULT_LOCK_TIMEOUT = 60.0
DEFAULT_BATCH_SIZE = 64
DEFAULT_STORE = "./erase-store"

# The variables that stand in for a flag. They are read here and nowhere else (cli.py's options
# only name them in their help and pass each flag's value through the function below), so that a
# bad value is erase's one-line error naming the variable (InvalidParameter, exit 1, a JSON error
# object with --json) rather than a usage error from the option parser.
ENV_STORE = "ERASE_STORE"
ENV_LOCK_TIMEOUT = "ERASE_LOCK_TIMEOUT"
ENV_SECRET_FILE = "ERASE_SECRET_FILE"
ENV_REDACT_IDS = "ERASE_REDACT_IDS"
ENV_MODEL = "ERASE_MODEL"
ENV_EMBEDDER = "ERASE_EMBEDDER"
# ingest and fit only: forget never reads it (a refit uses a scheduler only when its own
# --scheduler asks), so a cron forget stays a local, self-contained command.
ENV_DASK_SCHEDULER = "ERASE_DASK_SCHEDULER"

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


def _env(name: str) -> str | None:
    """The variable's value; None when it is unset or empty (an empty value means the default)."""
    return os.environ.get(name) or None


def _invalid(name: str, raw: str, fix: str) -> InvalidParameter:
    return InvalidParameter(f"{name}={raw!r} {fix}")


def store_path(flag: str | Path | None) -> Path:
    return Path(flag or _env(ENV_STORE) or DEFAULT_STORE)


def lock_timeout(flag: float | None) -> float:
    """The flag as given (the lock checks it); the variable checked here, naming it."""
    if flag is not None:
        return flag
    raw = _env(ENV_LOCK_TIMEOUT)
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds) or seconds < 0:
        raise _invalid(ENV_LOCK_TIMEOUT, raw, "is not a number of seconds >= 0; set it to e.g. 60, or unset it")
    return seconds


def secret_file(flag: Path | None) -> Path | None:
    """None means the key kept in the store (STORE/secret)."""
    if flag is not None:
        return flag
    raw = _env(ENV_SECRET_FILE)
    return None if raw is None else Path(raw)


def redact_ids(flag: bool) -> bool:
    """--redact-ids, else ERASE_REDACT_IDS: 1, true or yes; 0, false or no (any case)."""
    raw = _env(ENV_REDACT_IDS)
    if flag or raw is None:
        return flag
    word = raw.strip().lower()
    if word not in _TRUE + _FALSE:
        raise _invalid(
            ENV_REDACT_IDS,
            raw,
            "is neither yes nor no; set it to 1 (or true, yes) to show ids as keyed hashes, "
            "0 (or false, no) to show them as they are, or unset it",
        )
    return word in _TRUE


def embedder_name(flag: str | None) -> str | None:
    """None means the bundled all-MiniLM-L6-v2."""
    return flag or _env(ENV_EMBEDDER)


def model_flag(flag: str | None) -> str | None:
    """None means the bundled SmolLM2 GGUF (resolved by llm.resolve_model)."""
    return flag or _env(ENV_MODEL)


# `erase serve`'s keys: from a file or the environment, never from the command line (argv is
# visible to every user of the machine in `ps`).
ENV_API_KEY = "ERASE_API_KEY"
ENV_ADMIN_KEY = "ERASE_ADMIN_KEY"


def server_key(file_flag: Path | None, variable: str, option: str) -> str | None:
    """The key in the file given with `option`, else the variable's value; None: no key."""
    if file_flag is not None:
        try:
            raw = Path(file_flag).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable UTF-8 text"
            raise InvalidParameter(f"{option} {file_flag}: {reason}; give a file holding the key") from None
        key, source = raw.strip(), f"{option} {file_flag}"
    else:
        value = _env(variable)
        if value is None:
            return None
        key, source = value.strip(), variable
    # A key travels in an HTTP header: printable ASCII without spaces.
    if not key or not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise InvalidParameter(f"{source}: the key must be printable ASCII without spaces; write a new one")
    if len(key) < 16:
        raise InvalidParameter(f"{source}: the key is shorter than 16 characters; use a long random one")
    return key


def scheduler(flag: str | None) -> str | None:
    """ingest's and fit's --scheduler, else ERASE_DASK_SCHEDULER; None means no Dask."""
    from .distributed import check_address

    raw = flag or _env(ENV_DASK_SCHEDULER)
    return None if raw is None else check_address(raw)


def forget_scheduler(flag: str | None) -> str | None:
    """forget's --scheduler: the flag alone, never the variable."""
    from .distributed import check_address

    return None if flag is None else check_address(flag)


def device(flag: str | None) -> str:
    """--device: auto (the default), cpu or cuda; checked here so a bad value is a one-line error."""
    from .embed import check_device

    return check_device(flag)
