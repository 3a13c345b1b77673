"""The `erase` command line: parse -> one core call -> render. The only module that imports typer."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from . import config, interrupts, render
from .errors import EraseError, ExitStatus

_ARGV = "erase.argv"  # where the group keeps the command line, for the commands' usage errors
# click's UsageError, whose subclasses are every usage error. Found through BadParameter, which
# typer exports, because newer typer releases bundle their own copy of click.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _wants_json(argv: list[str]) -> bool:
    """--json among the options (an id after `--` that happens to read "--json" is no option)."""
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


@contextmanager
def _parse_errors(argv: list[str]) -> Iterator[None]:
    """Errors found while the command line is read. With --json, a usage error becomes the JSON
    error object every other error gives (kind "usage", exit 2), so a script parsing stdout never
    meets click's help box instead. A bad ERASE_* variable (config.py raises it from the option's
    callback) is the usual one-line error, with its kind and exit code."""
    try:
        yield
    except _UsageError as exc:
        if not _wants_json(argv):
            raise  # click's usual message and exit 2
        command = exc.ctx.command_path if exc.ctx is not None else "erase"
        message = " ".join(exc.format_message().split()).rstrip(".")
        render.error("usage", f"{message}; see '{command} --help'", True)
        raise typer.Exit(ExitStatus.USAGE) from None
    except EraseError as exc:  # a command's own errors never get here: _handled took them
        raise _fail(exc, _wants_json(argv)) from None


@contextmanager
def _closed_stdout() -> Iterator[None]:
    """The reader of stdout went away (`erase export --output - | head -1`): stop quietly, as a
    program in a pipe does, with 128 + SIGPIPE (Python ignores the signal, so the write fails
    with EPIPE instead of ending the process). What the command committed stays: an export's
    audit entry is written before its first record, since some records may have been read."""
    try:
        yield
    except BrokenPipeError:
        # Python flushes stdout once more on the way out, which would fail and say so.
        with suppress(OSError, ValueError):  # stdout without a descriptor (tests)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(ExitStatus.signal(signal.SIGPIPE)) from None


class _Group(TyperGroup):
    """The `erase` group: catches the errors of reading the command line, of the group and of
    every command, in one place, for the console script and for callers of `app` alike."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)  # click consumes `args` while parsing
        with _parse_errors(argv):
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[_ARGV] = argv
        return ctx

    def invoke(self, ctx):
        with _parse_errors(ctx.meta.get(_ARGV, [])), _closed_stdout():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    name="erase",
    help="Adapt a local LLM to a dataset by in-context learning, and exactly unlearn any record.",
    no_args_is_help=True,
    add_completion=False,
    # Locals may hold text that is being erased: never print them in a traceback.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _names(variable: str, help: str) -> str:
    """An option's help naming the ERASE_* variable that stands in for it. The options do not
    read the variables themselves: each passes its value through a config.py function (its
    callback), the one place that resolves flag > variable > default, so that a bad value is
    erase's one-line error naming the variable instead of a usage error."""
    return rf"{help} \[env var: {variable}]"  # rich markup: the bracket is text, not a style


StoreOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--store", callback=config.store_path, help=_names(config.ENV_STORE, "Store directory (default ./erase-store).")
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
GpuLayersOpt = Annotated[
    int, typer.Option(help="Layers to offload to the GPU (-1 = all; needs a GPU build of llama-cpp-python).")
]
ContextOpt = Annotated[
    Optional[int], typer.Option(help="Context size (default: enough for the prompt, capped by the model).")
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        callback=config.model_flag,
        help=_names(config.ENV_MODEL, "GGUF model file (default: the bundled SmolLM2-135M-Instruct)."),
    ),
]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")]
LockOpt = Annotated[
    Optional[float],
    typer.Option(
        "--lock-timeout",
        callback=config.lock_timeout,
        help=_names(
            config.ENV_LOCK_TIMEOUT, "Seconds to wait for another erase command's lock (default 60); then exit 75."
        ),
    ),
]
QueryVectorOpt = Annotated[
    Optional[str],
    typer.Option(
        "--query-vector",
        help="The question's vector as a JSON list, or @FILE holding one: routes a question on a store "
        "ingested with --vector-field.",
    ),
]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option(
        "--device",
        callback=config.device,
        help="Where the embedder runs: auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda "
        "(an error without CUDA). [default: auto]",
    ),
]
SchedulerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--scheduler",
        callback=config.scheduler,
        help=_names(
            config.ENV_DASK_SCHEDULER,
            "Run the work on a Dask cluster: a scheduler address (tcp://HOST:8786) whose workers can read "
            "the store, or local:N for N worker processes on this machine. Needs erase-cli[dask].",
        ),
    ),
]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="routed: each question gets the prompt of its nearest cluster; global: the one global prompt; "
        "auto: routed when the fit has routes and erase can embed the question.",
    ),
]


def _show_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        render.show(f"erase {version('erase-cli')}")
    except PackageNotFoundError:
        render.say(
            "error: erase is not installed as a package, so it has no version; install it with 'pip install -e .'"
        )
        raise typer.Exit(ExitStatus.FAILURE) from None
    raise typer.Exit(ExitStatus.OK)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print erase's version and exit.")
    ] = False,
) -> None:
    """Adapt a local LLM to a dataset by in-context learning, and exactly unlearn any record."""


RedactOpt = Annotated[
    bool,
    typer.Option(
        "--redact-ids",
        callback=config.redact_ids,
        help=_names(
            config.ENV_REDACT_IDS,
            "Show every record id as h:HASH (its keyed hash under the store key, as in the audit "
            "log) in all output, so that logs keep no personal identifiers. The variable takes 1, "
            "true or yes; 0, false or no.",
        ),
    ),
]
SecretOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--secret-file",
        callback=config.secret_file,
        help=_names(
            config.ENV_SECRET_FILE,
            "The store's key kept outside the store (32 random bytes or 64 hex digits, mode 600). "
            "Given at the first ingest, the store records only its fingerprint.",
        ),
    ),
]


