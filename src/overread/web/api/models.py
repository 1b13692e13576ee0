"""Model registry routes: packages and aliases, and switching an alias (audited).

Switching an alias changes which model reads the next study routed to it (the
registry re-reads its alias file, so no restart is needed); it needs
``manage_models`` and is recorded as a ``model-change`` audit event with the old
and new targets.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path
from starlette.concurrency import run_in_threadpool

from overread.audit import AuditAction
from overread.errors import ModelPackageError
from overread.models.registry import PackageEntry, Registry, manifest_of
from overread.security import Permission, Principal
from overread.service.rollout import RolloutState, RolloutStore
from overread.web.api.guards import caller, context, not_found, route
from overread.web.api.schemas import AliasOut, AliasRequest, ModelDetail, ModelList, ModelPackageOut
from overread.web.context import WebContext

_ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"


def _package(entry: PackageEntry, aliases: dict[str, str]) -> ModelPackageOut:
    ref = f"{entry.name}@{entry.version}"
    return ModelPackageOut(
        name=entry.name,
        version=entry.version,
        source=entry.source,
        trained=entry.trained,
        calibrated=entry.calibrated,
        aliases=sorted(a for a, target in aliases.items() if target == ref),
    )


def _registry(ctx: WebContext) -> Registry:
    registry: Registry = ctx.service.registry
    return registry


def _detail(registry: Registry, reference: str) -> ModelDetail:
    aliases = registry.aliases()
    entries = registry.entries()
    target = aliases.get(reference, reference)
    name = target.partition("@")[0]
    versions = [_package(e, aliases) for e in entries if e.name == name]
    if not versions:
        raise not_found(f"model {reference!r}")
    resolves_to: str | None = None
    manifest: dict[str, Any] | None = None
    try:
        path = registry.resolve(reference)
        parsed = manifest_of(path)
        resolves_to = f"{parsed.name}@{parsed.version}"
        manifest = parsed.model_dump(mode="json")
    except ModelPackageError:
        pass
    return ModelDetail(
        reference=reference, resolves_to=resolves_to, versions=versions, manifest=manifest
    )


router = APIRouter(prefix="/api/models", tags=["models"])


@route(router, "GET", "", response_model=ModelList, permission=Permission.VIEW_RESULTS)
def list_models(ctx: WebContext = Depends(context)) -> ModelList:
    """Every package of the registry (imported and bundled) and every alias."""
    registry = _registry(ctx)
    aliases = registry.aliases()
    return ModelList(packages=[_package(e, aliases) for e in registry.entries()], aliases=aliases)


@route(
    router, "GET", "/{reference}", response_model=ModelDetail, permission=Permission.VIEW_RESULTS
)
def get_model(
    reference: str = Path(pattern=_ALIAS_PATTERN, description="Model name or alias"),
    ctx: WebContext = Depends(context),
) -> ModelDetail:
    """A model name or alias: what it resolves to now, its manifest, every version."""
    return _detail(_registry(ctx), reference)


def _change(
    ctx: WebContext, who: Principal, alias: str, previous: str | None, target: str, how: str
) -> None:
    ctx.access.record(
        who,
        AuditAction.MODEL_CHANGE,
        details={"change": how, "alias": alias, "from": previous, "to": target},
    )


@route(
    router,
    "PUT",
    "/aliases/{alias}",
    response_model=AliasOut,
    permission=Permission.MANAGE_MODELS,
    responses={404: {"description": "No such package"}},
)
async def set_alias(
    body: AliasRequest,
    alias: str = Path(pattern=_ALIAS_PATTERN),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> AliasOut:
    """Point an alias at a package; the package must exist and verify (audited)."""
    registry = _registry(ctx)
    previous = registry.aliases().get(alias)
    try:
        target = await run_in_threadpool(registry.set_alias, alias, body.target)
    except ModelPackageError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    await run_in_threadpool(_change, ctx, who, alias, previous, target, "set-alias")
    return AliasOut(alias=alias, target=target, previous=previous)


@route(
    router,
    "POST",
    "/aliases/{alias}/rollback",
    response_model=AliasOut,
    permission=Permission.MANAGE_MODELS,
    responses={409: {"description": "The alias has no earlier target"}},
)
def rollback_alias(
    alias: str = Path(pattern=_ALIAS_PATTERN),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> AliasOut:
    """End the alias's shadow or canary (the active version stays), or with none,
    point the alias back at its previous target (audited)."""
    registry = _registry(ctx)
    previous = registry.aliases().get(alias)
    ended = RolloutStore(ctx.service.database).end(
        alias,
        RolloutState.ROLLED_BACK,
        actor=who.username,
        role=who.role.value,
        reason="by hand (REST)",
    )
    if ended is not None:
        return AliasOut(alias=alias, target=ended.active_ref, previous=ended.candidate_ref)
    try:
        target = registry.rollback(alias)
    except ModelPackageError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    _change(ctx, who, alias, previous, target, "rollback")
    return AliasOut(alias=alias, target=target, previous=previous)


__all__ = ["router"]
