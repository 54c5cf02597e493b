"""What users install: the source distribution, the wheel built from it, and that wheel installed into a clean
virtual environment and used from outside the source tree (not the editable install the suite runs on); and the
suite's own model cache, so that a fresh clone tests the same way as a warm one.

The sdist and the wheel are built once for the module (the C++ extension compiles: about a minute on 2 cores), with
the PEP 517 hooks pip calls, from a copy of the checkout without its build outputs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tsdi_kernels"
BUILD_OUTPUTS = shutil.ignore_patterns(".git", ".venv*", ".test-cache", "build", "dist", "out", "*.egg-info",
                                       "__pycache__", "*.py[cod]", "*.so", ".pytest_cache", ".benchmarks")


def test_the_suite_has_its_own_model_cache():
    """tests/conftest.py points the embedded model's cache at the checkout's git-ignored .test-cache/: no test
    reads or writes the user's cache, and none depends on what an earlier session left there."""
    from tsdi_kernels.demo import models

    assert models.cache_dir() == ROOT / ".test-cache" / "tsdi_kernels"
    assert ".test-cache/" in (ROOT / ".gitignore").read_text().split()


def source_files() -> tuple[set[str], set[str]]:
    """(modules, other files) of the package in the source tree, as paths relative to ROOT with '/'."""
    modules, data = set(), set()
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith((".pyc", ".so")):
                continue
            rel = Path(folder, name).relative_to(ROOT).as_posix()
            (modules if name.endswith(".py") else data).add(rel)
    return modules, data


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def clean_env(**extra) -> dict:
    """The caller's environment without what would bend the result: PYTHONPATH (the source tree), the switch that
    drops the extension, and the interpreter mode the suite sets for Triton."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TSDI_DISABLE_EXTENSION", "TRITON_INTERPRET", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(sdist, wheel): the sdist built from a copy of the checkout, and the wheel built from the unpacked sdist (as
    `pip install <sdist>` does), against this environment's torch (--no-build-isolation, as the README says)."""
    tmp = tmp_path_factory.mktemp("dists")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=BUILD_OUTPUTS)
    hook = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    name = run([sys.executable, "-c", hook, tmp / "sdist"], cwd=source, env=clean_env()).stdout.strip().splitlines()[-1]
    sdist = tmp / "sdist" / name
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    unpacked = next((tmp / "unpacked").iterdir())
    # The environment's bin folder on PATH: torch's BuildExtension compiles in parallel with its `ninja`.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", tmp / "wheel", unpacked], cwd=tmp, env=clean_env(PATH=path))
    (wheel,) = (tmp / "wheel").glob("tsdi_kernels-*.whl")
    return sdist, wheel


@pytest.mark.slow
def test_sdist_has_the_sources_and_no_build_outputs(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    csrc = {f"csrc/{p.name}" for p in (ROOT / "csrc").iterdir() if p.suffix in (".cpp", ".h")}
    assert any(n.endswith(".h") for n in csrc) and any(n.endswith(".cpp") for n in csrc)
    modules, data = source_files()
    assert not (csrc | modules | data | {"setup.py", "pyproject.toml", "README.md", "MANIFEST.in"}) - names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc")) or "__pycache__" in n]
    assert top.startswith("tsdi_kernels-")


@pytest.mark.slow
def test_wheel_ships_every_module_data_file_and_the_extension(dists):
    _, wheel = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    modules, data = source_files()
    assert not modules - names, "modules missing from the wheel"
    assert not data - names, "data files missing from the wheel"
    assert [n for n in names if n.startswith("tsdi_kernels/_C") and n.endswith(".so")], "no C++ extension"
    assert not [n for n in names if n.startswith(("csrc/", "tests/", "benchmarks/"))]


@pytest.fixture(scope="module")
def installed(dists, tmp_path_factory):
    """A clean venv with the wheel installed: its bin folder.

    Its dependencies (torch, transformers, ...) come from this environment through a .pth file pointing at a
    folder of links to this environment's site-packages entries, minus this package and its editable-install
    hooks: reinstalling torch (750 MB) would cost minutes and test nothing of ours, while linking the whole
    site-packages would put the editable install (the source tree) within reach. The test checks that what is
    imported is the wheel's copy."""
    _, wheel = dists
    tmp = tmp_path_factory.mktemp("venv")
    env_dir = tmp / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    deps = tmp / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        if entry.name.startswith(("tsdi_kernels", "tsdi-kernels", "__editable__")) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    python = env_dir / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(f"{deps}\n")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp, env=clean_env())
    return env_dir / "bin"


CHECK = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import tsdi_kernels
    from tsdi_kernels.demo import models
    from tsdi_kernels.evaluation.prompts import load_prompts

    names = sorted(m.name for m in pkgutil.walk_packages(tsdi_kernels.__path__, "tsdi_kernels."))
    for name in names:
        if not name.endswith(".__main__"):  # running it would run the command line
            importlib.import_module(name)
    prompts = load_prompts()
    tensors, meta = models.load_adapter()
    print(json.dumps({"file": tsdi_kernels.__file__, "modules": names, "sys_path": sys.path,
                      "backends": tsdi_kernels.backends()["debias_sample"],
                      "prompts": sorted({p.label for p in prompts}), "num_prompts": len(prompts),
                      "adapter_tensors": len(tensors)}))
""")


@pytest.mark.slow
def test_installed_wheel_works_outside_the_source_tree(installed, tmp_path):
    env = clean_env()
    env.pop("TSDI_CACHE", None)  # nothing here reads a model
    result = json.loads(run([installed / "python", "-c", CHECK], cwd=tmp_path, env=env).stdout.splitlines()[-1])
    site = installed.parent
    assert Path(result["file"]).is_relative_to(site), result["file"]
    assert not [p for p in result["sys_path"] if p and Path(p).resolve() == ROOT]
    modules, _ = source_files()
    expected = {p[:-3].replace("/", ".").removesuffix(".__init__") for p in modules}
    assert set(result["modules"]) - {"tsdi_kernels._C"} == expected - {"tsdi_kernels"}
    assert "tsdi_kernels._C" in result["modules"] and result["backends"]["cpu"] == "cpp"
    assert result["prompts"] == ["benign", "harmful"] and result["num_prompts"] > 0
    assert result["adapter_tensors"] > 0
    for argv in (["--help"], ["eval", "--help"]):
        out = run([installed / "tsdi", *argv], cwd=tmp_path, env=env).stdout
        assert out.startswith("usage: tsdi"), out
