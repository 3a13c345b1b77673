"""Prompt text from manifest examples (SPEC 3a). Pure string work: no model, no I/O.

The prompt is split in two parts on purpose: `prefix_text` (task prefix and demonstrations) is the
same for every query and its KV state is cached; `query_text` is what each question adds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

CHOICE_PREFIX = "\n  choice: "
PROMPT_FIELDS = ("instruction", "input_prefix", "output_prefix", "separator")  # as a store keeps them


@dataclass(frozen=True)
class PromptFormat:
    """How demonstrations and queries are laid out; defaults follow SPEC 3a."""

    prefix: str = ""
    input_prefix: str = "Q: "
    output_prefix: str = "\nA: "
    separator: str = "\n\n"
    append_choices: bool = True

    def stored(self) -> dict[str, str]:
        """The format as a store keeps it (manifest and store.json `prompt`); the task prefix is
        called the instruction there."""
        return {
            "instruction": self.prefix,
            "input_prefix": self.input_prefix,
            "output_prefix": self.output_prefix,
            "separator": self.separator,
        }

    @classmethod
    def from_stored(cls, stored: Mapping[str, str] | None) -> PromptFormat:
        """A store's format; None (a fit from before prompt control) is the default."""
        if stored is None:
            return cls()
        return cls(
            prefix=stored["instruction"],
            input_prefix=stored["input_prefix"],
            output_prefix=stored["output_prefix"],
            separator=stored["separator"],
        )

    @classmethod
    def from_bigbench(cls, task: Mapping) -> PromptFormat:
        """The layout a BIG-bench `task.json` asks for; absent fields take the SPEC defaults."""
        default = cls()
        prefix = task.get("task_prefix")
        if prefix is None:
            prefix = task.get("prefix", default.prefix)
        return cls(
            prefix=prefix,
            input_prefix=task.get("example_input_prefix", default.input_prefix),
            output_prefix=task.get("example_output_prefix", default.output_prefix),
            separator=task.get("few_shot_example_separator", default.separator),
            append_choices=bool(task.get("append_choices_to_input", default.append_choices)),
        )


def _with_choices(fmt: PromptFormat, input: str, choices: Sequence[str] | None) -> str:
    if fmt.append_choices and choices:
        return input + "".join(CHOICE_PREFIX + choice for choice in choices)
    return input


def query_text(fmt: PromptFormat, input: str, choices: Sequence[str] | None = None) -> str:
    """The question as the model sees it, ending with the output prefix (the answer follows)."""
    return fmt.input_prefix + _with_choices(fmt, input, choices) + fmt.output_prefix


def demonstration(
    fmt: PromptFormat, input: str, target: str | Sequence[str], choices: Sequence[str] | None = None
) -> str:
    """One worked example; a list of acceptable targets shows its first."""
    if not isinstance(target, str):
        if not target:
            raise ValueError("a demonstration needs at least one target")
        target = target[0]
    return query_text(fmt, input, choices) + target


def prefix_text(fmt: PromptFormat, examples: Sequence[Mapping]) -> str:
    """Task prefix, then every demonstration followed by the separator (queries come after it).

    `examples` are manifest examples: mappings with `input`, `target` and optional `choices`.
    With no examples the prefix is the task prefix alone (zero-shot).

    A task prefix that would run straight into the first input ("...starting point?Q: ...", as
    BIG-bench's navigate gives with the "Q: " default) is followed by the separator.
    """
    demos = [demonstration(fmt, example["input"], example["target"], example.get("choices")) for example in examples]
    head = fmt.prefix
    if head and not head[-1].isspace() and not fmt.input_prefix[:1].isspace():
        head += fmt.separator or "\n"
    if not demos:
        return head
    return head + fmt.separator.join(demos) + fmt.separator


def digest(examples: Sequence[Mapping], stored_format: Mapping[str, str] | None) -> str:
    """The prompt digest: sha256 over the canonical JSON of the examples and the format, so that a
    changed demonstration or a changed layout both give a new digest (it names the prefix cache).
    A fit from before prompt control (no stored format) digests its examples alone, as it did."""
    value: object = list(examples) if stored_format is None else {"examples": list(examples), "format": stored_format}
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()
