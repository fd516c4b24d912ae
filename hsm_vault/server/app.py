"""The FastAPI app factory.

`create_app(settings)` builds the application. Its resources (database engine, migrations,
the token session holding the application key) are opened by `open_resources`: either by the
caller before serving (`hsm-vault server run` does this, so a start-up failure is an ordinary
error message), or by the app's lifespan when none were given (e.g. `uvicorn --factory`).

What routes find on `request.app.state`:
- `settings`: the `ServerSettings`
- `engine`, `sessionmaker`: SQLAlchemy (use the `get_db` dependency in hsm_vault.server.auth)
- `app_key`: the `ApplicationKey` (public info in `.info`, `.sign(message)`)
- `log_cache`: the `LogCache` of the transparency log's tree (proofs)

Routers are joined in `_include_routers`. Each serving process opens the blob store (and
sweeps what dead processes left) at start-up, in `_start_serving`.

Concurrency: blocking work (database, token, blob store) runs in at most
`settings.worker_threads` threads per process, and the database pool holds as many
connections (see `hsm_vault.server.db.make_engine`). `server run --workers N` starts N
processes through `app_from_environment`, each opening its own resources.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from hsm_vault import __version__
from hsm_vault.errors import TokenNotFound
from hsm_vault.server.appkey import ApplicationKey, open_application_key
from hsm_vault.server.db import make_engine, make_sessionmaker, migrate_to_head
from hsm_vault.server.log import LogCache, backfill
from hsm_vault.server.problems import BodySizeLimit, complete_openapi, install_problem_handlers
from hsm_vault.server.settings import ServerSettings

#: Where request bodies stream (blob uploads): their routes limit the size themselves.
BLOB_PATH_PREFIX = "/v1/blobs"
#: The settings (JSON, `ServerSettings.to_json`) that `app_from_environment` serves.
SETTINGS_ENV = "HSM_VAULT_SERVER_SETTINGS_JSON"
_TOKEN_ATTEMPTS = 5


@dataclass(frozen=True)
class ServerResources:
    """What a running server holds open: the database and the application key."""

    engine: Engine
    sessionmaker: sessionmaker[Any]
    app_key: ApplicationKey


@contextmanager
def open_resources(settings: ServerSettings) -> Iterator[ServerResources]:
    """Migrate the database to the newest schema and open the application key."""
    engine = make_engine(
        settings.engine_url(),
        pool_size=settings.worker_threads,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    try:
        migrate_to_head(engine)
        sessions = make_sessionmaker(engine)
        with sessions() as db:
            if backfill(db):  # a database from before the transparency log
                db.commit()
        with ExitStack() as stack:
            app_key = _open_application_key(settings, stack)
            yield ServerResources(engine, sessions, app_key)
    finally:
        engine.dispose()


def _open_application_key(settings: ServerSettings, stack: ExitStack) -> ApplicationKey:
    """Open the application key, retrying briefly when the token is not found at first.

    Worker processes start together; a file-backed token (SoftHSM) being written by one
    process's login can be unreadable to another for a moment.
    """
    for attempt in range(_TOKEN_ATTEMPTS):
        try:
            return stack.enter_context(open_application_key(settings))
        except TokenNotFound:
            if attempt == _TOKEN_ATTEMPTS - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def _attach(app: FastAPI, resources: ServerResources) -> None:
    app.state.engine = resources.engine
    app.state.sessionmaker = resources.sessionmaker
    app.state.app_key = resources.app_key


def _include_routers(app: FastAPI) -> None:
    from hsm_vault.server import (
        routes_accounts,
        routes_blobs,
        routes_cards,
        routes_health,
        routes_log,
        routes_policy,
        routes_recovery,
    )

    app.include_router(routes_health.router)
    app.include_router(routes_accounts.router)
    app.include_router(routes_cards.router)
    app.include_router(routes_policy.router)
    app.include_router(routes_log.router)
    app.include_router(routes_recovery.router)
    app.include_router(routes_blobs.router)


def _start_serving(app: FastAPI, settings: ServerSettings) -> None:
    """Per process, in its event loop: the thread limit, then the blob store and its sweep."""
    from hsm_vault.server.routes_blobs import configure_blob_store

    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
    # Opens the store and removes what processes that died mid-upload left behind.
    configure_blob_store(app, settings)


def create_app(settings: ServerSettings, resources: ServerResources | None = None) -> FastAPI:
    """The hsm-vault API application for `settings`.

    With `resources`, the app uses them and leaves them to the caller to close; without, the
    lifespan opens them at start-up and closes them at shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if resources is not None:
            _attach(app, resources)
            _start_serving(app, settings)
            yield
            return
        with ExitStack() as stack:
            _attach(app, stack.enter_context(open_resources(settings)))
            _start_serving(app, settings)
            yield

    app = FastAPI(
        title="hsm-vault",
        version=__version__,
        summary="Card directory and blob store of hsm-vault; clients verify everything.",
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.log_cache = LogCache()
    install_problem_handlers(app)
    # Blob uploads stream and are limited by their own routes (size and quota).
    app.add_middleware(
        BodySizeLimit, default_limit=settings.max_json_bytes, streaming=(BLOB_PATH_PREFIX,)
    )
    _include_routers(app)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_openapi(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    """The app for a worker process of `server run --workers N` (a uvicorn factory)."""
    return create_app(ServerSettings.from_json(os.environ[SETTINGS_ENV]))
