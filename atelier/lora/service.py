"""LoRA file rules: safe names, streamed size-capped writes, safetensors checks, exclusive names, the bin.

Files live at ``<root>/<entity_type>/<filename>``; ``partial_path`` is ``<entity_type>/<filename>``. An upload
is streamed in chunks into a hidden temporary file in its target folder (never held in memory), checked, and
only then published under its final name with ``os.link``, which fails instead of overwriting: two concurrent
uploads of one name both succeed under different versions (or the second gets 409), and a reader never sees
a half-written file. Deletion moves the file to ``<bin_root>/<partial_path>``; nothing is ever removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from atelier.core.errors import ConflictError, InvalidInputError, NotFoundError, PayloadTooLargeError
from atelier.core.inputs import safe_relative_path
from atelier.core.time import utcnow
from atelier.settings import Settings

CHUNK_BYTES = 1024 * 1024
ALLOWED_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
NO_TYPE = "no_type_provided"
ENTITY_TYPES = frozenset({"clothes", "identities", "product", "styles"})
ADMIN_ENTITY_TYPES = ENTITY_TYPES | {"faces"}
MAX_VERSIONS = 10_000
MAX_STEM_CHARS = 200
# The safetensors library refuses headers above 100 MB; a LoRA header is a few kB.
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
# Bits per element of the safetensors dtypes whose byte size is exact (sub-byte float types are not checked).
_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
}
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_FILE_LOC = ("body", "file")
_TEMP_PREFIX = ".upload-"


@dataclass(frozen=True)
class StoredLora:
    """A LoRA file that was stored."""

    path: Path
    partial_path: str
    filename: str
    size: int
    entity_type: str
    uploaded_at: datetime


@dataclass(frozen=True)
class BinnedLora:
    """A LoRA file that was moved to the bin."""

    full_path: Path
    bin_path: Path
    deleted_at: datetime


def iso_utc(moment: datetime) -> str:
    """ISO-8601 with a ``Z`` suffix, as the spec's examples show."""
    return moment.isoformat().replace("+00:00", "Z")


def resolve_entity_type(value: str | None, *, admin: bool) -> str:
    """The entity type folder: one of the allowed types (``faces`` for admins only), or ``no_type_provided``."""
    if value is None or not value.strip():
        return NO_TYPE
    entity = value.strip().lower()
    allowed = ADMIN_ENTITY_TYPES if admin else ENTITY_TYPES
    if entity == NO_TYPE or entity in allowed:
        return entity
    raise InvalidInputError(
        f"unknown entity_type {value!r}; allowed: {', '.join(sorted(allowed))}",
        loc=("body", "entity_type"),
        details={"allowed": sorted(allowed)},
    )


def safe_filename(raw: str | None) -> str:
    """The client's file name without directories, limited to ``[A-Za-z0-9._-]``, with an allowed extension."""
    base = re.split(r"[\\/]", raw or "")[-1]
    cleaned = _UNSAFE_CHARS.sub("_", base).lstrip(".")  # no hidden files, no '.' or '..'
    stem, dot, extension = cleaned.rpartition(".")
    suffix = f".{extension.lower()}"
    if not dot or suffix not in ALLOWED_EXTENSIONS:
        raise InvalidInputError(
            f"file name {raw!r} must end with one of {', '.join(ALLOWED_EXTENSIONS)}",
            loc=_FILE_LOC,
            details={"allowed_extensions": list(ALLOWED_EXTENSIONS)},
        )
    if not stem.strip("._-"):
        raise InvalidInputError(f"file name {raw!r} has no usable name before its extension", loc=_FILE_LOC)
    return f"{stem[:MAX_STEM_CHARS]}.{extension}"


def versioned_names(filename: str) -> Iterator[str]:
    """``name.ext``, then ``name_v2.ext``, ``name_v3.ext`` … up to ``MAX_VERSIONS``."""
    stem, _, extension = filename.rpartition(".")
    yield filename
    for version in range(2, MAX_VERSIONS + 1):
        yield f"{stem}_v{version}.{extension}"


