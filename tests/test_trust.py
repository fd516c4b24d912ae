"""The pure trust package: every server policy vector does what it says (docs/trust.md), and
the package stays apart from I/O (issue 17: no client/, server/ or token/ imports)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hsm_vault.errors import PolicyFormatError, PolicyVerificationError
from hsm_vault.trust import SignedPolicy, accept_policy, verify_genesis

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "policy"
SPEC = ROOT / "docs" / "trust.md"
FILES = sorted(VECTORS.glob("*.txt"))


def read_vector(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(": ")
        fields[key] = value
    return fields


def run_vector(fields: dict[str, str]) -> None:
    app = bytes.fromhex(fields["app"])
    policy = SignedPolicy.from_text(fields["policy"])
    assert policy.to_text() == fields["policy"]  # one spelling per policy
    if "held" in fields:
        accept_policy(SignedPolicy.from_text(fields["held"]), policy, app)
    else:
        verify_genesis(policy, app)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_policy_vector(path: Path) -> None:
    fields = read_vector(path)
    if fields["expect"] == "success":
        run_vector(fields)
        return
    wanted = {"format failure": PolicyFormatError, "verification failure": PolicyVerificationError}[
        fields["expect"]
    ]
    with pytest.raises(wanted) as info:
        run_vector(fields)
    assert type(info.value) is wanted
    assert info.value.message and "\n" not in info.value.message


def test_every_policy_rule_has_a_vector() -> None:
    rules = set(re.findall(r"^- \*\*(P\d+)\*\*", SPEC.read_text(), flags=re.MULTILINE))
    assert {"P1", "P7"} <= rules
    covered = {read_vector(p)["rule"] for p in FILES}
    assert rules - covered == set(), f"rules without a vector: {sorted(rules - covered)}"
    assert covered - rules - {"ok"} == set()


def test_policy_generator_is_deterministic(tmp_path: Path) -> None:
    script = ROOT / "tests" / "vectors" / "make_policy_vectors.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, cwd=ROOT)
    generated = sorted(tmp_path.glob("*.txt"))
    assert [p.name for p in generated] == [p.name for p in FILES]
    for path in generated:
        assert path.read_bytes() == (VECTORS / path.name).read_bytes(), path.name


def test_trust_code_does_no_io_and_imports_no_client_server_or_token() -> None:
    forbidden = ("hsm_vault.client", "hsm_vault.server", "hsm_vault.token", "hsm_vault.config")
    io_modules = {"requests", "pkcs11", "socket", "pathlib", "os", "subprocess", "sqlalchemy"}
    for path in sorted((ROOT / "hsm_vault" / "trust").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
                assert name.split(".")[0] not in io_modules, f"{path.name} imports {name}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                pytest.fail(f"{path.name} opens a file")
