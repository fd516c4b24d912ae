"""Database records of the blob store: who owns which blob, its size, hash and recipients.

The bytes live in a `BlobStore` under `storage_key`; a record is written only after the store
has committed the bytes, so a listed blob is always readable. Names are per owner.
The schema is created by the migration `blobs_0001` in `migrations/versions/`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hsm_vault.server.db import Base, UTCDateTime


class BlobRecord(Base):
    __tablename__ = "blobs"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_blobs_owner_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    storage_key: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: The envelope format version read from the header; None if the blob is not an envelope.
    envelope_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    recipients: Mapped[list[BlobRecipient]] = relationship(
        back_populates="blob", cascade="all, delete-orphan", lazy="selectin"
    )


class BlobRecipient(Base):
    """One recipient key id named in a blob's envelope header (lower-case hex)."""

    __tablename__ = "blob_recipients"

    blob_id: Mapped[int] = mapped_column(
        ForeignKey("blobs.id", ondelete="CASCADE"), primary_key=True
    )
    key_id: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    blob: Mapped[BlobRecord] = relationship(back_populates="recipients")
