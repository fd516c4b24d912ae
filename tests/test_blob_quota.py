"""The upload size decisions, apart from the upload route: the per-blob limit, the quota,
and the room a replaced blob frees (`BlobSettings`)."""

from __future__ import annotations

from hsm_vault.server.routes_blobs import BlobSettings

LIMITS = BlobSettings(store="unused", max_blob_bytes=100, quota_bytes=150)


def test_room_counts_the_blob_being_replaced() -> None:
    assert LIMITS.room(used=120) == 30
    assert LIMITS.room(used=120, replaced=50) == 80
    assert LIMITS.room(used=200) == -50  # over quota (the quota was lowered)


def test_a_blob_fits_under_both_limits() -> None:
    assert LIMITS.fits(30, used=120)
    assert not LIMITS.fits(31, used=120)
    assert LIMITS.fits(80, used=120, replaced=50)
    assert not LIMITS.fits(101, used=0)  # the per-blob limit, whatever the quota


def test_the_writer_stops_an_upload_at_the_smaller_limit() -> None:
    assert LIMITS.upload_limit(used=0) == 100
    assert LIMITS.upload_limit(used=120) == 30
    assert LIMITS.upload_limit(used=200) == 0