REDACTED_PREFIX = "h:"
REDACTED_HEX = 16  # 64 bits of the keyed hash: enough to tell a log's ids apart, and to match them
UNKEYED = "[redacted]"  # an id shown before the store has a key to hash it with


class _Ids:
    """How record ids are shown: as they are, or with --redact-ids as "h:" and the first 16 hex
    digits of their keyed hash under the store key (the hash forgotten.json and the audit log
    keep, so a redacted log can still be matched against them), so that cron logs hold no
    personal identifier. The core returns raw ids; this is the one place they are replaced."""

    def __init__(
        self,
        redact: bool = False,
        store: Path = Path(config.DEFAULT_STORE),
        key_file: Optional[Path] = None,
        lock_timeout: float = config.DEFAULT_LOCK_TIMEOUT,
    ):
        """The options' values, as their callbacks resolved them."""
        self.redact = redact
        self._where = (store, key_file, lock_timeout)
        self._hasher: Optional[Callable[[str], str]] = None
        self._looked = False

    def __call__(self, record_id: str) -> str:
        if not self.redact:
            return record_id
        if not self._looked:
            self._looked = True
            self._hasher = self._find_hasher()
        return UNKEYED if self._hasher is None else REDACTED_PREFIX + self._hasher(record_id)[:REDACTED_HEX]

    def _find_hasher(self) -> Optional[Callable[[str], str]]:
        from . import service

        store, key_file, lock_timeout = self._where
        try:
            return service.id_hasher(store, key_file=key_file, lock_timeout=lock_timeout)
        except EraseError:  # no usable key (a damaged store, say): hide the ids all the same
            return None

    def text(self, message: str, ids) -> str:
        """`message` with each of `ids` (quoted in it as repr) shown the way ids are shown."""
        if self.redact:
            for record_id in ids:
                message = message.replace(repr(record_id), self(record_id))
        return message


_PLAIN = _Ids()


def _fail(exc: BaseException, as_json: bool, ids: _Ids = _PLAIN) -> typer.Exit:
    """An expected error or an interruption as one line (and a JSON error object) + exit code."""
    if isinstance(exc, interrupts.Interrupted):
        render.error("interrupted", f"interrupted by {exc.name}; nothing changed", as_json)
        return typer.Exit(exc.exit_code)
    assert isinstance(exc, EraseError)
    render.error(exc.kind, ids.text(str(exc), exc.ids), as_json)
    return typer.Exit(exc.exit_code)


@contextmanager
def _handled(as_json: bool, ids: _Ids = _PLAIN) -> Iterator[None]:
    """One command under the signal guard (a signal before the commit point rolls back; after
    it, the command finishes as if uninterrupted); expected errors become one line + exit code."""
    with interrupts.guard(render.say):
        try:
            yield
        except EraseError as exc:
            raise _fail(exc, as_json, ids) from None
        except BaseException as exc:
            stopped = interrupts.find(exc)
            if stopped is None:
                raise
            raise _fail(stopped, as_json) from None


def _run(
    as_json: bool,
    work: Callable[[], object],
    show: Callable[[object], None],
    ids: _Ids = _PLAIN,
    view: Optional[Callable[[Any, _Ids], dict]] = None,
) -> object:
    """Run one core call, then render the result: `view` gives the result (as the core returned
    it: a report, which also reads as its JSON object) as shown, ids redacted when asked.
    Returns the raw result, as its JSON object."""
    with _handled(as_json, ids):
        report = work()
        result = _plain(report)
        shown = view(report, ids) if view is not None and ids.redact else result
        if as_json:
            render.emit_json(shown)
        else:
            show(shown)
    return result


def _examples_view(fit: Optional[dict], ids: _Ids, hide_inputs: bool = False) -> Optional[dict]:
    """A fit's example and route ids as --redact-ids wants them shown (and, with it, no
    demonstration inputs when `hide_inputs`: they may name the person)."""
    if not fit:
        return fit
    out = {**fit, "examples": [{**e, "id": ids(e["id"])} for e in fit["examples"]]}
    if hide_inputs:
        out["examples"] = [{**e, "input_start": None} for e in out["examples"]]
    if "routes" in fit:
        out["routes"] = [{**r, "ids": [ids(i) for i in r["ids"]]} for r in fit["routes"]]
    return out


def _notices() -> Callable[[str], None]:
    """render.say for the core's notices, each distinct one said once per command: ingest,
    export and ask open the store twice (to look, then to write), and each opening would repeat
    what it says of the store (that every user can write it, say)."""
    said: set[str] = set()

    def say(message: str) -> None:
        if message not in said:
            said.add(message)
            render.say(message)

    return say


def _hooks():
    """Notices on stderr, no progress bar (quick commands)."""
    from .service import Hooks

    return Hooks(say=_notices())


def _with_progress(call: Callable[[object], object]) -> object:
    """call(hooks) with stderr notices and a progress bar for long work."""
    from .service import Hooks

    with render.progress_bar() as progress:
        return call(Hooks(say=_notices(), progress=progress))


def _plain(result):
    """A core result as the JSON object --json prints (a typed report gives its to_json())."""
    to_json = getattr(result, "to_json", None)
    return to_json() if to_json is not None else result


def _warned(result) -> dict:
    """Say a result's `warnings` on stderr (in --json mode too: stderr is for people), and pass
    the result on; --json keeps them in its `warnings` list."""
    result = _plain(result)
    for warning in result.get("warnings") or []:
        render.say(f"warning: {warning}")
    return result


def _secs(x: float | None) -> str:
    """A duration with a unit that keeps 3 significant digits readable."""
    if x is None:
        return "n/a"
    a = abs(x)
    if a == 0:
        return "0 s"
    if a < 1e-3:
        return f"{x * 1e6:.3g} µs"
    if a < 1:
        return f"{x * 1e3:.3g} ms"
    return f"{x:.4g} s"


