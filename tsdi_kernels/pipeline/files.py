"""Files written atomically: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from typing import Union


def atomic_write(path: Union[str, os.PathLike], write) -> None:
    """Call write(tmp_path), fsync it, then os.replace onto `path`: readers see the old file or the new, never half.
    The temporary file lives in the target folder because os.replace is only atomic within one file system."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
