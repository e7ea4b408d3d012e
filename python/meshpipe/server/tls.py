"""TLS for the server: a certificate and key, optionally client certificates from a CA."""

from __future__ import annotations

import ssl

from meshpipe.server.config import ConfigError, TLSSettings


def server_ssl_context(settings: TLSSettings) -> ssl.SSLContext:
    """TLS 1.2+; with ``client_ca`` the client must (``required``) or may (``optional``) present
    a certificate signed by it, as the MESH platform requires."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.cert, settings.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {settings.cert} / key: {exc}") from None
    if settings.client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(settings.client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load client CA {settings.client_ca}: {exc}") from None
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.client_cert == "required" else ssl.CERT_OPTIONAL
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context