def _say_dask(report: Optional[dict], what: str) -> None:
    if report:
        tasks = ", ".join(f"{w} {n}" for w, n in report["tasks_by_worker"].items())
        render.say(f"{report['workers']} Dask worker(s) at {report['scheduler']} {what} (tasks: {tasks})")


# --------------------------------------------------------------------------- ingest


@app.command()
def ingest(
    file: Annotated[
        Path, typer.Argument(help="JSONL file: one object per line with id, input, target, optional choices.")
    ],
    id_field: Annotated[str, typer.Option(help="Field holding the record id.")] = "id",
    input_field: Annotated[str, typer.Option(help="Field holding the input text.")] = "input",
    target_field: Annotated[str, typer.Option(help="Field holding the target (string or list).")] = "target",
    vector_field: Annotated[
        Optional[str],
        typer.Option(help="Take embeddings from this field instead of running the embedder (bring your own)."),
    ] = None,
    embedder: Annotated[
        Optional[str],
        typer.Option(
            callback=config.embedder_name,
            help=_names(
                config.ENV_EMBEDDER, "sentence-transformers model path or name (default: the bundled all-MiniLM-L6-v2)."
            ),
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Embedding batch size.")] = config.DEFAULT_BATCH_SIZE,
    append: Annotated[
        bool, typer.Option("--append", help="Add to a store that already has records (marks the fit stale).")
    ] = False,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Ingest the valid lines and report the rest instead of failing.")
    ] = False,
    allow_relearn: Annotated[
        bool, typer.Option("--allow-relearn", help="Ingest records whose ids were forgotten before.")
    ] = False,
    device: DeviceOpt = None,
    scheduler: SchedulerOpt = None,
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    redact_ids: RedactOpt = False,
    json: JsonOpt = False,
) -> None:
    """Embed a JSONL file's records and add them to the store."""
    from . import service

    def work():
        return _with_progress(
            lambda hooks: service.ingest(
                store,
                str(file),
                id_field=id_field,
                input_field=input_field,
                target_field=target_field,
                vector_field=vector_field,
                embedder=embedder,
                batch_size=batch_size,
                append=append,
                skip_invalid=skip_invalid,
                allow_relearn=allow_relearn,
                lock_timeout=lock_timeout,
                key_file=secret_file,
                hooks=hooks,
                device=device,
                scheduler=scheduler,
            )
        )

    def show(r):
        render.show(f"ingested {r['ingested']} records into {r['store']} ({r['elapsed_ms'] / 1000:.1f} s)")
        for s in r["skipped_invalid"]:
            render.say(f"skipped line {s['line']}: {s['message']}")
        if r["skipped_forgotten"]:
            render.say(
                f"skipped {len(r['skipped_forgotten'])} record(s) whose ids were forgotten "
                "before (pass --allow-relearn to ingest them)"
            )
        if r["stale_fit"]:
            render.say("the fit is now stale: run 'erase fit'")
        _say_dask(r.get("dask"), "embedded")

    def view(r, ids):
        return {
            **r,
            "skipped_forgotten": [ids(i) for i in r["skipped_forgotten"]],
            "skipped_invalid": [
                {**s, "message": ids.text(s["message"], s["ids"]), "ids": [ids(i) for i in s["ids"]]}
                for s in r["skipped_invalid"]
            ],
        }

    _run(json, work, show, _Ids(redact_ids, store, secret_file, lock_timeout), view)


# --------------------------------------------------------------------------- fit


@app.command()
def fit(
    k: Annotated[
        Optional[int],
        typer.Option("-k", "--k", help=f"Number of clusters = in-context examples. [default: {config.DEFAULT_K}]"),
    ] = None,
    eps: Annotated[
        Optional[float],
        typer.Option(
            help=f"Lattice step of the quantized centroids (unit-norm space). [default: {config.DEFAULT_EPS}]"
        ),
    ] = None,
    dim: Annotated[
        Optional[int],
        typer.Option(
            help=f"Seeded +-1 projection to this many dimensions; data-independent, so exact. "
            f"Default {config.DEFAULT_DIM} for wider embeddings; 0 = no projection."
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            help=f"Seed of the k-means++ race, lattice phases and projection. [default: {config.DEFAULT_SEED}]"
        ),
    ] = None,
    max_iter: Annotated[
        Optional[int], typer.Option(help=f"Lloyd iterations T (always exactly T). [default: {config.DEFAULT_MAX_ITER}]")
    ] = None,
    route_size: Annotated[
        Optional[int],
        typer.Option(
            help=f"Demonstrations in each cluster's routed prompt (its members nearest the centroid). "
            f"[default: {config.DEFAULT_ROUTE_SIZE}]"
        ),
    ] = None,
    instruction: Annotated[
        Optional[str], typer.Option(help="Task description printed once before the demonstrations. [default: none]")
    ] = None,
    input_prefix: Annotated[Optional[str], typer.Option(help="Text before each input. [default: 'Q: ']")] = None,
    output_prefix: Annotated[
        Optional[str], typer.Option(help="Text between an input and its answer. [default: '\\nA: ']")
    ] = None,
    separator: Annotated[Optional[str], typer.Option(help="Text between demonstrations. [default: '\\n\\n']")] = None,
    scheduler: SchedulerOpt = None,
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    redact_ids: RedactOpt = False,
    json: JsonOpt = False,
) -> None:
    """Cluster the stored embeddings (quantized k-means) and write the prompt manifest.

    A parameter or prompt-format option left out keeps the value of the store's previous fit
    (the default on a first fit), so refitting after 'ingest --append' changes nothing else."""
    from . import service

    choices = dict(
        k=k,
        eps=eps,
        dim="auto" if dim is None else (dim or None),
        seed=seed,
        max_iter=max_iter,
        route_size=route_size,
        instruction=instruction,
        input_prefix=input_prefix,
        output_prefix=output_prefix,
        separator=separator,
    )

    def work():
        return _warned(
            _with_progress(
                lambda hooks: service.fit(
                    store,
                    lock_timeout=lock_timeout,
                    key_file=secret_file,
                    hooks=hooks,
                    scheduler=scheduler,
                    **choices,
                )
            )
        )

    def show(r):
        est = r["crossing_estimate"]
        reused = f"\nkept from the previous fit: {', '.join(r['reused'])}" if r["reused"] else ""
        render.show(
            f"fit {r['n_records']} records: k_eff {r['k_eff']}, eps {r['eps']:.6g}, dim {r['dim']}, "
            f"T {r['max_iter']}, seed {r['seed']}, route size {r['route_size']} ({r['elapsed_ms'] / 1000:.2f} s)"
            f"{reused}\n"
            f"examples: {', '.join(e['id'] for e in r['examples']) or '(none)'}\n"
            f"routes: {len(r['routes'])}\n"
            f"estimated chance that the next single deletion crosses: "
            f"{'n/a' if est is None else f'{est:.1%}'}\nprompt digest {r['prompt_digest'][:16]}"
        )
        _say_dask(r.get("dask"), "ran the passes")

    _run(json, work, show, _Ids(redact_ids, store, secret_file, lock_timeout), _examples_view)


# --------------------------------------------------------------------------- forget


@app.command()
def forget(
    ids: Annotated[
        Optional[list[str]], typer.Argument(help="Ids to forget (put a negative or option-like id after --).")
    ] = None,
    from_file: Annotated[
        Optional[str], typer.Option("--from-file", help="Read ids from FILE, one per line ('-' for stdin).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would happen; change nothing.")] = False,
    missing_ok: Annotated[
        bool,
        typer.Option(
            "--missing-ok",
            help=f"Exit 0 even if some ids are unknown (else {int(ExitStatus.NOT_FOUND)}, after applying the rest).",
        ),
    ] = False,
    scheduler: Annotated[
        Optional[str],
        typer.Option(
            "--scheduler",
            callback=config.forget_scheduler,
            help="A Dask scheduler (or local:N) for the passes of a refit, used only if the batch crosses. "
            f"Never read from {config.ENV_DASK_SCHEDULER}: a forget runs locally unless asked here.",
        ),
    ] = None,
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    redact_ids: RedactOpt = False,
    json: JsonOpt = False,
) -> None:
    """Forget records, as one atomic batch: purge them and update the fit exactly."""
    from . import service
    from .records import read_ids

    def work():
        if not ids and from_file is None:
            from .errors import InvalidInput

            raise InvalidInput("no ids to forget; pass ids as arguments or with --from-file FILE")
        batch = list(ids or [])
        if from_file is not None:
            batch += read_ids(from_file)  # an empty file is an empty batch: nothing to do
        return _with_progress(
            lambda hooks: service.forget(
                store,
                batch,
                dry_run=dry_run,
                lock_timeout=lock_timeout,
                key_file=secret_file,
                hooks=hooks,
                scheduler=scheduler,
            )
        )

    def show(r):
        b = r["batch"]
        if not r["ids"]:
            render.show("no ids to forget: nothing changed")
            return
        counts: dict[str, int] = {}
        for item in r["ids"]:
            counts[item["status"]] = counts.get(item["status"], 0) + 1
            if item["status"] not in ("forgotten", "would_forget"):
                render.say(f"{item['id']}: {item['status'].replace('_', ' ')}")
            if "hint" in item:
                render.say(f"hint for {item['id']!r}: {item['hint']}")
        verb = "would forget" if b["dry_run"] else "forgot"
        crossings = ", ".join(f"t{c['iteration']}/c{c['cluster']}" for c in b["crossings"]) or "none"
        render.show(
            f"{verb} {counts.get('would_forget' if b['dry_run'] else 'forgotten', 0)} record(s); "
            f"action {b['action']}; crossings {crossings}; "
            f"prompt {'changed' if b['prompt_changed'] else 'unchanged'} ({b['elapsed_ms']:.1f} ms)"
        )

    def view(r, ids):
        return {**r, "ids": [{**item, "id": ids(item["id"])} for item in r["ids"]]}

    result = _run(json, work, show, _Ids(redact_ids, store, secret_file, lock_timeout), view)
    if not missing_ok and any(i["status"] == "not_found" for i in result["ids"]):
        # Not 1: the batch was applied for the known ids; 1 keeps meaning that something failed.
        render.say("some ids were not found; the others were handled (pass --missing-ok to exit 0)")
        raise typer.Exit(ExitStatus.NOT_FOUND)


# --------------------------------------------------------------------------- ask


@app.command()
def ask(
    question: Annotated[Optional[str], typer.Argument(help="The question (or use --from-file).")] = None,
    from_file: Annotated[
        Optional[str],
        typer.Option(
            "--from-file",
            help="Questions, one per line or JSONL with input and optional choices ('-' = stdin); "
            "NDJSON out with --json.",
        ),
    ] = None,
    choices: Annotated[
        Optional[list[str]],
        typer.Option("--choices", help="A possible answer; repeat for each. Scores each by log-likelihood."),
    ] = None,
    model: ModelOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    n_ctx: ContextOpt = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate without --choices.")] = 64,
    threads: ThreadsOpt = None,
    mode: ModeOpt = "auto",
    query_vector: QueryVectorOpt = None,
    device: DeviceOpt = None,
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    json: JsonOpt = False,
) -> None:
    """Answer with a local GGUF model, using the fitted demonstrations as a cached prompt prefix.

    Routed mode answers each question from the prompt of the cluster nearest it; global mode from
    the one global prompt (the paper's). --json adds an `erase` object naming the prompt and the store
    generation used."""
    from . import service
    from .answer import Question, check_choices, read_questions

    def answers():
        if question is None and from_file is None:
            from .errors import InvalidInput

            raise InvalidInput("no question; pass one as an argument or use --from-file FILE")
        if query_vector is not None and question is None:
            from .errors import InvalidInput

            raise InvalidInput("--query-vector goes with a question argument; in --from-file give a 'vector' field")
        qs = (
            [
                Question(
                    question,
                    check_choices(list(choices), "--choices") if choices else None,
                    None if query_vector is None else _query_vector(query_vector),
                )
            ]
            if question is not None
            else []
        )
        if from_file is not None:
            qs += read_questions(from_file)
        return service.ask(
            store,
            qs,
            model=model,
            n_ctx=n_ctx,
            n_threads=threads,
            n_gpu_layers=n_gpu_layers,
            max_tokens=max_tokens,
            mode=mode,
            lock_timeout=lock_timeout,
            key_file=secret_file,
            hooks=_hooks(),
            device=device,
        )

    answered = 0
    with _handled(json):
        for answer in answers():
            if answered == 0 and answer.warning:
                render.say(f"warning: {answer.warning}")
            answered += 1
            if json:
                render.emit_json(answer.to_json())
                continue
            render.show(answer.answer)
            for c in answer.choices or []:
                render.say(f"  {c['score']:9.3f}  (mean {c['score_mean']:7.3f})  {c['text']}")
    if not answered:
        # Not an error (a cron job's question file may be empty today), but never silent.
        source = "stdin" if from_file == "-" else from_file
        render.say(f"warning: {source} holds no questions; nothing was answered")


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on. Any but a loopback one needs both keys.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8080,
    mode: ModeOpt = "auto",
    model: ModelOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    n_ctx: ContextOpt = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate when a request sets no max_tokens.")] = 64,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    api_key_file: Annotated[
        Optional[Path],
        typer.Option(
            help=_names(config.ENV_API_KEY, "File holding the key that answering requests must send (Bearer).")
        ),
    ] = None,
    admin_key_file: Annotated[
        Optional[Path],
        typer.Option(
            help=_names(
                config.ENV_ADMIN_KEY,
                "File holding the key for /v1/erase/forget and /v1/erase/status (off without one).",
            )
        ),
    ] = None,
    refuse_stale: Annotated[
        bool,
        typer.Option(
            "--refuse-stale",
            help="Answer 409 while the fit is stale (records appended since), instead of answering with stale: true.",
        ),
    ] = False,
    queue_size: Annotated[
        int, typer.Option(help="Requests that may wait for the model; one more gets 503 with Retry-After.")
    ] = 16,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body; a larger one gets 413.")] = 1 << 20,
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Once listening, print one JSON object on stdout: url (with the port bound), model, store, "
            "generation, prompt_digest.",
        ),
    ] = False,
) -> None:
    """Serve answers over HTTP: OpenAI-compatible completions and chat, plus forget and status.

    Every answer names the prompt digest and the store generation it came from; an answer that
    starts after a forget returned comes from the new prompts. Keys come from ERASE_API_KEY /
    ERASE_ADMIN_KEY or the key files, never from the command line. SIGTERM or Ctrl-C stops taking
    connections, lets running and queued requests finish, and exits 0."""
    from . import server

    try:
        options = server.ServeOptions(
            api_key=config.server_key(api_key_file, config.ENV_API_KEY, "--api-key-file"),
            admin_key=config.server_key(admin_key_file, config.ENV_ADMIN_KEY, "--admin-key-file"),
            refuse_stale=refuse_stale,
            queue_size=queue_size,
            max_body_bytes=max_body_bytes,
            lock_timeout=lock_timeout,
            key_file=secret_file,
        )
        server.run(
            store,
            host=host,
            port=port,
            options=options,
            mode=mode,
            model=model,
            n_ctx=n_ctx,
            n_threads=threads,
            n_gpu_layers=n_gpu_layers,
            max_tokens=max_tokens,
            device=device,
            say=render.say,
            on_ready=render.emit_json if json else None,
        )
    except EraseError as exc:
        raise _fail(exc, json) from None


