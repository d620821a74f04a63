"""Download OpenAI's GPT-2 checkpoint files: progress bar, HTTP Range resume, size checks, atomic completion.

Each file streams into `NAME.part`; it is renamed to `NAME` only once its size equals the size the server
announced (Content-Length, or the total of Content-Range when resuming). So a file under its final name is always
complete, and an interrupted download resumes from its `.part` on the next attempt or the next run.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm
from transformers.utils import logging

logger = logging.get_logger(__name__)

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
    dest = Path(dest)
    if dest.exists():
        logger.info(f"{dest} already downloaded")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_into_part(url, part, timeout, progress)
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as error:
            if error.code not in RETRYABLE_STATUS or attempt == retries:
                raise DownloadError(f"HTTP {error.code} {error.reason} for {url}") from error
            problem = f"HTTP {error.code}"
        except (_IncompleteBody, urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{url}: download incomplete after {retries + 1} attempts ({type(error).__name__}); "
                    f"{kept} bytes kept in {part}, run again to resume"
                ) from error
            problem = type(error).__name__
        logger.warning(f"{url}: {problem}, retrying ({attempt + 1}/{retries}) from byte "
                       f"{part.stat().st_size if part.exists() else 0}")
        time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


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
