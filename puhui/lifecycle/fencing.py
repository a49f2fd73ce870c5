"""Fencing tokens for the training lock (Kleppmann's fix for a lock lost while held).

``training_lock`` can be lost while its holder works: the server ended its PostgreSQL session
(``pg_terminate_backend``, ``idle_session_timeout``, a restart) or the SQLite lock file was
replaced, and the next training takes the lock at once. ``still_held`` before a step cannot
see a loss *during* the step. So each taking of the lock also takes a new generation for the
model, strictly increasing, in ``training_generations``; the writes of the register and gate
steps that a second training must not repeat check, in their own transaction, that their
generation is still the newest, and otherwise write nothing and raise ``FencedOut``.

Fenced (checked in the write's transaction): the registration intent (so MLflow registers
nothing after it), the gate verdict, every alias move's intent, and the ``model_evaluations``
rows. Not fenced: the completion and abort events of a change already made in MLflow (they
record what happened; refusing them only left the trail wrong until the next reconcile).
A version MLflow registered before the check failed stays registered and *ungated*: no
verdict, so nothing promotes it; ``reconcile_models`` (every training's first step) and
``puhui audit verify`` list it as ungated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, select, update

from puhui.audit import AuditWriter, current_flow_run_id
from puhui.errors import PuhuiError
from puhui.registry import ALIAS_INTENT, GATES, REGISTER_INTENT
from puhui.warehouse.engine import lock_for
from puhui.warehouse.schema import model_evaluations, training_generations

FENCED_ACTIONS = frozenset({REGISTER_INTENT, GATES, ALIAS_INTENT, model_evaluations.name})
REGISTRATION, GATE_STEP = "the registration", "the gate step"


class FencedOut(PuhuiError):
    """A newer training of the model took its lock: this one's write was refused."""


@dataclass(frozen=True)
class Fence:
    """A training's generation of its model's lock. Plain data: it travels to the register
    and gate tasks (which may run in another process) as a parameter."""

    model: str
    generation: int

    def check(self, conn: Connection, step: str) -> None:
        """Raise ``FencedOut`` unless this generation is still the model's newest, inside
        ``conn``'s transaction: PostgreSQL's ``FOR SHARE`` keeps a new generation from
        being taken until the caller's write commits (and waits for one being taken);
        SQLite's ``BEGIN IMMEDIATE`` already serializes every writer."""
        newest = conn.execute(
            select(training_generations.c.generation)
            .where(training_generations.c.model_name == self.model)
            .with_for_update(read=True)).scalar()
        if newest != self.generation:
            raise FencedOut(f"the training lock of {self.model} was lost during {step}: "
                            "another training started; nothing written")

    def guard(self, step: str) -> Callable[[Connection, str], None]:
        """The check for an ``AuditWriter`` (and ``write_evaluations``, whose action is the
        table's name): fenced actions only (see the module)."""
        def check(conn: Connection, action: str) -> None:
            if action in FENCED_ACTIONS:
                self.check(conn, step)
        return check


def take_generation(engine: Engine, model: str) -> Fence:
    """The next generation of ``model``'s training lock; the caller has just taken it."""
    with engine.begin() as conn:
        # The first taking inserts: two at once would both find no row.
        lock_for(conn, f"puhui.training_generation.{model}")
        now, run = datetime.now(UTC), current_flow_run_id()
        newest = conn.execute(
            select(training_generations.c.generation)
            .where(training_generations.c.model_name == model)).scalar()
        generation = (newest or 0) + 1
        if newest is None:
            conn.execute(training_generations.insert().values(
                model_name=model, generation=generation, taken_at=now, flow_run_id=run))
        else:
            conn.execute(update(training_generations)
                         .where(training_generations.c.model_name == model)
                         .values(generation=generation, taken_at=now, flow_run_id=run))
    return Fence(model, generation)


def fenced(audit: AuditWriter, fence: Fence, step: str) -> AuditWriter:
    """``audit`` whose fenced events check ``fence`` first. Trainings' steps only (their
    ``fence`` is a required parameter: a flow that dropped it fails, not writes unfenced);
    promote, rollback and reconcile use the unwrapped writer."""
    return replace(audit, guard=fence.guard(step))
