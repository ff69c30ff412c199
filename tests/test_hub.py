"""Checkpoint registry and download cache (ofa.hub), against a loopback HTTP server only.

The server (``ThreadingHTTPServer`` on 127.0.0.1, port 0) serves a temp folder, can answer every request
with a fixed error status, cut the next responses short after K bytes (an announced Content-Length that
never arrives), send the body slowly, and logs every request.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
import stat
import subprocess
import sys
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
        self.cut_after = None   # bytes to send before dropping the connection
        self.cuts_left = 0      # how many responses to cut
        self.fail_status = None
        self.slow = False       # send the body in 16 KiB pieces with short pauses
        self.requests = []      # (path, status)
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    state: _State

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        st = self.state
        path = st.root / self.path.lstrip("/").split("?")[0]
        if st.fail_status is not None:
            return self._reply(st.fail_status, b"")
        if not path.is_file():
            return self._reply(404, b"")
        return self._reply(200, path.read_bytes())

    def _reply(self, status, body):
        st = self.state
        with st.lock:
            st.requests.append((self.path, status))
            cut = st.cut_after if st.cuts_left > 0 and status == 200 else None
            if cut is not None:
                st.cuts_left -= 1
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
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
    (root / "empty.pt").write_bytes(b"")
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
def _isolated(monkeypatch, tmp_path):
    # no proxy may route loopback traffic elsewhere; no test may use the real cache or inherit offline mode
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "OFA_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("OFA_CACHE", str(tmp_path / "env-cache"))
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


def _files(folder: Path):
    """The cache's files, without the ``.locks`` folder."""
    return sorted(n for n in os.listdir(folder) if n != ".locks") if folder.exists() else []


def _where(cache: Path, name: str = NAME) -> str:
    return re.escape(f"a manually fetched copy can be placed at {cache / name}")


# --- downloads ------------------------------------------------------------------------------------

def test_url_download_lands_in_cache_under_url_file_name_with_exact_bytes(server, cache):
    path = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert path == str(cache / NAME) == hub.cache_path(server.base + NAME, str(cache))
    assert Path(path).read_bytes() == PAYLOAD
    assert _files(cache) == [NAME]
    assert server.requests == [("/" + NAME, 200)]


def test_second_resolve_uses_cache_without_contacting_server(server, cache):
    first = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    second = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert first == second
    assert len(server.requests) == 1


def test_default_cache_dir_is_OFA_CACHE(server, tmp_path):
    path = hub.resolve_checkpoint(server.base + NAME, progress=False)
    assert path == str(tmp_path / "env-cache" / NAME)
    assert hub.default_cache_dir() == str(tmp_path / "env-cache")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_downloaded_file_gets_the_umask_permissions_not_mkstemp_0600(server, cache, umask):
    old = os.umask(umask)
    try:
        path = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_interrupted_download_leaves_nothing_and_names_url_and_cache_path(server, cache):
    server.cut_after, server.cuts_left = 100_000, 1
    url = server.base + NAME
    with pytest.raises(hub.DownloadError) as info:
        hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(re.escape(f"cannot download {url}: ") + r".+; " + _where(cache), message)
    assert _files(cache) == []
    path = hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False)  # the next call starts over
    assert Path(path).read_bytes() == PAYLOAD and _files(cache) == [NAME]


def test_partials_of_a_killed_run_are_removed_by_the_next_download(server, cache):
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs: its partial file is stale
    stale = cache / f"{NAME}.{dead.pid}.k1ll3d.partial"
    stale.write_bytes(PAYLOAD[:1000])
    legacy = cache / f"{NAME}.partial"  # the name the urllib downloader used
    legacy.write_bytes(b"\xff" * 70_000)
    path = hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD
    assert _files(cache) == [NAME]


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
    assert len(server.requests) == 1 and _files(cache) == [NAME]


def test_http_error_is_one_line_with_status_url_and_cache_path(server, cache):
    url = server.base + "missing.pt"
    with pytest.raises(hub.DownloadError, match=re.escape(f"cannot download {url}: HTTP 404 Not Found; ")
                       + _where(cache, "missing.pt")):
        hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False)
    server.fail_status = 503
    with pytest.raises(hub.DownloadError, match=r"HTTP 503 Service Unavailable; .*" + _where(cache)):
        hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    assert _files(cache) == []


def test_connection_refused_is_one_line_with_url_and_cache_path(cache):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    url = f"http://127.0.0.1:{port}/{NAME}"
    with pytest.raises(hub.DownloadError, match=re.escape(f"cannot download {url}: Connection refused; ")
                       + _where(cache)):
        hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False)
    assert _files(cache) == []


