"""The input of the pool slot activities (workflows/pools.py)."""

from __future__ import annotations

from pydantic import BaseModel


class PoolSlot(BaseModel):
    tenant: str
    pool: str
    holder: str
    """Who holds the slot: `{workflow id}/{activity id}` of the step attempt (unique)."""
    workflow_id: str
