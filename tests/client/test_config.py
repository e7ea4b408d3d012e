"""Connection settings: arguments, environment, TOML profiles, validation, secrets."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

from meshpipe.client import MeshClient
from meshpipe.config import (
    ENVIRONMENTS,
    MeshConfig,
    Secret,
    default_upload_order,
    load_config,
    resolve_url,
)
from meshpipe.errors import ConfigError
from tests.peers import SANDBOX_SHARED_KEY

PASSWORD = "hunter2-very-secret"
SHARED_KEY = "shared-key-very-secret"


def test_environment_names_resolve() -> None:
    assert resolve_url("integration") == ENVIRONMENTS["integration"]
    assert resolve_url("INT") == "https://msg.intspineservices.nhs.uk"
    assert resolve_url("deployment") == "https://msg.depspineservices.nhs.uk"
    assert resolve_url("live") == "https://mesh-sync.spineservices.nhs.uk"
    assert resolve_url("local") == "http://localhost:8700"
    assert resolve_url("http://127.0.0.1:9000/messageexchange/") == "http://127.0.0.1:9000"
    with pytest.raises(ConfigError, match="neither an environment name"):
        resolve_url("staging")


def test_from_environment_variables() -> None:
    environ = {
        "MESH_URL": "local",
        "MESH_MAILBOX": "x26abc1",
        "MESH_PASSWORD": PASSWORD,
        "MESH_SHARED_KEY": SHARED_KEY,
    }
    config = load_config(environ=environ, config_file=None)
    assert config.url == "http://localhost:8700"
    assert config.mailbox == "X26ABC1"
    assert config.password.reveal() == PASSWORD
    assert config.shared_key.reveal() == SHARED_KEY


def test_arguments_override_environment() -> None:
    environ = {"MESH_URL": "local", "MESH_MAILBOX": "X26ABC1", "MESH_PASSWORD": "a"}
    config = load_config(environ=environ, mailbox="X26ABC2", shared_key="k", password=None)
    assert config.mailbox == "X26ABC2"
    assert config.password.reveal() == "a"


def test_toml_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert = tmp_path / "client.crt"
    key = tmp_path / "client.key"
    cert.write_text("cert")
    key.write_text("key")
    config_file = tmp_path / "meshpipe.toml"
    config_file.write_text(
        f"""
default_profile = "sandbox"

[profiles.sandbox]
url = "http://127.0.0.1:8700"
mailbox = "X26ABC1"
password = "{PASSWORD}"
shared_key = "{SANDBOX_SHARED_KEY}"

[profiles.int]
url = "integration"
mailbox = "X26ABC3"
password_env = "MY_INT_PASSWORD"
shared_key_env = "MY_INT_KEY"
client_cert = "{cert}"
client_key = "{key}"
"""
    )
    monkeypatch.setenv("MY_INT_PASSWORD", PASSWORD)
    monkeypatch.setenv("MY_INT_KEY", SHARED_KEY)
    default = load_config(config_file=config_file, environ={})
    assert default.mailbox == "X26ABC1"
    integration = load_config(config_file=config_file, profile="int", environ={})
    assert integration.environment == "integration"
    assert integration.client_cert == cert
    assert integration.shared_key.reveal() == SHARED_KEY
    # environment variables beat the profile, arguments beat both
    overridden = load_config(
        config_file=config_file, environ={"MESH_MAILBOX": "X26ABC2"}, url="local"
    )
    assert (overridden.mailbox, overridden.url) == ("X26ABC2", "http://localhost:8700")
    with pytest.raises(ConfigError, match="profile 'nope' not found"):
        load_config(config_file=config_file, profile="nope", environ={})


def test_profile_chosen_by_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(
        '[profiles.a]\nurl = "local"\nmailbox = "X26ABC1"\npassword = "p"\nshared_key = "k"\n'
    )
    config = load_config(environ={"MESHPIPE_CONFIG": str(config_file), "MESHPIPE_PROFILE": "a"})
    assert config.mailbox == "X26ABC1"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mailbox": "not a mailbox!"}, "mailbox id"),
        ({"password": ""}, "no MESH password"),
        ({"shared_key": ""}, "no MESH shared key"),
        ({"url": "ftp://x"}, "neither an environment"),
        ({"client_cert": "/nonexistent/cert.pem"}, "does not exist"),
        ({"url": "live"}, "needs mutual TLS"),
    ],
)
def test_validation(changes: dict[str, str], message: str) -> None:
    settings = {"url": "local", "mailbox": "X26ABC1", "password": "p", "shared_key": "k"}
    settings.update(changes)
    with pytest.raises(ConfigError, match=message):
        MeshConfig(**settings)  # type: ignore[arg-type]


def test_cert_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="both a client certificate and its key"):
        MeshConfig("local", "X26ABC1", "p", "k", client_cert=cert)  # type: ignore[arg-type]


def test_missing_settings_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match="--url or MESH_URL"):
        load_config(environ={"MESH_MAILBOX": "X26ABC1"})


async def test_secrets_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = MeshConfig("local", "X26ABC1", PASSWORD, SHARED_KEY)  # type: ignore[arg-type]
    client = MeshClient(config)
    texts = [
        repr(config),
        str(config),
        f"{config.password}",
        repr(config.password),
        str(config.shared_key),
        repr(client),
        repr(client._tokens),
    ]
    logging.getLogger("test").info("config %s %r %s", config, config, config.password)
    for text in [*texts, caplog.text]:
        assert PASSWORD not in text
        assert SHARED_KEY not in text
    with pytest.raises(TypeError):
        pickle.dumps(Secret(PASSWORD))
    try:
        MeshConfig("live", "X26ABC1", PASSWORD, SHARED_KEY)  # type: ignore[arg-type]
    except ConfigError as error:
        assert PASSWORD not in str(error)


def test_uploads_default_to_in_order_for_nhs_environments_only(tmp_path: Path) -> None:
    for name in ("integration", "deployment", "live"):
        assert default_upload_order(ENVIRONMENTS[name]) == "in-order"
    assert default_upload_order(ENVIRONMENTS["local"]) == "concurrent"
    assert default_upload_order("https://mesh.example.org") == "concurrent"
    local = MeshConfig("local", "X26ABC1", PASSWORD, SHARED_KEY)
    assert local.effective_upload_order == "concurrent"
    chosen = MeshConfig("local", "X26ABC1", PASSWORD, SHARED_KEY, upload_order="sequential")
    assert chosen.effective_upload_order == "sequential"
    config_file = tmp_path / "c.toml"
    config_file.write_text(
        '[profiles.a]\nurl = "local"\nmailbox = "X26ABC1"\npassword = "p"\nshared_key = "k"\n'
        'upload_order = "in-order"\n'
    )
    assert (
        load_config(config_file=config_file, profile="a", environ={}).effective_upload_order
        == "in-order"
    )
    config_file.write_text(config_file.read_text().replace('"in-order"', '"in_order"'))
    with pytest.raises(ConfigError, match="'in_order' is not one of in-order, concurrent"):
        load_config(config_file=config_file, profile="a", environ={})
