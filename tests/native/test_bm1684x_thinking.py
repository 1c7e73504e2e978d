"""The thinking budget on the BM1684X simulator: the tiny bmodel served as a Thinking model
(the same compiled file beside a config/ with the Thinking template), behind real
gunicorn.  When the budget is spent the scheduler feeds `</think>` into the slot's next
decode steps on the device, and the model answers after it.  Few tokens: every decode
step is a simulator call."""

from __future__ import annotations

import pytest

from qwen3vl_app.engine.steering import CLOSE_TEXT, THINK_END
from qwen3vl_app.tokenizer import ChatTokenizer
from tests.conftest import run_server

pytestmark = pytest.mark.bm1684x


@pytest.fixture(scope="module")
def thinking_bmodel_dir(tiny_bmodel_dir):
    from qwen3vl_app.devtools.tiny_thinking import thinking_bmodel_folder

    return thinking_bmodel_folder(tiny_bmodel_dir)


def test_thinking_budget_on_the_tpu(native_module, thinking_bmodel_dir, tmp_path):
    close = ChatTokenizer(thinking_bmodel_dir).encode(CLOSE_TEXT)
    close_len = close.index(THINK_END) + 1
    ask = {"messages": [{"role": "user", "content": "2+2?"}], "temperature": 1.0, "seed": 3}
    with run_server(thinking_bmodel_dir, tmp_path, workers=1) as s:
        card = s.get("/v1/models").json()["data"][0]
        assert card["engine"] == "bm1684x" and card["capabilities"]["thinking"]["supported"]
        full = s.post("/v1/chat/completions", json={**ask, "max_tokens": 2, "thinking_budget": 1000}).json()
        cut = s.post("/v1/chat/completions", json={**ask, "max_tokens": 2 + len(close) + 2, "thinking_budget": 2})
        cut = cut.json()
    thought = full["choices"][0]["message"]["reasoning_content"]
    assert full["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2
    msg = cut["choices"][0]["message"]
    assert msg["reasoning_content"] == thought  # the same two tokens, then the forced close
    assert cut["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2 + close_len
    assert cut["usage"]["completion_tokens"] == 2 + len(close) + 2  # and it went on answering
    assert "</think>" not in msg["content"]
