"""The one generation loop: up to N sequences share every decode step of one engine.

Every generation runs here, whatever the parallelism: one sequence is a batch of one
(`--max-batch 1`, the default, is one slot).  Runs in the worker's engine thread
(`EngineRunner` starts `run_until_idle` there when a request arrives and no loop is
running).  Between two decode steps it admits waiting requests into free slots -- each
admission is that slot's prefill and first token -- then one `engine.decode_batch`
advances every busy slot.  A slot frees the moment its sequence ends (end token,
max_tokens, context full) or its request is cancelled (checked before every step, so a
cancelled request costs at most one more step); the others never notice.  Sampling,
penalties, seed, logprobs and the grammar's token mask (constrained decoding) are per
slot, so a slot's tokens do not depend on who else is in the batch (up to float
summation order in the engine).  A slot's `steer` (`engine/steering.py`) may force its
next token (a spent thinking budget closes the thinking) or end it (the loop guard); a
grammar's mask waits while the slot is still thinking. On an engine with device heads, a request whose draws
the heads reproduce (`sampling.device_plan`) gets its candidates from the device instead
of the full logits (`Engine.plan_slot` before its prefill; `Sampler.draw`).

Results go back through each request's `deliver` callback (thread-safe, set by the
runner): a `Generated` per token, `None` when the sequence ended without a final token
(cancelled, or nothing to generate), or the exception that stopped it.  Nothing here logs
or touches gevent objects beyond the thread-safe `deliver`: gevent's patched locks are
unsafe from this thread.

A slot keeps its KV cache and the token ids it holds (`Slot.tokens`) after its sequence
ends, until the slot is needed again.  A new request takes the free slot whose tokens
share the longest prefix with its prompt (a chat's previous turn), so the engine's
`prefill_slot` computes only the new suffix; otherwise the least recently used free
slot, so the last conversations stay resident longest.

Speculative decoding (`engine.speculative`): a slot whose request asks for K > 0 draft
tokens, on an engine with `capabilities.verify`, gets a prompt-lookup draft before each
step; when any slot of the step has one, the step is one `verify_batch` (a slot without a
draft is fed its one token), and each slot's tokens are chosen position by position with
its own sampler, mask and stop rules, exactly as one decode step each would -- a drafted
token is kept while it is the token chosen, the first other choice ends the slot's step
(it is the next token fed), and `commit_slot` drops the KV of what was not kept.  Drafts
never run past the slot's budget.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .base import Engine, Prompt, StepOutput
from .sampling import Choice, Sampler, SamplingParams, device_plan
from .speculative import Drafter

if TYPE_CHECKING:
    from .constraints import TokenMask
    from .steering import Steering


class Cancel:
    """A flag set from the request greenlet and read in the engine thread.  A plain
    attribute on purpose: gevent-patched threading primitives must not cross threads."""

    __slots__ = ("is_set", "reason")

    def __init__(self):
        self.is_set = False
        self.reason = None

    def set(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self.is_set = True


@dataclass
class Generated:
    """One generated token, as delivered to its request."""

    choice: Choice
    finish_reason: str | None  # None, "stop" (end token) or "length"
    cached_tokens: int = 0  # prompt tokens the prefill reused
    stopped_by: str | None = None  # what ended it besides an end token or the budget (steering.LOOP_STOP)

    @property
    def token_id(self) -> int:
        return self.choice.token_id


def max_new_tokens(engine: Engine, prompt: Prompt, requested: int) -> int:
    return max(0, min(requested, engine.limits.max_context - len(prompt.input_ids)))


@dataclass
class SlotRequest:
    """One generation waiting for, or running in, a slot.  Built by the request greenlet;
    `cancel` is set from there, everything else is touched by the engine thread only."""

    prompt: Prompt
    params: SamplingParams
    eos_ids: Any  # container of end-token ids
    cancel: Cancel
    deliver: Callable[[Any], None]
    engine_seconds: float = 0.0  # its prefill + every decode step it was part of
    constrain: Callable[[], TokenMask] | None = None  # builds its grammar's token mask (constrained decoding)
    speculative: int = 0  # draft tokens per step (0: none; used only on engines that can verify)
    prediction: tuple[int, ...] = ()  # the client's expected output (OpenAI `prediction`), drafted from first
    speculating: bool = False  # it got a drafter (speculative > 0 on an engine that can verify)
    steps: int = 0  # engine steps it was part of (its prefill included)
    drafted: int = 0  # draft tokens proposed for it
    accepted: int = 0  # of those, the ones kept
    steer: Steering | None = None  # thinking budget, loop guard (engine/steering.py)


@dataclass
class Slot:
    index: int
    request: SlotRequest | None = None  # None: free
    sampler: Sampler | None = None
    mask: TokenMask | None = None  # constrained decoding: the tokens its grammar allows next
    budget: int = 0
    produced: int = 0
    next_token: int = 0  # the token the next decode step feeds
    cached: int = 0  # prompt tokens its prefill reused (reported with every token)
    tokens: list[int] = field(default_factory=list)  # ids whose KV this slot's cache holds
    scope: bytes = b""  # their cache scope (Prompt.cache_scope)
    last_used: int = 0  # admission counter, for least-recently-used choice among free slots
    drafter: Drafter | None = None  # speculative decoding: its prompt-lookup drafter


class BatchScheduler:
    def __init__(self, engine: Engine, max_batch: int):
        self.engine = engine
        self.slots = [Slot(i) for i in range(max_batch)]
        self.pending: deque[SlotRequest] = deque()  # appended by the hub, popped here
        self._admissions = 0
        self.steps = 0  # decode steps run
        self.slot_steps = 0  # sum of batch sizes over those steps
        self.drafted = 0  # draft tokens proposed, over every slot
        self.accepted = 0  # draft tokens kept

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots if s.request is not None)

    def run_until_idle(self) -> None:
        """Admit and decode until no slot is busy and nobody waits (engine thread)."""
        while True:
            self._admit()
            active = self._live_slots()
            if not active:
                if self.pending:
                    continue
                return
            self._step(active)

    # -- admission ------------------------------------------------------------------
    def _admit(self) -> None:
        while self.pending:
            free = [s for s in self.slots if s.request is None]
            if not free:
                return
            req = self.pending.popleft()
            budget = max_new_tokens(self.engine, req.prompt, req.params.max_tokens)
            if budget == 0 or req.cancel.is_set:
                req.deliver(None)
                continue
            slot = self._pick(free, req)
            self._admissions += 1
            slot.request, slot.budget, slot.produced, slot.last_used = req, budget, 0, self._admissions
            slot.sampler = Sampler(req.params, req.prompt.input_ids)
            slot.tokens = []
            slot.drafter = None
            if req.speculative > 0 and self.engine.capabilities.verify and self.engine.capabilities.logits:
                slot.drafter = Drafter(req.prompt.input_ids, req.prediction)
                req.speculating = True
            t0 = time.perf_counter()
            try:
                self.engine.plan_slot(slot.index, self._device_plan(req))
                out = self.engine.prefill_slot(slot.index, req.prompt)
            except Exception as e:  # that request fails (its greenlet logs it); the others go on
                self._forget(slot)
                self._end(slot, e)
                continue
            finally:
                req.engine_seconds += time.perf_counter() - t0
                req.steps += 1
            slot.tokens, slot.scope = list(req.prompt.input_ids), req.prompt.cache_scope
            slot.cached = out.cached_tokens
            if req.constrain is not None and out.logits is not None:
                try:
                    slot.mask = req.constrain()
                except Exception as e:
                    self._end(slot, e)
                    continue
            self._emit(slot, out)

    def _device_plan(self, req: SlotRequest):
        """The device heads choose this request's tokens when the engine has them and they
        give the host's draws (sampling.device_plan); else the logits come to the host (a
        speculating slot's verify steps give logits per row)."""
        n = self.engine.capabilities.device_candidates
        return device_plan(req.params, req.constrain is not None, n) if n and not req.speculating else None

    def _pick(self, free: list[Slot], req: SlotRequest) -> Slot:
        """The free slot whose kept tokens share the longest prefix with the prompt (the
        engine reuses that KV, checking vision blocks too) in the prompt's cache scope, else
        the least recently used."""
        ids = req.prompt.input_ids

        def shared(slot: Slot) -> int:
            if slot.scope != req.prompt.cache_scope:
                return 0
            n = 0
            for a, b in zip(slot.tokens, ids, strict=False):
                if a != b:
                    break
                n += 1
            return n

        return max(free, key=lambda s: (shared(s), -s.last_used))

    # -- decoding -------------------------------------------------------------------
    def _live_slots(self) -> list[Slot]:
        live = []
        for slot in self.slots:
            if slot.request is None:
                continue
            if slot.request.cancel.is_set:
                self._end(slot, None)
            else:
                live.append(slot)
        return live

    def _step(self, active: list[Slot]) -> None:
        drafts = {s.index: self._draft(s) for s in active if s.drafter is not None}
        if any(drafts.values()):
            self._verify_step(active, drafts)
            return
        t0 = time.perf_counter()
        try:
            outs = self.engine.decode_batch({s.index: s.next_token for s in active})
        except Exception as e:  # every slot of the step fails; each request's greenlet logs it
            self._fail(active, e)
            return
        self._count_step(active, time.perf_counter() - t0)
        for slot in active:
            slot.tokens.append(slot.next_token)
            self._emit(slot, outs[slot.index])

    def _draft(self, slot: Slot) -> list[int]:
        """Up to K tokens the slot's drafter guesses follow its next token; never more than
        its budget can take (the fed token and each draft token may each yield one)."""
        assert slot.request is not None and slot.drafter is not None
        room = slot.budget - slot.produced - 1
        return slot.drafter.propose(min(slot.request.speculative, room, self.engine.max_draft))

    def _verify_step(self, active: list[Slot], drafts: dict[int, list[int]]) -> None:
        feeds = {s.index: [s.next_token, *drafts.get(s.index, [])] for s in active}
        t0 = time.perf_counter()
        try:
            outs = self.engine.verify_batch(feeds)
        except Exception as e:
            self._fail(active, e)
            return
        self._count_step(active, time.perf_counter() - t0)
        for slot in active:
            req = slot.request
            assert req is not None
            fed, draft = feeds[slot.index], drafts.get(slot.index, [])
            kept, accepted = 0, 0
            for i, out in enumerate(outs[slot.index]):
                kept += 1
                token = self._emit(slot, out)
                hit = token is not None and i < len(draft) and token == draft[i]
                accepted += hit
                if not hit or slot.request is None:  # chose otherwise (the next token fed), or ended
                    break
            req.drafted += len(draft)
            req.accepted += accepted
            self.drafted += len(draft)
            self.accepted += accepted
            slot.tokens.extend(fed[:kept])
            try:
                self.engine.commit_slot(slot.index, kept)
            except Exception as e:
                self._forget(slot)
                if slot.request is not None:
                    self._end(slot, e)

    def _count_step(self, active: list[Slot], seconds: float) -> None:
        """One engine step done for these slots, taking `seconds`."""
        self.steps += 1
        self.slot_steps += len(active)
        for slot in active:
            assert slot.request is not None
            slot.request.engine_seconds += seconds
            slot.request.steps += 1

    def _fail(self, active: list[Slot], e: BaseException) -> None:
        for slot in active:
            self._forget(slot)
            self._end(slot, e)

    def _emit(self, slot: Slot, out: StepOutput) -> int | None:
        """Choose the slot's next token from its step output and deliver it; end the slot
        on an end token or when its budget is spent.  The chosen token (None: failed)."""
        req, sampler = slot.request, slot.sampler
        assert req is not None and sampler is not None
        steer = req.steer
        forced = steer.forced() if steer is not None else None
        mask = slot.mask if steer is None or not steer.holds_mask else None  # a grammar shapes the answer only
        try:
            if forced is not None:  # steering overrides whatever the step chose (both kinds of engine)
                choice = Choice(forced, 0.0 if req.params.logprobs else None, [] if req.params.top_logprobs else None)
            elif out.logits is not None and mask is not None:
                choice = sampler.choose(out.logits, mask.allowed())
                mask.accept(choice.token_id)
            elif out.logits is not None:
                choice = sampler.choose(out.logits)
            elif out.candidates is not None:  # a device head's, for a slot with a device plan
                choice = sampler.draw(*out.candidates)
            else:  # the device chose (greedy-only engines)
                assert out.token_id is not None
                choice = Choice(out.token_id)
        except Exception as e:
            self._end(slot, e)
            return None
        slot.produced += 1
        if slot.drafter is not None:
            slot.drafter.extend((choice.token_id,))
        stopped_by = steer.observe(choice.token_id) if steer is not None else None
        if choice.token_id in req.eos_ids:
            req.deliver(Generated(choice, "stop", slot.cached))
            self._free(slot)
        elif stopped_by is not None:
            req.deliver(Generated(choice, "stop", slot.cached, stopped_by))
            self._free(slot)
        elif slot.produced >= slot.budget:
            req.deliver(Generated(choice, "length", slot.cached))
            self._free(slot)
        else:
            req.deliver(Generated(choice, None, slot.cached))
            slot.next_token = choice.token_id
        return choice.token_id

    def _end(self, slot: Slot, outcome: BaseException | None) -> None:
        assert slot.request is not None
        slot.request.deliver(outcome)
        self._free(slot)

    def _forget(self, slot: Slot) -> None:
        """The slot's cache may be half-written: neither we nor the engine reuse it."""
        slot.tokens = []
        try:
            self.engine.release_slot(slot.index)
        except Exception:  # nothing more to lose; the step's own error is what gets reported
            pass

    def _free(self, slot: Slot) -> None:
        slot.request = None
        slot.sampler = None
        slot.mask = None
        slot.drafter = None
