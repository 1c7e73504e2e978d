"""What a request asks of the output's shape: tools for the prompt, tool calls to parse,
and the grammar (if any) that constrained decoding must hold the output to.

  tool_choice none      -> tools in the prompt (as OpenAI does: the model knows them), nothing
                           parsed, and `<tool_call>` banned where logits exist
  tool_choice auto      -> tools in the prompt, `<tool_call>` blocks parsed; free text
                           (or, with a JSON response_format: that JSON or tool calls)
  tool_choice required  -> grammar: one or more calls (one if parallel_tool_calls is false)
  named function        -> grammar: exactly one call of that function
  response_format json_object / json_schema -> grammar: that JSON
  grounding (extension)  -> grammar: a JSON array of detections (grounding.py); no tools,
                           no response_format beside it

A grammar (and logit_bias) needs logits on the host: on an engine that picks tokens on
the device it is a 400 naming the parameter, never silently ignored.

Grammars are compiled here, before the request takes the engine: off the event loop,
once per schema, within the --max-schema-bytes / --grammar-timeout budget
(engine/constraints.py).  A schema the grammar engine cannot hold to is a 400
`invalid_schema` naming the field; a compile thread too busy to start it in time, a 503.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .engine.constraints import GrammarBudget, GrammarBusy, GrammarRejected, compile_grammar
from .errors import APIError, ServerBusy
from .grounding import output_schema
from .model_constants import TOOL_CALL_START
from .protocol import ChatRequest, GenerationRequest, ToolChoice

if TYPE_CHECKING:
    from .engine.constraints import Grammar
    from .settings import Settings
    from .tokenizer import ChatTokenizer


@dataclass
class OutputPlan:
    tools: list[dict] | None = None  # OpenAI tool objects, for the chat template
    tool_names: set[str] | None = None  # parse tool calls of these functions
    grammar: Grammar | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)  # merged into the request's

    @property
    def parses_tools(self) -> bool:
        return bool(self.tool_names)


def plan_output(
    req: ChatRequest, host_logits: bool, tokenizer: ChatTokenizer | None = None, settings: Settings | None = None
) -> OutputPlan:
    """`tokenizer`: compile the grammar for it (what generation uses; without it the grammar
    is only validated and compiled again in the engine thread).  `settings`: the budget."""
    compile_for = {"tokenizer": tokenizer, "settings": settings}
    tools = [dict(t) for t in req.tools]
    choice = req.tool_choice or ToolChoice("auto" if tools else "none")
    schema = _format_schema(req.response_format or {"type": "text"})
    if not host_logits:
        if schema is not None:
            _unsupported("response_format", "structured output")
        if choice.forced:
            _unsupported("tool_choice", f"tool_choice {choice.mode!r}")
    check_logit_bias(req, host_logits)
    if req.grounding is not None:  # grounding.py: detections as JSON, in pixels in the reply
        if not host_logits:
            _unsupported("grounding", "grounding")
        return OutputPlan(grammar=_compile(compile_for, json_schema=output_schema(req), param="grounding"))
    plan = OutputPlan(tools=tools or None)
    if choice.mode == "none" or not tools:
        if tools and host_logits:
            plan.logit_bias[TOOL_CALL_START] = float("-inf")
        if schema is not None:
            plan.grammar = _compile(compile_for, json_schema=schema)
        return plan
    functions = [t["function"] for t in tools]
    plan.tool_names = {f["name"] for f in functions}
    parallel = req.parallel_tool_calls
    if choice.mode == "required":
        plan.grammar = _compile(compile_for, tools=functions, parallel=parallel, param="tools")
    elif choice.mode == "function":
        named = [f for f in functions if f["name"] == choice.name]
        plan.grammar = _compile(compile_for, tools=named, parallel=False, param="tools")
    elif schema is not None:  # auto + a JSON format: that JSON, or tool calls
        plan.grammar = _compile(compile_for, json_schema=schema, tools=functions, parallel=parallel)
    return plan


def check_logit_bias(req: GenerationRequest, host_logits: bool) -> None:
    """logit_bias needs logits on the host: a 400 on an engine that picks tokens on the device."""
    if req.logit_bias and not host_logits:
        _unsupported("logit_bias", "logit_bias")


def _format_schema(fmt: Mapping) -> dict | None:
    if fmt["type"] == "json_object":
        return {"type": "object"}
    if fmt["type"] == "json_schema":
        return fmt["json_schema"].get("schema") or {}
    return None


def _compile(compile_for: dict, **kw):

    settings = compile_for["settings"]
    budget = GrammarBudget(settings.max_schema_bytes, settings.grammar_timeout) if settings else GrammarBudget()
    try:
        return compile_grammar(tokenizer=compile_for["tokenizer"], budget=budget, **kw)
    except GrammarRejected as e:
        raise APIError(str(e), 400, kw.get("param", "response_format"), "invalid_schema") from None
    except GrammarBusy as e:
        raise ServerBusy(str(e)) from None


def _unsupported(param: str, what: str) -> None:
    raise APIError(
        f"This engine picks tokens on the device and returns no logits, so {what} cannot be enforced "
        "here (see capabilities in GET /v1/models).",
        400,
        param,
        "unsupported_parameter",
    )