@app.command("prompt")
def prompt_(
    question: Annotated[Optional[str], typer.Argument(help="Show the prompt this question would get.")] = None,
    route: Annotated[Optional[int], typer.Option("--route", help="Show the prompt of route (cluster) J.")] = None,
    mode: ModeOpt = "auto",
    choices: Annotated[
        Optional[list[str]], typer.Option("--choices", help="A possible answer, listed as ask would; repeat.")
    ] = None,
    query_vector: QueryVectorOpt = None,
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    redact_ids: RedactOpt = False,
    json: JsonOpt = False,
) -> None:
    """Print the exact text the model gets: the global prompt, route J's, or the one QUESTION is
    routed to, followed by the question. Needs no model."""
    from . import service
    from .answer import check_choices

    def work():
        vector = None
        if query_vector is not None:
            import numpy as np

            vector = np.asarray(_query_vector(query_vector), dtype=np.float32)
        return service.show_prompt(
            store,
            question,
            route=route,
            mode=mode,
            vector=vector,
            choices=check_choices(list(choices), "--choices") if choices else None,
            lock_timeout=lock_timeout,
            key_file=secret_file,
            hooks=_hooks(),
        )

    def show(r):
        where = "global prompt" if r["route"] is None else f"route {r['route']}"
        render.say(f"{where} ({len(r['examples'])} examples), prompt digest {r['prompt_digest'][:16]}")
        render.show(r["text"])

    _run(
        json,
        work,
        show,
        _Ids(redact_ids, store, secret_file, lock_timeout),
        lambda r, ids: {**r, "examples": [{**e, "id": ids(e["id"])} for e in r["examples"]]},
    )


