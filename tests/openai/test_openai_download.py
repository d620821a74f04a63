"""download-openai against a local HTTP server on 127.0.0.1: resume after a cut connection, size checks, HTTP
errors, and never an incomplete file under its final name."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hf_scratch_gpt.cli import main as cli_main
from hf_scratch_gpt.openai.download import OPENAI_FILES, DownloadError, download_file, download_openai_checkpoint


class FileServer:
    """Serves `files` ({url path: bytes}) with Range support; `faults[path]` is a list of per-request faults,
    consumed in order: ("cut", n) sends the full Content-Length but only n bytes, ("status", code) answers an
    error, ("ignore_range",) answers 200 with the whole file. `requests` records (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[tuple]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                fault = server.faults.get(self.path, []).pop(0) if server.faults.get(self.path) else None
                if fault and fault[0] == "status":
                    self.send_error(fault[1])
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                requested = self.headers.get("Range")
                if requested and not (fault and fault[0] == "ignore_range"):
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if fault and fault[0] == "cut":
                    self.wfile.write(payload[: fault[1]])
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    file_server = FileServer()
    yield file_server
    file_server.httpd.shutdown()
    file_server.httpd.server_close()


def serve_checkpoint(server: FileServer, ckpt: Path, size: str = "124M") -> None:
    for name in OPENAI_FILES:
        server.files[f"/models/{size}/{name}"] = (ckpt / name).read_bytes()


def test_downloads_all_files_resumes_a_cut_one_and_converts(server, openai_ckpt, tmp_path):
    serve_checkpoint(server, openai_ckpt)
    data = "/models/124M/model.ckpt.data-00000-of-00001"
    server.faults[data] = [("cut", 50_000)]
    paths = download_openai_checkpoint("124M", tmp_path / "dl", base_url=server.base_url, backoff=0, progress=False)
    assert [p.name for p in paths] == list(OPENAI_FILES)
    for name in OPENAI_FILES:
        assert (tmp_path / "dl" / name).read_bytes() == (openai_ckpt / name).read_bytes()
    assert [r for r in server.requests if r[0] == data] == [(data, None), (data, "bytes=50000-")]
    assert not list((tmp_path / "dl").glob("*.part"))

    from hf_scratch_gpt.openai.convert import convert_openai_checkpoint

    assert convert_openai_checkpoint(tmp_path / "dl", tmp_path / "hf").max_abs_diff < 1e-4


def test_persistent_cut_keeps_the_part_and_the_next_run_resumes(server, tmp_path):
    body = bytes(range(256)) * 400
    server.files["/models/124M/vocab.bpe"] = body
    server.faults["/models/124M/vocab.bpe"] = [("cut", 1000)] * 3
    dest = tmp_path / "vocab.bpe"
    with pytest.raises(DownloadError, match="incomplete after 3 attempts.*run again to resume"):
        download_file(f"{server.base_url}/124M/vocab.bpe", dest, retries=2, backoff=0, progress=False)
    assert not dest.exists()
    assert Path(f"{dest}.part").stat().st_size == 3000
    download_file(f"{server.base_url}/124M/vocab.bpe", dest, backoff=0, progress=False)
    assert dest.read_bytes() == body
    assert server.requests[-1][1] == "bytes=3000-"


@pytest.mark.parametrize("status", [404, 403])
def test_client_errors_fail_at_once_with_the_status_and_url(server, tmp_path, status):
    server.faults["/models/124M/hparams.json"] = [("status", status)]
    server.files["/models/124M/hparams.json"] = b"{}"
    with pytest.raises(DownloadError, match=f"HTTP {status}.*/models/124M/hparams.json"):
        download_file(f"{server.base_url}/124M/hparams.json", tmp_path / "hparams.json", backoff=0, progress=False)
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried_then_reported(server, tmp_path):
    server.files["/models/124M/checkpoint"] = b"model_checkpoint_path: 'model.ckpt'\n"
    server.faults["/models/124M/checkpoint"] = [("status", 500), ("status", 503)]
    download_file(f"{server.base_url}/124M/checkpoint", tmp_path / "checkpoint", backoff=0, progress=False)
    assert (tmp_path / "checkpoint").read_bytes() == server.files["/models/124M/checkpoint"]

    server.faults["/models/124M/checkpoint"] = [("status", 500)] * 3
    with pytest.raises(DownloadError, match="HTTP 500"):
        download_file(f"{server.base_url}/124M/checkpoint", tmp_path / "again", retries=2, backoff=0, progress=False)
    assert not (tmp_path / "again").exists()


def test_wrong_size_part_is_discarded_and_refetched(server, tmp_path):
    body = b"x" * 5000
    server.files["/models/124M/encoder.json"] = body
    dest = tmp_path / "encoder.json"
    Path(f"{dest}.part").write_bytes(b"y" * 9000)  # longer than the remote file: not a prefix of it
    download_file(f"{server.base_url}/124M/encoder.json", dest, backoff=0, progress=False)
    assert dest.read_bytes() == body


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    body = bytes(range(256)) * 100
    server.files["/models/124M/model.ckpt.meta"] = body
    server.faults["/models/124M/model.ckpt.meta"] = [("cut", 777), ("ignore_range",)]
    dest = tmp_path / "model.ckpt.meta"
    download_file(f"{server.base_url}/124M/model.ckpt.meta", dest, backoff=0, progress=False)
    assert dest.read_bytes() == body


def test_complete_files_are_not_fetched_again_and_cli(server, openai_ckpt, tmp_path, capsys):
    serve_checkpoint(server, openai_ckpt, size="355M")
    assert cli_main(["download-openai", "355M", str(tmp_path), "--base-url", server.base_url]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / name) for name in OPENAI_FILES]
    count = len(server.requests)
    download_openai_checkpoint("355M", tmp_path, base_url=server.base_url, progress=False)
    assert len(server.requests) == count
    with pytest.raises(ValueError, match="unknown GPT-2 size '7B'"):
        download_openai_checkpoint("7B", tmp_path)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/models"


@pytest.mark.parametrize(
    ("base_url", "cause"),
    [
        (None, "connection was refused"),
        ("http://gpt2-checkpoints.invalid/models", "host name could not be resolved"),  # .invalid never resolves
    ],
)
def test_unreachable_server_says_why_and_is_not_retried_again_and_again(base_url, cause, tmp_path, monkeypatch):
    import hf_scratch_gpt.openai.download as download

    sleeps = []
    monkeypatch.setattr(download.time, "sleep", sleeps.append)
    url = f"{base_url or closed_port_url()}/124M/checkpoint"
    with pytest.raises(DownloadError, match=cause) as error:
        download_file(url, tmp_path / "checkpoint", retries=5, progress=False)
    assert len(sleeps) == 1  # one retry (a blip), not five with growing back-off
    assert ".part" not in str(error.value)  # nothing was received, so there is nothing to resume
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_through_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    import hf_scratch_gpt.openai.download as download

    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)
    assert cli_main(["download-openai", "124M", str(tmp_path), "--base-url", closed_port_url()]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf-scratch-gpt: error: cannot download http://127.0.0.1:") and "\n" not in err
    assert "refused" in err


@pytest.mark.parametrize("retries", [-1, 1.5, True])
def test_retries_must_be_a_non_negative_integer(retries, tmp_path):
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", retries=retries, progress=False)
