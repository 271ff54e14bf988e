"""npm package tarballs for the dataset builders: pinned versions fetched once with `npm pack` into a cache, or taken
from a folder the user filled (no npm, no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from latentdiff.errors import LatentDiffError


def default_cache_dir() -> Path:
    """~/.cache/latentdiff/npm, or under $XDG_CACHE_HOME."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latentdiff" / "npm"


def _tarball_name(package: tuple[str, str, str]) -> str:
    return f"{package[2]}-{package[1]}.tgz"


def find_tarball(folder: Path, package: tuple[str, str, str]) -> Path:
    """The pinned tarball in folder (or the only other version of it there)."""
    exact = folder / _tarball_name(package)
    if exact.is_file():
        return exact
    others = sorted(folder.glob(f"{package[2]}-[0-9]*.tgz"))
    if len(others) == 1:
        return others[0]
    raise LatentDiffError(f"{_tarball_name(package)} not found in {folder} (get it with "
                          f"`npm pack {package[0]}@{package[1]}`)")


def npm_failure_cause(stderr: str) -> str:
    """The line of npm's error output that names the cause (error code, reason), not its log-file footer."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lines = [line.removeprefix("npm error").removeprefix("npm ERR!").strip() for line in lines]
    lines = [line for line in lines if line and "complete log of this run" not in line]
    for marker in ("reason:", "code ", "404"):
        for line in lines:
            if marker in line:
                return line
    return lines[-1] if lines else "no output"


def fetch_tarball(package: tuple[str, str, str], cache_dir: Path) -> Path:
    """The package tarball from the cache, downloaded there with `npm pack` if absent."""
    target = cache_dir / _tarball_name(package)
    if target.is_file():
        return target
    hint = (f"download it where the registry is reachable (`npm pack {package[0]}@{package[1]}`) and pass "
            f"--tarballs DIR holding {target.name}")
    npm = shutil.which("npm")
    if npm is None:
        raise LatentDiffError(f"npm not found: install Node.js, or {hint}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        done = subprocess.run([npm, "pack", f"{package[0]}@{package[1]}", "--pack-destination", tmp],
                              capture_output=True, text=True)
        packed = Path(tmp) / target.name
        if done.returncode != 0 or not packed.is_file():
            cause = npm_failure_cause(done.stderr) if done.returncode != 0 else f"no {target.name} written"
            raise LatentDiffError(f"npm pack {package[0]}@{package[1]} failed ({cause}); {hint}")
        packed.replace(target)
    return target


def open_tarball(path: Path) -> tarfile.TarFile:
    """A downloaded .tgz opened for reading; one line when it is not a readable tarball."""
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise LatentDiffError(f"cannot read tarball {path}: {e}") from None
