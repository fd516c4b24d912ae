"""Routes of the transparency log: the signed tree head with a consistency proof from the
head a client holds, ranges of entries, and earlier signed heads.

Nothing here is taken on the server's word: clients check the head's signature and age, the
consistency proof, and that the entries make up the head (`hsm_vault.trust.log`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from hsm_vault.server import log
from hsm_vault.server.auth import CurrentUser, DbDep
from hsm_vault.server.problems import Problem, problem_responses
from hsm_vault.trust.log import SignedTreeHead

router = APIRouter(prefix="/v1/log", tags=["log"], responses=problem_responses(401, 404, 422))


class HeadOut(BaseModel):
    head: str = Field(description="the signed tree head, one line (hsmv-head-1:...)")
    size: int
    root: str = Field(description="the root hash, hex")
    max_age_seconds: int = Field(description="the head age this server's clients accept")
    consistency: list[str] | None = Field(
        None, description="with ?since=N: the RFC 9162 consistency proof from size N (hex)"
    )
    frontier: list[str] = Field(
        description="the compact tree of the head: hashes of its perfect subtrees, left first"
    )


class EntriesOut(BaseModel):
    start: int
    entries: list[str] = Field(description="the entries' canonical JSON, in order")
    frontier: list[str] = Field(description="the compact tree of the first `start` entries")
    head: str = Field(description="the signed tree head the range was read under")


class SignedHeadOut(BaseModel):
    head: str


def _head(request: Request, db: DbDep) -> tuple[str, SignedTreeHead]:
    settings = request.app.state.settings
    text = log.current_head(
        db, request.app.state.sessionmaker, request.app.state.app_key, settings.log_max_age_seconds
    )
    cache: log.LogCache = request.app.state.log_cache
    return text, cache.parsed(text)


@router.get("/head", response_model=HeadOut)
def get_head(
    request: Request,
    _user: CurrentUser,
    db: DbDep,
    since: Annotated[int | None, Query(ge=0, description="the size of the head you hold")] = None,
) -> HeadOut:
    """The current signed tree head, its compact tree, and a consistency proof from `since`."""
    text, head = _head(request, db)
    if since is not None and since > head.size:
        since = None  # fewer entries than the client holds: it refuses the head (rollback)
    cache: log.LogCache = request.app.state.log_cache
    return HeadOut(
        head=text,
        size=head.size,
        root=head.root.hex(),
        max_age_seconds=log.max_age_seconds(db, request.app.state.settings.log_max_age_seconds),
        consistency=None if since is None else cache.consistency(db, head, since),
        frontier=cache.frontier(db, head, head.size),
    )


@router.get("/entries", response_model=EntriesOut)
def get_entries(
    request: Request,
    _user: CurrentUser,
    db: DbDep,
    start: Annotated[int, Query(ge=0)] = 0,
    end: Annotated[int | None, Query(ge=0, description="default: the head's size")] = None,
) -> EntriesOut:
    """Entries [start, end) of the log under the current head, at most 5000 at a time, with
    the compact tree of the entries before `start` (so the range can be checked alone)."""
    text, head = _head(request, db)
    end = head.size if end is None else min(end, head.size)
    if start > end:
        raise Problem(422, f"start {start} is past the end of the log ({head.size} entries)")
    end = min(end, start + log.MAX_ENTRIES_PER_PAGE)
    cache: log.LogCache = request.app.state.log_cache
    return EntriesOut(
        start=start,
        entries=log.entries_between(db, start, end),
        frontier=cache.frontier(db, head, start),
        head=text,
    )


@router.get("/heads/{size}", response_model=SignedHeadOut)
def get_signed_head(
    size: Annotated[int, Path(ge=0)], _user: CurrentUser, db: DbDep
) -> SignedHeadOut:
    """The newest head the server signed for at most `size` entries."""
    text = log.head_at_most(db, size)
    if text is None:
        raise Problem(404, f"no signed head of at most {size} entries")
    return SignedHeadOut(head=text)