def _query_vector(text: str) -> tuple[float, ...]:
    """--query-vector: a JSON list, or @FILE holding one; validated like ingest's vectors."""
    import orjson

    from .errors import InvalidInput, NotFound
    from .records import normalise_vector

    where = "--query-vector"
    if text.startswith("@"):
        where = f"--query-vector file {text[1:]!r}"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"{where} does not exist; pass an existing file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{where} cannot be read ({exc}); pass a UTF-8 JSON file") from None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidInput(f"{where} is not JSON; give a list of numbers like [0.1, -0.2]") from None
    try:
        return tuple(normalise_vector(value).tolist())
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- eval, cost


@app.command("eval")
def eval_(
    task: Annotated[
        list[str],
        typer.Argument(
            help="A BIG-bench task.json, a directory with train/test JSONL files, a train and a test "
            "JSONL file, or one JSONL file to split."
        ),
    ],
    method: Annotated[
        Optional[list[str]],
        typer.Option(
            "--method",
            help="erase, routed, kmeans, random, zero or knn; repeat for several (default: all six).",
        ),
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N test items (by id).")] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the methods' randomness (never changes the split).")
    ] = config.DEFAULT_SEED,
    k: Annotated[int, typer.Option("-k", "--k", help="Demonstrations per prompt.")] = config.DEFAULT_K,
    model: ModelOpt = None,
    embedder: Annotated[
        Optional[str],
        typer.Option(
            callback=config.embedder_name,
            help=_names(config.ENV_EMBEDDER, "sentence-transformers model (default: the bundled all-MiniLM-L6-v2)."),
        ),
    ] = None,
    route_size: Annotated[
        int, typer.Option(help="Demonstrations per route of the routed method.")
    ] = config.DEFAULT_ROUTE_SIZE,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    json: JsonOpt = False,
) -> None:
    """Compare demonstration choices (erase, routed, kmeans, random, zero-shot, knn) on a task."""
    from .evaluate import render_table, run_eval

    def work():
        with render.progress_bar() as progress:
            return run_eval(
                task if len(task) > 1 else task[0],
                method,
                limit,
                seed,
                k,
                model,
                embedder,
                progress,
                n_threads=threads,
                route_size=route_size,
                device=device,
            )

    _run(json, work, lambda r: render.out.print(render_table(r)))


