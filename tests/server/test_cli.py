"""meshpipe serve's flags, mesh-sandbox's environment variables and data files."""

from __future__ import annotations

import json
from pathlib import Path

import mesh_sandbox
import pytest

from meshpipe.errors import ConfigError
from meshpipe.server.cli import build_parser, config_from_args, main
from meshpipe.server.config import (
    DEFAULT_MAILBOXES,
    DEFAULT_WORKFLOWS,
    load_mailboxes,
    load_workflows,
)

SANDBOX_DATA = Path(mesh_sandbox.__file__).parent / "store" / "data"


def parse(*argv: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return config_from_args(build_parser().parse_args(list(argv)), env or {})


def test_defaults_match_the_sandbox_data_files() -> None:
    assert load_mailboxes(SANDBOX_DATA / "mailboxes.jsonl") == DEFAULT_MAILBOXES
    assert load_workflows(SANDBOX_DATA / "workflows.jsonl") == DEFAULT_WORKFLOWS


def test_sandbox_environment_variables_and_flag_precedence(tmp_path: Path) -> None:
    env = {
        "SHARED_KEY": "FromEnv",
        "AUTH_MODE": "none",
        "STORE_MODE": "file",
        "MAILBOXES_DATA_DIR": str(tmp_path),
    }
    config = parse(env=env)
    assert (config.shared_key, config.auth_mode, config.store, config.data_dir) == (
        "FromEnv",
        "none",
        "dir",
        tmp_path,
    )
    assert "FromEnv" not in repr(config)
    config = parse("--shared-key", "FromFlag", "--store", "discard", "--port", "0", env=env)
    assert (config.shared_key, config.store, config.port) == ("FromFlag", "discard", 0)
    assert parse().store == "memory" and parse().rules == "strict"
    assert parse("--rules", "sandbox").shared_key == "Banana"  # the sandbox's own default
    with pytest.raises(ConfigError):
        parse(env={"STORE_MODE": "canned"})
    with pytest.raises(ConfigError):
        parse("--store", "dir")  # no directory


def test_custom_data_files(tmp_path: Path) -> None:
    mailboxes = tmp_path / "mailboxes.jsonl"
    mailboxes.write_text(
        json.dumps(
            {"mailbox_id": "a1b2", "mailbox_name": "Mine", "ods_code": "a1", "password": "secret"}
        )
        + "\n"
    )
    workflows = tmp_path / "workflows.jsonl"
    workflows.write_text(
        json.dumps({"workflow_id": "MINE", "senders": ["A1B2"], "receivers": ["a1b2"]})
    )
    config = parse("--mailboxes", str(mailboxes), "--workflows", str(workflows))
    assert [m.mailbox_id for m in config.mailboxes] == ["A1B2"]
    assert "secret" not in repr(config.mailboxes)
    assert config.workflows[0].receivers == ("A1B2",)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json")
    with pytest.raises(ConfigError):
        load_mailboxes(broken)


def test_main_reports_bad_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--store", "dir"]) == 2
    assert "data directory" in capsys.readouterr().err
    assert main(["--faults", str(tmp_path / "missing.json")]) == 2
    assert "fault plan" in capsys.readouterr().err
