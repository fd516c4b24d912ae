"""The FastAPI app factory.

`create_app(settings)` builds the application. Its resources (database engine, migrations,
the token session holding the application key) are opened by `open_resources`: either by the
caller before serving (`hsm-vault server run` does this, so a start-up failure is an ordinary
error message), or by the app's lifespan when none were given (e.g. `uvicorn --factory`).

What routes find on `request.app.state`:
- `settings`: the `ServerSettings`
- `engine`, `sessionmaker`: SQLAlchemy (use the `get_db` dependency in hsm_vault.server.auth)
- `app_key`: the `ApplicationKey` (public info in `.info`, `.sign(message)`)

Routers are joined in `_include_routers`; blob routes (`hsm_vault.server.routes_blobs.router`)
join there when that module is present.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from hsm_vault import __version__
from hsm_vault.server.appkey import ApplicationKey, open_application_key
from hsm_vault.server.db import make_engine, make_sessionmaker, migrate_to_head
from hsm_vault.server.problems import BodySizeLimit, install_problem_handlers
from hsm_vault.server.settings import ServerSettings

#: Optional router modules of other server parts, joined when present.
_OPTIONAL_ROUTERS = ("hsm_vault.server.routes_blobs",)
#: Where request bodies stream (blob uploads): their routes limit the size themselves.
BLOB_PATH_PREFIX = "/v1/blobs"


@dataclass(frozen=True)
class ServerResources:
    """What a running server holds open: the database and the application key."""

    engine: Engine
    sessionmaker: sessionmaker[Any]
    app_key: ApplicationKey


@contextmanager
def open_resources(settings: ServerSettings) -> Iterator[ServerResources]:
    """Migrate the database to the newest schema and open the application key."""
    engine = make_engine(settings.effective_database_url)
    try:
        migrate_to_head(engine)
        with open_application_key(settings) as app_key:
            yield ServerResources(engine, make_sessionmaker(engine), app_key)
    finally:
        engine.dispose()


def _attach(app: FastAPI, resources: ServerResources) -> None:
    app.state.engine = resources.engine
    app.state.sessionmaker = resources.sessionmaker
    app.state.app_key = resources.app_key


def _include_routers(app: FastAPI) -> None:
    from hsm_vault.server import routes_accounts, routes_cards, routes_policy, routes_recovery

    app.include_router(routes_accounts.router)
    app.include_router(routes_cards.router)
    app.include_router(routes_policy.router)
    app.include_router(routes_recovery.router)
    for name in _OPTIONAL_ROUTERS:
        if importlib.util.find_spec(name) is not None:
            app.include_router(importlib.import_module(name).router)


def create_app(settings: ServerSettings, resources: ServerResources | None = None) -> FastAPI:
    """The hsm-vault API application for `settings`.

    With `resources`, the app uses them and leaves them to the caller to close; without, the
    lifespan opens them at start-up and closes them at shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if resources is not None:
            _attach(app, resources)
            yield
            return
        with ExitStack() as stack:
            _attach(app, stack.enter_context(open_resources(settings)))
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
    install_problem_handlers(app)
    # Blob uploads stream and are limited by their own routes (size and quota).
    app.add_middleware(
        BodySizeLimit, default_limit=settings.max_json_bytes, streaming=(BLOB_PATH_PREFIX,)
    )
    _include_routers(app)
    return app
