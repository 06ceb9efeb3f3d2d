"""The policy engine's pure domain: policies as YAML, filter trees, actions, evaluation.

Importing the package registers every filter and action type.
"""

from __future__ import annotations

from backend.domain.policy import measures, relations, values
from backend.domain.policy.actions import (
    ACTIONS,
    ActionParams,
    ActionRule,
    ActionSpec,
    ActionType,
    Backup,
    find_action,
    iam_permissions_for,
)
from backend.domain.policy.context import EvaluationContext
from backend.domain.policy.evaluate import Match, evaluate, metric_requests
from backend.domain.policy.filters import FILTER_TYPES, And, Filter, Not, Or
from backend.domain.policy.loader import (
    MAX_FILE_BYTES,
    load_pack,
    load_text,
    validate_paths,
    validate_text,
)
from backend.domain.policy.measures import AgeFilter, MetricsFilter
from backend.domain.policy.model import (
    Limits,
    Mode,
    Notice,
    Policy,
    PolicyPack,
    Risk,
    Schedule,
)
from backend.domain.policy.relations import (
    BacksAmi,
    NoHealthyTargets,
    Orphaned,
    Unassociated,
    Unattached,
)
from backend.domain.policy.spec import PolicyProblem, PolicyValidationError
from backend.domain.policy.truth import Truth
from backend.domain.policy.values import ValueFilter

__all__ = [
    "ACTIONS",
    "FILTER_TYPES",
    "MAX_FILE_BYTES",
    "ActionParams",
    "ActionRule",
    "ActionSpec",
    "ActionType",
    "AgeFilter",
    "And",
    "BacksAmi",
    "Backup",
    "EvaluationContext",
    "Filter",
    "Limits",
    "Match",
    "MetricsFilter",
    "Mode",
    "NoHealthyTargets",
    "Not",
    "Notice",
    "Or",
    "Orphaned",
    "Policy",
    "PolicyPack",
    "PolicyProblem",
    "PolicyValidationError",
    "Risk",
    "Schedule",
    "Truth",
    "Unassociated",
    "Unattached",
    "ValueFilter",
    "evaluate",
    "find_action",
    "iam_permissions_for",
    "load_pack",
    "load_text",
    "measures",
    "metric_requests",
    "relations",
    "validate_paths",
    "validate_text",
    "values",
]
