"""Typed errors. The core raises them; only cli.py turns them into exit codes and messages.

Each error also inherits the builtin it resembles, so library callers can catch either.
A message names the thing that is wrong and the fix.
"""


class EraseError(Exception):
    """Base of every expected error: one readable line, exit code 1."""

    kind = "error"
    exit_code = 1


class InvalidInput(EraseError, ValueError):
    kind = "invalid-input"


class InvalidParameter(EraseError, ValueError):
    kind = "invalid-parameter"


class NotFound(EraseError, LookupError):
    kind = "not-found"


class StoreMissing(EraseError, FileNotFoundError):
    kind = "store-missing"


class StoreDamaged(EraseError, OSError):
    kind = "store-damaged"


class InsecureKey(EraseError, PermissionError):
    kind = "insecure-key"


class KeyMismatch(EraseError, ValueError):
    kind = "key-mismatch"


class StoreTooNew(EraseError):
    kind = "store-format-newer"


class StoreNotWritable(EraseError, PermissionError):
    kind = "store-not-writable"


class DiskFull(EraseError, OSError):
    kind = "disk-full"


class NotFitted(EraseError):
    kind = "not-fitted"


class StaleFit(EraseError):
    kind = "stale-fit"


class VerifyMismatch(EraseError):
    kind = "verify-mismatch"


class ModelMissing(EraseError, FileNotFoundError):
    kind = "model-missing"


class ModelInvalid(EraseError, ValueError):
    kind = "model-invalid"


class PromptTooLong(EraseError, ValueError):
    kind = "prompt-too-long"


class StoreLocked(EraseError, TimeoutError):
    kind = "store-locked"
    exit_code = 75
