"""Model families. Each family lives in one file and registers itself in :data:`FAMILIES`."""

from madloop.models.base import FAMILIES, FamilySpec, PerReplicate, register_family

__all__ = ["FAMILIES", "FamilySpec", "PerReplicate", "register_family"]
