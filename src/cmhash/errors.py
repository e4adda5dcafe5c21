"""The errors cmhash raises for problems a user can fix; the CLI prints them without a traceback."""


class CmhashError(Exception):
    """A problem with the user's input or setup. The message names the file, the item and the fix."""


class ValidationFailed(CmhashError):
    """The prepared data failed one or more data-quality expectations."""
