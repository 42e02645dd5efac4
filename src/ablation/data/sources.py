"""Where ``data.source``'s images are: a local folder, or a URL's archive downloaded once.

A URL (``http(s)://``, ``ftp://``, ``file://``) names a zip or tar archive. It is
downloaded once into Keras's cache folder (``$KERAS_HOME/datasets``, default
``~/.keras/datasets``), extracted into a folder of its own named by the archive's file
name and a hash of the whole URL (its password aside: two URLs that differ only there
name the same archive): ``cats_and_dogs_filtered-<16 hex digits>/``. So two URLs
ending in the same file name are two entries, and no password or query is ever part of
a file or folder name. The folder appears whole or not at all
(:func:`ablation.data.arrays.building`): a download that is cut off, or a process
killed while it downloads, leaves nothing that counts as downloaded. Beside the
extracted files, ``.archive.json`` keeps the URL (its password as ``***``), the
archive's size and SHA-256; the archive itself is not kept.

``data.sha256`` checks the archive before it is used: a download that differs is
not kept, a downloaded archive that differs is not used; either is one line and exit
code 2. The archive behind a URL is downloaded once: if it changes there, delete its
folder to download it again (or set ``data.sha256`` to be told).

Example:
    >>> from ablation.sweep.sections import Data
    >>> source = resolve_source(Data(source="../shared/data/flowers"))
    >>> source.layout, source.archive_sha256
    ('train+validation+test', None)
    >>> download_folder("https://alice:s3cret@example.com/a/photos.tar.gz?token=x").name
    'photos-333d3adca0a49252'
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import tarfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from ablation.data.arrays import building
from ablation.data.folders import find_layout
from ablation.errors import UserError, first_line
from ablation.files import locked
from ablation.redaction import redact
from ablation.sweep.sections import Data

log = logging.getLogger(__name__)

ARCHIVE_FILE = ".archive.json"  # in a download's folder: the archive's URL, size, SHA-256
DOWNLOAD_CHUNK = 2**20  # bytes read, hashed and written at a time
DOWNLOAD_TIMEOUT_S = 60  # a server that sends nothing for this long has failed


@dataclass(frozen=True)
class Source:
    """The folder holding the data, its layout and, for a URL, its archive's SHA-256."""

    root: Path
    layout: str
    archive_sha256: str | None = None


def resolve_source(config: Data) -> Source:
    """The local folder behind ``data.source`` and its layout, downloading a URL once.

    Raises:
        UserError: The directory does not exist, the URL cannot be fetched or is not an
            archive, the archive is not the one ``data.sha256`` names, or the folder has
            a split folder without the others it needs.
    """
    found = downloaded_source(config)
    if found is None:
        _download(config.source, config.sha256)
        found = downloaded_source(config)
    assert found is not None  # _download made the folder or raised
    return found


def downloaded_source(config: Data) -> Source | None:
    """:func:`resolve_source` without downloading: ``None`` for a URL not downloaded yet.

    Raises:
        UserError: As :func:`resolve_source` does, but for a download.
    """
    if not config.is_url():
        root = Path(config.source).expanduser()
        if not root.is_dir():
            raise UserError(
                f"data.source: {config.source!r} is not a directory (give a folder with "
                "train/ and validation/ (and test/), or of class folders, or an http(s):// "
                "or file:// URL of a zip archive)"
            )
        return Source(*find_layout(root, config.source))
    folder = download_folder(config.source)
    if not (folder / ARCHIVE_FILE).is_file():
        return None
    sha256 = json.loads((folder / ARCHIVE_FILE).read_text())["sha256"]
    if config.sha256 is not None and sha256 != config.sha256:
        raise UserError(
            f"data.sha256: the archive of {config.source} downloaded into {folder} has "
            f"SHA-256 {sha256}, expected {config.sha256} (delete that folder to download "
            f"it again, or set data.sha256 to {sha256} if the archive changed on purpose)"
        )
    return Source(*find_layout(folder, config.source), archive_sha256=sha256)


def download_folder(url: str) -> Path:
    """The folder ``url``'s archive is extracted into: its file name up to the first dot,
    and a hash of the URL without its password."""
    name = Path(urllib.parse.urlparse(url).path).name.split(".")[0]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:48] or "archive"
    key = hashlib.sha256(redact(url).encode()).hexdigest()[:16]
    home = Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser()
    return home / "datasets" / f"{stem}-{key}"


def _download(url: str, sha256: str | None) -> None:
    """Download and extract ``url``'s archive into :func:`download_folder`, once: a
    process that waited for another's download finds it done."""
    folder = download_folder(url)
    with locked(folder):
        if (folder / ARCHIVE_FILE).is_file():
            return
        with building(folder, done=ARCHIVE_FILE) as partial:
            archive = partial / ".archive"
            size, found = _fetch(url, archive)
            if sha256 is not None and found != sha256:
                raise UserError(
                    f"data.sha256: the archive downloaded from {url} has SHA-256 {found}, "
                    f"expected {sha256} (not kept; check data.source, or set data.sha256 "
                    f"to {found} if the archive changed on purpose)"
                )
            _extract(archive, partial, url)
            archive.unlink()
            record = {"source": redact(url), "bytes": size, "sha256": found}
            (partial / ARCHIVE_FILE).write_text(json.dumps(record))
        log.info("downloaded %s into %s: %d bytes, SHA-256 %s", redact(url), folder, size, found)


def _fetch(url: str, file: Path) -> tuple[int, str]:
    """Download ``url`` into ``file``, hashing it on the way; its size and SHA-256.
    A user name and password in an http(s) URL are sent as HTTP basic authentication."""
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(url)
    if parts.scheme in ("http", "https") and parts.username is not None:
        host = parts.netloc.rpartition("@")[2]
        request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=host)))
        user = urllib.parse.unquote(parts.username or "")
        secret = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            expected = response.headers.get("Content-Length")
            with file.open("wb") as out:
                while chunk := response.read(DOWNLOAD_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
    except (OSError, ValueError, HTTPException) as exc:
        reason = getattr(exc, "reason", None) or first_line(exc)
        raise UserError(f"data.source: cannot download {url} ({reason})") from None
    if expected is not None and size != int(expected):
        raise UserError(
            f"data.source: the download of {url} stopped after {size} of {expected} bytes "
            "(nothing was kept; run again to download it again)"
        )
    return size, digest.hexdigest()


def _extract(archive: Path, into: Path, url: str) -> None:
    """Extract a zip or tar archive (any compression) into ``into``; no member lands
    outside it."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(into)
            return
        if tarfile.is_tarfile(archive) and hasattr(tarfile, "data_filter"):  # Python 3.10.12+
            with tarfile.open(archive) as tarred:
                tarred.extractall(into, filter="data")
            return
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise UserError(f"data.source: cannot extract {url} ({first_line(exc)})") from None
    raise UserError(
        f"data.source: {url} is not a zip archive ({archive.stat().st_size} bytes of something "
        "else; allowed: a zip archive, a tar archive with Python 3.10.12 or later, or a folder)"
    )
