"""What a killed process left half-written is swept at the next start, and nothing live is.

A real process writes into a blob store and is killed with SIGKILL mid-write; a store opened
afterwards (as a restarted server does) removes its `.part` file or aborts its S3 multipart
upload, while a write still in progress in this process, sharing the folder, is untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from s3_server import S3_ENV, S3Endpoint, s3_endpoint  # noqa: F401 - fixture

from hsm_vault.server.blobs import S3_MIN_PART, LocalBlobStore, S3BlobStore, new_blob_key

WRITER = """
import sys
from pathlib import Path
from hsm_vault.server.blobs import S3_MIN_PART, LocalBlobStore, S3BlobStore, new_blob_key
if sys.argv[1] == "local":
    store = LocalBlobStore(sys.argv[2])
else:
    store = S3BlobStore(sys.argv[3], endpoint_url=sys.argv[2], part_size=S3_MIN_PART,
                        journal_dir=Path(sys.argv[4]))
writer = store.open_writer(new_blob_key())
writer.write(b"x" * (S3_MIN_PART + 1))
print("written", flush=True)
sys.stdin.read()  # until killed
"""


def _killed_mid_write(*args: str) -> None:
    env = {**os.environ, **S3_ENV}
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "written\n"
    finally:
        process.kill()
        process.wait()


def test_a_killed_process_leaves_no_part_file_after_the_next_start(tmp_path: Path) -> None:
    live = LocalBlobStore(tmp_path).open_writer(new_blob_key())
    live.write(b"still uploading")
    _killed_mid_write("local", str(tmp_path))
    assert len(list((tmp_path / ".tmp").iterdir())) == 2

    assert LocalBlobStore(tmp_path).sweep_abandoned() == 1
    assert len(list((tmp_path / ".tmp").iterdir())) == 1
    live.commit()  # the live upload was not touched
    assert LocalBlobStore(tmp_path).sweep_abandoned() == 0


def test_a_killed_process_leaves_no_multipart_upload_after_the_next_start(
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811 - fixture
) -> None:
    bucket = s3_endpoint.new_bucket()
    journal = tmp_path / "s3-uploads"

    def store() -> S3BlobStore:
        return S3BlobStore(
            bucket, client=s3_endpoint.client(), part_size=S3_MIN_PART, journal_dir=journal
        )

    live = store().open_writer(new_blob_key())
    live.write(b"y" * (S3_MIN_PART + 1))
    _killed_mid_write("s3", s3_endpoint.url, bucket, str(journal))
    assert len(store().pending_uploads()) == 2

    assert store().sweep_abandoned() == 1
    assert store().pending_uploads() == [live.key]
    live.commit()
    assert store().pending_uploads() == [] and store().exists(live.key)
