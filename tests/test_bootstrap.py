"""`make env` as a newcomer runs it: a fresh clone, only the system Python, no uv, empty HOME.

Debian 12 and Ubuntu 24.04 mark their Python as externally managed (PEP 668): `pip install`
into it is refused, so uv must come from a venv of the project's own (`.tools/`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")
# What `make` and its recipes run besides Python; nothing else is on PATH.
TOOLS = ("make", "sh", "bash", "env", "rm", "git")


def system_python_problem() -> str | None:
    """None when /usr/bin/python3 is a Python >= 3.11, else why the bootstrap test cannot run."""
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} does not exist (no distribution Python on this machine)"
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if version.stdout.strip() != "True":
        return f"{SYSTEM_PYTHON} is older than Python 3.11"
    return None


def bare_path(bin_dir: Path, python: Path) -> str:
    """A PATH holding only `python3` and the tools make needs (no uv, no pip)."""
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, f"{tool} is needed to run make"
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def fresh_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)],
        check=True,
        timeout=120,
    )
    return clone


def machine_network_settings() -> dict[str, str]:
    """The machine's proxy and certificate settings (its network, not tools a newcomer lacks)."""
    keep = ("PROXY", "CERT", "CA_BUNDLE")
    return {
        name: value
        for name, value in os.environ.items()
        if name.upper().startswith(("PIP_", "UV_")) or any(k in name.upper() for k in keep)
    }


def host_uv_cache() -> dict[str, str]:
    """The uv cache `make test` already filled, so the clone does not download it all again."""
    uv = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    if not Path(uv).exists():
        return {}
    found = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=False)
    return {"UV_CACHE_DIR": found.stdout.strip()} if found.returncode == 0 else {}


NO_SYSTEM_PYTHON = system_python_problem()


@pytest.mark.slow
@pytest.mark.skipif(
    NO_SYSTEM_PYTHON is not None,
    reason=f"needs a distribution Python 3.11+ at {SYSTEM_PYTHON}: {NO_SYSTEM_PYTHON}",
)
def test_make_env_on_a_fresh_clone_with_only_the_system_python(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **machine_network_settings(),
        **host_uv_cache(),
        "PATH": bare_path(tmp_path / "bin", SYSTEM_PYTHON),
        "HOME": str(home),
    }
    made = subprocess.run(
        ["make", "env"], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert "installing uv" in made.stdout  # none was on PATH: it went into .tools/
    assert (clone / ".tools" / "bin" / "uv").exists()
    helped = subprocess.run(
        [str(clone / ".venv" / "bin" / "gateway"), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout
    venv_python = (clone / ".venv" / "bin" / "python").resolve()
    assert venv_python == SYSTEM_PYTHON.resolve()  # the system interpreter, no downloaded one


def test_make_says_what_to_install_when_python_has_no_venv_module(tmp_path: Path) -> None:
    # Debian without python3-venv: `python3 -m venv` fails. A stand-in python3 fails the same
    # way (everything else goes to the real interpreter).
    clone = fresh_clone(tmp_path)
    no_venv = tmp_path / "python3-without-venv"
    no_venv.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  echo "The virtual environment was not created successfully" >&2; exit 1\n'
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    no_venv.chmod(0o755)
    env = {"PATH": bare_path(tmp_path / "bin", no_venv), "HOME": str(tmp_path)}
    made = subprocess.run(["make", "uv"], cwd=clone, env=env, capture_output=True, text=True)
    assert made.returncode != 0
    assert "sudo apt-get install python3-venv" in made.stderr
    assert not (clone / ".tools").exists()  # no half-made tools venv left behind


def test_make_reuses_a_uv_already_on_path(tmp_path: Path) -> None:
    uv = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    assert Path(uv).exists(), "make test bootstraps uv before the tests run"
    clone = fresh_clone(tmp_path)
    bin_dir = tmp_path / "bin"
    path = bare_path(bin_dir, Path(sys.executable))
    (bin_dir / "uv").symlink_to(uv)
    made = subprocess.run(
        ["make", "uv"], cwd=clone, env={"PATH": path, "HOME": str(tmp_path)}, capture_output=True
    )
    assert made.returncode == 0
    assert not (clone / ".tools").exists()
