"""Writing files so that nothing half-written is ever left behind."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write(path, write) -> Path:
    """Call write(f) on a temporary file next to `path` (f opened 'wb', with a real name),
    flush it to disk, then rename it to `path`; on any error the temporary file is removed.
    A crash or Ctrl-C leaves either the old file or the new one, never a torn one.

    The file gets the permissions the user's umask gives any new file (0644 under umask 022),
    as open() would create it, so that a lab can share a run folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, tmp = _new_temp(path)
    try:
        with f:  # a named file: writers such as tifffile want f.name
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _new_temp(path: Path):
    """(file opened 'xb', its path): a new hidden file beside `path`. Mode 'x' creates it as
    open() creates any file, 0o666 minus the umask (tempfile.mkstemp would make it 0600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return open(tmp, "xb"), tmp
        except FileExistsError:  # a name already taken: draw another
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def atomic_write_text(path, text: str) -> Path:
    """Write a text file (UTF-8) atomically (see `atomic_write`)."""
    data = text.encode()
    return atomic_write(path, lambda f: f.write(data))


def save_figure(fig, path) -> Path:
    """Save a matplotlib Figure atomically (format from the suffix, PNG by default)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt))


def check_writable(path, flag: str, file: bool = False) -> None:
    """ValueError, one line naming `flag` and the fix, if `path` (a folder to create or fill;
    file=True: a file to write) cannot be made: a name or path too long for the file system,
    a file in its way, or a parent folder the user may not write in. Creates nothing."""
    path = Path(path)
    name_max = _pathconf(Path(path.anchor or "."), "PC_NAME_MAX", 255)
    long = [part for part in path.parts if len(os.fsencode(part)) > name_max]
    if long:
        raise ValueError(f"{flag} {path.parent}/{long[0][:20]}...: a name of "
                         f"{len(os.fsencode(long[0]))} bytes, more than the {name_max} this "
                         "file system allows; choose a shorter name")
    path_max = _pathconf(Path(path.anchor or "."), "PC_PATH_MAX", 4096)
    room = 0 if file else 64  # a folder needs room for the names of the files inside
    if len(os.fsencode(os.path.abspath(path))) + room > path_max:
        raise ValueError(f"{flag} {str(path)[:40]}...: the path is too long for this file system "
                         f"(at most {path_max} bytes with the names inside it); choose a "
                         "shorter path")
    start = path.parent if file else path
    parent = next(p for p in (start, *start.parents) if _exists(p) or p == p.parent)
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; name a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {parent} is not writable for you; choose a folder "
                         "you can write in")


def _exists(path: Path) -> bool:
    try:
        path.stat()
        return True
    except OSError:  # missing, or a file where a folder should be
        return False


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def default_dir_mode() -> int:
    """The mode os.mkdir gives a new folder under the user's umask (0o755 under umask 022);
    tempfile.mkdtemp makes 0o700, too narrow for a folder that is renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask
