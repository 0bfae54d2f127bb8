"""Request and response bodies. Requests forbid unknown fields; Create/Public are separate."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from pipeline_service.db.tenants import Scope
from schemas.pipeline import PIPELINE_NAME_PATTERN

NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(Request):
    name: str = Field(pattern=NAME_PATTERN, description="lowercase letters, digits, _ and -")
    display_name: str | None = Field(None, max_length=200)


class TenantPublic(BaseModel):
    name: str
    display_name: str | None
    created_at: datetime
    created_by: str


class KeyCreate(Request):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,119}$")
    scope: Scope = Scope.READ


class KeyPublic(BaseModel):
    name: str
    prefix: str
    scope: Scope
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None


class KeyCreated(KeyPublic):
    key: str = Field(description="The API key. Shown only in this answer: store it now.")


class DefinitionIn(Request):
    """A pipeline definition: YAML/JSON text as the user wrote it, or parsed JSON."""

    source: str | None = Field(None, description="Definition text (YAML or JSON).")
    format: Literal["yaml", "json"] = "yaml"
    definition: dict[str, Any] | None = Field(None, description="The definition as JSON.")
    files: dict[str, str] | None = Field(
        None,
        description="A code bundle: relative path -> base64 content. Scripts and job files "
        "resolve in it (not in the server's directory); stored with the version.",
    )

    @model_validator(mode="after")
    def one_of(self) -> DefinitionIn:
        if (self.source is None) == (self.definition is None):
            raise ValueError("give exactly one of `source` (text) and `definition` (JSON)")
        return self


class Problem(BaseModel):
    path: str
    message: str
    line: int | None = None
    column: int | None = None


class ValidationReport(BaseModel):
    valid: bool
    name: str
    steps: int
    levels: list[list[str]]


class PipelinePublic(BaseModel):
    name: str
    status: str
    current_version: int
    created_at: datetime
    updated_at: datetime
    created_by: str
    updated_by: str


class VersionPublic(BaseModel):
    version: int
    digest: str
    created_at: datetime
    created_by: str


class PipelineDetail(PipelinePublic):
    version: int = Field(description="The version shown (the current one unless ?version=).")
    definition: dict[str, Any]
    source: str | None
    versions: list[VersionPublic]


class PipelinePage(BaseModel):
    items: list[PipelinePublic]
    next_cursor: str | None


class VersionDiff(BaseModel):
    from_version: int
    to_version: int
    diff: str = Field(description="Unified diff of the two definitions (as YAML).")


class GraphNode(BaseModel):
    id: str
    type: str
    level: int


class GraphEdge(BaseModel):
    source: str
    target: str


class Graph(BaseModel):
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class RunTrigger(Request):
    params: dict[str, Any] = Field(default_factory=dict)
    logical_date: AwareDatetime | None = Field(
        None, description="Makes the run the pipeline's run for this date (one per date)."
    )
    rerun: bool = Field(
        False,
        description="Run the logical date again although it has a scheduled, backfill or "
        "dependency run (without: 409).",
    )


class StepAttempt(BaseModel):
    attempt: int
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    error: str | None
    error_type: str | None
    rows_affected: int | None
    outputs: dict[str, Any]
    tables: dict[str, str] = Field(
        default_factory=dict, description="Output name -> warehouse table (python `outputs:`)."
    )
    log_tail: str | None = None
    marked_by: str | None = None
    mark_reason: str | None = None


class PoolWaitPublic(BaseModel):
    pool: str
    since: datetime
    position: int = Field(description="The attempt's place in the pool's line (1: next).")


class StepPublic(BaseModel):
    step_id: str
    type: str
    status: str
    attempts: list[StepAttempt]
    waiting_for_pool: PoolWaitPublic | None = Field(
        None,
        description="The step is RUNNING but waiting for a slot of this full pool: slots go "
        "to the attempt that has waited longest.",
    )


class RunPublic(BaseModel):
    id: str
    pipeline: str
    version: int
    status: str
    trigger: str
    actor: str
    logical_date: datetime
    params: dict[str, Any]
    workflow_id: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    error: str | None
    retry_of: str | None = None
    replay_of: str | None = Field(
        None, description="A dead-letter replay: the run whose quarantined rows this run re-read."
    )
    replay: dict[str, str] | None = Field(
        None, description="A dead-letter replay: run_id, step, check, schema and table of the rows."
    )
    waiting: bool = Field(
        False, description="QUEUED for a concurrency slot of the tenant's quota (not started)."
    )
    priority: int = 0


class RunDetail(RunPublic):
    steps: list[StepPublic]


class RunPage(BaseModel):
    items: list[RunPublic]
    next_cursor: str | None


__all__ = ["PIPELINE_NAME_PATTERN"]


class ScheduleFirePublic(BaseModel):
    logical_date: datetime
    fires_at: datetime


class SchedulePublic(BaseModel):
    pipeline: str
    cron: str
    timezone: str
    catchup: bool
    overlap: str
    jitter_seconds: float
    start_date: datetime | None
    end_date: datetime | None
    paused: bool
    """Whether the schedule fires now (a pause/unpause, else the definition's `paused`)."""
    running: bool
    """Whether the pipeline's scheduler workflow is running."""
    next_fires: list[datetime] = Field(description="Next fire times in the schedule's zone.")
    last_handled: datetime | None = Field(
        None, description="The end of the last interval the scheduler handled (its cursor)."
    )
    buffered: list[ScheduleFirePublic] = Field(default_factory=list)
    recent: list[str] = Field(default_factory=list, description="Recent fires and outcomes.")


class BackfillCreate(Request):
    start: AwareDatetime | date = Field(
        description="First logical date (a date: midnight in the pipeline's time zone)."
    )
    end: AwareDatetime | date = Field(description="Intervals end at or before this.")
    max_concurrency: int = Field(4, ge=1, le=1000)
    reprocess: Literal["missing", "failed", "all"] = "missing"
    order: Literal["forward", "reverse"] = "forward"
    dry_run: bool = False
    params: dict[str, Any] = Field(default_factory=dict)


class BackfillDryRun(BaseModel):
    dry_run: Literal[True] = True
    pipeline: str
    total: int
    """Intervals in the range."""
    logical_dates: list[datetime]
    """The dates a backfill would run (in its order; at most 10,000 listed)."""
    skipped: int
    """Dates left alone per `reprocess`."""


class QuotaIn(Request):
    """A tenant's limits; an omitted or null limit is unlimited."""

    max_concurrent_runs: int | None = Field(None, ge=1, le=100_000)
    max_queued_runs: int | None = Field(
        None, ge=1, le=1_000_000, description="queue: 429 beyond it; drop_oldest: default 1"
    )
    overflow_policy: Literal["queue", "reject", "drop_oldest"] = "queue"
    allowed_step_types: list[str] | None = Field(None, max_length=50)
    max_steps_per_pipeline: int | None = Field(None, ge=1, le=100_000)
    retry_after_seconds: int = Field(30, ge=1, le=86_400)


class QuotaPublic(QuotaIn):
    tenant: str
    active_runs: int = Field(description="Runs holding a slot now.")
    waiting_runs: int = Field(description="Runs QUEUED for a slot.")