@app.command()
def cost(
    queries_per_deletion: Annotated[float, typer.Option(help="R: queries served per deletion request.")] = 1000.0,
    sisa_shards: Annotated[int, typer.Option(help="S: shards of the modelled SISA fine-tune.")] = 5,
    sisa_epochs: Annotated[float, typer.Option(help="Epochs of the modelled SISA retraining.")] = 3.0,
    train_multiplier: Annotated[
        float, typer.Option(help="Training cost per token / inference cost per token (forward+backward ~ 3).")
    ] = 3.0,
    tokens_per_example: Annotated[
        Optional[float], typer.Option(help="Tokens per training example (default: measured from the demonstrations).")
    ] = None,
    per_token_s: Annotated[
        Optional[float], typer.Option(help="Inference seconds per token (default: measured).")
    ] = None,
    finetuned_query_s: Annotated[
        Optional[float], typer.Option(help="Query seconds of one fine-tuned model (default: the zero-shot time).")
    ] = None,
    questions: Annotated[int, typer.Option(help="Records used as timing queries.")] = 20,
    repeats: Annotated[
        int,
        typer.Option(
            help="Timed rounds over the questions, each asking every question with and without the demonstrations."
        ),
    ] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed queries on each prompt before timing.")] = 3,
    model: ModelOpt = None,
    threads: ThreadsOpt = None,
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    json: JsonOpt = False,
) -> None:
    """Holistic cost per deletion request: erase (measured) vs SISA fine-tuning (modelled)."""
    from . import service

    def work():
        return _warned(
            service.cost(
                store,
                queries_per_deletion=queries_per_deletion,
                sisa_shards=sisa_shards,
                sisa_epochs=sisa_epochs,
                train_multiplier=train_multiplier,
                n_questions=questions,
                repeats=repeats,
                warmup=warmup,
                tokens_per_example=tokens_per_example,
                per_token_s=per_token_s,
                finetuned_query_s=finetuned_query_s,
                model=model,
                n_threads=threads,
                lock_timeout=lock_timeout,
                key_file=secret_file,
                hooks=_hooks(),
            )
        )

    _run(json, work, _show_cost)


def _show_cost(r: dict) -> None:
    from rich.table import Table

    table = Table(
        "method",
        "U (per deletion)",
        "I (per query)",
        "I − I0 (counted)",
        "H (per request)",
        title=f"H(M) = U(M) + R·(I(M) − I0), R = {r['queries_per_deletion']:,.4g}, "
        f"I0 = {_secs(r['inputs']['zero_shot_query_s'])}",
    )
    for name, m in r["methods"].items():
        table.add_row(f"{name} ({m['label']})", _secs(m["U_s"]), _secs(m["I_s"]), _secs(m["dI_s"]), _secs(m["H_s"]))
    render.out.print(table)
    x = r["extra_query"]
    sample = f"n = {x['n']} {x['unit']}{'s' if x['n'] != 1 else ''}"
    if x["low_s"] is None:
        line = "one sample, no interval: counted as 0 (use more --questions or --repeats)"
    else:
        # Never a bare negative mean: on its own it reads as a negative cost.
        interval = f"95% interval {_secs(x['low_s'])} to {_secs(x['high_s'])}, {sample}"
        if x["low_s"] > 0:
            line = f"{_secs(x['mean_s'])} ({interval})"
        elif x["high_s"] < 0:
            line = (
                f"{_secs(x['mean_s'])} ({interval}): erase's queries are cheaper than "
                "zero-shot here (its demonstrations can make generated answers shorter)"
            )
        else:
            line = f"not distinguishable from 0 ({interval}), counted as 0"
    render.show(f"erase's extra query cost I − I0: {line}")
    be = r["break_even_queries_per_deletion"]
    render.show(f"break-even R: {'never' if be is None else f'{be:,.0f}'}")
    render.show(
        "inputs: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["inputs"].items())
    )


# --------------------------------------------------------------------------- read-only


