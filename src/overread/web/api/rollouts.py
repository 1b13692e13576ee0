"""Rollout routes: each alias's shadow or canary, starting one, and the kill switches.

Reading needs ``view_results``; every change needs ``manage_models`` (the admin
role) and is audited with the caller as actor (``rollout-start``, ``rollout-rollback``,
``kill-switch``). Promotion runs the release gate on the registered cohorts first
(as ``overread models alias`` does); rolling back is
``POST /api/models/aliases/{alias}/rollback``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from overread.errors import ConfigError, ModelPackageError
from overread.security import Permission, Principal
from overread.service.release_gate import promote
from overread.service.rollout import CanaryBounds, ModelRollouts, RolloutState
from overread.web.api.guards import caller, context, invalid, not_found, route
from overread.web.context import WebContext

_ALIAS = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
_MODEL = r"^[A-Za-z0-9][A-Za-z0-9._+@-]{0,199}$"


class RolloutRequest(BaseModel):
    """Start a shadow or canary of ``target`` beside the alias's active version."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
    state: Literal["shadow", "canary"]
    canary_share: float = Field(default=0.0, ge=0.0, le=1.0)
    bounds: dict[str, float] = Field(default_factory=dict)


class KillRequest(BaseModel):
    """Why a kill switch is engaged or released (kept in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=500)


class RolloutList(BaseModel):
    """Every alias's rollout."""

    rollouts: list[dict[str, Any]]


class KillSwitchList(BaseModel):
    """Engaged kill switches."""

    kill_switches: list[dict[str, Any]]


class KillSwitchOut(BaseModel):
    """A switch after a change; ``released_exports`` when released."""

    model: str
    engaged: bool
    changed: bool
    released_exports: int | None = None


def _rollouts(ctx: WebContext) -> ModelRollouts:
    return ModelRollouts(ctx.service.registry, ctx.service.database)


router = APIRouter(tags=["rollout"])


@route(
    router, "GET", "/api/rollouts", response_model=RolloutList, permission=Permission.VIEW_RESULTS
)
def list_rollouts(ctx: WebContext = Depends(context)) -> RolloutList:
    """Each alias's rollout (open or last ended), a canary with its figures so far."""
    store = _rollouts(ctx).store
    rows = []
    for rollout in store.all():
        row = rollout.to_dict()
        if rollout.state is RolloutState.CANARY:
            row["figures"] = store.figures(rollout).to_dict()
        rows.append(row)
    return RolloutList(rollouts=rows)


@route(
    router,
    "PUT",
    "/api/rollouts/{alias}",
    permission=Permission.MANAGE_MODELS,
    responses={404: {"description": "No such package"}, 422: {"description": "Refused"}},
)
def start_rollout(
    body: RolloutRequest,
    alias: str = Path(pattern=_ALIAS),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> dict[str, Any]:
    """Start (or change) a shadow or canary of ``target`` on ``alias`` (audited)."""
    try:
        bounds = CanaryBounds.from_dict(body.bounds)
        rollout = _rollouts(ctx).start(
            alias,
            body.target,
            RolloutState(body.state),
            actor=who.username,
            role=who.role.value,
            canary_share=body.canary_share,
            bounds=bounds,
        )
    except ModelPackageError as exc:
        raise not_found(str(exc)) from None
    except (ConfigError, TypeError) as exc:
        raise invalid(str(exc)) from None
    return rollout.to_dict()


class PromoteRequest(BaseModel):
    """Promote ``target`` (default: the alias's open rollout's candidate)."""

    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$"
    )


@route(
    router,
    "POST",
    "/api/rollouts/{alias}/promote",
    permission=Permission.MANAGE_MODELS,
    responses={
        404: {"description": "No such package"},
        409: {"description": "The release gate refused the candidate"},
        422: {"description": "Nothing to promote, or a cohort changed"},
    },
)
async def promote_rollout(
    body: PromoteRequest,
    alias: str = Path(pattern=_ALIAS),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> JSONResponse:
    """Promote through the release gate (when test cohorts are registered); audited.
    409 with the gate's evidence when it refuses; the alias is then unchanged."""
    try:
        outcome = await run_in_threadpool(
            promote,
            _rollouts(ctx),
            alias,
            body.target,
            actor=who.username,
            role=who.role.value,
        )
    except ModelPackageError as exc:
        raise not_found(str(exc)) from None
    except ConfigError as exc:
        raise invalid(str(exc)) from None
    return JSONResponse(outcome.to_dict(), status_code=200 if outcome.promoted else 409)


@route(
    router,
    "GET",
    "/api/kill-switches",
    response_model=KillSwitchList,
    permission=Permission.VIEW_RESULTS,
)
def list_kill_switches(ctx: WebContext = Depends(context)) -> KillSwitchList:
    """Engaged kill switches: model, since, who, why."""
    return KillSwitchList(kill_switches=_rollouts(ctx).store.kill_switches())


@route(
    router,
    "PUT",
    "/api/kill-switches/{model}",
    response_model=KillSwitchOut,
    permission=Permission.MANAGE_MODELS,
)
async def engage_kill_switch(
    body: KillRequest,
    model: str = Path(pattern=_MODEL, description="Package name (every version) or name@version"),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> KillSwitchOut:
    """Stop sending the model's results at once: its exports are held (audited)."""
    changed = await run_in_threadpool(
        _rollouts(ctx).store.kill,
        model,
        actor=who.username,
        role=who.role.value,
        reason=body.reason,
    )
    return KillSwitchOut(model=model, engaged=True, changed=changed)


@route(
    router,
    "DELETE",
    "/api/kill-switches/{model}",
    response_model=KillSwitchOut,
    permission=Permission.MANAGE_MODELS,
    responses={404: {"description": "The switch is not engaged"}},
)
async def release_kill_switch(
    model: str = Path(pattern=_MODEL, description="Package name or name@version"),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> KillSwitchOut:
    """Release the switch: the held exports go back to the queue (audited)."""
    released = await run_in_threadpool(
        _rollouts(ctx).store.release, model, actor=who.username, role=who.role.value
    )
    if released is None:
        raise HTTPException(status_code=404, detail=f"no kill switch engaged for {model!r}")
    return KillSwitchOut(model=model, engaged=False, changed=True, released_exports=released)


__all__ = ["router"]
