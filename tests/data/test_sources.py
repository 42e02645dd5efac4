"""Downloads from real HTTP servers on 127.0.0.1: keyed by the whole URL, checked against
``data.sha256``, and never half there; as the command line shows and refuses them."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ablation.data.images import load_images
from ablation.data.sources import ARCHIVE_FILE, download_folder, downloaded_source, resolve_source
from ablation.errors import UserError
from ablation.study.plan import data_line
from ablation.sweep.config import load_sweep
from ablation.sweep.sections import Data
from conftest import REPO, copy_images, run_module


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder's files; remembers each request's Authorization header; quiet."""

    def do_GET(self) -> None:
        self.server.authorizations.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(
    folder: Path, handler: type[http.server.BaseHTTPRequestHandler] = Handler
) -> Iterator[tuple[str, http.server.ThreadingHTTPServer]]:
    """An HTTP server on 127.0.0.1 at a free port, serving ``folder``, in a thread."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    server.authorizations = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def zip_folder(folder: Path, archive: Path, top: str) -> Path:
    """``folder``'s files as the zip ``archive``, under one top folder ``top``."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, Path(top) / path.relative_to(folder))
    return archive


def drawn_classes(dest: Path, per_class: int = 4) -> Path:
    """Class folders only, ``circles/`` and ``squares/``, of JPEGs drawn with Pillow."""
    rng = np.random.default_rng(0)
    for name in ("circles", "squares"):
        (dest / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(dest / name / f"{index}.jpg", quality=90)
    return dest


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different ``data.zip``, each in a folder of its own: real photos (``photos``),
    drawn pictures (``drawn``)."""
    base = tmp_path_factory.mktemp("archives")
    photos = copy_images(base / "photos-data", per_class=3)
    drawn = drawn_classes(base / "drawn-data")
    return {
        "photos": zip_folder(photos, base / "photos" / "data.zip", "cats_and_dogs"),
        "drawn": zip_folder(drawn, base / "drawn" / "data.zip", "shapes"),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_servers_with_the_same_file_name_give_two_datasets(
    archives: dict[str, Path], tmp_path: Path, keras_home: Path
) -> None:
    cache = str(tmp_path / "cache")
    with contextlib.ExitStack() as servers:
        first, _ = servers.enter_context(serving(archives["photos"].parent))
        second, _ = servers.enter_context(serving(archives["drawn"].parent))
        a = load_images(Data(source=f"{first}/data.zip", image_size=(24, 24), cache_dir=cache))
        b = load_images(Data(source=f"{second}/data.zip", image_size=(24, 24), cache_dir=cache))
    assert a.class_names == ["cats", "dogs"] and b.class_names == ["circles", "squares"]
    assert a.fingerprint != b.fingerprint and a.folder != b.folder
    assert a.layout == "train+validation" and b.layout == "classes"
    folders = {download_folder(f"{url}/data.zip") for url in (first, second)}
    assert len(folders) == 2 and all(f.parent == keras_home / "datasets" for f in folders)
    assert all(f.name.startswith("data-") for f in folders)


def test_a_urls_password_and_query_go_to_the_server_never_into_a_name(
    archives: dict[str, Path], tmp_path: Path, keras_home: Path
) -> None:
    with serving(archives["drawn"].parent) as (url, server):
        host = url.removeprefix("http://")
        source = resolve_source(Data(source=f"http://alice:s3cr%40t@{host}/data.zip?token=t0ken"))
    assert server.authorizations == ["Basic " + base64.b64encode(b"alice:s3cr@t").decode()]
    assert source.archive_sha256 == sha256(archives["drawn"])
    named = [str(p) for p in (keras_home / "datasets").rglob("*")]
    assert named and not [n for n in named if "s3cr" in n or "t0ken" in n]
    record = (source.root.parent / ARCHIVE_FILE).read_text()
    assert "alice:***@" in record and "s3cr" not in record and "t0ken" not in record


def send_half(handler: Handler) -> bytes:
    """Answer with the whole archive's length but only its first half; the archive."""
    data = Path(handler.directory, "data.zip").read_bytes()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data[: len(data) // 2])
    handler.wfile.flush()
    return data


class Flaky(Handler):
    """While the server's ``cut_off`` is set: says the archive's full length, sends half of
    it, and hangs up."""

    def do_GET(self) -> None:
        if not self.server.cut_off:  # type: ignore[attr-defined]
            super().do_GET()
            return
        send_half(self)
        self.close_connection = True


def test_a_download_cut_off_leaves_nothing_that_counts(archives: dict[str, Path]) -> None:
    with serving(archives["photos"].parent, Flaky) as (url, server):
        config = Data(source=f"{url}/data.zip")
        server.cut_off = True  # type: ignore[attr-defined]
        with pytest.raises(UserError, match=r"stopped after \d+ of \d+ bytes .nothing was kept"):
            resolve_source(config)
        assert downloaded_source(config) is None
        folder = download_folder(config.source)
        assert not folder.exists()
        assert list(folder.parent.glob(f".{folder.name}.*")) == []  # the partial folder, gone
        server.cut_off = False  # type: ignore[attr-defined]
        source = resolve_source(config)  # the same URL, whole this time
    assert source.archive_sha256 == sha256(archives["photos"])
    assert (source.root / "train" / "cats" / "cat.1.jpg").is_file()


class Stalling(Handler):
    """Sends the first half of the archive, then waits until the test lets it go on."""

    sent = threading.Event()
    go_on = threading.Event()

    def do_GET(self) -> None:
        data = send_half(self)
        Stalling.sent.set()
        Stalling.go_on.wait(30)
        with contextlib.suppress(OSError):  # the client is gone
            self.wfile.write(data[len(data) // 2 :])


def test_a_process_killed_while_downloading_leaves_nothing_that_counts(
    tmp_path: Path,
) -> None:
    photos = copy_images(tmp_path / "photos", per_class=3)
    (photos / "padding.bin").write_bytes(np.random.default_rng(0).bytes(6 * 2**20))
    archive = zip_folder(photos, tmp_path / "served" / "data.zip", "cats_and_dogs")  # 6 MiB
    with serving(archive.parent, Stalling) as (url, _):
        source = f"{url}/data.zip"
        code = (
            "from ablation.data.sources import resolve_source; "
            f"from ablation.sweep.sections import Data; resolve_source(Data(source={source!r}))"
        )
        process = subprocess.Popen([sys.executable, "-c", code])
        try:
            assert Stalling.sent.wait(60)
            datasets = download_folder(source).parent
            partial = []
            for _ in range(100):  # until the half archive is on disk
                found = datasets.glob(f".{download_folder(source).name}.*/.archive")
                partial = [p for p in found if p.stat().st_size]
                if partial:
                    break
                time.sleep(0.1)
            assert partial, "the download never reached the disk"
            process.kill()
            process.wait(30)
        finally:
            Stalling.go_on.set()
            process.kill()
        config = Data(source=source)
        assert downloaded_source(config) is None  # the half archive is not taken for one
        assert not download_folder(source).exists()
        Stalling.sent.clear()
    with serving(archive.parent) as (url_whole, _):
        whole = resolve_source(Data(source=f"{url_whole}/data.zip"))
    assert whole.archive_sha256 == sha256(archive) and whole.layout == "train+validation"


def test_data_sha256_checks_the_archive_before_it_is_used(archives: dict[str, Path]) -> None:
    right, wrong = sha256(archives["photos"]), "0123456789abcdef" * 4
    with serving(archives["photos"].parent) as (url, _):
        source = f"{url}/data.zip"
        with pytest.raises(UserError) as refused:
            resolve_source(Data(source=source, sha256=wrong))
        assert str(refused.value) == (
            f"data.sha256: the archive downloaded from {source} has SHA-256 {right}, expected "
            f"{wrong} (not kept; check data.source, or set data.sha256 to {right} if the "
            "archive changed on purpose)"
        )
        assert downloaded_source(Data(source=source)) is None  # not kept
        blog = REPO / "sweeps" / "blog.yaml"
        sweep = load_sweep(blog, [f"data.source={source}", f"data.sha256={right.upper()}"])
        assert data_line(sweep).endswith(f"data.sha256 expects {right})")  # not downloaded yet
        assert resolve_source(sweep.data).archive_sha256 == right
    line = data_line(sweep)  # downloaded: the archive's own hash, checked
    assert line.startswith(f"data: {source}: archive SHA-256 {right} (as data.sha256 expects)")
    assert line.endswith("cats_and_dogs: train/ + validation/ (test set split from validation/)")
    unchecked = load_sweep(blog, [f"data.source={source}"])
    assert f"archive SHA-256 {right} (data.sha256 not set)" in data_line(unchecked)
    with pytest.raises(
        UserError, match=f"downloaded into .* has SHA-256 {right}, expected {wrong} "
    ):
        data_line(load_sweep(blog, [f"data.source={source}", f"data.sha256={wrong}"]))


def test_data_sha256_is_64_hex_digits_for_a_url() -> None:
    with pytest.raises(ValueError, match="'abc' is not a SHA-256 .allowed: 64 hexadecimal"):
        Data(source="https://example.com/data.zip", sha256="abc")
    with pytest.raises(ValueError, match="sha256 checks a downloaded archive, and source is a"):
        Data(source="photos/", sha256="a" * 64)


@pytest.mark.slow
def test_a_wrong_data_sha256_is_one_line_and_exit_2(
    archives: dict[str, Path], tmp_path: Path
) -> None:
    right, wrong = sha256(archives["drawn"]), "f" * 64
    blog = str(REPO / "sweeps" / "blog.yaml")
    with serving(archives["drawn"].parent) as (url, _):
        source = f"{url}/data.zip"

        def run(sha: str, *args: str) -> subprocess.CompletedProcess[str]:
            sets = ["--set", f"data.source={source}", "--set", f"data.sha256={sha}"]
            sets += ["--set", "train.epochs=1", "--set", "space.backbone.choice=[cnn]"]
            return run_module("ablation.run", blog, *sets, *args, cwd=tmp_path, timeout=300)

        for args in ([], ["--dry-run"]):  # downloaded by the run, then found downloaded
            refused = run(wrong, *args)
            assert refused.returncode == 2, refused.stderr
            assert refused.stderr.startswith("error: data.sha256: the archive ")
            assert len(refused.stderr.splitlines()) == 1 and f"expected {wrong}" in refused.stderr
            if not args:
                resolve_source(Data(source=source))  # now it is downloaded
        accepted = run(right, "--dry-run")
    assert accepted.returncode == 0, accepted.stderr
    assert f"archive SHA-256 {right} (as data.sha256 expects)" in accepted.stdout.splitlines()[1]
