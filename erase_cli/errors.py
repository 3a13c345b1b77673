"""Typed errors and exit statuses. The core raises the errors; only cli.py turns them into exit
codes (an `ExitStatus`) and messages.

Each error also inherits the builtin it resembles, so library callers can catch either.
A message names the thing that is wrong and the fix. `kind` is the machine-readable name in
`--json` error objects: snake_case, like every other word erase prints for programs.
"""

from enum import IntEnum
from typing import Self


class ExitStatus(IntEnum):
    """Every exit code erase uses (README's table): 0 done, 1 an error, 2 a usage error (click's),
    3 `forget` with ids the store never had (the rest applied), 75 (EX_TEMPFAIL) the store is
    locked or changed under the command (try again), 128 + N interrupted by signal N (141, SIGPIPE:
    the reader of stdout closed it early)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_FOUND = 3
    LOCKED = 75

    @staticmethod
    def signal(signum: int) -> int:
        return 128 + signum


class EraseError(Exception):
    """Base of every expected error: one readable line, exit code 1."""

    kind = "error"
    exit_code: int = ExitStatus.FAILURE
    ids: tuple[str, ...] = ()  # record ids the message quotes (as repr), for --redact-ids

    def about(self, *ids: str) -> Self:
        """This error, noting the record ids its message quotes, so that the output can show
        keyed hashes instead (--redact-ids)."""
        self.ids = ids
        return self


class InvalidInput(EraseError, ValueError):
    kind = "invalid_input"


class InvalidParameter(EraseError, ValueError):
    kind = "invalid_parameter"


class NotFound(EraseError, LookupError):
    kind = "not_found"


class StoreMissing(EraseError, FileNotFoundError):
    kind = "store_missing"


class StoreDamaged(EraseError, OSError):
    kind = "store_damaged"


class InsecureKey(EraseError, PermissionError):
    kind = "insecure_key"


class KeyMismatch(EraseError, ValueError):
    kind = "key_mismatch"


class StoreTooNew(EraseError):
    kind = "store_format_newer"


class StoreNotWritable(EraseError, PermissionError):
    kind = "store_not_writable"


class DiskFull(EraseError, OSError):
    kind = "disk_full"


class NotFitted(EraseError):
    kind = "not_fitted"


class StaleFit(EraseError):
    kind = "stale_fit"


class VerifyMismatch(EraseError):
    kind = "verify_mismatch"


class ModelMissing(EraseError, FileNotFoundError):
    kind = "model_missing"


class ModelInvalid(EraseError, ValueError):
    kind = "model_invalid"


class DeviceUnavailable(EraseError, RuntimeError):
    """--device cuda where torch sees no CUDA device."""

    kind = "device_unavailable"


class SchedulerUnavailable(EraseError, ConnectionError):
    """--scheduler / ERASE_DASK_SCHEDULER: Dask missing, the scheduler unreachable, no workers, or
    workers that would spill records to disk."""

    kind = "scheduler_unavailable"


class PromptTooLong(EraseError, ValueError):
    kind = "prompt_too_long"


class StoreLocked(EraseError, TimeoutError):
    kind = "store_locked"
    exit_code = ExitStatus.LOCKED


class StoreChanged(EraseError):
    """The store was replaced (removed and created anew) while a command worked outside its lock;
    like a lock timeout, running the command again is the fix."""

    kind = "store_changed"
    exit_code = ExitStatus.LOCKED
