"""HTTP routes of the blob store: `/v1/blobs`.

- `PUT /v1/blobs/{name}`: upload (the request body, streamed). `?replace=true` replaces an
  existing blob of the same name atomically. 201 with the blob's metadata.
- `GET /v1/blobs/{name}`: download, streamed, with single byte ranges (206 + Content-Range).
- `HEAD /v1/blobs/{name}`: the download's headers, without the body.
- `GET /v1/blobs/{name}/meta`: metadata as JSON.
- `GET /v1/blobs`: the caller's blobs, and with `?shared=true` also blobs shared with them.
- `DELETE /v1/blobs/{name}`: the owner only.
- `PUT /v1/blobs/{name}/header`: a re-wrap; the body is the new envelope header, `If-Match`
  the blob's ETag. The payload stays in the store; the recipients follow the new header.

Blob names are per owner; another user's blob is named with `?owner=USER`. The owner and the
blob's recipients (users with an approved card whose key id the envelope header names) may
read; only the owner deletes; anybody else gets 403.

Uploads go through a `BlobWriter`, which commits only after the last byte, and the database
record is written only after that, so a cut-off upload leaves nothing visible. The maximum
blob size and the per-user quota are checked against Content-Length first and against the
bytes actually received while streaming, and answer 413.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import Row, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from hsm_vault.envelope.format import MAC_LENGTH, MAX_BODY_LENGTH, PREFIX_LENGTH
from hsm_vault.errors import ConfigError, NotFoundOnServer, TooLarge
from hsm_vault.names import BLOB_NAME_PATTERN, BLOB_NAME_RULE, is_blob_name
from hsm_vault.server.auth import (
    Authenticated,
    BearerDep,
    CurrentUser,
    DbDep,
    end_read,
    run_authenticated,
)
from hsm_vault.server.blob_models import BlobRecipient, BlobRecord
from hsm_vault.server.blobs import (
    BlobInfo,
    BlobStore,
    BlobWriter,
    blob_store_from_url,
    new_blob_key,
)
from hsm_vault.server.db import User, user_write_transaction, utcnow
from hsm_vault.server.problems import Problem, log, problem_responses
from hsm_vault.server.settings import ServerSettings

GiB = 1024 * 1024 * 1024
# Coalesce the ASGI body messages (~64 KiB) before each hop to the worker thread.
_WRITE_BATCH = 1024 * 1024
# How many leading bytes are kept to read the envelope header from: the longest header.
HEADER_PEEK_BYTES = PREFIX_LENGTH + MAX_BODY_LENGTH + MAC_LENGTH

router = APIRouter(prefix="/v1/blobs", tags=["blobs"])


@dataclass(frozen=True)
class BlobSettings:
    """The blob store's settings, kept in `ServerSettings.extra["blobs"]`.

    `store`: a blob store URL (`file:///PATH`, `s3://BUCKET/PREFIX?endpoint_url=...`), by
    default the folder `blobs` in the server's data folder. Sizes are in bytes.
    """

    store: str
    max_blob_bytes: int = 4 * GiB
    quota_bytes: int = 20 * GiB

    def __post_init__(self) -> None:
        if self.max_blob_bytes < 0 or self.quota_bytes < 0:
            raise ConfigError("blob size limits must not be negative")

    def room(self, used: int, replaced: int = 0) -> int:
        """Bytes a user may still store: the quota less what they use, plus the size of the
        blob an upload replaces (freed when the new one lands). Negative when over quota."""
        return self.quota_bytes - used + replaced

    def fits(self, size: int, used: int, replaced: int = 0) -> bool:
        """Whether a blob of `size` bytes passes the per-blob limit and the quota."""
        return size <= self.max_blob_bytes and size <= self.room(used, replaced)

    def upload_limit(self, used: int, replaced: int = 0) -> int:
        """The most bytes an upload may bring (the writer stops it past this)."""
        return min(self.max_blob_bytes, max(self.room(used, replaced), 0))

    @classmethod
    def from_server_settings(cls, settings: ServerSettings) -> BlobSettings:
        raw = dict((settings.extra or {}).get("blobs") or {})
        unknown = set(raw) - {"store", "max_blob_bytes", "quota_bytes"}
        if unknown:
            raise ConfigError(f"unknown blob settings: {', '.join(sorted(unknown))}")
        raw.setdefault("store", str(settings.data_dir / "blobs"))
        return cls(**raw)


def configure_blob_store(app: FastAPI, settings: ServerSettings) -> None:
    """Open the blob store and put it and its settings on `app.state`.

    Runs at start-up in each serving process (the app's lifespan), and sweeps what processes
    that died mid-upload left behind; `get_blob_store` opens the store on first use if the
    lifespan did not run.
    """
    blob_settings = BlobSettings.from_server_settings(settings)
    store = blob_store_from_url(blob_settings.store, journal_dir=settings.data_dir / "s3-uploads")
    # What processes that died mid-upload left: their .part files, their S3 multipart uploads.
    swept = store.sweep_abandoned()
    if swept:
        log.warning("removed %d abandoned partial upload(s) of processes that died", swept)
    app.state.blob_settings = blob_settings
    app.state.blob_store = store


async def get_blob_store(request: Request) -> BlobStore:
    """The app's blob store (a FastAPI dependency); opened on first use if not configured."""
    if getattr(request.app.state, "blob_store", None) is None:
        configure_blob_store(request.app, request.app.state.settings)
    store: BlobStore = request.app.state.blob_store
    return store


async def get_blob_settings(request: Request) -> BlobSettings:
    await get_blob_store(request)
    blob_settings: BlobSettings = request.app.state.blob_settings
    return blob_settings


StoreDep = Annotated[BlobStore, Depends(get_blob_store)]
BlobSettingsDep = Annotated[BlobSettings, Depends(get_blob_settings)]


# --- envelope headers and cards: what the server can read without decrypting -----------------


def recipient_key_ids_of(prefix: bytes) -> tuple[int, list[str]] | None:
    """(format version, recipients' key ids as lower-case hex) from the first bytes of a blob.

    The header is parsed and checked, but its MAC cannot be verified without the file key,
    which the server never has. None if the bytes do not start with a valid hsm-vault header;
    such a blob is stored as it is, readable by its owner only.
    """
    from hsm_vault.envelope import read_header
    from hsm_vault.envelope.format import MAGIC
    from hsm_vault.errors import EnvelopeError

    try:
        header = read_header(io.BytesIO(prefix))
    except EnvelopeError:
        return None
    return header.raw[len(MAGIC)], sorted(set(header.key_ids()))


def key_ids_of_user(db: Session, user: User) -> set[str]:
    """Key ids (lower-case hex SHA-256 of the SPKI) of the user's approved cards.

    A superseded card (its holder rotated to a new one) still counts: its key is still the
    holder's, who must be able to re-wrap what was addressed to it (`rewrap --store`).
    The key id is kept with the card's record when it is published: no card is parsed here.
    """
    from hsm_vault.server.db import CardRecord, CardStatus

    key_ids = db.scalars(
        select(CardRecord.key_id).where(
            CardRecord.owner_id == user.id,
            CardRecord.status.in_((CardStatus.APPROVED.value, CardStatus.SUPERSEDED.value)),
            CardRecord.key_id.is_not(None),
        )
    ).all()
    return {key_id for key_id in key_ids if key_id is not None}


# --- helpers ------------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not is_blob_name(name):
        raise Problem(422, f"invalid blob name {name!r}: use {BLOB_NAME_RULE}")
    return name


# An upload refused before its body was read: closing the connection stops the client from
# sending the rest (the server would otherwise read and discard it to keep the connection).
_CLOSE = {"Connection": "close"}


def _too_large(detail: str, **extensions: Any) -> Problem:
    return Problem(413, detail, headers=_CLOSE, **extensions)


# Statements of the upload and download paths, built once (building one costs more than
# running it from SQLAlchemy's compiled cache).
_USED_BYTES = select(func.coalesce(func.sum(BlobRecord.size), 0)).where(
    BlobRecord.owner_id == bindparam("owner_id")
)
_BLOB_BY_NAME = select(BlobRecord).where(
    BlobRecord.owner_id == bindparam("owner_id"), BlobRecord.name == bindparam("name")
)
#: Without loading the recipients: what an upload needs to know of a blob it replaces.
_BLOB_SLOT = select(BlobRecord.id, BlobRecord.size, BlobRecord.storage_key).where(
    BlobRecord.owner_id == bindparam("owner_id"), BlobRecord.name == bindparam("name")
)


def _used_bytes(db: Session, user_id: int) -> int:
    return int(db.scalar(_USED_BYTES, {"owner_id": user_id}) or 0)


def _find_owner(db: Session, caller: User, owner: str | None) -> User | None:
    """The named owner, or None if there is no such user (answered like a missing blob)."""
    if owner is None or owner == caller.name:
        return caller
    return db.scalar(select(User).where(User.name == owner))


def _find_blob(db: Session, owner: User | None, owner_name: str, name: str) -> BlobRecord:
    # An unknown user and a known user without that blob get the same answer, so the blob
    # routes cannot be used to find out which user names exist.
    record = (
        db.scalar(_BLOB_BY_NAME, {"owner_id": owner.id, "name": name})
        if owner is not None
        else None
    )
    if record is None:
        raise Problem(404, f"no blob named {name!r} owned by {owner_name}")
    return record


def _readable_blob(db: Session, caller: User, owner_name: str | None, name: str) -> BlobRecord:
    """The blob, if the caller owns it or is one of its recipients; 403 otherwise."""
    _check_name(name)
    owner = _find_owner(db, caller, owner_name)
    record = _find_blob(db, owner, owner_name or caller.name, name)
    if record.owner_id == caller.id:
        return record
    recipients = {r.key_id for r in record.recipients}
    if recipients and recipients & key_ids_of_user(db, caller):
        return record
    raise Problem(403, f"you are neither the owner nor a recipient of {owner_name}/{name}")


def blob_metadata(record: BlobRecord, owner_name: str) -> dict[str, Any]:
    """The JSON description of a blob (what /meta and list return)."""
    return {
        "name": record.name,
        "owner": owner_name,
        "size": record.size,
        "sha256": record.sha256,
        "created_at": record.created_at.isoformat().replace("+00:00", "Z"),
        "envelope_version": record.envelope_version,
        "recipients": sorted(r.key_id for r in record.recipients),
    }


def _owner_name(db: Session, record: BlobRecord, caller: User) -> str:
    if record.owner_id == caller.id:
        return caller.name
    return str(db.scalar(select(User.name).where(User.id == record.owner_id)))


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range of a single-range `Range` header; None for the whole blob.

    A header we do not understand (another unit, several ranges) is ignored, as RFC 9110
    allows; an unsatisfiable range raises 416.
    """
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first_text, last_text = match.groups()
    if first_text:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
        if last_text and int(last_text) < first:
            return None  # syntactically invalid: ignore the header
    else:
        suffix = int(last_text)
        if suffix == 0:
            first, last = size, size - 1  # unsatisfiable
        else:
            first, last = max(0, size - suffix), size - 1
    if first >= size:
        raise Problem(
            416,
            f"the range starts at or after the end of the blob ({size} bytes)",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return first, last


def _digest_headers(record: BlobRecord) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(record.sha256)).decode()
    return {
        "ETag": f'"{record.sha256}"',
        "Repr-Digest": f"sha-256=:{digest}:",
        "Accept-Ranges": "bytes",
        "Last-Modified": record.created_at.strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }


# --- routes ---------------------------------------------------------------------------------------


#: A blob name in a path: the pattern is in the OpenAPI document; `_check_name` checks it (in
#: full, with a message that says what a name may hold).
BlobName = Annotated[
    str, Path(description=BLOB_NAME_RULE, json_schema_extra={"pattern": BLOB_NAME_PATTERN})
]
_DOWNLOAD = {
    200: {
        "description": "the blob's bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    206: {
        "description": "the requested byte range",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **problem_responses(403, 404, 416),
}


@router.get("")
def list_blobs(
    db: DbDep,
    user: CurrentUser,
    shared: Annotated[bool, Query(description="also list blobs shared with you")] = False,
) -> dict[str, Any]:
    """The caller's blobs (and, with shared=true, those naming one of their cards)."""
    own = db.scalars(
        select(BlobRecord).where(BlobRecord.owner_id == user.id).order_by(BlobRecord.name)
    ).all()
    items = [blob_metadata(r, user.name) for r in own]
    if shared:
        key_ids = key_ids_of_user(db, user)
        if key_ids:
            rows = db.execute(
                select(BlobRecord, User.name)
                .join(User, User.id == BlobRecord.owner_id)
                .join(BlobRecipient, BlobRecipient.blob_id == BlobRecord.id)
                .where(BlobRecipient.key_id.in_(key_ids), BlobRecord.owner_id != user.id)
                .distinct()
                .order_by(User.name, BlobRecord.name)
            ).all()
            items += [blob_metadata(record, owner) for record, owner in rows]
    return {
        "blobs": items,
        "used_bytes": _used_bytes(db, user.id),
    }


@router.put(
    "/{name}",
    status_code=201,
    responses=problem_responses(409, 413),
    openapi_extra={
        "requestBody": {
            # An empty body is a valid (empty) blob, stored as it is.
            "required": False,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_blob(
    name: BlobName,
    request: Request,
    db: DbDep,
    user: CurrentUser,
    store: StoreDep,
    limits: BlobSettingsDep,
    replace: bool = False,
) -> JSONResponse:
    """Store the request body as blob `name`, streamed; nothing is visible until it is whole."""
    _check_name(name)
    declared: int | None = None
    if "content-length" in request.headers:
        try:
            declared = int(request.headers["content-length"])
        except ValueError:
            raise Problem(400, "Content-Length is not a number") from None
    if declared is not None and declared > limits.max_blob_bytes:
        raise _too_large(
            f"the blob is {declared} bytes, over the server's limit of "
            f"{limits.max_blob_bytes} bytes per blob",
            limit=limits.max_blob_bytes,
        )

    slot = {"owner_id": user.id, "name": name}

    def prepare() -> tuple[int, BlobWriter]:
        existing = db.execute(_BLOB_SLOT, slot).first()
        used = _used_bytes(db, user.id)
        # No connection is held while the body streams in (it may take minutes).
        db.commit()
        if existing is not None and not replace:
            raise Problem(
                409, f"you already have a blob named {name!r}; pass replace=true", headers=_CLOSE
            )
        replaced = existing.size if existing is not None else 0
        if declared is not None and not limits.fits(declared, used, replaced):
            raise _too_large(_quota_message(limits, used, declared), quota=limits.quota_bytes)
        writer = store.open_writer(new_blob_key(), max_size=limits.upload_limit(used, replaced))
        return limits.room(used, replaced), writer

    # Worker-thread hops are what a small upload costs most: one to prepare, one to finish.
    available, writer = await run_in_threadpool(prepare)
    head = bytearray()

    def finish(rest: bytes) -> JSONResponse:
        writer.write(rest)
        if declared is not None and writer.size != declared:
            raise Problem(400, f"received {writer.size} bytes, Content-Length said {declared}")
        info = writer.commit()
        peeked = recipient_key_ids_of(bytes(head))
        try:
            record, replaced = _record_upload(db, user, name, info, peeked, limits, replace)
        except (Problem, IntegrityError) as exc:
            db.rollback()
            store.delete(info.key)
            if isinstance(exc, Problem):
                raise
            raise Problem(409, f"a blob named {name!r} was uploaded at the same time") from None
        if replaced is not None:
            store.delete(replaced.storage_key)
        return JSONResponse(
            blob_metadata(record, user.name),
            status_code=201,
            headers={"Location": f"/v1/blobs/{name}"},
        )

    try:
        rest = await _receive_into(request, writer, head)
        return await run_in_threadpool(finish, rest)
    except TooLarge:
        if available >= limits.max_blob_bytes:
            raise _too_large(
                f"the blob is over the server's limit of {limits.max_blob_bytes} bytes per blob",
                limit=limits.max_blob_bytes,
            ) from None
        raise _too_large(_quota_message(limits, None, None), quota=limits.quota_bytes) from None
    except ClientDisconnect:
        # The client went away half way: throw the partial blob away, answer nobody.
        return JSONResponse({}, status_code=400)
    finally:
        await _abort(writer)  # a no-op once committed


def _record_upload(
    db: Session,
    user: User,
    name: str,
    info: BlobInfo,
    peeked: tuple[int, list[str]] | None,
    limits: BlobSettings,
    replace: bool,
) -> tuple[BlobRecord, Row[*tuple[Any, ...]] | None]:
    """Record an upload whose bytes are stored: (its record, the blob it replaced or None).

    Checked again under the owner's lock now that the size is known: uploads run in
    parallel, on this replica and on others, and only one at a time may pass the quota.
    """
    with user_write_transaction(db, user.id):
        current = db.execute(_BLOB_SLOT, {"owner_id": user.id, "name": name}).first()
        if current is not None and not replace:
            raise Problem(409, f"a blob named {name!r} was uploaded at the same time")
        used_now = _used_bytes(db, user.id)
        if info.size > limits.room(used_now, current.size if current else 0):
            raise _too_large(_quota_message(limits, used_now, info.size), quota=limits.quota_bytes)
        if current is not None:
            # Its recipients go with it (ON DELETE CASCADE), without loading them.
            db.execute(delete(BlobRecord).where(BlobRecord.id == current.id))
        record = BlobRecord(
            owner_id=user.id,
            name=name,
            storage_key=info.key,
            size=info.size,
            sha256=info.sha256,
            created_at=utcnow(),
            envelope_version=peeked[0] if peeked else None,
            recipients=[BlobRecipient(key_id=k) for k in (peeked[1] if peeked else [])],
        )
        db.add(record)
        db.commit()
    return record, current


async def _abort(writer: BlobWriter) -> None:
    """Abort in a worker thread; in the event loop itself if the request was cancelled."""
    if writer.finished:
        return
    try:
        await run_in_threadpool(writer.abort)
    except asyncio.CancelledError:
        writer.abort()  # no await may complete in a cancelled scope: clean up before leaving
        raise


def _quota_message(limits: BlobSettings, used: int | None, size: int | None) -> str:
    what = f"{size} more bytes" if size is not None else "this blob"
    usage = f" ({used} bytes used)" if used is not None else ""
    return f"storing {what} would put you over your quota of {limits.quota_bytes} bytes{usage}"


async def _receive_into(request: Request, writer: BlobWriter, head: bytearray) -> bytes:
    """Feed the request body into `writer`, keeping the first bytes for the header peek.

    Returns the last (under `_WRITE_BATCH`) bytes unwritten, for the caller's final hop.
    """
    batch = bytearray()
    async for chunk in request.stream():
        if len(head) < HEADER_PEEK_BYTES:
            head += chunk[: HEADER_PEEK_BYTES - len(head)]
        batch += chunk
        if len(batch) >= _WRITE_BATCH:
            await run_in_threadpool(writer.write, bytes(batch))
            batch.clear()
    return bytes(batch)


@router.get("/{name}/meta", responses=problem_responses(403, 404))
def blob_meta(
    name: BlobName, db: DbDep, user: CurrentUser, owner: str | None = None
) -> dict[str, Any]:
    """Size, SHA-256, created-at, owner and recipients' key ids of a readable blob."""
    record = _readable_blob(db, user, owner, name)
    meta = blob_metadata(record, _owner_name(db, record, user))
    end_read(db)
    return meta


@router.head("/{name}", response_model=None, operation_id="head_blob", responses=_DOWNLOAD)
@router.get("/{name}", response_model=None, operation_id="download_blob", responses=_DOWNLOAD)
async def download_blob(
    name: BlobName,
    request: Request,
    credentials: BearerDep,
    store: StoreDep,
    owner: str | None = None,
) -> Response:
    """The blob's bytes, streamed; a single `Range` gives 206 with Content-Range."""

    def fetch(db: Session, auth: Authenticated) -> Response:
        try:
            return answer(_readable_blob(db, auth.user, owner, name))
        except NotFoundOnServer:
            # Replaced between the lookup and the read (the old bytes are deleted once the
            # new record is committed): the new record is there now.
            return answer(_readable_blob(db, auth.user, owner, name))
        finally:
            end_read(db)

    def answer(record: BlobRecord) -> Response:
        headers = _digest_headers(record)
        size = record.size
        wanted = _parse_range(request.headers.get("range"), size)
        if wanted is None:
            first, last, status = 0, size - 1, 200
        else:
            first, last = wanted
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last - first + 1)
        media = "application/octet-stream"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type=media)
        chunks = store.read(record.storage_key, first, last) if last >= first else iter(())
        if last - first < _WRITE_BATCH:
            # Small: read here, in this thread, instead of a worker-thread hop per chunk.
            return Response(b"".join(chunks), status_code=status, headers=headers, media_type=media)
        return StreamingResponse(chunks, status_code=status, headers=headers, media_type=media)

    # Authentication, the lookup and (for small blobs) the read in one worker thread.
    return await run_authenticated(request, credentials, fetch)


@router.delete("/{name}", status_code=204, responses=problem_responses(403, 404))
def delete_blob(
    name: BlobName, db: DbDep, user: CurrentUser, store: StoreDep, owner: str | None = None
) -> Response:
    """Delete one of the caller's own blobs (a recipient may read, never delete)."""
    _check_name(name)
    owner_name = owner or user.name
    record = _find_blob(db, _find_owner(db, user, owner), owner_name, name)
    if record.owner_id != user.id:
        raise Problem(403, f"only {owner_name} may delete {owner_name}/{name}")
    storage_key = record.storage_key
    db.delete(record)
    db.commit()
    # The record goes first: a crash in between leaves an orphan object, never a dangling name.
    store.delete(storage_key)
    return Response(status_code=204)


# --- re-wrap: swap an envelope header, the payload stays in the store ----------------------------


@router.put(
    "/{name}/header",
    responses=problem_responses(403, 404, 409, 412, 428),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def replace_blob_header(
    name: BlobName,
    request: Request,
    db: DbDep,
    user: CurrentUser,
    store: StoreDep,
    limits: BlobSettingsDep,
    owner: str | None = None,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> dict[str, Any]:
    """Replace a blob's envelope header (a re-wrap), keeping its payload bytes.

    `If-Match` must carry the blob's current ETag (its SHA-256): a blob that changed since
    the caller read its header answers 412. The owner may give any header that fits the
    payload; a recipient who is not the owner may change only the entries of their own
    cards. The new blob is written beside the old one and swapped in one transaction; the
    readers follow the new header's recipients.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > HEADER_PEEK_BYTES:
            raise _too_large(f"an envelope header is at most {HEADER_PEEK_BYTES} bytes")
    return await run_in_threadpool(
        _swap_header, db, user, store, limits, owner, name, bytes(body), if_match
    )


def _stored_header(store: BlobStore, record: BlobRecord) -> Any:
    from hsm_vault.envelope import read_header
    from hsm_vault.errors import EnvelopeError

    if record.envelope_version is None:
        raise Problem(409, f"{record.name} is not an hsm-vault envelope: it has no header")
    try:
        prefix = b"".join(store.read(record.storage_key, 0, PREFIX_LENGTH - 1))
        length = int.from_bytes(prefix[-4:], "big")
        rest = b"".join(
            store.read(record.storage_key, PREFIX_LENGTH, PREFIX_LENGTH + length + MAC_LENGTH - 1)
        )
        return read_header(io.BytesIO(prefix + rest))
    except EnvelopeError:
        raise Problem(409, f"the stored header of {record.name} does not parse") from None


def _swap_header(
    db: Session,
    user: User,
    store: BlobStore,
    limits: BlobSettings,
    owner: str | None,
    name: str,
    body: bytes,
    if_match: str | None,
) -> dict[str, Any]:
    from hsm_vault.envelope import read_header
    from hsm_vault.envelope.rewrap import check_rewrap
    from hsm_vault.errors import EnvelopeError

    if not if_match:
        raise Problem(428, "send If-Match with the blob's ETag (the SHA-256 its header came from)")
    record = _readable_blob(db, user, owner, name)
    if if_match.strip().removeprefix("W/").strip('"') != record.sha256:
        raise Problem(412, f"{name} changed since its header was read; read it again")
    try:
        new = read_header(io.BytesIO(body))
        if len(new.raw) != len(body):
            raise Problem(422, "the body must be exactly one envelope header")
        old = _stored_header(store, record)
        mine = None
        if record.owner_id != user.id:
            mine = {bytes.fromhex(k) for k in key_ids_of_user(db, user)}
        check_rewrap(old, new, only=mine)
    except EnvelopeError as exc:
        raise Problem(422, f"the new header does not fit {name}: {exc.message}") from None
    size = record.size - len(old.raw) + len(new.raw)
    owner_name = _owner_name(db, record, user)
    if size > limits.max_blob_bytes:
        raise _too_large(f"the blob would be over the limit of {limits.max_blob_bytes} bytes")
    if _used_bytes(db, record.owner_id) - record.size + size > limits.quota_bytes:
        raise _too_large(_quota_message(limits, _used_bytes(db, record.owner_id), size))
    old_key = record.storage_key
    info = store.write_with_new_head(new_blob_key(), new.raw, old_key, len(old.raw))
    try:
        swapped = db.execute(
            update(BlobRecord)
            .where(BlobRecord.id == record.id, BlobRecord.storage_key == old_key)
            .values(storage_key=info.key, size=info.size, sha256=info.sha256)
        )
        if swapped.rowcount != 1:  # type: ignore[attr-defined]
            raise Problem(412, f"{name} changed while its header was being swapped")
        db.execute(delete(BlobRecipient).where(BlobRecipient.blob_id == record.id))
        db.add_all(BlobRecipient(blob_id=record.id, key_id=k) for k in sorted(set(new.key_ids())))
        db.commit()
    except BaseException:
        db.rollback()
        store.delete(info.key)
        raise
    # The record goes first, as in delete: a crash in between leaves an orphan, never a gap.
    store.delete(old_key)
    db.expire(record)
    return blob_metadata(record, owner_name)