def test_dns_failure_names_the_host(cache, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = f"https://no-such-host.invalid/{NAME}"
    with pytest.raises(hub.DownloadError, match=re.escape(
            f"cannot download {url}: cannot resolve host 'no-such-host.invalid' (Name or service not known); ")
            + _where(cache)):
        hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False)


def test_empty_answer_is_never_cached(server, cache):
    url = server.base + "empty.pt"
    with pytest.raises(hub.DownloadError, match="the server sent an empty file; " + _where(cache, "empty.pt")):
        hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False)
    assert _files(cache) == []


def test_unusable_cache_folder_is_one_line(server, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    with pytest.raises(hub.DownloadError, match=r"cannot create the cache folder .*set OFA_CACHE or --cache-dir"):
        hub.resolve_checkpoint(server.base + NAME, cache_dir=str(blocker / "cache"), progress=False)


def test_progress_bar_goes_to_stderr_not_stdout(server, cache, capsys):
    hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "100%" in err and "262k" in err


# --- verification ---------------------------------------------------------------------------------

def test_sha256_mismatch_is_one_line_and_leaves_no_file(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME, sha256="0" * 64)
    with pytest.raises(hub.ChecksumError, match=re.escape(
            f"checksum mismatch for {server.base + NAME}: sha256 {_sha(PAYLOAD)} instead of {'0' * 64}; "
            f"the download was discarded; ") + _where(cache)):
        hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False)
    assert _files(cache) == []


def test_size_mismatch_raises_and_leaves_no_file(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME, size=len(PAYLOAD) + 1)
    with pytest.raises(hub.ChecksumError, match=f"{len(PAYLOAD)} bytes instead of {len(PAYLOAD) + 1}"):
        hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False)
    assert _files(cache) == []


def test_matching_size_and_sha256_are_accepted(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME, size=len(PAYLOAD), sha256=_sha(PAYLOAD))
    path = hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD
    assert hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False) == path
    assert len(server.requests) == 1


def test_openmmlab_sha256_prefix_is_checked(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa-base_3rdparty-finetuned_caption", url=server.base + NAME,
                 sha256_prefix=_sha(PAYLOAD)[:8])
    assert Path(hub.resolve_checkpoint("ofa-base_3rdparty-finetuned_caption", cache_dir=str(cache),
                                       progress=False)).read_bytes() == PAYLOAD
    other = cache.parent / "other-cache"
    _patch_entry(monkeypatch, "ofa-base_3rdparty-finetuned_caption", url=server.base + NAME,
                 sha256_prefix="deadbeef")
    with pytest.raises(hub.ChecksumError, match=r"instead of deadbeef\.\.\.; the download was discarded"):
        hub.resolve_checkpoint("ofa-base_3rdparty-finetuned_caption", cache_dir=str(other), progress=False)
    assert _files(other) == []


def test_corrupt_cached_file_is_replaced_by_a_verified_download(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME, size=len(PAYLOAD), sha256=_sha(PAYLOAD))
    cache.mkdir()
    (cache / NAME).write_bytes(PAYLOAD[:-1] + b"X")
    path = hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD and len(server.requests) == 1


def test_empty_cached_file_is_downloaded_again(server, cache):
    cache.mkdir()
    (cache / NAME).write_bytes(b"")  # e.g. left by an older tool or an interrupted manual copy
    assert Path(hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)).read_bytes() \
        == PAYLOAD


# --- offline --------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_without_cached_file_says_where_to_place_it_and_touches_no_network(server, cache, monkeypatch, how):
    url = server.base + NAME
    if how == "env":
        monkeypatch.setenv("OFA_OFFLINE", "1")
    why = "OFA_OFFLINE=1" if how == "env" else "local_files_only=True"
    with pytest.raises(hub.OfflineError) as info:
        hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False, local_files_only=how == "argument")
    assert str(info.value) == (f"offline ({why}): {url} is not in the cache; place a manually fetched copy at "
                               f"{cache / NAME}")
    assert server.requests == [] and not cache.exists()
    cache.mkdir()  # do what the message says: the manual copy is then used, still without network
    (cache / NAME).write_bytes(PAYLOAD)
    path = hub.resolve_checkpoint(url, cache_dir=str(cache), progress=False, local_files_only=how == "argument")
    assert path == str(cache / NAME) and server.requests == []


