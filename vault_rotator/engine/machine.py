"""The rotation as a state machine: one table from each phase to how it observes, its pure
decision, and the effects that apply it; and the loop that runs a pass, written once.

A pass holds the key's lease (:mod:`.session`). An operator's command is applied first
(:mod:`.operator`); then, until an effect says where the rotation stands::

    observe   gather facts: the record, the clock, a list pass, the consumer secret (I/O)
    decide    a pure function of those facts -> an Action (StrEnum) with its reason
    save      the decision's observations are staged on the record (written with the next
              save, or the lease's release)
    apply     the effects of that action, each saving its intent before its side effect;
              they stop the pass (a Progress) or go round again

The table (``Phase`` is :class:`.reasons.Phase`, the record's stored strings; each decide
function sits in :mod:`.decide_create`, :mod:`.decide` or :mod:`.decide_end` with its Action
enum; transitions are named methods on :class:`.state.StateRecord`, the only code that changes
a phase, along ``state.NEXT_PHASES``)::

    phase      observe              decide                  actions -> effect
    ---------  -------------------  ----------------------  ---------------------------------
    idle       observe_idle         decide_idle             rest | drop-stale-pending |
               (pending record)                             start: preflight, intent
                                                              (record.start: -> intent)
    intent     observe_creation     decide_creation         new-attempt | create | verify |
               (pending, write,                             wait (usage_lag) | take-baseline |
               verify, clock,                               publish (record.publish:
               baseline listing)                              -> published) |
                                                            recover-publish (-> published) |
                                                            retry-later | stall |
                                                            fail (record.begin_cleanup:
                                                              -> cleanup)
    published  observe_published    decide_published_pass   wait (pickup, drain) | sweep |
               (list pass, secret)                          disable-old | delete-old |
                                                            old-gone | stall |
                                                            finish (record.finished: -> idle)
    aborting   observe_aborting     decide_aborting_pass    republish | wait (new key drains) |
               (list pass)                                  redo-delete-new | new-gone |
                                                            delete-new | sweep | stall |
                                                            finish (-> idle)
    cleanup    observe_cleanup      decide_cleanup          delete-keys |
               (list pass, pending)                         finish (-> idle)

    idle --start--> intent --publish--> published --finished--> idle
                      |                     |
                      |                     +--begin_abort (operator)--> aborting --finished--> idle
                      +--begin_cleanup (fail, or abort before publish)--> cleanup --finished--> idle

    (``finish --keep-old`` ends a published rotation, or an abort not yet restored: -> idle)

The steps of one forward rotation, through that table::

    0 preflight (no side effect)          5 pickup: the new key's use > the baseline
    1 intent (state write)                6 drain: old key quiet for drain_period + usage_lag
    2 create; the value saved to pending  7 delete the old key (secret re-read first)
    3 verify; baseline after usage_lag    8 sweep strays, done (state write), pending destroyed
    4 publish (consumer write, CAS)

Provider writes are fenced: "about to <action> on <target>" is saved first (:mod:`.session`).
A create whose answer was lost raises the attempt; the sweep deletes every key named for an
attempt of this rotation except the published one. A stalled rotation waits for an operator.
The outcomes each ending records: :mod:`.decide_end`; what they mean: :mod:`.outcomes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vault_rotator.engine.aborting import apply_aborting, observe_aborting
from vault_rotator.engine.context import WAITING_FOR_LISTING, Carry, NeedListing, Pass, Progress
from vault_rotator.engine.create import apply_creation, observe_creation
from vault_rotator.engine.decide import (
    AbortAction,
    Decision,
    Observation,
    PublishedAction,
    decide_aborting_pass,
    decide_published_pass,
)
from vault_rotator.engine.decide_create import (
    CreateAction,
    IdleAction,
    decide_creation,
    decide_idle,
)
from vault_rotator.engine.decide_end import CleanupAction, decide_cleanup
from vault_rotator.engine.operator import apply_command
from vault_rotator.engine.published import (
    apply_cleanup,
    apply_published,
    observe_cleanup,
    observe_published,
)
from vault_rotator.engine.reasons import Phase
from vault_rotator.engine.start import apply_idle, observe_idle
from vault_rotator.errors import EngineError

__all__ = ["ACTIONS", "TABLE", "Phase", "Row", "run_pass"]

F = TypeVar("F")
A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Row(Generic[F, A]):
    """One phase: how it observes, its pure decision, the effects of each of its actions."""

    observe: Callable[[Pass, Carry], F]
    decide: Callable[[F], Decision[Any]]
    apply: Callable[[Pass, Decision[Any], Carry], Progress | None]
    actions: type[A]


TABLE: Mapping[Phase, Row[Any, Any]] = {
    Phase.IDLE: Row(observe_idle, decide_idle, apply_idle, IdleAction),
    Phase.INTENT: Row(observe_creation, decide_creation, apply_creation, CreateAction),
    Phase.PUBLISHED: Row(
        observe_published, decide_published_pass, apply_published, PublishedAction
    ),
    Phase.ABORTING: Row(observe_aborting, decide_aborting_pass, apply_aborting, AbortAction),
    Phase.CLEANUP: Row(observe_cleanup, decide_cleanup, apply_cleanup, CleanupAction),
}

ACTIONS = (IdleAction, CreateAction, PublishedAction, AbortAction, CleanupAction)


MAX_TURNS = 64  # observe-decide-apply turns in one pass; a real pass takes a handful


def run_pass(p: Pass) -> Progress:
    """One pass: the operator's command, then the machine until it waits.

    The caller's list pass of the account (``p.shared``, the daemon's per poll) serves the
    decisions that need one, unless a provider write recorded since makes it stale. A pass
    that needs a listing it may not make (``p.may_list``) ends there, waiting for the next.
    """
    if p.record.phase != Phase.IDLE and (early := apply_command(p, p.command)) is not None:
        return early
    try:
        return _turns(p, Carry(obs=current_listing(p)))
    except NeedListing:
        return p.progress(WAITING_FOR_LISTING)


def current_listing(p: Pass) -> Observation | None:
    """The caller's list pass, if it was asked for after the last provider write recorded."""
    shared, write = p.shared, p.record.provider_write
    if shared is None or (write is not None and shared.asked_at < write.at):
        return None
    return shared.obs


def _turns(p: Pass, carry: Carry) -> Progress:
    for _turn in range(MAX_TURNS):  # each turn makes one-way progress; the cap is a backstop
        rotation = p.record.rotation
        if rotation is not None and rotation.stalled is not None:
            return p.progress(f"stalled: {rotation.stalled.reason}")
        row = TABLE[p.record.phase]
        facts = row.observe(p, carry)
        decision = row.decide(facts)
        p.stage(p.record.evolve(rotation=decision.rotation))  # its observations ride along
        if (progress := row.apply(p, decision, carry)) is not None:
            return progress
    raise EngineError(
        f"{p.policy.ref}: no step ended the pass after {MAX_TURNS} turns (phase "
        f"{p.record.phase}); the lease is released and the next pass starts over"
    )
