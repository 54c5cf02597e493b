"""atomic_write: the user's umask, visible temporary names, stale temporaries of killed writers removed, paths
checked before anything is written."""
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from tsdi_kernels import BiasTable
from tsdi_kernels.pipeline import files
from tsdi_kernels.pipeline.files import atomic_write, check_writable_path, remove_stale_temporaries


class umask:
    """Context manager: run with process umask `mask` (restored after)."""

    def __init__(self, mask):
        self.mask = mask

    def __enter__(self):
        self.old = os.umask(self.mask)

    def __exit__(self, *exc):
        os.umask(self.old)


def write_bytes(data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return write


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_umask(tmp_path, mask, mode):
    path = tmp_path / "out.bin"
    with umask(mask):
        atomic_write(path, write_bytes(b"x"))
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_bytes() == b"x"


def test_bias_table_and_checkpoint_files_get_the_umask(tmp_path):
    table = BiasTable.empty(2, 5)
    table.update(torch.randn(3, 2, 5), torch.randn(3, 2, 5))
    with umask(0o022):
        table.save(tmp_path / "bias.safetensors")
    assert stat.S_IMODE((tmp_path / "bias.safetensors").stat().st_mode) == 0o644
    with umask(0o007):
        table.save(tmp_path / "bias.safetensors")  # a rewrite follows the umask of the rewriting process
    assert stat.S_IMODE((tmp_path / "bias.safetensors").stat().st_mode) == 0o660


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_model_folders_get_the_umask(tmp_path, mask):
    """atomic_write_folder (model folders: the demo's export and the embedded model's cache): the folder, its
    sub-folders and files follow the umask although the writer makes 0600 files and mkdtemp-like 0700 folders."""
    def write(tmp):
        os.mkdir(os.path.join(tmp, "sub"), 0o700)
        for name in ("config.json", os.path.join("sub", "weights.bin")):
            fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"x")
            os.close(fd)

    dest = tmp_path / "model"
    with umask(mask):
        files.atomic_write_folder(dest, write)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((dest / "sub").stat().st_mode) == 0o777 & ~mask
    for f in ("config.json", "sub/weights.bin"):
        assert stat.S_IMODE((dest / f).stat().st_mode) == 0o666 & ~mask
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary left


def test_model_folder_write_failure_leaves_nothing(tmp_path):
    def write(tmp):
        open(os.path.join(tmp, "half"), "wb").close()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_folder(tmp_path / "model", write)
    assert os.listdir(tmp_path) == []


def test_model_folder_does_not_replace_a_finished_one(tmp_path):
    """A non-empty folder already there (another process finished first) is not silently replaced."""
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    with pytest.raises(OSError):
        files.atomic_write_folder(dest, lambda tmp: open(os.path.join(tmp, "config.json"), "w").close())
    assert (dest / "config.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_temporary_is_visible_beside_the_target(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        write_bytes(b"data")(tmp)

    atomic_write(tmp_path / "t.bin", write)
    folder, name = os.path.split(seen[0])
    assert name == "t.bin" and os.path.dirname(folder) == str(tmp_path)
    assert re.fullmatch(rf"\.t\.bin\.tmp-{os.getpid()}-[0-9a-f]{{8}}-[0-9a-f]{{8}}", os.path.basename(folder))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]


def test_failure_and_ctrl_c_leave_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "t.bin"
    atomic_write(path, write_bytes(b"old"))
    for exc in (OSError("disk full"), KeyboardInterrupt()):
        def broken(tmp, exc=exc):
            write_bytes(b"half")(tmp)
            raise exc

        with pytest.raises(type(exc)):
            atomic_write(path, broken)
        assert path.read_bytes() == b"old"
        assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]


# files.py is loaded on its own: importing the package (torch) would take seconds on a busy machine
KILLED_WRITER = textwrap.dedent("""
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location("files", sys.argv[2])
    files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(files)
    atomic_write = files.atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        # as safetensors does: its own temporary beside `tmp`, to be renamed onto it
        with open(os.path.join(os.path.dirname(tmp), ".tmpAbC123"), "wb") as f:
            f.write(b"half of a large table")
        os.kill(os.getpid(), signal.SIGKILL)   # as a kill -9 during a save

    atomic_write(sys.argv[1], write)
""")


def test_a_killed_writer_leaves_a_visible_temporary_that_the_next_write_removes(tmp_path):
    path = tmp_path / "bias.safetensors"
    atomic_write(path, write_bytes(b"good"))
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), files.__file__],
                              capture_output=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        # one visible temporary folder: each write removed those of the writers killed before it
        stale = [p for p in tmp_path.iterdir() if p.name != "bias.safetensors"]
        assert len(stale) == 1 and stale[0].name.startswith(".bias.safetensors.tmp-"), stale
        assert sorted(p.name for p in stale[0].iterdir()) == [".tmpAbC123", "bias.safetensors"]
        assert path.read_bytes() == b"good"  # the old file is intact

    atomic_write(path, write_bytes(b"new"))
    assert [p.name for p in tmp_path.iterdir()] == ["bias.safetensors"]
    assert path.read_bytes() == b"new"


def test_temporaries_of_live_processes_other_hosts_and_other_files_are_kept(tmp_path):
    path = tmp_path / "t.bin"
    host = files._HOST
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    keep = [
        f".t.bin.tmp-{os.getpid()}-{host}-0000abcd",        # a concurrent save in this process
        f".t.bin.tmp-{os.getppid()}-{host}-0000abcd",       # a live process
        f".t.bin.tmp-999999999-{other_host}-0000abcd",      # another host on a shared file system
        f".other.bin.tmp-999999999-{host}-0000abcd",        # another target
        "t.bin.tmp-999999999",                              # not our naming
    ]
    for name in keep:
        (tmp_path / name).mkdir()
    dead = f".t.bin.tmp-999999999-{host}-0000abcd"  # pid above pid_max: no such process
    (tmp_path / dead).mkdir()
    (tmp_path / dead / "t.bin").write_bytes(b"half")
    assert remove_stale_temporaries(path) == [str(tmp_path / dead)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_paths_are_checked_before_writing(tmp_path):
    called = []

    def write(tmp):
        called.append(tmp)

    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_write(tmp_path, write)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "t.bin", write)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        atomic_write(tmp_path / "file" / "t.bin", write)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        atomic_write(tmp_path / "fifo", write)
    assert called == []
    assert check_writable_path(tmp_path / "new.bin") == str(tmp_path / "new.bin")
