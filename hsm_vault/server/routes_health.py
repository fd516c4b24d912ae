"""Health checks for load balancers and orchestrators: `/healthz` and `/readyz`.

- `GET /healthz`: the process is alive and its event loop answers (no I/O at all).
- `GET /readyz`: the database and the blob store can be reached now; 503 otherwise, so a
  load balancer stops sending requests here until they can.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from hsm_vault.server.problems import RETRY_AFTER, problem_response, problem_responses

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no database, no blob store)."""
    return {"status": "ok"}


def _database_ok(request: Request) -> str | None:
    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver or pool error means: not ready
        return f"database: {type(exc).__name__}"
    return None


def _blob_store_ok(request: Request) -> str | None:
    store = getattr(request.app.state, "blob_store", None)  # opened at start-up
    if store is None:
        return None
    try:
        store.check()
    except Exception as exc:  # a ServerError, or the store could not even be opened
        return f"blob store: {getattr(exc, 'message', type(exc).__name__)}"
    return None


@router.get("/readyz", response_model=None, responses=problem_responses(503))
def readyz(request: Request) -> Any:
    """Ready for traffic: the database answers and the blob store can be reached."""
    failed = [f for f in (_database_ok(request), _blob_store_ok(request)) if f]
    if failed:
        return problem_response(
            503, "not ready: " + "; ".join(failed), headers={"Retry-After": RETRY_AFTER}
        )
    return JSONResponse({"status": "ready", "database": "ok", "blob_store": "ok"})
