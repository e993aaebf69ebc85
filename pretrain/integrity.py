"""Checkpoint files that are what was written, read without running anything they contain.

Checksums. Every checkpoint file gets a SHA-256 beside it when it is saved: `NAME.sha256` for a
single-file checkpoint, `sha256sums.txt` inside a DeepSpeed checkpoint directory (one line per
shard); both in `sha256sum` format, so `sha256sum -c` checks them too. `verify_checkpoint` compares
them before anything reads the checkpoint. A checkpoint written before checksums existed is
checked against the CRC-32 that torch's zip format stores for every record instead.

Weights-only loading. `load_weights_only` reads with torch's restricted unpickler: tensors,
containers, numbers and strings, plus an allow-list of the few plain classes DeepSpeed's optimizer
shards hold (its ZeRO stage enum, loss-scaler state and fragment addresses). A file that needs any
other global (a crafted pickle's `os.system`, say) is refused with its name, never unpickled.
DeepSpeed reads its own shards with the full unpickler: `check_deepspeed_files_loadable` reads
every shard weights-only first, so DeepSpeed only ever unpickles bytes that passed that check.
"""

from __future__ import annotations

import errno
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from pretrain.errors import UserError

CHECKSUM_SUFFIX = ".sha256"
"""Beside a single-file checkpoint: `last.ckpt.sha256`."""
DIRECTORY_SUMS = "sha256sums.txt"
"""Inside a DeepSpeed checkpoint directory: one `HASH  RELATIVE_PATH` line per file."""
_CHUNK = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
_PICKLE_MAGIC = b"\x80"  # torch's legacy format starts with a pickle protocol opcode


class CorruptCheckpointError(UserError):
    """A checkpoint file's bytes are not those written at save time."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(file: Path) -> Path:
    return Path(file).with_name(Path(file).name + CHECKSUM_SUFFIX)


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def checksum_line(digest: str, name: str) -> str:
    return f"{digest}  {name}\n"


def write_file_checksum(final: Path, digest: str) -> Path:
    """Write `final.sha256` for a file whose SHA-256 is `digest`; return the sidecar's path."""
    sidecar = checksum_path(final)
    _write_text_atomically(sidecar, checksum_line(digest, Path(final).name))
    return sidecar


def write_directory_checksums(directory: Path) -> None:
    """`sha256sums.txt` over every file under `directory` (relative paths, sorted)."""
    directory = Path(directory)
    lines = [
        checksum_line(sha256_of(f), f.relative_to(directory).as_posix())
        for f in sorted(p for p in directory.rglob("*") if p.is_file())
        if f.name != DIRECTORY_SUMS
    ]
    _write_text_atomically(directory / DIRECTORY_SUMS, "".join(lines))


def _parse_sums(text: str, source: Path) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise CorruptCheckpointError(f"checkpoint corrupt: {source} is not a sha256sum file")
        sums[name.strip()] = digest
    return sums


def verify_checkpoint(path: Path) -> bool:
    """Check a checkpoint file or DeepSpeed directory against the checksums written with it.

    Returns True when checksums were found and match, False when the checkpoint predates them
    (its zip records' CRC-32 were checked instead); raises `CorruptCheckpointError` naming the
    first file whose bytes differ.
    """
    path = Path(path)
    if path.is_dir():
        sums_file = path / DIRECTORY_SUMS
        if not sums_file.is_file():
            for shard in sorted(path.rglob("*.pt")):
                _check_zip_crc(shard)
            return False
        sums = _parse_sums(sums_file.read_text(encoding="utf-8"), sums_file)
        for name, digest in sums.items():
            file = path / name
            if not file.is_file():
                raise CorruptCheckpointError(
                    f"checkpoint corrupt: {file} is listed in {sums_file} but missing"
                )
            if sha256_of(file) != digest:
                raise CorruptCheckpointError(
                    f"checkpoint corrupt: {file} (its SHA-256 differs from the one in {sums_file} "
                    f"written at save time)"
                )
        return True
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        _check_zip_crc(path)
        return False
    sums = _parse_sums(sidecar.read_text(encoding="utf-8"), sidecar)
    expected = sums.get(path.name) or next(iter(sums.values()), None)
    if expected is None or sha256_of(path) != expected:
        raise CorruptCheckpointError(
            f"checkpoint corrupt: {path} (its SHA-256 differs from {sidecar.name}, written at save "
            f"time)"
        )
    return True


