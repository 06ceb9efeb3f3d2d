"""Three-valued truth for policy filters.

UNKNOWN means "not decidable with the data at hand" (a metric not fetched yet, a relation
index not built). It never selects a resource, not even under `not`, so a filter can never
act on data it has not seen.
"""

from __future__ import annotations

from enum import Enum


class Truth(Enum):
    # Ordered FALSE < UNKNOWN < TRUE so that Kleene `and` is min and `or` is max.
    FALSE = 0
    UNKNOWN = 1
    TRUE = 2

    @classmethod
    def of(cls, value: bool) -> Truth:
        return cls.TRUE if value else cls.FALSE

    def __and__(self, other: Truth) -> Truth:
        return self if self.value <= other.value else other

    def __or__(self, other: Truth) -> Truth:
        return self if self.value >= other.value else other

    def __invert__(self) -> Truth:
        if self is Truth.UNKNOWN:
            return self
        return Truth.FALSE if self is Truth.TRUE else Truth.TRUE

    def __bool__(self) -> bool:
        # `if truth:` would treat UNKNOWN as true; make callers say what they mean.
        raise TypeError("Truth has three values; compare with `is Truth.TRUE`")
