"""Download OpenAI's GPT-2 checkpoint files: progress bar, HTTP Range resume, size checks, atomic completion.

Each file streams into `NAME.part`; it is renamed to `NAME` only once its size equals the size the server
announced (Content-Length, or the total of Content-Range when resuming). So a file under its final name is always
complete, and an interrupted download resumes from its `.part` on the next attempt or the next run.

Only failures that another attempt can cure are retried (a cut connection, a timeout, a 5xx). A host name that
does not resolve or a refused connection (no network, a wrong `--base-url`) is tried once more, in case it was a
blip, and then reported with its cause.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)  # stdlib logging: the CLI's parser imports this module, so it stays light

# OpenAI's public storage; `{size}` and `{file}` are filled in. Any server with the same layout works (tests use
# one on 127.0.0.1).
OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
OPENAI_SIZES = ("124M", "355M", "774M", "1558M")
OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
CHUNK_BYTES = 1 << 20
# Server-side conditions worth another try (with resume); anything else (404, 403, ...) fails at once.
RETRYABLE_STATUS = (408, 429, 500, 502, 503, 504)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# Causes (URLError.reason) that no number of retries cures: (type, what to tell the user).
UNREACHABLE_CAUSES = (
    (socket.gaierror, "the host name could not be resolved (no network, or a wrong --base-url?)"),
    (ConnectionRefusedError, "the connection was refused (nothing listens there; a wrong --base-url?)"),
)
UNREACHABLE_ATTEMPTS = 2  # one retry, in case the resolver or the server was restarting


class DownloadError(OSError):
    """A file could not be downloaded completely; the message names the URL and what went wrong."""


class _IncompleteBody(Exception):
    pass


def file_url(base_url: str, size: str, file_name: str) -> str:
    return f"{base_url.rstrip('/')}/{size}/{file_name}"


def _fetch_into_part(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One request: append to `part` from its current length (Range) or restart it; raise on a short body."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            # Range not satisfiable: the part is at least as long as the file. Complete if the lengths agree.
            match = re.fullmatch(r"bytes \*/(\d+)", error.headers.get("Content-Range", "") or "")
            if match and int(match.group(1)) == have:
                return
            logger.warning(f"{part.name}: local part ({have} bytes) does not fit the remote file; starting over")
            part.unlink()
            raise _IncompleteBody() from error
        raise
    with response:
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                raise DownloadError(f"{url}: bad Content-Range {response.headers.get('Content-Range')!r} for a "
                                    f"request from byte {have}")
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:  # 200: the server ignored Range (or nothing to resume); start from zero
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            have, mode = 0, "wb"
        with open(part, mode) as sink, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name[: -len(".part")],
            disable=not progress, leave=False,
        ) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except http.client.IncompleteRead as error:
                    sink.write(error.partial)
                    raise _IncompleteBody() from error
                if not chunk:
                    break
                sink.write(chunk)
                bar.update(len(chunk))
            sink.flush()
            os.fsync(sink.fileno())
    got = part.stat().st_size
    if total is not None and got != total:
        if got > total:
            part.unlink()
            raise DownloadError(f"{url}: received {got} bytes, more than the announced {total}; deleted the part")
        raise _IncompleteBody()


def download_file(url: str, dest: str | os.PathLike, *, retries: int = 5, timeout: float = 60.0,
                  backoff: float = 1.0, progress: bool = True) -> Path:
    """Download `url` to `dest` (via `dest.part`, resumable). A `dest` that exists is complete and is kept."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0 (0: one attempt, no retry), got {retries!r}")
    dest = Path(dest)
    if dest.exists():
        logger.info(f"{dest} already downloaded")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    allowed = retries  # retries the latest kind of failure gets (fewer for an unreachable host)
    for attempt in range(retries + 1):
        try:
            _fetch_into_part(url, part, timeout, progress)
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as error:
            if error.code not in RETRYABLE_STATUS or attempt == retries:
                raise DownloadError(f"HTTP {error.code} {error.reason} for {url}{_kept(part)}") from error
            problem, allowed = f"HTTP {error.code}", retries
        except (_IncompleteBody, urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
            cause = _unreachable_cause(error)
            allowed = retries if cause is None else min(retries, UNREACHABLE_ATTEMPTS - 1)
            if cause is not None and attempt >= allowed:
                reason = getattr(error, "reason", error)
                raise DownloadError(f"cannot download {url}: {cause} [{reason}]{_kept(part)}") from error
            if attempt == retries:
                raise DownloadError(
                    f"{url}: download incomplete after {retries + 1} attempts ({_describe(error)}){_kept(part)}"
                ) from error
            problem = _describe(error)
        logger.warning(f"{url}: {problem}, retrying ({attempt + 1}/{allowed}) from byte "
                       f"{part.stat().st_size if part.exists() else 0}")
        time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable: the loop returns or raises")  # retries >= 0 was checked above


def _unreachable_cause(error: BaseException) -> str | None:
    """What to tell the user when `error` means the server cannot be reached at all (retrying will not help)."""
    reason = getattr(error, "reason", error)
    for kind, explanation in UNREACHABLE_CAUSES:
        if isinstance(reason, kind):
            return explanation
    return None


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    detail = reason if reason is not None else error
    return f"{type(error).__name__}: {detail}" if str(detail) else type(error).__name__


def _kept(part: Path) -> str:
    """Mention the partial file only when there is one to resume from."""
    size = part.stat().st_size if part.exists() else 0
    return f"; {size} bytes kept in {part}, run again to resume" if size else ""


def download_openai_checkpoint(size: str, out_dir: str | os.PathLike, *, base_url: str = OPENAI_BASE_URL,
                               retries: int = 5, timeout: float = 60.0, backoff: float = 1.0,
                               progress: bool = True) -> list[Path]:
    """Fetch the seven files of OpenAI's GPT-2 `size` ("124M", "355M", "774M", "1558M") into `out_dir`.

    `base_url` is the folder that holds one subfolder per size (default: OpenAI's public storage).
    """
    if size not in OPENAI_SIZES:
        raise ValueError(f"unknown GPT-2 size {size!r}; expected one of {list(OPENAI_SIZES)}")
    return [
        download_file(file_url(base_url, size, name), Path(out_dir) / name, retries=retries, timeout=timeout,
                      backoff=backoff, progress=progress)
        for name in OPENAI_FILES
    ]


__all__ = ["DownloadError", "OPENAI_BASE_URL", "OPENAI_FILES", "OPENAI_SIZES", "download_file",
           "download_openai_checkpoint", "file_url"]