def _invalid_safetensors(reason: str) -> InvalidInputError:
    return InvalidInputError(f"not a valid safetensors file: {reason}", loc=_FILE_LOC)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_safetensors(stream: IO[bytes], size: int) -> None:
    """Check the safetensors layout as the loader does: header length, JSON header, tensor entries.

    Layout: 8 bytes little-endian header length N, N bytes of a JSON object (tensor name → ``dtype``,
    ``shape``, ``data_offsets`` relative to the data buffer; optional ``__metadata__`` of strings), then the
    data buffer, which the tensors must cover exactly, back to back.
    """
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise _invalid_safetensors("shorter than its 8-byte header length")
    header_len = int.from_bytes(prefix, "little")
    if header_len == 0 or header_len > size - 8 or header_len > SAFETENSORS_MAX_HEADER_BYTES:
        raise _invalid_safetensors(f"header length {header_len} does not fit a file of {size} bytes")
    raw = stream.read(header_len)
    if len(raw) != header_len:
        raise _invalid_safetensors("truncated header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid_safetensors(f"header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _invalid_safetensors("header is not a JSON object")
    data_len = size - 8 - header_len
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _invalid_safetensors("__metadata__ must map strings to strings")
            continue
        if not isinstance(entry, dict):
            raise _invalid_safetensors(f"tensor {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or not dtype:
            raise _invalid_safetensors(f"tensor {name!r} has no dtype")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _invalid_safetensors(f"tensor {name!r} has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise _invalid_safetensors(f"tensor {name!r} has invalid data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise _invalid_safetensors(f"tensor {name!r} lies outside the data buffer")
        bits = _DTYPE_BITS.get(dtype)
        if bits is not None and math.prod(shape) * bits != (end - begin) * 8:
            raise _invalid_safetensors(f"tensor {name!r}: {end - begin} bytes do not match {dtype}{shape}")
        spans.append((begin, end, name))
    covered = 0
    for begin, end, name in sorted(spans):
        if begin != covered:
            raise _invalid_safetensors(f"tensor {name!r} does not follow the previous tensor")
        covered = end
    if covered != data_len:
        raise _invalid_safetensors(f"tensors cover {covered} of the {data_len} data bytes")


def _publish_exclusively(temp: Path, final: Path) -> bool:
    """Give ``temp``'s content the name ``final`` unless that name exists (False then); never overwrites."""
    try:
        os.link(temp, final)
        return True
    except FileExistsError:
        return False
    except OSError as exc:  # a filesystem without hard links: reserve the name, then move the file onto it
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
    try:
        os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    os.replace(temp, final)
    return True


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class LoraFiles:
    """The LoRA folder and its bin."""

    def __init__(self, root: Path, bin_root: Path, max_bytes: int) -> None:
        self.root = root
        self.bin_root = bin_root
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> LoraFiles:
        """The folders and size cap the settings describe."""
        return cls(settings.lora_root, settings.lora_bin_root, settings.lora.max_bytes)

    @staticmethod
    def _inside(base: Path, folder: Path, loc: tuple[str, ...]) -> Path:
        """Create ``folder`` and make sure it resolves inside ``base`` (no escape through a symlink)."""
        folder.mkdir(parents=True, exist_ok=True)
        resolved = folder.resolve()
        if not resolved.is_relative_to(base.resolve()):
            raise InvalidInputError("the path leaves the LoRA folder", loc=loc)
        return resolved

    def save(self, source: IO[bytes], raw_name: str | None, entity_type: str, *, versioned: bool) -> StoredLora:
        """Stream ``source`` into ``<root>/<entity_type>/``; nothing is left behind when it is refused.

        ``versioned``: a taken name becomes ``name_v2.ext``, ``name_v3.ext`` …; otherwise it is a 409.
        """
        filename = safe_filename(raw_name)
        folder = self._inside(self.root, self.root / entity_type, ("body", "entity_type"))
        fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".part", dir=folder)
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                size = self._copy_capped(source, out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, 0o644)
            if size == 0:
                raise InvalidInputError("the file is empty", loc=_FILE_LOC)
            if filename.lower().endswith(".safetensors"):
                with temp.open("rb") as stream:
                    check_safetensors(stream, size)
            name = self._publish(temp, folder, filename, versioned)
        finally:
            _unlink_quietly(temp)
        return StoredLora(
            path=self.root / entity_type / name,
            partial_path=f"{entity_type}/{name}",
            filename=name,
            size=size,
            entity_type=entity_type,
            uploaded_at=utcnow(),
        )

    @staticmethod
    def _publish(temp: Path, folder: Path, filename: str, versioned: bool) -> str:
        """The first free name of ``filename``'s versions (only ``filename`` itself unless ``versioned``)."""
        for name in versioned_names(filename) if versioned else (filename,):
            if _publish_exclusively(temp, folder / name):
                return name
        if versioned:
            raise ConflictError(f"too many versions of {folder.name}/{filename}")
        raise ConflictError(
            f"a LoRA file {folder.name}/{filename} already exists (use_safe_filename=true versions it instead)"
        )

    def _copy_capped(self, source: IO[bytes], out: IO[bytes]) -> int:
        size = 0
        while chunk := source.read(CHUNK_BYTES):
            size += len(chunk)
            if size > self.max_bytes:
                raise PayloadTooLargeError(
                    f"the LoRA file is larger than {self.max_bytes} bytes", details={"max_bytes": self.max_bytes}
                )
            out.write(chunk)
        return size

    def move_to_bin(self, partial_path: str) -> BinnedLora:
        """Move ``<root>/<partial_path>`` to ``<bin_root>/<partial_path>`` (a taken bin name gets a suffix)."""
        loc = ("body", "partial_path")
        relative = safe_relative_path(partial_path, loc=loc)
        source = self.root / relative
        missing = NotFoundError(f"no LoRA file {relative}")
        if not source.name.lower().endswith(ALLOWED_EXTENSIONS) or source.name.startswith("."):
            raise missing  # only LoRA files, never an upload's temporary file
        if not source.parent.is_dir():
            raise missing
        source = self._inside(self.root, source.parent, loc) / source.name
        if source.is_symlink() or not source.is_file():
            raise missing
        bin_folder = self._inside(self.bin_root, (self.bin_root / relative).parent, loc)
        deleted_at = utcnow()
        for candidate in self._bin_names(source.name, deleted_at):
            target = bin_folder / candidate
            try:  # reserve the bin name, then move the file onto the reservation
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                continue
            break
        else:
            raise ConflictError(f"no free name in the bin for {relative}")
        try:
            self._move(source, target)
        except BaseException:
            _unlink_quietly(target)
            raise
        return BinnedLora(full_path=self.root / relative, bin_path=target, deleted_at=deleted_at)

    @staticmethod
    def _bin_names(name: str, moment: datetime) -> Iterator[str]:
        stem, _, extension = name.rpartition(".")
        stamp = moment.strftime("%Y%m%dT%H%M%S%fZ")
        yield name
        yield f"{stem}.deleted-{stamp}.{extension}"
        for _ in range(100):
            yield f"{stem}.deleted-{stamp}-{uuid.uuid4().hex[:8]}.{extension}"

    @staticmethod
    def _move(source: Path, target: Path) -> None:
        """Atomic rename; across filesystems a copy, then the original is unlinked."""
        try:
            os.replace(source, target)
            return
        except FileNotFoundError as exc:  # a concurrent delete moved it first
            raise NotFoundError(f"no LoRA file {source.name}") from exc
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        temp = target.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}.part")
        try:
            shutil.copy2(source, temp)
            os.replace(temp, target)
        finally:
            _unlink_quietly(temp)
        try:
            source.unlink()
        except FileNotFoundError as exc:
            raise NotFoundError(f"no LoRA file {source.name}") from exc
