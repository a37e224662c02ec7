"""The install: scripts/, tools/ and configs/ are packages of the distribution (``tav_scripts``, ``tav_tools``,
``tav_configs``), so a plain (non-editable) install has the presets and the console commands, and no script
edits ``sys.path``."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from .helpers import REPO


def test_wheel_carries_presets_scripts_and_commands(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path / "wheel"), str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("tav-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    presets = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))
    assert [n.removeprefix("tav_configs/") for n in names if n.startswith("tav_configs/") and n.endswith(".yaml")] \
        == presets
    assert "tav_scripts/sample_tav.py" in names and "tav_tools/tf_fvd/fvd.py" in names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "tav-sample = tav_scripts.sample_tav:main" in entry and "tav-fvd = tav_tools.tf_fvd.fvd:main" in entry

    # installed outside the checkout, the presets come from the installed package
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    probe = ("import tav.config as c; import tav_scripts.sample_tav as s; "
             "print(c.CONFIG_DIR); print(c.list_presets('gpt')); print(s.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    config_dir, gpt_presets, script = out.stdout.splitlines()
    assert config_dir.startswith(str(tmp_path / "site")) and script.startswith(str(tmp_path / "site"))
    assert "urmp" in gpt_presets and "tiny" in gpt_presets


def test_no_path_hacks_or_import_fallbacks():
    """Scripts and tools import each other as installed packages: no sys.path edits, no second import path."""
    for folder in ("scripts", "tools", "tav", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "sys.path.insert" not in text and "sys.path.append" not in text, path
            if folder in ("scripts", "tools"):
                assert "except ImportError" not in text, path


def _lock() -> dict[str, dict[str, str]]:
    """{file name: {normalised project name: pinned version}} for requirements/lock-*.txt."""
    from packaging.utils import canonicalize_name
    pins = {}
    for path in sorted((REPO / "requirements").glob("lock-*.txt")):
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        assert all(line.count("==") == 1 for line in lines), path
        pins[path.name] = {canonicalize_name(n): v for n, v in (line.split("==") for line in lines)}
    return pins


def test_lock_pins_what_setup_py_asks():
    """`make` installs the pinned lock: every requirement of tav and of its dev extra is pinned there, at a version
    the requirement admits, and each project is pinned once (torch and its CUDA libraries in one half)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    lock = _lock()
    assert sorted(lock) == ["lock-rest.txt", "lock-torch.txt"]
    assert not set(lock["lock-torch.txt"]) & set(lock["lock-rest.txt"])
    assert {"torch", "triton", "nvidia-cudnn-cu13"} <= set(lock["lock-torch.txt"])
    pins = {**lock["lock-torch.txt"], **lock["lock-rest.txt"]}
    asked = [Requirement(r) for r in requires("tav")]
    asked = [r for r in asked if r.marker is None or r.marker.evaluate({"extra": "dev"})]
    assert len(asked) > 15 and any(r.name == "pytest" for r in asked)
    for req in asked:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements/lock-*.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"the lock pins {name}=={pins[name]}: {req}"
