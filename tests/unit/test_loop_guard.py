"""The repetition-loop detector on real token ids (the Qwen3-VL tokenizer): loops are
caught once the cycle covers the span; tables, lists and legitimately repeated lines
(OCR of a form) are not, at the default span."""

from __future__ import annotations

import pytest

from qwen3vl_app.engine.loop_guard import DEFAULT_SPAN, MIN_REPEATS, LoopConfig, LoopDetector


def first_hit(ids, config: LoopConfig | None = None):
    det = LoopDetector(config or LoopConfig())
    for i, t in enumerate(ids):
        found = det.push(t)
        if found is not None:
            return i + 1, found
    return None


def table(rows: int) -> str:
    out = "| Item | Qty | Price |\n|---|---|---|\n"
    for i in range(rows):
        out += f"| Widget {i % 7} | {i % 3 + 1} | {(i * 37) % 100}.{i % 10}0 |\n"
    return out


LEGIT = {
    "markdown table, 120 rows": table(120),
    "numbered list": "".join(f"{i}. Apple\n" for i in range(1, 200)),
    "form with 50 blank signature lines": "Name: ____________\nSignature: ____________\n" * 25,
    "OCR of a receipt, same item 40 times": "Coffee 3.50\n" * 40 + "TOTAL 140.00\n",
    "ruled separator lines": "-" * 40 + "\n" + ("Row text varies here\n" + "-" * 40 + "\n") * 20,
}


@pytest.mark.parametrize("name", sorted(LEGIT))
def test_legitimate_repetition_does_not_trigger(tiny_tokenizer, name):
    ids = tiny_tokenizer.encode(LEGIT[name])
    assert first_hit(ids) is None, name


@pytest.mark.parametrize(
    "cycle",
    ["the the ", "I am sorry. ", "| 0 | 0 | 0 |\n", "\n", "这是一个循环。" * 3 + "\n", "word " * 30 + "end. "],
)
def test_loops_are_caught_once_they_cover_the_span(tiny_tokenizer, cycle):
    period_ids = tiny_tokenizer.encode(cycle)
    prefix = tiny_tokenizer.encode("Here is the text of the page:\n")
    ids = prefix + period_ids * (3 * DEFAULT_SPAN // len(period_ids) + 4)
    at, found = first_hit(ids)
    assert found.span >= DEFAULT_SPAN and found.span >= MIN_REPEATS * found.period
    assert at - len(prefix) <= DEFAULT_SPAN + len(period_ids)  # caught at the span, not much later
    assert len(period_ids) % found.period == 0  # the cycle found divides the one written


def test_smaller_span_and_max_period(tiny_tokenizer):
    ids = tiny_tokenizer.encode("Coffee 3.50\n" * 40)
    assert first_hit(ids, LoopConfig(span=64)) is not None  # an operator's tighter guard does fire
    long_cycle = list(range(1000, 1200))  # a 200-token paragraph, again and again
    assert first_hit(long_cycle * 10) is None  # longer than max_period (128): not looked for
    assert first_hit(long_cycle * 10, LoopConfig(span=512, max_period=256)) is not None


def test_a_loop_broken_before_the_span_resets():
    ids = [1, 2, 3] * 100 + [9] + [1, 2, 3] * 100
    assert first_hit(ids, LoopConfig(span=400)) is None
    assert first_hit(ids, LoopConfig(span=290)) is not None
