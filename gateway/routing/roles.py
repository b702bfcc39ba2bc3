"""The roles a model version plays for a request; the values double as metric and record labels."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    CHAMPION = "champion"
    CHALLENGER = "challenger"
    SHADOW = "shadow"
    PINNED = "pinned"
