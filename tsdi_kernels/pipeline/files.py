"""Files written atomically: a reader sees the old file or the new one, never half of one.

The new file is written in a temporary folder beside the target (os.replace is atomic only within one file
system) with a visible name, ``.<name>.tmp-<pid>-<host>-<random>``, and gets mode 0o666 filtered by the process
umask, like any file the user creates: a bias table written for a team is readable by the team when the umask
says so. A process killed during a save (SIGKILL, power cut) cannot remove its temporaries; the next write to
the same path removes those whose process, on this host, no longer exists.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
from typing import Union

_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temp_pattern(name: str) -> "re.Pattern[str]":
    return re.compile(r"\." + re.escape(name) + r"\.tmp-(\d+)-([0-9a-f]{8})-[0-9a-f]{8}\Z")


def temp_name(name: str) -> str:
    """The name of a new temporary file for target `name` (base name) written by this process."""
    return f".{name}.tmp-{os.getpid()}-{_HOST}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process id we wrote: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's process), or we cannot tell: keep the file
    return True


def remove_stale_temporaries(path: Union[str, os.PathLike]) -> list:
    """Remove temporaries of `path` left by processes of this host that no longer exist; returns their paths.
    Temporaries of live processes (a concurrent save) and of other hosts (a shared file system) are kept."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    pattern = _temp_pattern(name)
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry)
        if not match or match.group(2) != _HOST or _pid_alive(int(match.group(1))):
            continue
        full = os.path.join(folder, entry)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
            removed.append(full)
        except OSError:
            pass  # removed by someone else meanwhile, or not ours to remove
    return removed


def check_writable_path(path: Union[str, os.PathLike], what: str = "output") -> str:
    """Absolute `path` if a file can be written there (its folder exists and it is not a folder itself), else
    FileNotFoundError / IsADirectoryError / NotADirectoryError / ValueError naming `what` and the path. Cheap:
    for checking an output path before expensive work."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{what}: empty path")
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{what}: folder {folder!r} does not exist (for {path!r})")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{what}: {folder!r} is not a folder (for {path!r})")
    try:
        mode = os.stat(full).st_mode
    except FileNotFoundError:
        return full
    except OSError as exc:
        raise ValueError(f"{what}: cannot use {path!r}: {exc.strerror or exc}") from None
    _require_regular(mode, f"{what}: {path!r}")
    return full


def _new_temporary_folder(path: str) -> str:
    """A new, empty temporary folder beside `path` (mode 0o777 & ~umask), after removing stale ones."""
    folder, name = os.path.split(path)
    remove_stale_temporaries(path)
    while True:
        tmp = os.path.join(folder, temp_name(name))
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue  # 32 random bits collided: draw again


def atomic_write(path: Union[str, os.PathLike], write) -> None:
    """Call write(tmp_path), fsync it, then os.replace onto `path`: readers see the old file or the new, never half.

    `tmp_path` lies in a private temporary folder ``.<name>.tmp-<pid>-<host>-<random>`` beside `path`, so whatever
    the writer creates next to it (safetensors writes its own ``.tmpXXXXXX`` and renames it) is removed with it.
    The new file gets mode 0o666 & ~umask: the umask is read from the mode the kernel gives that folder, never
    changed (os.umask is process-wide and racy). A failure or Ctrl-C removes the temporaries; stale temporaries of
    dead processes are removed first."""
    path = check_writable_path(path, "output")
    folder, name = os.path.split(path)
    tmp_dir = _new_temporary_folder(path)
    try:
        mode = stat.S_IMODE(os.stat(tmp_dir).st_mode) & 0o666  # 0o777 & ~umask, without the execute bits
        tmp = os.path.join(tmp_dir, name)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode))
        write(tmp)
        os.chmod(tmp, mode)  # a writer that replaced the file (safetensors: 0600) gets the user's mode back
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    _fsync_folder(folder)


def atomic_write_folder(path: Union[str, os.PathLike], write) -> None:
    """A folder written whole (a model folder): `write(tmp)` fills a temporary folder beside `path`, which then
    takes the place of `path` with os.replace. An existing non-empty `path` makes that replace fail (OSError):
    the caller decides whether to remove it first or to keep the copy another process finished meanwhile.

    Modes follow the umask like atomic_write's, read from the mode the kernel gives a new folder (never by calling
    os.umask): the folder 0o777 & ~umask, its files 0o666 & ~umask (writers such as safetensors create 0600 files,
    mkdtemp 0700 folders). Stale temporaries of dead processes are removed first; a failure removes ours."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = _new_temporary_folder(path)
    try:
        dir_mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o777 & ~umask
        write(tmp)
        for root, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), dir_mode)
            for f in files:
                full = os.path.join(root, f)
                with open(full, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.chmod(full, dir_mode & 0o666)
        os.chmod(tmp, dir_mode)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened or synced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)


def check_readable_file(path: str, what: str) -> None:
    """FileNotFoundError / IsADirectoryError / ValueError naming `what` unless `path` is a regular file (never
    opens it: a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path!r} does not exist") from None
    except NotADirectoryError:
        raise FileNotFoundError(f"{what} {path!r} does not exist (a part of the path is not a folder)") from None
    except OSError as exc:
        raise ValueError(f"{what} {path!r} cannot be read: {exc.strerror or exc}") from None
    _require_regular(mode, f"{what} {path!r}")


def _require_regular(mode: int, named: str) -> None:
    """IsADirectoryError / ValueError starting with `named` unless `mode` (os.stat) is a regular file's."""
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{named} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{named} is not a regular file")


class ModelFolderError(ValueError):
    """A path that must be a Hugging Face model folder is not one (the one error of `check_model_folder`)."""


def check_model_folder(path: Union[str, os.PathLike], what: str, *, model: bool = True) -> None:
    """ModelFolderError naming `what` unless `path` is a folder holding a model (config.json) or, with model=False,
    any folder (a tokenizer's). Cheap: run before anything is loaded."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFolderError(f"{what}: no such model folder: {path!r}")
    if not os.path.isdir(path):
        raise ModelFolderError(f"{what}: {path!r} is not a folder (expected a Hugging Face model folder)")
    if model and not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelFolderError(f"{what}: {path!r} is not a Hugging Face model folder (no config.json)")
