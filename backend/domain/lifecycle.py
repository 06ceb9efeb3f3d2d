"""The action lifecycle: its states and the only transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class ActionState(StrEnum):
    PROPOSED = "proposed"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    BLOCKED = "blocked"
    REJECTED = "rejected"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


S = ActionState
TRANSITIONS: dict[ActionState, frozenset[ActionState]] = {
    S.PROPOSED: frozenset({S.AWAITING_APPROVAL, S.APPROVED, S.BLOCKED}),
    # a blocked action may be planned again when the reason has gone
    S.BLOCKED: frozenset({S.AWAITING_APPROVAL, S.APPROVED}),
    S.AWAITING_APPROVAL: frozenset({S.APPROVED, S.REJECTED, S.BLOCKED}),
    # an approval that expires goes back to the queue
    S.APPROVED: frozenset({S.EXECUTING, S.BLOCKED, S.AWAITING_APPROVAL}),
    # an emergency stop before any change hands the action back, untouched
    S.EXECUTING: frozenset({S.SUCCEEDED, S.FAILED, S.BLOCKED, S.APPROVED}),
    S.FAILED: frozenset({S.APPROVED, S.ROLLED_BACK}),  # retry (after safety), or undo
    S.SUCCEEDED: frozenset({S.ROLLED_BACK}),
    S.REJECTED: frozenset(),
    S.ROLLED_BACK: frozenset(),
}
ACTIVE = frozenset({S.APPROVED, S.EXECUTING})
FINAL = frozenset({S.REJECTED, S.ROLLED_BACK})


class IllegalTransitionError(ValueError):
    def __init__(self, current: str, wanted: str) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[ActionState(current)])) or "none"
        super().__init__(
            f"an action cannot go from {current} to {wanted} (from {current}: {allowed})"
        )


def check_transition(current: str, wanted: str) -> None:
    if ActionState(wanted) not in TRANSITIONS[ActionState(current)]:
        raise IllegalTransitionError(current, wanted)


def policy_approver(policy_name: str) -> str:
    """Who approved an action a policy in `auto` mode approved itself (its `approved_by`)."""
    return f"policy:{policy_name}"
