"""File helpers shared by the backends and the CLI (no framework knowledge here).

Writing: :func:`atomic_write` (and :func:`atomic_write_dir` for directory outputs such
as a SavedModel) is the one way mixprec writes an output. Invariants:

- the data goes to a temporary of mixprec's own naming (``.OUT.mixprec-PID-HEX.tmp``)
  in OUT's directory, is fsync'ed, gets the mode a plain ``open()`` would give (the
  umask's, or the replaced file's) and is moved into place with ``os.replace``: OUT is
  either the old file or the complete new one, never half-written;
- a temporary left by a killed run (its process is gone) is removed on the next write to
  the same OUT;
- missing parent directories are created.

Checking: :func:`check_output_file`, :func:`check_output_dir`, :func:`check_dump_dir` and
:func:`check_disjoint` raise OutputPathError before any work starts when an output path
is a device, FIFO or symlink, a directory mixprec did not write, inside a missing or
read-only directory, or is / holds / lies inside a file the input reads.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mixprec.errors import OutputPathError

logger = logging.getLogger(__name__)

#: the part of every temporary's name that says mixprec made it
TEMP_TAG = "mixprec"
#: a file mixprec puts inside every output directory it writes (SavedModel); an existing
#: non-empty directory without it is never replaced
OUTPUT_MARKER = ".mixprec-output"
#: a temporary older than this is stale even when its process id is in use again
STALE_SECONDS = 24 * 3600

_TEMP_RE = re.compile(rf"^\.(?P<name>.+)\.{TEMP_TAG}-(?P<pid>\d+)-[0-9a-f]+\.tmp$")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file: the same inode when both exist
    (hard links, symlinks), else the same resolved path."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), shortened to ``limit``
    characters; the exception type's name when the message is empty."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


# ------------------------------------------------------------------------ writing ---
def umask() -> int:
    """The process's umask (read from /proc when possible, so no thread sees it change)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode(path: str | os.PathLike, directory: bool = False) -> int:
    """The mode a written ``path`` gets: the existing file's permission bits when it
    replaces one, else what ``open()`` (0666) or ``mkdir()`` (0777) gives under the umask."""
    try:
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode) or (directory and stat.S_ISDIR(info.st_mode)):
            return stat.S_IMODE(info.st_mode)
    except OSError:
        pass
    return (0o777 if directory else 0o666) & ~umask()


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh name for a temporary beside ``path``, of mixprec's naming (not created)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{TEMP_TAG}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temporaries of mixprec's naming for ``path`` whose writer is gone (its process
    does not exist) or that are older than STALE_SECONDS."""
    path = Path(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    now = time.time()
    stale = []
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if not match or match["name"] != path.name:
            continue
        try:
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        if age > STALE_SECONDS or not _process_alive(int(match["pid"])):
            stale.append(entry)
    return stale


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove what :func:`stale_temps` finds for ``path``; returns what was removed."""
    removed = []
    for entry in stale_temps(path):
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            logger.warning("cannot remove the stale temporary %s (%s)", entry, exc.strerror)
            continue
        logger.info("removed %s, left by an interrupted mixprec run", entry)
        removed.append(entry)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write a file at ``path`` by calling ``write(temp_path)`` (it writes the whole file
    there), then fsync it, give it :func:`output_mode` and os.replace it onto ``path``.
    On any failure the temporary is removed and ``path`` is untouched."""
    path = Path(path)
    _prepare(path)
    mode = output_mode(path)
    tmp = temp_path(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        write(os.fspath(tmp))
        publish(tmp, path, mode)
    except BaseException:
        _remove(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def make_temp_dir(path: str | os.PathLike) -> Path:
    """A new, empty directory of mixprec's temporary naming beside ``path`` (which is
    prepared as by :func:`atomic_write`: parents made, stale temporaries removed). The
    caller removes it."""
    path = Path(path)
    _prepare(path)
    tmp = temp_path(path)
    tmp.mkdir(mode=0o700)
    return tmp


def publish(tmp: str | os.PathLike, path: str | os.PathLike, mode: int | None = None) -> None:
    """fsync the written file ``tmp``, chmod it to ``mode`` (default :func:`output_mode`
    of ``path``) and os.replace it onto ``path``; then fsync the directory."""
    tmp, path = Path(tmp), Path(path)
    mode = output_mode(path) if mode is None else mode
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], Any], kind: str = "a directory mixprec wrote"
                     ) -> Path:
    """Write a directory at ``path`` by calling ``write(new_dir)`` (``new_dir`` does not
    exist yet; ``write`` creates it), mark it with OUTPUT_MARKER and swap it into place:
    an existing directory at ``path`` is moved aside, the new one renamed in, the old one
    removed (restored if the rename fails). Refuses an existing ``path`` that is not a
    directory mixprec wrote (see :func:`check_output_dir`; ``kind`` names it)."""
    path = Path(path)
    check_output_dir(path, replaceable=kind)
    holder = make_temp_dir(path)
    try:
        new = holder / "new"
        write(new)
        if not new.is_dir():
            raise OutputPathError(f"{path}: the writer produced no directory")
        (new / OUTPUT_MARKER).write_text("written by mixprec; a later mixprec run may replace this directory\n")
        os.chmod(new, output_mode(path, directory=True))
        _swap_directory(new, path, holder)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    _fsync_dir(path.parent)
    return path


def _swap_directory(new: Path, path: Path, holder: Path) -> None:
    if not path.exists():
        os.replace(new, path)
        return
    old = holder / "old"
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise


def _prepare(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the directory {path.parent}: {exc.strerror}") from None
    remove_stale_temps(path)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


# ----------------------------------------------------------------------- checking ---
def check_output_file(path: str | os.PathLike, what: str = "the output") -> None:
    """``path`` can be written as a regular file: nothing is there, or a regular file
    (not a symlink, directory, device, FIFO or socket); its directory exists or can be
    created, and is writable."""
    path = Path(path)
    kind = _kind(path)
    if kind is not None and kind != "file":
        advice = "give the file name to write" if kind == "directory" else "mixprec only replaces regular files"
        raise OutputPathError(f"{what} {path} is {_article(kind)}; {advice}")
    check_parent(path, what)


def check_output_dir(path: str | os.PathLike, what: str = "the output",
                     replaceable: str = "a directory mixprec wrote") -> None:
    """``path`` can be written as a directory: nothing is there, an empty directory, or
    a directory mixprec wrote earlier (it holds OUTPUT_MARKER); its parent is writable.
    ``replaceable`` names what may be replaced, for the message."""
    path = Path(path)
    kind = _kind(path)
    if kind == "directory":
        try:
            entries = {entry.name for entry in path.iterdir()}
        except OSError as exc:
            raise OutputPathError(f"{what} {path} cannot be read: {exc.strerror}") from None
        if entries and OUTPUT_MARKER not in entries:
            raise OutputPathError(f"{what} {path} is a non-empty directory that is not {replaceable}; refusing to "
                                  "replace it (remove it or choose another path)")
    elif kind is not None:
        raise OutputPathError(f"{what} {path} is {_article(kind)}, not a directory; choose another path")
    check_parent(path, what)


def check_dump_dir(path: str | os.PathLike) -> None:
    """``path`` is a directory or can be made one, and is writable."""
    path = Path(path)
    kind = _kind(path)
    if kind == "directory":
        _probe(path, "--dump-dir")
        return
    if kind is not None:
        raise OutputPathError(f"--dump-dir {path} is {_article(kind)}, not a directory; choose a directory path")
    check_parent(path, "--dump-dir")


def check_parent(path: str | os.PathLike, what: str = "the output") -> None:
    """The nearest existing ancestor of ``path`` is a directory mixprec can create
    files in (probed with a temporary file, so read-only mounts are caught too)."""
    path = Path(os.path.abspath(path))
    ancestor = path.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"{what} {path}: {ancestor} is not a directory")
    _probe(ancestor, what, path)


def _probe(directory: Path, what: str, path: Path | None = None) -> None:
    probe = directory / f".{TEMP_TAG}-probe-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        reason = "it is read-only" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else exc.strerror
        target = f" {path}" if path is not None else ""
        raise OutputPathError(f"{what}{target} cannot be written: no file can be created in {directory} "
                              f"({reason}); choose another path") from None
    _remove(probe)


def check_disjoint(outputs: Iterable[tuple[str, str | os.PathLike]], protected: Sequence[tuple[str, str | os.PathLike]],
                   refuse: Sequence[str] = ("is", "contains", "lies inside")) -> None:
    """No output (``(what, path)`` pairs) is, holds or lies inside (the relations in
    ``refuse``) a protected path (the files the input reads, and the other outputs):
    OutputPathError naming both."""
    for what, out in outputs:
        for name, guarded in protected:
            relation = relation_to(out, guarded)
            if relation in refuse:
                verb = "refusing to overwrite it" if relation == "is" else "refusing to write there"
                raise OutputPathError(f"{what} {out} {relation} {name} {guarded}: {verb}; choose another path")


def relation_to(path: str | os.PathLike, other: str | os.PathLike) -> str | None:
    """'is' when ``path`` names the same file as ``other``, 'contains' when ``other``
    lies inside the directory ``path``, 'lies inside' when ``path`` lies inside the
    directory ``other``; None when they are unrelated."""
    if same_file(path, other):
        return "is"
    a, b = _real(path), _real(other)
    if a in b.parents and not a.is_file():
        return "contains"
    if b in a.parents and not b.is_file():
        return "lies inside"
    return None


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _kind(path: Path) -> str | None:
    """What is at ``path`` (not following a final symlink); None when nothing is."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a parent is a file; check_parent says so
    except OSError as exc:
        raise OutputPathError(f"{path} cannot be inspected: {exc.strerror}") from None
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return kind
    return "special file"


def _article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind
