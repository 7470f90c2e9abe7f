"""Downloading weights into torch hub's cache: atomically, checked before they are kept.

Where a published file is looked for, in order:

1. ``$VMAMBA_WEIGHTS_DIR/<file>``: a local folder of downloaded files (never written to);
2. torch hub's cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``);
3. the network: the authors' release URL, or the same ``<release tag>/<file>`` below
   ``$VMAMBA_WEIGHTS_MIRROR`` when that is set.

A download goes to a temporary file beside its cache entry, is checked (the caller loads it
strictly into the model) and only then renamed into place; any failure removes the temporary
file and raises one :class:`DownloadError` naming the URL and the exact path where a file
downloaded by hand is picked up.
"""
from __future__ import annotations

import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, TypeVar

import torch

from .checkpoint import CheckpointError
from .models.weights import RELEASES, PretrainedWeights
from .utils import progress_bar

MIRROR_ENV = "VMAMBA_WEIGHTS_MIRROR"
WEIGHTS_DIR_ENV = "VMAMBA_WEIGHTS_DIR"
TIMEOUT_ENV = "VMAMBA_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds without a byte before a download is given up
_CHUNK = 1 << 20

T = TypeVar("T")


class DownloadError(CheckpointError):
    """Weights that could not be fetched (the message says where to put them by hand)."""


def cache_dir() -> Path:
    """torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where downloads are kept."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_url(weights: PretrainedWeights) -> str:
    """The URL to fetch: the authors' release, or the same path below ``$VMAMBA_WEIGHTS_MIRROR``."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return mirror.rstrip("/") + "/" + weights.release_path if mirror else weights.url


def url_file_name(url: str) -> str:
    """The file name a URL is cached under (its last path part, %-decoded)."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if not name or name in (".", ".."):
        raise DownloadError(f"{url}: the URL names no file")
    return name


def local_copy(file: str) -> Path | None:
    """An already present copy of ``file``: in ``$VMAMBA_WEIGHTS_DIR``, else torch hub's cache."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    for candidate in ([Path(folder) / file] if folder else []) + [cache_dir() / file]:
        if candidate.is_file():
            return candidate
    return None


def fetch(url: str, file: str, check: Callable[[Path], T], what: str | None = None, progress: bool = True) -> T:
    """``check(path)`` of the local copy of ``file``, downloading it from ``url`` first if needed.

    A download is kept in torch hub's cache only after ``check`` accepted it (``check`` loads
    it strictly into the model and returns the result). Raises :class:`DownloadError` (network
    failures, HTTP errors, truncated transfers, a page instead of a file, a file that does not
    load) with nothing left behind in the cache.
    """
    present = local_copy(file)
    if present is not None:
        return check(present)
    dest = cache_dir() / file
    what = what or file

    def fail(reason: str) -> DownloadError:
        extra = f" or set {WEIGHTS_DIR_ENV} to a folder holding it" if not os.environ.get(WEIGHTS_DIR_ENV) else ""
        return DownloadError(f"could not download {what} from {url}: {reason}.\nDownload it by hand and put it "
                             f"at {dest}{extra} (offline: {MIRROR_ENV} names a mirror of the release files).")

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file}.", suffix=".partial", dir=dest.parent)
    except OSError as e:
        raise fail(f"cannot write to the cache ({e})") from None
    try:
        with os.fdopen(fd, "wb") as out:
            _download(url, out, file, progress, fail)
        try:
            result = check(Path(tmp))
        except CheckpointError as e:
            raise fail(f"the downloaded file does not load ({e})") from None
        os.replace(tmp, dest)
        return result
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _download(url: str, out, label: str, progress: bool, fail) -> None:
    timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    request = urllib.request.Request(url, headers={"User-Agent": "vmamba"})
    expected, received = None, 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            kind = response.headers.get("Content-Type", "")
            bar = progress_bar(expected, label, progress, bytes=True)
            try:
                while chunk := response.read(_CHUNK):
                    if received == 0 and (kind.startswith("text/html") or chunk.lstrip()[:1] == b"<"):
                        raise fail("the server sent a web page, not a checkpoint (an error or login page?)")
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
    except urllib.error.HTTPError as e:
        raise fail(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise fail(f"timed out after {timeout:g} s without data (set {TIMEOUT_ENV} to wait longer)") from None
        raise fail(f"no connection ({reason})") from None
    except (socket.timeout, TimeoutError):
        raise fail(f"timed out after {timeout:g} s without data (set {TIMEOUT_ENV} to wait longer)") from None
    except http.client.IncompleteRead as e:
        raise fail(f"the transfer broke off after {len(e.partial) + received} bytes") from None
    except (http.client.HTTPException, OSError) as e:
        raise fail(f"the transfer failed ({type(e).__name__}: {e})") from None
    if expected is not None and received != expected:
        raise fail(f"the transfer broke off: {received} of {expected} bytes")
    if received == 0:
        raise fail("the server sent an empty file")


def fetch_published(weights: PretrainedWeights, check: Callable[[Path], T], progress: bool = True) -> T:
    """:func:`fetch` for one of the authors' published files (mirror and local folder honoured)."""
    return fetch(weights_url(weights), weights.file, check, what=weights.name, progress=progress)


def is_url(source: object) -> bool:
    """Whether ``source`` is an http(s) URL."""
    return isinstance(source, str) and source.split("://", 1)[0].lower() in ("http", "https") and "://" in source


__all__ = ["DownloadError", "MIRROR_ENV", "WEIGHTS_DIR_ENV", "TIMEOUT_ENV", "RELEASES", "cache_dir", "weights_url",
           "local_copy", "fetch", "fetch_published", "url_file_name", "is_url"]