@app.command()
def status(
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    redact_ids: RedactOpt = False,
    json: JsonOpt = False,
) -> None:
    """Records, fit, crossings and prompt changes so far, cache, pending recovery."""
    from . import service

    def show(r):
        lines = []
        p = r["pending"]
        if p and p.get("forgotten_data_on_disk"):
            lines.append(
                "WARNING: an interrupted forget committed but did not finish: forgotten data "
                "is still on disk; run 'erase recover' (or any writing command) now"
            )
        lines += [
            f"store {r['store']} ({r['size_bytes'] / 2**20:.1f} MiB)",
            f"records {r['records']} ({r['forgotten']} forgotten), embedder {r['embedder']} ({r['dimension']}-d)",
        ]
        f = r["fit"]
        if f is None:
            lines.append("fit: none yet (run 'erase fit')")
        else:
            est = f["crossing_estimate"]
            route_size = f.get("route_size")
            lines += [
                f"fit: k {f['k']} (k_eff {f['k_eff']}), eps {f['eps_effective']}, dim {f['dim']}, "
                f"T {f['max_iter']}, seed {f['seed']}, route size {route_size or 'none (fit from before routes)'}"
                f"{' - STALE, run erase fit' if f['stale'] else ''}",
                "global prompt (cluster: id -> target | input):" if f["examples"] else "global prompt: no examples",
            ]
            for e in f["examples"]:
                shown = "" if e.get("input_start") is None else f" | {e['input_start']}"
                lines.append(f"  {e['cluster']}: {e['id']} -> {e['target']}{shown}")
            if f["examples"]:
                lines.append(f"  labels: {_balance_text(f['label_balance'])}")
            for route in f.get("routes", []):
                lines.append(
                    f"route {route['cluster']} ({len(route['ids'])} examples): {_balance_text(route['label_balance'])}"
                )
            lines.append(
                f"next single deletion crosses with estimated probability {'n/a' if est is None else f'{est:.1%}'}"
            )
        c = r["counters"]
        lines.append(
            f"forget batches {c.get('forget_batches', 0)}: {c.get('crossing_batches', 0)} crossed, "
            f"{c.get('prompt_changes', 0)} changed the prompt, {c.get('examples_replaced', 0)} "
            f"replaced an example, {c.get('route_change_batches', 0)} changed a route "
            f"({c.get('route_changes', 0)} route prompts in all)"
        )
        lines.append(f"prefix cache files: {r['cache']['files']}")
        if p:
            lines.append(f"pending interrupted operation: {p} (run 'erase recover')")
        render.show("\n".join(lines))

    _run(
        json,
        lambda: service.status(
            store,
            lock_timeout=lock_timeout,
            key_file=secret_file,
            hooks=_hooks(),
        ),
        show,
        _Ids(redact_ids, store, secret_file, lock_timeout),
        lambda r, ids: {**r, "fit": _examples_view(r["fit"], ids, hide_inputs=True)},
    )


def _balance_text(balance: dict) -> str:
    return ", ".join(f"{label} {n}" for label, n in balance.items())


@app.command()
def verify(
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    redact_ids: RedactOpt = False,
    json: JsonOpt = False,
) -> None:
    """Check every file of the store, refit from scratch on the remaining records and compare."""
    from . import service

    def show(r):
        if r["identical"]:
            render.show(
                f"identical: the fit equals a fresh fit on the {r['n_records']} remaining "
                f"records ({r['elapsed_ms'] / 1000:.2f} s)"
            )
        else:
            render.show("DIFFERENT:\n" + "\n".join(f"  {d}" for d in r["differences"]))

    result = _run(
        json,
        lambda: _with_progress(
            lambda hooks: service.verify(
                store,
                lock_timeout=lock_timeout,
                key_file=secret_file,
                hooks=hooks,
            )
        ),
        show,
        _Ids(redact_ids, store, secret_file, lock_timeout),
        lambda r, ids: {**r, "differences": [ids.text(d, r.quoted_ids) for d in r.differences]},
    )
    if not result["identical"]:
        raise typer.Exit(ExitStatus.FAILURE)


@app.command()
def recover(
    store: StoreOpt = None, lock_timeout: LockOpt = None, secret_file: SecretOpt = None, json: JsonOpt = False
) -> None:
    """Complete an interrupted operation that committed (purging what a forget removed), or roll
    back one that did not; changes nothing else."""
    from . import service

    def show(r):
        rec = r["recovered"]
        if rec is None:
            render.show(f"nothing to recover in {r['store']}")
        elif rec["outcome"] == "completed":
            render.show(f"completed the interrupted {rec['action']} in {r['store']}")
        else:
            render.show(f"rolled back an interrupted operation in {r['store']} (it had not committed)")

    _run(
        json,
        lambda: service.recover(
            store,
            lock_timeout=lock_timeout,
            key_file=secret_file,
            hooks=_hooks(),
        ),
        show,
    )