def _check_zip_crc(file: Path) -> None:
    """CRC-32 of every record of a torch zip file (files without a `.sha256`)."""
    if not looks_like_torch_file(file):
        return  # the loader names what it is instead
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CorruptCheckpointError(
            f"checkpoint corrupt: {file} is truncated or damaged ({type(err).__name__}: {err})"
        ) from None
    if bad is not None:
        raise CorruptCheckpointError(
            f"checkpoint corrupt: {file} (record {bad} fails its CRC-32 check)"
        )


def looks_like_torch_file(file: Path) -> bool:
    """Whether `file` starts like something `torch.save` writes (zip, or a legacy pickle)."""
    try:
        with open(file, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == _ZIP_MAGIC or head[:1] == _PICKLE_MAGIC


def deepspeed_safe_globals() -> list:
    """The plain classes that DeepSpeed's checkpoint shards pickle (no code runs to rebuild them:
    an enum and two state holders restored by `__dict__` update)."""
    use_cpu_accelerator_without_cuda()
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def use_cpu_accelerator_without_cuda() -> None:
    """Before DeepSpeed is first imported for reading a checkpoint on a machine without CUDA:
    its CPU accelerator (otherwise it guesses, and warns)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def load_weights_only(file: Path, label: Path | None = None, deepspeed: bool = False) -> Any:
    """`torch.load(file, weights_only=True)` on the CPU, with errors as one line naming `label`
    (the checkpoint the user gave; defaults to `file`). `deepspeed` allows DeepSpeed's classes."""
    file = Path(file)
    label = Path(label) if label is not None else file
    if not looks_like_torch_file(file):
        raise UserError(
            f"{label} is not a checkpoint ({file.name} is not a file written by torch.save); "
            f"give a .ckpt written by bert-pretrain, or its run directory"
        )
    allowed = deepspeed_safe_globals() if deepspeed else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        text = str(err)
        if "Unsupported global" in text or "weights_only" in text.lower():
            culprit = _unsafe_globals(file)
            raise UserError(
                f"refusing to load {label}: {file.name} holds Python objects beyond tensors and "
                f"plain data ({culprit}), which loading would execute; only checkpoints written "
                f"by bert-pretrain are read, weights-only"
            ) from None
        raise CorruptCheckpointError(
            f"checkpoint corrupt: {label} ({file.name}: {type(err).__name__}: "
            f"{text.splitlines()[0] if text else ''})"
        ) from None


def _unsafe_globals(file: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:  # a damaged file: the message says what matters without the names
        return "unreadable globals"
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in _maybe_deepspeed_globals()}
    names = [n for n in names if n not in allowed]
    return ", ".join(names[:3]) or "objects torch does not allow"


def _maybe_deepspeed_globals() -> list:
    try:
        return deepspeed_safe_globals()
    except ImportError:
        return []


def check_deepspeed_files_loadable(tag_dir: Path, label: Path) -> None:
    """Read every `.pt` shard of a DeepSpeed checkpoint weights-only (raises naming the first
    that is unsafe or damaged), so DeepSpeed's own loader only sees vetted bytes."""
    for shard in sorted(Path(tag_dir).rglob("*.pt")):
        load_weights_only(shard, label, deepspeed=True)


def older_checkpoints(path: Path) -> list[Path]:
    """The other finished periodic checkpoints beside `path`, newest first (`step{N:07d}.ckpt`
    names sort by step), for error messages that offer one to resume from."""
    path = Path(path)
    return sorted((p for p in path.parent.glob("step*.ckpt") if p.name != path.name), reverse=True)


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC, whether raised as an OSError or buried in torch's writer's RuntimeError."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "unexpected pos" in text


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested checkpoint dict (an estimate of its size on disk)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def disk_full_error(directory: Path, needed_bytes: int | None, what: str) -> UserError:
    """One line naming the directory, the free space and roughly what is needed."""
    directory = Path(directory)
    try:
        free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    except OSError:
        free = None
    need = f"about {needed_bytes / 1e6:,.0f} MB needed, " if needed_bytes else ""
    have = f"{free / 1e6:,.0f} MB free" if free is not None else "free space unknown"
    return UserError(
        f"no space left on the device of {directory} while writing {what} ({need}{have}); free "
        f"space there (or set run_dir= on a larger disk) and run the same command again: the "
        f"previous checkpoint is intact"
    )
