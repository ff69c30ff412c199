"""Checkpoint registry and downloader (ofa.hub), against a loopback HTTP server only.

The server (``ThreadingHTTPServer`` on 127.0.0.1, port 0) serves a temp folder, honours
``Range: bytes=N-`` with 206 + Content-Range (or ignores it, on request), answers 416 for a range
past the end, can cut the next responses short after K bytes, and logs every request.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ofa import hub

PAYLOAD = bytes(range(256)) * 1024 + b"tail"  # 262,148 bytes: several 64 KiB writes, not a round number
NAME = "blob.pt"


class _State:
    def __init__(self, root: Path):
        self.root = root
        self.honour_range = True
        self.cut_after = None   # bytes to send before dropping the connection
        self.cuts_left = 0      # how many responses to cut
        self.fail_status = None
        self.slow = False       # send the body in 16 KiB pieces with short pauses
        self.requests = []      # (path, Range header or None, status)
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    state: _State

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        st = self.state
        rng = self.headers.get("Range")
        path = st.root / self.path.lstrip("/").split("?")[0]
        if st.fail_status is not None:
            return self._reply(st.fail_status, rng, b"")
        if not path.is_file():
            return self._reply(404, rng, b"")
        data = path.read_bytes()
        if rng and st.honour_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            start = int(m.group(1)) if m else 0
            if start >= len(data):
                return self._reply(416, rng, b"", {"Content-Range": f"bytes */{len(data)}"})
            return self._reply(206, rng, data[start:],
                               {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        return self._reply(200, rng, data)

    def _reply(self, status, rng, body, headers=None):
        st = self.state
        with st.lock:
            st.requests.append((self.path, rng, status))
            cut = st.cut_after if st.cuts_left > 0 and status in (200, 206) else None
            if cut is not None:
                st.cuts_left -= 1
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if cut is None:
            step = 16384 if st.slow else max(len(body), 1)
            for i in range(0, len(body), step):
                self.wfile.write(body[i:i + step])
                if st.slow:
                    self.wfile.flush()
                    time.sleep(0.005)
            return
        self.wfile.write(body[:cut])  # then drop the connection: an interrupted download
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / NAME).write_bytes(PAYLOAD)
    state = _State(root)
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # no proxy may route loopback traffic elsewhere; no test may use the real cache; no retry waits
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("OFA_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setattr(hub, "RETRY_SLEEP_S", 0.0)
    monkeypatch.setattr(hub, "TIMEOUT_S", 5.0)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _patch_entry(monkeypatch, name, **changes):
    entry = dataclasses.replace(hub.REGISTRY[name], **changes)
    monkeypatch.setitem(hub.REGISTRY, name, entry)
    return entry


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- downloads ------------------------------------------------------------------------------------

def test_url_download_lands_in_cache_under_url_file_name_with_exact_bytes(server, cache):
    path = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert path == str(cache / NAME)
    assert Path(path).read_bytes() == PAYLOAD
    assert sorted(os.listdir(cache)) == [NAME]
    assert server.requests == [("/" + NAME, None, 200)]


def test_second_resolve_uses_cache_without_contacting_server(server, cache):
    first = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    second = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert first == second
    assert len(server.requests) == 1


def test_default_cache_dir_is_OFA_CACHE(server, tmp_path):
    path = hub.resolve_checkpoint(server.base + NAME, progress=False)
    assert path == str(tmp_path / "env-cache" / NAME)
    assert hub.default_cache_dir() == str(tmp_path / "env-cache")


def test_interrupted_download_leaves_only_partial_file(server, cache, monkeypatch):
    monkeypatch.setattr(hub, "MAX_ATTEMPTS", 1)
    server.cut_after, server.cuts_left = 100_000, 1
    with pytest.raises(hub.DownloadError, match=r"interrupted after 100000 of 262148 bytes.*resumes"):
        hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert sorted(os.listdir(cache)) == [NAME + ".partial"]
    assert (cache / (NAME + ".partial")).read_bytes() == PAYLOAD[:100_000]


def test_retry_resumes_partial_with_range_request_and_yields_exact_bytes(server, cache, monkeypatch):
    monkeypatch.setattr(hub, "MAX_ATTEMPTS", 1)
    server.cut_after, server.cuts_left = 100_000, 1
    with pytest.raises(hub.DownloadError):
        hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    path = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/" + NAME, "bytes=100000-", 206)
    assert sorted(os.listdir(cache)) == [NAME]


def test_dropped_connection_is_resumed_within_the_same_call(server, cache):
    server.cut_after, server.cuts_left = 50_000, 2
    path = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD
    assert [r[1:] for r in server.requests] == [(None, 200), ("bytes=50000-", 206), ("bytes=100000-", 206)]


def test_concurrent_resolves_download_once_and_agree(server, cache):
    server.slow = True
    results, errors = [], []

    def worker():
        try:
            results.append(hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert Path(results[0]).read_bytes() == PAYLOAD
    assert len(server.requests) == 1 and sorted(os.listdir(cache)) == [NAME]


def test_server_ignoring_range_restarts_download_from_zero(server, cache):
    server.honour_range = False
    cache.mkdir()
    (cache / (NAME + ".partial")).write_bytes(b"\xff" * 70_000)  # stale bytes that must not survive
    path = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD
    assert server.requests == [("/" + NAME, "bytes=70000-", 200)]
    assert sorted(os.listdir(cache)) == [NAME]


def test_complete_partial_is_finalised_without_refetching_body(server, cache):
    cache.mkdir()  # a run that died between the last byte and the rename
    (cache / (NAME + ".partial")).write_bytes(PAYLOAD)
    path = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD
    assert server.requests == [("/" + NAME, f"bytes={len(PAYLOAD)}-", 416)]


def test_http_error_reports_status_and_url_and_leaves_no_final_file(server, cache):
    url = server.base + "missing.pt"
    with pytest.raises(hub.DownloadError, match=r"HTTP 404 .*" + re.escape(url)):
        hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False)
    server.fail_status = 503
    with pytest.raises(hub.DownloadError, match=r"HTTP 503 .*" + re.escape(server.base + NAME)):
        hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert not (cache / NAME).exists() and not (cache / "missing.pt").exists()


def test_unreachable_server_reports_url(cache):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    url = f"http://127.0.0.1:{port}/{NAME}"
    with pytest.raises(hub.DownloadError, match=re.escape(url)):
        hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False)


def test_progress_bar_goes_to_stderr_not_stdout(server, cache, capsys):
    hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert NAME in err and "256k" in err.lower()


# --- verification ---------------------------------------------------------------------------------

def test_sha256_mismatch_raises_expected_vs_actual_and_leaves_no_file(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME, sha256="0" * 64)
    with pytest.raises(hub.ChecksumError, match=f"expected {'0' * 64}, got {_sha(PAYLOAD)}"):
        hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False)
    assert os.listdir(cache) == []


def test_size_mismatch_raises_and_leaves_no_final_file(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME, size=len(PAYLOAD) + 1)
    with pytest.raises(hub.ChecksumError, match=f"expected {len(PAYLOAD) + 1} bytes.*{len(PAYLOAD)}"):
        hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False)
    assert not (cache / NAME).exists()


def test_matching_size_and_sha256_are_accepted_and_cached_hash_not_recomputed(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME, size=len(PAYLOAD), sha256=_sha(PAYLOAD))
    path = hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD
    monkeypatch.setattr(hub, "_sha256_file", lambda p: pytest.fail("re-hashed a verified cached file"))
    assert hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False) == path
    assert len(server.requests) == 1


def test_openmmlab_sha256_prefix_is_checked(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa-base_3rdparty-finetuned_caption", url=server.base + NAME,
                 sha256_prefix=_sha(PAYLOAD)[:8])
    assert Path(hub.resolve_checkpoint("ofa-base_3rdparty-finetuned_caption", cache_dir=str(cache),
                                       progress=False)).read_bytes() == PAYLOAD
    _patch_entry(monkeypatch, "ofa-base_3rdparty-finetuned_caption", url=server.base + NAME,
                 sha256_prefix="deadbeef")
    with pytest.raises(hub.ChecksumError, match=r"expected deadbeef\.\.\., got"):
        hub.resolve_checkpoint("ofa-base_3rdparty-finetuned_caption", cache_dir=str(cache), progress=False)
    assert not (cache / NAME).exists()


def test_corrupt_cached_file_is_rejected_without_contacting_server(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME, size=len(PAYLOAD), sha256=_sha(PAYLOAD))
    cache.mkdir()
    (cache / NAME).write_bytes(PAYLOAD[:-1] + b"X")
    with pytest.raises(hub.ChecksumError, match="sha256 mismatch"):
        hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False)
    assert not (cache / NAME).exists() and server.requests == []


# --- names and paths ------------------------------------------------------------------------------

def test_registry_name_downloads_from_its_url(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa-base_3rdparty-finetuned_refcoco", url=server.base + NAME, sha256_prefix=None)
    path = hub.resolve_checkpoint("ofa-base_3rdparty-finetuned_refcoco", cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD and server.requests[0][0] == "/" + NAME


def test_unknown_name_error_suggests_close_matches():
    with pytest.raises(hub.UnknownCheckpointError, match=r"'ofa_larg'.*Did you mean: ofa_large"):
        hub.resolve_checkpoint("ofa_larg")
    with pytest.raises(hub.UnknownCheckpointError, match="ofa-base_3rdparty-finetuned_caption"):
        hub.resolve_checkpoint("ofa-base_3rdparty-finetuned_captoin")


def test_entry_without_known_url_raises_clear_error():
    assert hub.REGISTRY["ofa-large_3rdparty-zeroshot_vqa"].url is None
    with pytest.raises(hub.HubError, match="no known download URL"):
        hub.resolve_checkpoint("ofa-large_3rdparty-zeroshot_vqa")


def test_existing_local_file_and_folder_are_returned_as_given(tmp_path, monkeypatch):
    f = tmp_path / "model.pt"
    f.write_bytes(b"x")
    assert hub.resolve_checkpoint(str(f)) == str(f)
    assert hub.resolve_checkpoint(tmp_path) == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert hub.resolve_checkpoint("model.pt") == "model.pt"


def test_missing_local_path_error_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "model.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        hub.resolve_checkpoint(str(missing))
    with pytest.raises(FileNotFoundError, match="registry name 'ofa_large' would download it"):
        hub.resolve_checkpoint("./ofa_large.pt")


# --- registry data and CLI ------------------------------------------------------------------------

def test_registry_entries_are_complete_and_consistent():
    names = hub.list_checkpoints()
    assert len(names) == len(set(names)) == len(hub.REGISTRY)
    for required in ("ofa-base_3rdparty-finetuned_caption", "ofa-base_3rdparty-finetuned_refcoco",
                     "ofa-base_3rdparty-finetuned_vqa", "ofa-base_3rdparty-zeroshot_vqa",
                     "ofa-large_3rdparty-zeroshot_vqa", "ofa_tiny", "ofa_medium", "ofa_base", "ofa_large",
                     "ofa_huge", "caption_large_best_clean", "refcocog_large_best", "vqa_large_best",
                     "snli_ve_large_best"):
        assert required in hub.REGISTRY
    for e in hub.REGISTRY.values():
        assert e.format in hub.FORMATS and e.arch in {"ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge"}
        assert e.task and e.source and "bpe" in e.notes.lower()
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256)
        if e.url is None:
            continue
        host = {"fairseq": "https://ofa-beijing.oss-cn-beijing.aliyuncs.com/checkpoints/",
                "mmpretrain": "https://download.openmmlab.com/mmclassification/v1/ofa/"}[e.format]
        assert e.url.startswith(host)
        if e.format == "mmpretrain":  # OpenMMLab names end in the sha256's first 8 hex digits
            assert e.sha256_prefix and e.url.endswith(f"-{e.sha256_prefix}.pth")
        else:
            assert e.filename == e.name + ".pt"
    assert len({e.filename for e in hub.REGISTRY.values() if e.url}) == sum(1 for e in hub.REGISTRY.values() if e.url)


def test_cli_list_prints_every_name(capsys):
    assert hub.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in hub.list_checkpoints())


def test_cli_download_prints_path_and_reports_errors(server, cache, monkeypatch, capsys):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME)
    assert hub.main(["download", "ofa_tiny", "--cache-dir", str(cache), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / NAME)
    assert hub.main(["download", "ofa_tinyy", "--cache-dir", str(cache)]) == 1
    assert "Did you mean: ofa_tiny" in capsys.readouterr().err
