"""Golden strings for the prompt layout (SPEC 3a)."""

import pytest

from erase_cli.prompt import PromptFormat, demonstration, prefix_text, query_text

PLAIN = [
    {"id": "a", "cluster": 0, "input": "2+2", "target": "4"},
    {"id": "b", "cluster": 1, "input": "capital of France", "target": ["Paris", "paris"]},
]


def test_plain_jsonl_defaults():
    fmt = PromptFormat()
    assert prefix_text(fmt, PLAIN) == "Q: 2+2\nA: 4\n\nQ: capital of France\nA: Paris\n\n"
    assert query_text(fmt, "3+3") == "Q: 3+3\nA: "


def test_full_prompt_is_prefix_then_query():
    fmt = PromptFormat()
    prompt = prefix_text(fmt, PLAIN[:1]) + query_text(fmt, "1+1")
    assert prompt == "Q: 2+2\nA: 4\n\nQ: 1+1\nA: "


def test_zero_shot_prefix_is_empty_without_task_prefix():
    assert prefix_text(PromptFormat(), []) == ""


def test_choices_appended_by_default():
    fmt = PromptFormat()
    example = {"input": "Sky colour?", "target": "blue", "choices": ["blue", "green"]}
    assert demonstration(fmt, example["input"], example["target"], example["choices"]) == (
        "Q: Sky colour?\n  choice: blue\n  choice: green\nA: blue"
    )
    assert query_text(fmt, "Grass colour?", ["blue", "green"]) == (
        "Q: Grass colour?\n  choice: blue\n  choice: green\nA: "
    )


def test_choices_not_appended_when_disabled():
    fmt = PromptFormat(append_choices=False)
    assert query_text(fmt, "Grass colour?", ["blue", "green"]) == "Q: Grass colour?\nA: "
    assert demonstration(fmt, "x", "y", ["y", "z"]) == "Q: x\nA: y"


def test_list_target_shows_first():
    assert demonstration(PromptFormat(), "q", ["three", "3"], None) == "Q: q\nA: three"


def test_empty_target_list_rejected():
    with pytest.raises(ValueError):
        demonstration(PromptFormat(), "q", [], None)


def test_bigbench_fields_with_task_prefix():
    task = {
        "task_prefix": "Does Speaker 2's answer mean yes or no? ",
        "example_input_prefix": "\n\nQ: ",
        "example_output_prefix": " \nA: ",
        "append_choices_to_input": False,
    }
    fmt = PromptFormat.from_bigbench(task)
    examples = [
        {"input": "S1: 'Tea?' S2: 'I am thirsty.'", "target": "yes", "choices": ["yes", "no"]},
        {"input": "S1: 'Rain?' S2: 'Sun all day.'", "target": "no", "choices": ["yes", "no"]},
    ]
    assert prefix_text(fmt, examples) == (
        "Does Speaker 2's answer mean yes or no? "
        "\n\nQ: S1: 'Tea?' S2: 'I am thirsty.' \nA: yes"
        "\n\n"
        "\n\nQ: S1: 'Rain?' S2: 'Sun all day.' \nA: no"
        "\n\n"
    )
    assert query_text(fmt, "S1: 'Cake?' S2: 'I am full.'", ["yes", "no"]) == (
        "\n\nQ: S1: 'Cake?' S2: 'I am full.' \nA: "
    )


def test_bigbench_custom_separator_and_appended_choices():
    task = {
        "prefix": "Pick one.\n",
        "example_input_prefix": "In: ",
        "example_output_prefix": "\nOut: ",
        "few_shot_example_separator": "\n###\n",
    }
    fmt = PromptFormat.from_bigbench(task)
    assert fmt.append_choices is True  # the BIG-bench default
    examples = [{"input": "a", "target": "x", "choices": ["x", "y"]}]
    assert prefix_text(fmt, examples) == ("Pick one.\nIn: a\n  choice: x\n  choice: y\nOut: x\n###\n")
    assert query_text(fmt, "b", ["x", "y"]) == "In: b\n  choice: x\n  choice: y\nOut: "


def test_bigbench_absent_fields_take_spec_defaults():
    assert PromptFormat.from_bigbench({"name": "t"}) == PromptFormat()


def test_task_prefix_beats_top_level_prefix():
    fmt = PromptFormat.from_bigbench({"task_prefix": "A. ", "prefix": "B. "})
    assert fmt.prefix == "A. "


def test_task_prefix_not_glued_to_first_input():
    fmt = PromptFormat.from_bigbench({"task_prefix": "Do you return to the start?"})
    assert prefix_text(fmt, [{"input": "Turn.", "target": "False"}]) == (
        "Do you return to the start?\n\nQ: Turn.\nA: False\n\n"
    )
    assert prefix_text(fmt, []) == "Do you return to the start?\n\n"
