"""erase as a library: the Python API that the `erase` command is built on (and the coming
server will be). README "Use from Python" shows it at work:

    from erase_cli import api

    api.ingest("./store", "data.jsonl")
    api.fit("./store")
    with api.Answerer("./store") as answerer:
        reply = answerer.answer("Where is my parcel?")
        print(reply.answer, reply.erase.prompt_digest, reply.erase.generation)
    api.forget("./store", ["r-17"])

- `ingest(store, path, ...)`, `fit(store, ...)`, `forget(store, ids, ...)`, `status(store)`,
  `verify(store)` and `show_prompt(store, question)` are the commands `ingest`, `fit`,
  `forget`, `status`, `verify` and `prompt`: each opens the store with the lock it needs, does
  one thing and returns a typed report whose `to_json()` is exactly what the command's `--json`
  prints (a report also reads as that mapping: `report["batch"]`). Keyword arguments are the
  commands' options (`vector_field=`, `append=`, `k=`, `route_size=`, `dry_run=`, ...);
  `lock_timeout` and `key_file` are every command's `--lock-timeout` and `--secret-file`. The
  library reads no ERASE_* variable but ERASE_MODEL (the model when none is given).
- `Answerer(store, ...)` holds the model and the embedder across many questions, and follows the
  store: an answer that starts after a forget returned is answered from the new prompts and
  says so (`Answer.erase.generation`). See answer.Answerer for the contract.
- Failures raise a subclass of `EraseError` (errors.py) whose message names the fix; each also
  inherits the matching builtin (`StoreMissing` is a FileNotFoundError, `InvalidInput` a
  ValueError, `StoreLocked` a TimeoutError).
- The library prints nothing. Pass `hooks=Hooks(say=print)` to the store operations, or
  `on_message=print` to an Answerer, to hear its notices (a pending journal, a busy store).
"""

from __future__ import annotations

from .answer import Answerer, Question, read_questions
from .errors import EraseError
from .generation import Generation
from .reports import (
    Answer,
    AnswerSource,
    CacheUse,
    FitReport,
    ForgetReport,
    IngestReport,
    PromptReport,
    StatusReport,
    VerifyReport,
)
from .service import Hooks, fit, forget, ingest, show_prompt, status, verify

__all__ = [
    "Answer",
    "AnswerSource",
    "Answerer",
    "CacheUse",
    "EraseError",
    "FitReport",
    "ForgetReport",
    "Generation",
    "Hooks",
    "IngestReport",
    "PromptReport",
    "Question",
    "StatusReport",
    "VerifyReport",
    "fit",
    "forget",
    "ingest",
    "read_questions",
    "show_prompt",
    "status",
    "verify",
]