@app.command()
def log(
    check: Annotated[
        bool,
        typer.Option(
            "--verify", help="Check the whole keyed hash chain; print the verdict and any problems; exit 1 if broken."
        ),
    ] = False,
    show_entries: Annotated[bool, typer.Option("--show", help="With --verify: print the entries too.")] = False,
    head: Annotated[
        bool, typer.Option("--head", help="Print only the hash of the newest entry (record it elsewhere).")
    ] = False,
    expect_head: Annotated[
        Optional[str],
        typer.Option(
            "--expect-head", help="With --verify: a head hash recorded earlier; the chain must still contain it."
        ),
    ] = None,
    last: Annotated[
        Optional[int], typer.Option("-n", "--last", help="Show only the newest N entries (after --action and --since).")
    ] = None,
    since: Annotated[
        Optional[str],
        typer.Option(
            "--since",
            help="Show only entries from this ISO date or datetime on (UTC unless an offset is given), "
            "e.g. 2026-01-31 or 2026-01-31T09:30Z.",
        ),
    ] = None,
    action: Annotated[
        Optional[list[str]],
        typer.Option(
            "--action", help="Show only this action (ingest, fit, forget, upgrade, export); repeat for several."
        ),
    ] = None,
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show the audit trail, one line per entry (NDJSON with --json); --verify checks its hash chain.

    -n, --since and --action choose what is shown; --verify always checks the whole chain."""
    from . import service

    with _handled(json):
        from .errors import InvalidParameter

        if expect_head is not None and not check:
            raise InvalidParameter("--expect-head needs --verify; run 'erase log --verify --expect-head HASH'")
        if show_entries and not check:
            raise InvalidParameter(
                "--show goes with --verify (without --verify the entries are "
                "always shown); run 'erase log --verify --show'"
            )
        result = service.log(
            store,
            check=check,
            expect_head=expect_head,
            last=last,
            since=since,
            actions=action,
            lock_timeout=lock_timeout,
            key_file=secret_file,
            hooks=_hooks(),
        )
    if head:
        if json:
            render.emit_json({"head": result.head})
        else:
            render.show(result.head or "(no entries)")
    elif json:
        # Machine readers always get the entries chosen; with --verify the verdict comes last.
        for entry in result.entries:
            render.emit_json(entry)
    elif show_entries or not check:
        for entry in result.entries:
            render.show(log_line(entry))
        if not check and len(result.entries) < result.total:
            render.say(f"{len(result.entries)} of {result.total} entries shown")
    if check:
        if json:
            render.emit_json(result.verdict())
        elif result.valid:
            render.show(f"audit chain valid: {result.total} entries, head {(result.head or '(none)')[:12]}")
        else:
            render.show("audit chain BROKEN:\n" + "\n".join(f"  {p}" for p in result.problems))
        if not result.valid:
            raise typer.Exit(ExitStatus.FAILURE)


def _short(value: object, n: int = 8) -> str:
    return value[:n] if isinstance(value, str) and value else "none"


def _count(value: object) -> str:
    return str(len(value)) if isinstance(value, (list, dict)) else str(value if value is not None else "?")


def _digests(e: dict, name: str) -> str:
    before, after = e.get(f"{name}_digest_before"), e.get(f"{name}_digest_after")
    if before == after:
        return f"{name} {_short(after)} (unchanged)"
    return f"{name} {_short(before)}->{_short(after)}"


def log_line(e: dict) -> str:
    """One readable line for an audit entry: seq, time, action, what it did, its short hash.
    Entries come from a file someone may have edited: every field is read defensively."""
    action = str(e.get("action"))
    details: list[str] = []
    if action == "ingest":
        details.append(f"records +{_count(e.get('n_added'))}")
        if e.get("n_skipped_invalid"):
            details.append(f"skipped {e['n_skipped_invalid']} invalid")
        if e.get("n_skipped_forgotten"):
            details.append(f"skipped {e['n_skipped_forgotten']} forgotten")
    elif action == "fit":
        p = e.get("params") if isinstance(e.get("params"), dict) else {}
        details += [
            f"records {_count(e.get('n_records'))}",
            f"k {_count(p.get('k'))} (k_eff {_count(e.get('k_eff'))})",
            f"eps {_count(p.get('eps'))}, dim {_count(p.get('dim'))}, "
            f"T {_count(p.get('max_iter'))}, seed {_count(p.get('seed'))}",
            _digests(e, "prompt"),
            _digests(e, "state"),
        ]
    elif action == "forget":
        crossings = e.get("crossings")
        details += [
            f"ids {_count(e.get('id_hashes'))}",
            f"crossings {_count(crossings if crossings is not None else [])}",
            f"action {e.get('action_taken')}",
            _digests(e, "prompt"),
        ]
    elif action == "upgrade":
        details += [
            f"{e.get('from_format')} -> {e.get('to_format')}",
            f"chunks written {_count(e.get('chunks_written'))}",
        ]
    elif action == "export":
        details += [
            f"records {_count(e.get('n_records'))}",
            "with vectors" if e.get("vectors") else "without vectors",
            f"to {e.get('to')}",
        ]
    else:
        details += [
            f"{k}={v}"
            for k, v in sorted(e.items())
            if k not in ("seq", "time", "action", "prev", "hash") and isinstance(v, (str, int, float, bool))
        ]
    if isinstance(e.get("elapsed_ms"), (int, float)):
        details.append(f"{e['elapsed_ms']:.0f} ms")
    when = str(e.get("time", "?"))
    if len(when) >= 20 and when[10:11] == "T":
        when = when[:10] + " " + when[11:19] + "Z"  # to the second, UTC
    seq = e.get("seq")
    return (
        f"{seq if isinstance(seq, int) else '?':>4}  {when}  {action:<7}  {', '.join(details)}"
        f"  hash {_short(e.get('hash'), 12)}"
    )


# --------------------------------------------------------------------------- export


@app.command()
def export(
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="File to create, owner-only (0600); an existing file is refused unless --force. '-' writes to stdout.",
        ),
    ],
    vectors: Annotated[
        bool,
        typer.Option(
            "--vectors",
            help="Include each record's stored embedding as 'vector' (exact), to reproduce a fit elsewhere.",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --output file.")] = False,
    store: StoreOpt = None,
    lock_timeout: LockOpt = None,
    secret_file: SecretOpt = None,
    json: JsonOpt = False,
) -> None:
    """Write the surviving records as JSONL: a copy that erase can never purge (audited)."""
    from . import service

    to_stdout = output == "-"

    def work():
        if to_stdout and json:
            from .errors import InvalidParameter

            raise InvalidParameter(
                "--json and --output - would both write to stdout; write the export to a file with --output FILE"
            )
        return _warned(
            _with_progress(
                lambda hooks: service.export(
                    store,
                    None if to_stdout else Path(output),
                    stream=sys.stdout.buffer if to_stdout else None,
                    vectors=vectors,
                    force=force,
                    lock_timeout=lock_timeout,
                    key_file=secret_file,
                    hooks=hooks,
                )
            )
        )

    def show(r):
        # With --output - stdout holds the records: the report goes to stderr.
        say = render.say if to_stdout else render.show
        say(
            f"exported {r['records']} records ({'with' if r['vectors'] else 'without'} vectors) to "
            f"{'stdout' if to_stdout else r['output']}; audit entry {r['audit_hash'][:12]}"
        )
        render.say("this copy is outside the store: 'erase forget' can never purge it; delete it when it has served")

    _run(json, work, show)
