"""Issue 16 item 6: no database password or S3 credential in server.json; private modes."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from server_fixture import RunningServer, unique
from typer.testing import CliRunner

from hsm_vault.cli.main import app
from hsm_vault.client.blobs import upload_stream
from hsm_vault.errors import ConfigError
from hsm_vault.server.blobs import blob_store_from_url
from hsm_vault.server.settings import DATABASE_PASSWORD_ENV, ServerSettings

runner = CliRunner()
URL = "postgresql+psycopg://vault@db.example/vault"


def test_a_password_in_the_database_url_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = runner.invoke(
        app,
        [
            "server",
            "init",
            "--data",
            str(data),
            "--database-url",
            URL.replace("vault@", "vault:s3cret@"),
        ],
    )
    assert result.exit_code != 0
    assert "password" in result.output and "--database-password-file" in result.output
    assert "s3cret" not in result.output
    assert not (data / "server.json").exists()


def test_the_password_comes_from_a_private_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "db.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    settings = ServerSettings(tmp_path, database_url=URL, database_password_file=secret)
    with pytest.raises(ConfigError, match="can be read by others"):
        settings.engine_url()
    secret.chmod(0o600)
    assert settings.engine_url().password == "s3cret"
    settings.save()
    assert "s3cret" not in settings.settings_path.read_text()
    assert ServerSettings.load(tmp_path).engine_url().password == "s3cret"

    monkeypatch.setenv(DATABASE_PASSWORD_ENV, "from-env")
    assert ServerSettings(tmp_path, database_url=URL).engine_url().password == "from-env"
    monkeypatch.delenv(DATABASE_PASSWORD_ENV)
    # Nothing given: libpq finds it itself (~/.pgpass, PGPASSFILE, a service file).
    assert ServerSettings(tmp_path, database_url=URL).engine_url().password is None


@pytest.mark.parametrize(
    "url", ["s3://AKIAEXAMPLE:secret@bucket/p", "s3://bucket/p?aws_secret_access_key=secret"]
)
def test_s3_credentials_are_refused_in_the_blob_store_url(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="credentials"):
        blob_store_from_url(url)
    result = runner.invoke(app, ["server", "init", "--data", str(tmp_path), "--blob-store", url])
    assert result.exit_code != 0 and "AWS_ACCESS_KEY_ID" in result.output
    assert not (tmp_path / "server.json").exists()


def test_blob_files_and_client_folders_are_private(vault_server: RunningServer) -> None:
    account = vault_server.enrol(unique("modes"))
    with account.client() as client:
        upload_stream(client, "private.bin", io.BytesIO(b"x" * 1000))
    blobs = vault_server.data_dir / "blobs"
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in [blobs, *blobs.rglob("*")]}
    assert any(stat.S_ISREG(p.stat().st_mode) for p in modes)
    for path, mode in modes.items():
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    # A client's config folder (made by login) is 0700 too.
    config_dir = account.config_path.parent
    assert stat.S_IMODE(os.stat(config_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(config_dir.parent).st_mode) == 0o700
