"""/v1/tenants (platform admin) and /v1/keys (a tenant's admin keys manage their own)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline_service.api.deps import (
    PlatformAdminDep,
    ServicesDep,
    SessionDep,
    TenantAdminDep,
    tenant_of,
)
from pipeline_service.api.models import KeyCreate, KeyCreated, KeyPublic, TenantCreate, TenantPublic
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.db.models import ApiKey, Tenant
from pipeline_service.db.tenants import (
    create_api_key,
    create_tenant,
    get_tenant,
    list_api_keys,
    list_tenants,
    revoke_api_key,
)

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])
keys_router = APIRouter(prefix="/v1/keys", tags=["keys"])


def _tenant(tenant: Tenant) -> TenantPublic:
    return TenantPublic.model_validate(tenant, from_attributes=True)


def _key(key: ApiKey) -> KeyPublic:
    return KeyPublic.model_validate(key, from_attributes=True)


@router.post("", status_code=201, response_model=TenantPublic)
def create(body: TenantCreate, admin: PlatformAdminDep, session: SessionDep) -> TenantPublic:
    """Create a tenant (platform admin key only)."""
    try:
        tenant = create_tenant(
            session, body.name, actor=admin.actor, display_name=body.display_name
        )
        session.commit()
    except IntegrityError:
        raise ProblemError(409, f"tenant '{body.name}' exists already") from None
    return _tenant(tenant)


@router.get("", response_model=list[TenantPublic])
def list_all(admin: PlatformAdminDep, session: SessionDep) -> list[TenantPublic]:
    return [_tenant(t) for t in list_tenants(session)]


def _existing_tenant(session: Session, name: str) -> Tenant:
    tenant = get_tenant(session, name)
    if tenant is None:
        raise not_found(f"tenant '{name}'")
    return tenant


def _create_key(session: Session, tenant: Tenant, body: KeyCreate, actor: str) -> KeyCreated:
    try:
        key, clear = create_api_key(session, tenant, body.name, body.scope, actor=actor)
        session.commit()
    except IntegrityError:
        raise ProblemError(409, f"a key named '{body.name}' exists already") from None
    return KeyCreated(**_key(key).model_dump(), key=clear)


@router.post("/{tenant}/keys", status_code=201, response_model=KeyCreated)
def create_key(
    tenant: str, body: KeyCreate, admin: PlatformAdminDep, session: SessionDep
) -> KeyCreated:
    """Create an API key for a tenant; the answer holds the key, shown this once."""
    return _create_key(session, _existing_tenant(session, tenant), body, admin.actor)


@router.get("/{tenant}/keys", response_model=list[KeyPublic])
def list_keys(tenant: str, admin: PlatformAdminDep, session: SessionDep) -> list[KeyPublic]:
    return [_key(k) for k in list_api_keys(session, _existing_tenant(session, tenant))]


@router.delete("/{tenant}/keys/{name}", status_code=204)
def revoke_key(
    tenant: str, name: str, admin: PlatformAdminDep, session: SessionDep, services: ServicesDep
) -> Response:
    if revoke_api_key(session, _existing_tenant(session, tenant), name) is None:
        raise not_found(f"key '{name}'")
    session.commit()
    services.keys.clear()
    return Response(status_code=204)


@keys_router.post("", status_code=201, response_model=KeyCreated)
def create_own_key(body: KeyCreate, principal: TenantAdminDep, session: SessionDep) -> KeyCreated:
    """Create a key for the caller's own tenant (needs scope `admin`)."""
    return _create_key(session, tenant_of(principal), body, principal.actor)


@keys_router.get("", response_model=list[KeyPublic])
def list_own_keys(principal: TenantAdminDep, session: SessionDep) -> list[KeyPublic]:
    return [_key(k) for k in list_api_keys(session, tenant_of(principal))]


@keys_router.delete("/{name}", status_code=204)
def revoke_own_key(
    name: str, principal: TenantAdminDep, session: SessionDep, services: ServicesDep
) -> Response:
    if revoke_api_key(session, tenant_of(principal), name) is None:
        raise not_found(f"key '{name}'")
    session.commit()
    services.keys.clear()
    return Response(status_code=204)
