"""The errors cmhash raises for problems a user can fix, and how their messages, which quote users'
data, are made safe to print: the CLI prints them without a traceback."""


class CmhashError(Exception):
    """A problem with the user's input or setup. The message names the file, the item and the fix."""


class ValidationFailed(CmhashError):
    """The prepared data failed one or more data-quality expectations."""


def for_terminal(text: str) -> str:
    """``text`` with every unprintable character shown as its escape (``\\x1b``, ``\\r``, ``\\u202e``),
    except newlines and tabs: labels and captions come from users' data, and an ANSI escape sequence
    in one must not recolour, clear or rewrite the terminal it is printed to."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else repr(ch)[1:-1] for ch in text)
