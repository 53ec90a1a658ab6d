"""The public API: what `import chatserver` promises, in one sorted `__all__`."""

from __future__ import annotations

import chatserver


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert list(chatserver.__all__) == sorted(chatserver.__all__)
    assert len(set(chatserver.__all__)) == len(chatserver.__all__)
    for name in chatserver.__all__:
        assert hasattr(chatserver, name), name


def test_an_application_needs_only_the_package_root() -> None:
    from chatserver import (  # noqa: F401
        ChatServer,
        RequestContext,
        Settings,
        Store,
        create_app,
        stream_assistant_message,
    )