def test_offline_registry_name_uses_cached_file_and_checks_it(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME, sha256=_sha(PAYLOAD))
    monkeypatch.setenv("OFA_OFFLINE", "true")
    cache.mkdir()
    (cache / NAME).write_bytes(PAYLOAD[:-1] + b"X")
    with pytest.raises(hub.ChecksumError, match=re.escape(f"offline (OFA_OFFLINE=true): the cached {cache / NAME} "
                                                          f"is not {server.base + NAME} (sha256 ")):
        hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False)
    (cache / NAME).write_bytes(PAYLOAD)
    assert hub.resolve_checkpoint("ofa_tiny", cache_dir=str(cache), progress=False) == str(cache / NAME)
    assert server.requests == []


def test_OFA_OFFLINE_values(server, cache, monkeypatch):
    monkeypatch.setenv("OFA_OFFLINE", "0")
    assert hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)
    monkeypatch.setenv("OFA_OFFLINE", "maybe")
    with pytest.raises(hub.HubError, match=r"OFA_OFFLINE='maybe': expected 1, true"):
        hub.resolve_checkpoint(server.base + NAME, cache_dir=str(cache), progress=False)


def test_local_paths_need_no_network_even_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("OFA_OFFLINE", "1")
    f = tmp_path / "model.pt"
    f.write_bytes(b"x")
    assert hub.resolve_checkpoint(str(f), local_files_only=True) == str(f)


# --- names and paths ------------------------------------------------------------------------------

def test_registry_name_downloads_from_its_url(server, cache, monkeypatch):
    _patch_entry(monkeypatch, "ofa-base_3rdparty-finetuned_refcoco", url=server.base + NAME, sha256_prefix=None)
    path = hub.resolve_checkpoint("ofa-base_3rdparty-finetuned_refcoco", cache_dir=str(cache), progress=False)
    assert Path(path).read_bytes() == PAYLOAD and server.requests[0][0] == "/" + NAME


def test_unknown_name_error_suggests_close_matches():
    with pytest.raises(hub.UnknownCheckpointError, match=r"^unknown checkpoint 'ofa_larg'; did you mean ofa_large"):
        hub.resolve_checkpoint("ofa_larg")
    with pytest.raises(hub.UnknownCheckpointError, match="did you mean ofa-base_3rdparty-finetuned_caption"):
        hub.resolve_checkpoint("ofa-base_3rdparty-finetuned_captoin")
    with pytest.raises(hub.UnknownCheckpointError, match=r"^unknown checkpoint 'zzz': not a registry name"):
        hub.resolve_checkpoint("zzz")


def test_unsupported_url_scheme_is_named():
    with pytest.raises(hub.UnknownCheckpointError, match=r"unsupported URL 'ftp://host/x\.pt': only http"):
        hub.resolve_checkpoint("ftp://host/x.pt")


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


def test_cli_download_prints_path(server, cache, monkeypatch, capsys):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME)
    assert hub.main(["download", "ofa_tiny", "--cache-dir", str(cache), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / NAME)
    assert hub.main(["download", "ofa_tiny", "--cache-dir", str(cache), "--offline"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / NAME)


def _cli_error(capsys, argv):
    status = hub.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    return status, lines[0]


def test_cli_unknown_name_is_one_line_with_suggestion_and_exit_2(cache, capsys):
    status, line = _cli_error(capsys, ["download", "ofa_tinyy", "--cache-dir", str(cache)])
    assert status == 2
    assert line.startswith("ofa-checkpoints: error: unknown checkpoint 'ofa_tinyy'; did you mean ofa_tiny")


def test_cli_offline_and_no_network_are_one_line_and_exit_2(server, cache, monkeypatch, capsys):
    _patch_entry(monkeypatch, "ofa_tiny", url=server.base + NAME)
    status, line = _cli_error(capsys, ["download", "ofa_tiny", "--cache-dir", str(cache), "--offline"])
    assert status == 2 and line == (f"ofa-checkpoints: error: offline (local_files_only=True): {server.base + NAME} "
                                    f"is not in the cache; place a manually fetched copy at {cache / NAME}")
    monkeypatch.setenv("OFA_OFFLINE", "1")
    status, line = _cli_error(capsys, ["download", "ofa_tiny", "--cache-dir", str(cache)])
    assert status == 2 and line.startswith("ofa-checkpoints: error: offline (OFA_OFFLINE=1): ")
    monkeypatch.delenv("OFA_OFFLINE")
    server.fail_status = 503
    status, line = _cli_error(capsys, ["download", "ofa_tiny", "--cache-dir", str(cache), "--quiet"])
    assert status == 2 and line.startswith(f"ofa-checkpoints: error: cannot download {server.base + NAME}: HTTP 503")
    assert server.requests == [("/" + NAME, 503)]


def test_cli_usage_mistake_exits_2(capsys):
    assert hub.main([]) == 2
    assert "ofa-checkpoints" in capsys.readouterr().err
