"""The one exception class for bad input.

A UserError is a problem with what a user gave: a flag, a file, a checkpoint, a folder. The
`wavefield` command prints its message on one line and exits with code 2. Every other
exception is a bug (ours or a library's) and keeps its traceback. UserError is a ValueError,
so Python callers that catch ValueError keep working; MissingError is also a
FileNotFoundError.
"""

import errno


class UserError(ValueError):
    """Bad input from the user: the message names what was expected."""


class MissingError(UserError, FileNotFoundError):
    """A file, folder or package that the user named (or that a command needs) is not there."""


# OSErrors that come from the user's machine rather than from a bug: a path that is missing,
# forbidden or of the wrong kind, a full disk, a file-size limit, a read-only file system, a
# path another process made first (EEXIST, ENOTEMPTY). Not EXDEV: every temporary file is made
# beside its destination, so a rename across devices would be our bug and keeps its traceback.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.ENOTEMPTY,
        errno.ENOSPC,
        errno.EFBIG,
        errno.EDQUOT,
        errno.EROFS,
        errno.ENAMETOOLONG,
        errno.ELOOP,
    }
)


def is_environment_error(e: BaseException) -> bool:
    """True for an OSError the user's machine caused (see ENVIRONMENT_ERRNOS)."""
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS
