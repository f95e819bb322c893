"""Errors that are the user's to fix (a config value, a data file): ``run.py`` prints them as
one line and exits non-zero, without a traceback (``HYDRA_FULL_ERROR=1`` shows it)."""


class UserError(ValueError):
    """A problem in what the user gave (a config value, a dataset row), not in the code."""


class ConfigError(UserError):
    """A config value the run cannot use: the message names the key, the value and what is
    allowed."""


class StorageError(UserError):
    """A folder the run must write to that it cannot: read-only, full, or a file where a
    folder should be. The message names the path and what to do."""


#: errno values that are the machine's storage, not the code: read-only, no permission, full,
#: over quota, a file where a folder is needed.
_STORAGE_ERRNOS = {"EROFS", "EACCES", "EPERM", "ENOSPC", "EDQUOT", "ENOTDIR", "EEXIST", "EISDIR"}
_FULL = ("No space left on device", "StorageFull", "Disk quota exceeded")


def storage_message(error: BaseException) -> str | None:
    """One line for an error that is the storage's (an ``OSError`` of the kinds above, or a
    library's own error wrapping a full disk, as safetensors' is), else None."""
    import errno

    text = str(error)
    if isinstance(error, OSError) and errno.errorcode.get(error.errno or -1) in _STORAGE_ERRNOS:
        name = errno.errorcode[error.errno]
        path = error.filename or "?"
        if name in ("ENOSPC", "EDQUOT"):
            return (
                f"no space left writing {path} ({error.strerror}): free space there, or put paths.cache_dir "
                "(EAST_CACHE_DIR) on a larger disk; then rerun the same command to continue"
            )
        if name in ("ENOTDIR", "EEXIST", "EISDIR"):
            return f"cannot create {path}: a file stands where a folder is needed ({error.strerror})"
        return (
            f"cannot write {path} ({error.strerror}): point paths.cache_dir (EAST_CACHE_DIR), "
            "hydra.run.dir or paths.output_dir at a writable folder; then rerun the same command"
        )
    if any(marker in text for marker in _FULL):
        return (
            f"the disk is full ({text.splitlines()[0][:200]}): free space, or put paths.cache_dir "
            "(EAST_CACHE_DIR) on a larger disk; then rerun the same command to continue"
        )
    return None


def writable_problem(path: str, key: str) -> str | None:
    """Why a folder ``path`` (config key ``key``) could not be created or written, or None: a
    file in its place or above it, or a nearest existing folder that is not writable."""
    import os
    from pathlib import Path

    p = Path(path).expanduser()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            return None
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == p else f"lies under {probe}, which is a file"
        return f"invalid config {key}={path!r}: it {where}, not a folder"
    if not os.access(probe, os.W_OK):
        return f"invalid config {key}={path!r}: {probe} is not writable; point {key} at a writable folder"
    return None
