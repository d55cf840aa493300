"""Download of the public ExORL archives (streamed, resumable) and safe zip extraction."""

from __future__ import annotations

import http.client
import logging
import os
import re
import stat
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from bfm.data.exorl import DatasetError
from bfm.data.progress import progress
from bfm.files import disk_full, full_disk_name, replacing

logger = logging.getLogger(__name__)

EXORL_BASE_URL = "https://dl.fbaipublicfiles.com/exorl"
# The exploration algorithms whose datasets ExORL publishes (one archive per domain and algorithm).
EXORL_ALGOS = ("aps", "diayn", "disagreement", "icm", "icm_apt", "proto", "random", "rnd", "smm")
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The archive could not be downloaded; a partial ``.part`` file is kept for resuming."""


def archive_url(base_url: str, domain: str, algo: str) -> str:
    """URL of the ExORL archive of (domain, algo): ``<base_url>/<domain>/<algo>.zip``."""
    return f"{base_url.rstrip('/')}/{domain}/{algo}.zip"


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range")
    if content_range:
        match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", content_range)
        if match and match[3] != "*":
            return int(match[3])
    length = response.headers.get("Content-Length")
    return None if length is None else offset + int(length)


def _attempt(url: str, part: Path, timeout: float) -> bool:
    """One request continuing ``part``; True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range not satisfiable: nothing left to read
            total = _total_size(e, 0) if e.headers.get("Content-Range") else None
            return total is None or total == offset
        raise
    with response:
        if offset and response.status != 206:
            logger.info("server ignored the Range request; restarting %s from zero", url)
            offset = 0
        total = _total_size(response, offset)
        mode = "ab" if offset else "wb"
        with (
            open(part, mode) as f,
            progress(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise http.client.IncompleteRead(b"", total - size)
    return True


def download(
    url: str, dest: str | os.PathLike, *, retries: int = 5, timeout: float = 20.0, backoff: float = 1.0
) -> Path:
    """Stream ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range after a cut.

    The file appears at ``dest`` only when complete (its size equals the announced size). A
    ``.part`` left by an earlier interrupted run is continued.

    Args:
        url: http(s) URL.
        dest: final path.
        retries: attempts after a cut connection before giving up.
        timeout: seconds to wait for the connection and for each read; a server that sends
            nothing for that long twice in a row is given up on (a silent server fails in about
            ``2 * timeout`` seconds).
        backoff: seconds before the first retry (doubled each time).

    Returns:
        ``dest``.

    Raises:
        DownloadError: host unreachable, HTTP error, or still incomplete after ``retries``.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    silent, before = 0, part.stat().st_size if part.exists() else 0  # timeouts with no new byte
    for attempt in range(retries + 1):
        try:
            if _attempt(url, part, timeout):
                os.replace(part, dest)
                return dest
        except urllib.error.HTTPError as e:
            raise DownloadError(
                f"{url}: HTTP {e.code} {e.reason}; check --base_url (archives are <base_url>/<domain>/<algo>.zip), "
                "or create the data locally with --collect"
            ) from e
        except urllib.error.URLError as e:
            raise DownloadError(
                f"cannot reach {url} ({e.reason}); check the network or --base_url, or create the data "
                "locally with --collect"
            ) from e
        except (http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            have = part.stat().st_size if part.exists() else 0
            if disk_full(e):  # not a cut connection: no retry
                raise DownloadError(
                    f"{full_disk_name(e)} while writing {part}; the {have} bytes written are kept: "
                    "free some space (or use another --data_dir) and rerun the same command to resume"
                ) from e
            silent = silent + 1 if isinstance(e, TimeoutError) and have == before else 0
            kept = (
                f"{have} bytes kept in {part}, rerun the same command to resume"
                if have
                else "nothing was saved"
            )
            if silent >= 2:
                raise DownloadError(
                    f"{url}: the server sent nothing for {timeout:g} s, twice; {kept} "
                    "(check the network or --base_url, or create the data locally with --collect)"
                ) from e
            if attempt == retries:
                raise DownloadError(
                    f"{url}: connection lost after {retries + 1} attempts ({e!r}); {kept}"
                ) from e
            logger.warning("download of %s cut at %d bytes (%r); resuming", url, have, e)
            time.sleep(backoff * 2**attempt)
            before = have
    raise DownloadError(f"{url}: download did not complete; rerun the same command to resume it")


def _check_member(info: zipfile.ZipInfo, target: Path) -> Path:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DatasetError(f"archive entry {name!r} is a symbolic link; refusing to extract")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise DatasetError(
            f"archive entry {name!r} has an absolute or non-portable path; refusing to extract"
        )
    path = (target / name).resolve()
    if not path.is_relative_to(target.resolve()):
        raise DatasetError(f"archive entry {name!r} escapes {target}; refusing to extract")
    return path


def extract_archive(
    archive: str | os.PathLike, target: str | os.PathLike, keep_prefix: str = "buffer/"
) -> int:
    """Extract the entries under ``keep_prefix`` of an ExORL zip into ``target``, safely.

    Every entry is checked before anything is written: an absolute path, a ``..`` that escapes
    ``target`` or a symbolic link refuses the whole archive. Each file is written to a temporary
    name and renamed when complete; files already present with the right size are skipped, so an
    interrupted extraction can simply be rerun. Other entries (``video/``) are skipped.

    Args:
        archive: the ``.zip`` file.
        target: folder that receives ``buffer/...`` (``<data_dir>/<domain>/<algo>``).
        keep_prefix: only entries whose name starts with this are extracted ("" keeps all).

    Returns:
        Number of files extracted.

    Raises:
        DatasetError: unsafe entry, or a truncated / corrupt archive.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _check_member(info, target)) for info in zf.infolist()]
            count = 0
            kept = [(i, p) for i, p in members if i.filename.startswith(keep_prefix) and not i.is_dir()]
            for info, path in progress(kept, desc=f"extract {Path(archive).name}", unit="file"):
                if path.is_file() and path.stat().st_size == info.file_size:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                # interrupted or failed: no half-written file stays behind
                with (
                    replacing(path, path.with_name(f".{path.name}.tmp")) as tmp,
                    zf.open(info) as src,
                    open(tmp, "wb") as dst,
                ):
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                count += 1
    except zipfile.BadZipFile as e:
        raise DatasetError(
            f"{archive}: not a zip archive, or a truncated one ({e}); delete it and rerun to download it "
            "again (if a fresh download fails the same way, --base_url serves something else than ExORL's "
            "archives)"
        ) from e
    skipped = len(members) - len(kept)
    if not kept:
        example = ", ".join(info.filename for info, _ in members[:3]) or "none"
        raise DatasetError(
            f"{archive}: no {keep_prefix} entries among its {len(members)} (e.g. {example}): not an ExORL "
            "dataset archive; delete it and check --base_url"
        )
    logger.info(
        "extracted %d files from %s into %s (%d entries outside %r skipped)",
        count,
        archive,
        target,
        skipped,
        keep_prefix,
    )
    return count
