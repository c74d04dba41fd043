"""The bounds of a SendInput message's text, checked alike by the hub and the spoke.

A message is UTF-8 text (proto ``string``) of 1 to ``max_input_bytes`` bytes with no NUL
character; anything else is refused with INVALID_ARGUMENT (reason INVALID_COMMAND) before
it is relayed or kept. The limit is a named config value on each side (hub and spoke
``max_input_bytes``, 64 KiB by default): the error names it.
"""

from __future__ import annotations

from . import errors

__all__ = ["DEFAULT_MAX_INPUT_BYTES", "check"]

DEFAULT_MAX_INPUT_BYTES = 64 * 1024
"""The default of the hub's and the spoke's ``max_input_bytes``."""


def check(text: str, max_bytes: int, where: str) -> None:
    """Raise InvalidCommandError unless ``text`` is 1-``max_bytes`` UTF-8 bytes without NUL.

    ``where`` names the side that refuses (``hub h1``, ``spoke s1``), as the message says.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size == 0:
        raise errors.InvalidCommandError("the message is empty: send some text")
    if size > max_bytes:
        raise errors.InvalidCommandError(
            f"the message is {size} bytes, over {where}'s limit of {max_bytes} (max_input_bytes)",
            limit="max_input_bytes",
            max=str(max_bytes),
        )
    if "\x00" in text:
        raise errors.InvalidCommandError("the message must not contain NUL characters")
