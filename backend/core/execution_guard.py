"""What is checked before each step of an execution: the emergency stop, and that the action
is still this worker's.

A worker can be paused (SIGSTOP, a frozen VM, a long GC or swap storm) or cut off for longer
than the action's deadline. The reconciler then settles the action (back to approved, or
failed for a retry or a rollback), and another worker may claim it. When the first one wakes
up it must not go on: each changing AWS call, and each write of the action's record, first
checks that the action is still executing under the claim this worker made (its name and
its attempt number). A lost claim ends the attempt without touching AWS or the record.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from backend.core.database import session_scope
from backend.core.emergency_stop import EmergencyStop
from backend.core.models import ActionRow
from backend.domain.lifecycle import ActionState


class ClaimLostError(RuntimeError):
    """The action is no longer this worker's to execute; the message says what it is now."""


@dataclass(frozen=True)
class Claim:
    action_id: int
    worker: str
    attempt: int  # the action's `attempts` once this worker's claim counted

    def row(self, session: Session) -> ActionRow:
        """The action, locked until the caller's transaction ends, while the claim holds."""
        row = session.get(ActionRow, self.action_id, with_for_update=True, populate_existing=True)
        if row is None:
            raise ClaimLostError(f"action {self.action_id} is gone")
        held = (row.state, row.claimed_by, row.attempts)
        if held != (ActionState.EXECUTING.value, self.worker, self.attempt):
            raise ClaimLostError(
                f"action {self.action_id} is no longer this worker's ({self.worker}, attempt "
                f"{self.attempt}): it is {row.state}, attempt {row.attempts}, claimed by "
                f"{row.claimed_by or 'nobody'}"
            )
        return row

    def check(self) -> None:
        with session_scope() as session:
            self.row(session)


class Guard:
    """Checked before every changing AWS call; counts the calls that went through (sent),
    and those AWS answered with success (made)."""

    def __init__(
        self, emergency: EmergencyStop, *, counting_made: bool = True, claim: Claim | None = None
    ) -> None:
        self.emergency = emergency
        self.claim = claim
        self.changes = 0
        self.made = 0
        self.counting_made = counting_made  # an action's backup is no change: off until then

    def __call__(self, call: str) -> None:
        self.emergency.check(call)
        if self.claim is not None:
            self.claim.check()
        self.changes += 1

    def note_made(self, call: str) -> None:
        if self.counting_made:
            self.made += 1

    def row(self, session: Session, action_id: int) -> ActionRow:
        """The action's record to write: only while the claim holds, when there is one."""
        if self.claim is not None:
            return self.claim.row(session)
        row = session.get(ActionRow, action_id)
        if row is None:
            raise LookupError(f"no action {action_id}")
        return row
