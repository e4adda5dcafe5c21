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


def quote(value: object, limit: int = 60) -> str:
    """``repr(value)``, at most ``limit`` characters: a message names what it refuses, but never
    all of a huge or deeply nested value (``reprlib`` stops early, so even a value built from
    thousands of shared references is quoted at once)."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxdict, shortener.maxlist, shortener.maxtuple, shortener.maxset = 3, 4, 4, 4, 4
    shortener.maxstring = shortener.maxother = shortener.maxlong = limit
    text = shortener.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
