"""/v1/secrets: a tenant's secrets, write-only. Values go in (PUT) and are never returned,
listed or logged; steps reference them by name (`env: {TOKEN: {secret: name}}`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field, SecretStr

from pipeline_service.api.deps import ReaderDep, ServicesDep, SessionDep, TenantAdminDep, tenant_of
from pipeline_service.api.models import Request
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.api.services import Services
from pipeline_service.secrets import store
from pipeline_service.secrets.crypto import SecretBox, SecretKeyError
from schemas.pipeline import SECRET_NAME_PATTERN

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])

NameDep = Annotated[str, Path(pattern=SECRET_NAME_PATTERN, description="The secret's name.")]
MAX_SECRET_BYTES = 64 * 1024


class SecretIn(Request):
    value: SecretStr = Field(
        min_length=1, description="The secret's value: stored encrypted, never returned."
    )


class SecretPublic(BaseModel):
    """A secret's name and history; never its value."""

    name: str
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


def secret_box(services: Services) -> SecretBox:
    key = services.settings.secret_key
    if key is None:
        raise ProblemError(503, "secrets are not available: the server has no LAMINAR_SECRET_KEY")
    try:
        return SecretBox(key.get_secret_value())
    except SecretKeyError as exc:
        raise ProblemError(503, f"secrets are not available: {exc}") from None


@router.get("", response_model=list[SecretPublic])
def list_secrets(principal: ReaderDep, session: SessionDep) -> list[SecretPublic]:
    """The names of the tenant's secrets (values are write-only)."""
    rows = store.list_secrets(session, tenant_of(principal).id)
    return [SecretPublic.model_validate(row, from_attributes=True) for row in rows]


@router.put(
    "/{name}",
    response_model=SecretPublic,
    responses={201: {"model": SecretPublic, "description": "Created"}},
)
def put_secret(
    name: NameDep,
    body: SecretIn,
    principal: TenantAdminDep,
    session: SessionDep,
    services: ServicesDep,
    response: Response,
) -> SecretPublic:
    """Create (201) or replace (200) a secret (needs scope `admin`)."""
    value = body.value.get_secret_value()
    if len(value.encode()) > MAX_SECRET_BYTES:
        raise ProblemError(422, f"value: longer than {MAX_SECRET_BYTES} bytes")
    row, created = store.put_secret(
        session, secret_box(services), tenant_of(principal), name, value, actor=principal.actor
    )
    session.commit()
    response.status_code = 201 if created else 200
    return SecretPublic.model_validate(row, from_attributes=True)


@router.delete("/{name}", status_code=204)
def delete_secret(name: NameDep, principal: TenantAdminDep, session: SessionDep) -> Response:
    if not store.delete_secret(session, tenant_of(principal).id, name):
        raise not_found(f"secret '{name}'")
    session.commit()
    return Response(status_code=204)
