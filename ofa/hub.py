"""Published OFA checkpoints by name, and a resumable, verified downloader.

- ``REGISTRY`` maps a name to a ``CheckpointEntry`` (url, format, task, arch, optional size /
  sha256, notes). It is data: adding a checkpoint means adding one entry to ``_ENTRIES``.
  Sources: the official list (OFA-Sys/OFA ``checkpoints.md``) and the mmpretrain model zoo
  (open-mmlab/mmpretrain ``configs/ofa/metafile.yml``). No size or full sha256 is known for any of
  them, so those fields are ``None``; the mmpretrain files carry the first 8 hex digits of their
  sha256 in the file name (OpenMMLab's ``publish_model`` convention, the same one ``torch.hub``
  checks), which is recorded as ``sha256_prefix`` and verified.
- ``resolve_checkpoint(name_or_path_or_url)`` returns a local path: an existing local file or folder
  as is; a registry name or an ``http(s)://`` URL downloaded once into the cache
  (``cache_dir`` > ``$OFA_CACHE`` > ``~/.cache/ofa``; the file keeps the URL's file name).
- Downloads go to ``<file>.partial``, resume with ``Range: bytes=N-`` (a server that ignores Range
  and answers 200 restarts the file from byte 0), are checked against the expected size and sha256
  when known, and are renamed into place atomically, so a file under its final name is always
  complete. A cached final file is used without any network access (after checking its size, and
  its sha256 when one is known; a verified hash is remembered in ``<file>.verified``). Two
  processes downloading the same file serialise on an advisory lock held on the ``.partial`` file
  (POSIX); reading a finished file takes no lock.
- ``main(argv)`` is the ``ofa-checkpoints list | download NAME [--cache-dir D]`` command.

Only the standard library (``urllib.request``) and ``tqdm`` are used.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import http.client
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ofa.io_utils import write_atomic

try:  # advisory locking of the .partial file; not available on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["CheckpointEntry", "REGISTRY", "HubError", "DownloadError", "ChecksumError", "UnknownCheckpointError",
           "list_checkpoints", "get_entry", "resolve_checkpoint", "default_cache_dir", "main"]

FORMATS = ("fairseq", "mmpretrain")
CHUNK_SIZE = 1 << 20
TIMEOUT_S = 60.0
# Attempts per call: a connection that drops mid-file is resumed (with Range) this many times in total.
MAX_ATTEMPTS = 3
RETRY_SLEEP_S = 1.0
USER_AGENT = "ofa-hub/1 (+urllib)"

_BPE_NOTE = ("needs the GPT-2 BPE folder (encoder.json, vocab.bpe, dict.txt; utils/BPE in the official repo) "
             "passed as bpe_dir")
_OFFICIAL_SRC = "OFA-Sys/OFA checkpoints.md @ c0f36d58b85490822941a8b765249f4835f62768"
_MMPRETRAIN_SRC = ("open-mmlab/mmpretrain configs/ofa/metafile.yml @ 6847d20d57689aa016b5860381312daa6e23b647 "
                   "(and configs/ofa/README.md)")
_OSS = "https://ofa-beijing.oss-cn-beijing.aliyuncs.com/checkpoints/"
_OPENMMLAB = "https://download.openmmlab.com/mmclassification/v1/ofa/"


class HubError(RuntimeError):
    """Base class of the errors raised here."""


class DownloadError(HubError):
    """The server answered with an error, or the connection failed or dropped."""


class ChecksumError(HubError):
    """A downloaded or cached file has the wrong size or sha256."""


class UnknownCheckpointError(HubError, ValueError):
    """Not a registry name, an http(s) URL or an existing local path."""


@dataclass(frozen=True)
class CheckpointEntry:
    name: str
    url: Optional[str]          # None: published, but no download URL could be confirmed
    format: str                 # "fairseq" (official trainer .pt) or "mmpretrain" (converted .pth)
    task: str                   # what it was finetuned for; "pretrain" for the pretrained ones
    arch: str                   # ofa_tiny .. ofa_huge
    size: Optional[int] = None  # bytes
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None  # leading hex digits of the sha256 (OpenMMLab file names)
    source: str = ""            # where the URL was read
    notes: str = ""

    @property
    def filename(self) -> Optional[str]:
        return _filename_from_url(self.url) if self.url else None


def _official(name: str, task: str, arch: str, notes: str = "") -> CheckpointEntry:
    return CheckpointEntry(name=name, url=f"{_OSS}{name}.pt", format="fairseq", task=task, arch=arch,
                           source=_OFFICIAL_SRC, notes="; ".join(n for n in (notes, _BPE_NOTE) if n))


def _mmpretrain(name: str, file: Optional[str], task: str, arch: str, notes: str) -> CheckpointEntry:
    prefix = None
    if file is not None:
        found = re.search(r"-([0-9a-f]{8})\.pth$", file)
        prefix = found.group(1) if found else None
    return CheckpointEntry(name=name, url=f"{_OPENMMLAB}{file}" if file else None, format="mmpretrain", task=task,
                           arch=arch, sha256_prefix=prefix, source=_MMPRETRAIN_SRC,
                           notes="; ".join((notes, "a bare state dict without config or task settings", _BPE_NOTE)))


_ENTRIES: Tuple[CheckpointEntry, ...] = (
    # --- mmpretrain model zoo (converted from the official checkpoints) ---
    _mmpretrain("ofa-base_3rdparty-finetuned_caption", "ofa-base_3rdparty_coco-caption_20230418-de18914e.pth",
                "caption", "ofa_base", "COCO captioning; converted from caption_base_best.pt"),
    _mmpretrain("ofa-base_3rdparty-finetuned_refcoco", "ofa-base_3rdparty_refcoco_20230418-2797d3ab.pth",
                "refcoco", "ofa_base", "RefCOCO visual grounding; converted from refcoco_base_best.pt"),
    _mmpretrain("ofa-base_3rdparty-finetuned_vqa", "ofa-base_3rdparty_coco-vqa_20230418-f38539a5.pth",
                "vqa", "ofa_base", "VQAv2; the metafile names vqa_large_best.pt as its source but lists a "
                "base-size parameter count (182,238,536)"),
    _mmpretrain("ofa-base_3rdparty-zeroshot_vqa", "ofa-base_3rdparty_pretrain_20230418-dccfc07f.pth",
                "pretrain", "ofa_base", "pretrained weights used for zero-shot VQA; converted from ofa_base.pt"),
    _mmpretrain("ofa-large_3rdparty-zeroshot_vqa", None, "pretrain", "ofa_large",
                "pretrained weights used for zero-shot VQA (config ofa-large_zeroshot_vqa.py); its download URL "
                "was not found in the metafile versions consulted, so it cannot be downloaded by name: the "
                "official 'ofa_large' checkpoint is the pretrained OFA-Large"),
    # --- official releases: pretrained ---
    _official("ofa_tiny", "pretrain", "ofa_tiny", "~33M parameters"),
    _official("ofa_medium", "pretrain", "ofa_medium", "~93M parameters"),
    _official("ofa_base", "pretrain", "ofa_base", "~180M parameters"),
    _official("ofa_large", "pretrain", "ofa_large", "~470M parameters"),
    _official("ofa_huge", "pretrain", "ofa_huge", "~930M parameters"),
    # --- official releases: finetuned OFA-Huge ---
    _official("caption_huge_best", "caption", "ofa_huge", "COCO captioning"),
    _official("vqa_huge_best", "vqa", "ofa_huge", "VQAv2"),
    # --- official releases: finetuned OFA-Large ---
    _official("caption_large_best_clean", "caption", "ofa_large", "COCO captioning"),
    _official("caption_stage1_best", "caption", "ofa_large",
              "COCO captioning after stage-1 (cross-entropy) finetuning, before the CIDEr stage"),
    _official("refcoco_large_best", "refcoco", "ofa_large", "RefCOCO visual grounding"),
    _official("refcocoplus_large_best", "refcocoplus", "ofa_large", "RefCOCO+ visual grounding"),
    _official("refcocog_large_best", "refcocog", "ofa_large", "RefCOCOg visual grounding"),
    _official("vqa_large_best", "vqa", "ofa_large", "VQAv2"),
    _official("snli_ve_large_best", "snli_ve", "ofa_large", "SNLI-VE visual entailment"),
    _official("imagenet_1k_large_best", "image_classify", "ofa_large", "ImageNet-1K classification"),
    _official("gigaword_large_best", "gigaword", "ofa_large", "Gigaword summarisation (text only)"),
    # --- official releases: finetuned OFA-Base ---
    _official("caption_base_best", "caption", "ofa_base", "COCO captioning"),
    _official("refcoco_base_best", "refcoco", "ofa_base", "RefCOCO visual grounding"),
    _official("refcocoplus_base_best", "refcocoplus", "ofa_base", "RefCOCO+ visual grounding"),
    _official("refcocog_base_best", "refcocog", "ofa_base", "RefCOCOg visual grounding"),
    _official("vqa_base_best", "vqa", "ofa_base", "VQAv2"),
    _official("snli_ve_base_best", "snli_ve", "ofa_base", "SNLI-VE visual entailment"),
    _official("image_gen_base_best", "image_gen", "ofa_base",
              "COCO text-to-image generation; generating images also needs the VQGAN (and CLIP for reranking) "
              "checkpoints, which are not in this file"),
)

REGISTRY: Dict[str, CheckpointEntry] = {e.name: e for e in _ENTRIES}
assert len(REGISTRY) == len(_ENTRIES), "duplicate checkpoint names"


def list_checkpoints() -> List[str]:
    """Registry names, in registry order (mmpretrain zoo first, then the official releases)."""
    return list(REGISTRY)


def get_entry(name: str) -> CheckpointEntry:
    """The registry entry for ``name``; ``UnknownCheckpointError`` with close matches otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownCheckpointError(_unknown_message(name)) from None


def default_cache_dir() -> str:
    return os.path.expanduser(os.environ.get("OFA_CACHE") or os.path.join("~", ".cache", "ofa"))


def _close_matches(name: str) -> List[str]:
    names = list(REGISTRY)
    lowered = {n.lower(): n for n in names}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=5, cutoff=0.5)
    return [lowered[f] for f in found]


def _unknown_message(name: str) -> str:
    close = _close_matches(name)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f"unknown checkpoint {name!r}: not a registry name, an http(s):// URL or an existing local path."
            f"{hint} `ofa-checkpoints list` shows all {len(REGISTRY)} names.")


def _is_url(s: str) -> bool:
    return s.lower().startswith(("http://", "https://"))


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or "/" in s or s.startswith(("~", ".")) or (os.altsep is not None and os.altsep in s)
            or s.lower().endswith((".pt", ".pth", ".gz", ".safetensors", ".bin", ".ckpt")))


def _filename_from_url(url: str) -> str:
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name or name in (".", "..") or not re.fullmatch(r"[\w.+\-=@~]+", name):
        raise HubError(f"cannot take a cache file name from URL {url!r} (path ends in {name!r})")
    return name


def resolve_checkpoint(name_or_path_or_url: "str | os.PathLike[str]", cache_dir: Optional[str] = None,
                       progress: bool = True) -> str:
    """Turn a registry name, an http(s) URL or a local path into a local path.

    - An existing local file or folder is returned as given (``~`` expanded); it takes precedence over
      a registry name of the same spelling. A string that looks like a path (has a separator, starts
      with ``.``/``~`` or ends in a checkpoint extension) but does not exist raises
      ``FileNotFoundError`` naming it.
    - A registry name or URL is downloaded once into ``cache_dir`` (default ``$OFA_CACHE`` or
      ``~/.cache/ofa``) under the URL's file name; later calls return the cached file without
      network access. See the module docstring for resume, verification and atomicity.

    Raises ``UnknownCheckpointError`` (with close matches), ``FileNotFoundError``, ``DownloadError``
    (HTTP status and URL, or the network error) or ``ChecksumError`` (expected vs actual).
    """
    s = os.fspath(name_or_path_or_url)
    if not isinstance(s, str) or not s:
        raise UnknownCheckpointError(f"expected a checkpoint name, URL or path, got {name_or_path_or_url!r}")
    if _is_url(s):
        entry = next((e for e in REGISTRY.values() if e.url == s), None)
        return _download(s, entry, cache_dir, progress)
    local = os.path.expanduser(s)
    if os.path.exists(local):
        return local
    if s in REGISTRY:
        entry = REGISTRY[s]
        if entry.url is None:
            raise HubError(f"checkpoint {s!r} has no known download URL. {entry.notes}")
        return _download(entry.url, entry, cache_dir, progress)
    if _looks_like_path(s):
        stem = os.path.basename(s).split(".")[0]
        hint = f" (the registry name {stem!r} would download it)" if stem in REGISTRY else ""
        raise FileNotFoundError(2, f"checkpoint path does not exist: {local}{hint}", local)
    raise UnknownCheckpointError(_unknown_message(s))


# --------------------------------------------------------------------------------------------------
# download machinery


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: str, url: str, entry: Optional[CheckpointEntry], expected_size: Optional[int]) -> Optional[str]:
    """Check size (entry's, else the server's) and sha256 / sha256 prefix; delete the file on mismatch.

    Returns the sha256 when it was computed here (None when nothing was to check or the
    ``.verified`` marker already vouches for the file).
    """
    size = os.path.getsize(path)
    want_size = entry.size if entry is not None and entry.size is not None else expected_size
    if want_size is not None and size != want_size:
        _remove(path)
        _remove(path + ".verified")
        raise ChecksumError(f"size mismatch for {url}: expected {want_size} bytes, got {size} bytes; "
                            f"the file was deleted ({path})")
    want_sha = (entry.sha256 or "").lower() if entry is not None else ""
    want_prefix = (entry.sha256_prefix or "").lower() if entry is not None else ""
    if not want_sha and not want_prefix:
        return None
    if _verified_marker_ok(path, want_sha, want_prefix):
        return None
    actual = _sha256_file(path)
    if (want_sha and actual != want_sha) or (want_prefix and not actual.startswith(want_prefix)):
        expected = want_sha or f"{want_prefix}..."
        _remove(path)
        _remove(path + ".verified")
        raise ChecksumError(f"sha256 mismatch for {url}: expected {expected}, got {actual}; "
                            f"the file was deleted ({path})")
    return actual


def _verified_marker_ok(path: str, want_sha: str, want_prefix: str) -> bool:
    try:
        with open(path + ".verified", "r", encoding="utf-8") as f:
            mark = json.load(f)
        st = os.stat(path)
        sha = str(mark["sha256"])
        return (mark["size"] == st.st_size and mark["mtime_ns"] == st.st_mtime_ns
                and (not want_sha or sha == want_sha) and (not want_prefix or sha.startswith(want_prefix)))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_verified_marker(path: str, sha: str) -> None:
    st = os.stat(path)
    try:
        write_atomic(path + ".verified", json.dumps({"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    except OSError:  # the marker only saves re-hashing; never fail a resolve over it
        pass


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _lock_partial(partial: str, final: str):
    """Open ``partial`` for appending, holding an exclusive advisory lock on it.

    Returns None when ``final`` appeared meanwhile (another process finished the download). The
    inode check makes sure the lock is held on the file still named ``partial``: a process that
    waited on a file which was then renamed to ``final`` sees ``final`` and stops.
    """
    announced = False
    while True:
        if os.path.exists(final):
            return None
        f = open(partial, "ab")
        if fcntl is None:  # pragma: no cover
            return f
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if not announced:
                print(f"waiting for another process downloading {final}", file=sys.stderr)
                announced = True
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.stat(partial), os.fstat(f.fileno()))
        except FileNotFoundError:
            same = False
        if same and os.path.exists(final):
            # finished by another process between our first look and our open; drop the empty
            # .partial that our open created (we hold its lock, so nobody is writing to it)
            if os.fstat(f.fileno()).st_size == 0:
                _remove(partial)
            f.close()
            return None
        if same:
            return f
        f.close()


def _download(url: str, entry: Optional[CheckpointEntry], cache_dir: Optional[str], progress: bool) -> str:
    cache = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    os.makedirs(cache, exist_ok=True)
    final = os.path.join(cache, _filename_from_url(url))
    partial = final + ".partial"
    if os.path.exists(final):
        return _verified_final(final, url, entry)
    f = _lock_partial(partial, final)
    if f is None:
        return _verified_final(final, url, entry)
    try:
        total = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                total = _fetch_into(url, f, entry, progress)
                break
            except _Interrupted as e:
                if attempt == MAX_ATTEMPTS:
                    raise DownloadError(
                        f"download of {url} was interrupted after {e.have} of "
                        f"{e.total if e.total is not None else 'unknown'} bytes ({e.reason}); the partial file "
                        f"{partial} is kept and the next call resumes from it") from None
                time.sleep(RETRY_SLEEP_S)
        f.flush()
        os.fsync(f.fileno())
        sha = _verify(partial, url, entry, total)
        os.replace(partial, final)  # atomic: the final name only ever holds a complete, checked file
    finally:
        f.close()
    _fsync_dir(cache)
    if sha is not None:
        _write_verified_marker(final, sha)
    return final


def _verified_final(final: str, url: str, entry: Optional[CheckpointEntry]) -> str:
    sha = _verify(final, url, entry, None)
    if sha is not None:
        _write_verified_marker(final, sha)
    return final


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (e.g. Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class _Interrupted(Exception):
    def __init__(self, have: int, total: Optional[int], reason: str):
        super().__init__(reason)
        self.have, self.total, self.reason = have, total, reason


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.I)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.I)


def _reset(f) -> None:
    f.seek(0)
    f.truncate(0)


def _open(url: str, offset: int):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _fetch_into(url: str, f, entry: Optional[CheckpointEntry], progress: bool) -> Optional[int]:
    """Append the rest of ``url`` to the locked ``.partial`` file ``f``; return the total size if known.

    Raises ``_Interrupted`` when the connection drops (the bytes received so far stay in ``f``).
    """
    f.seek(0, os.SEEK_END)
    offset = f.tell()
    known = entry.size if entry is not None else None
    if known is not None and offset == known:
        return known  # a complete .partial from a run that stopped before the rename
    if known is not None and offset > known:
        _reset(f)
        offset = 0
    for _ in range(2):  # a second round only after throwing away an unusable partial
        try:
            resp = _open(url, offset)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset > 0:
                found = _UNSATISFIED_RANGE.search(e.headers.get("Content-Range", "") if e.headers else "")
                e.close()
                if found and int(found.group(1)) == offset:
                    return offset  # the partial already holds the whole file
                _reset(f)
                offset = 0
                continue
            reason = e.reason
            e.close()
            raise DownloadError(f"HTTP {e.code} {reason} for {url}") from None
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"cannot download {url}: {reason}") from None
        with resp:
            status = resp.status
            length = resp.headers.get("Content-Length")
            length = int(length) if length is not None and length.isdigit() else None
            if status == 206:
                found = _CONTENT_RANGE.search(resp.headers.get("Content-Range", ""))
                if not found or int(found.group(1)) != offset:
                    _reset(f)  # a range we did not ask for: start over from byte 0
                    offset = 0
                    continue
                total = int(found.group(3)) if found.group(3) != "*" else (
                    offset + length if length is not None else None)
            elif status == 200:
                if offset > 0:  # the server ignored Range: restart the file cleanly
                    _reset(f)
                    offset = 0
                total = length
            else:
                raise DownloadError(f"HTTP {status} {resp.reason} for {url} (expected 200 or 206)")
            if known is not None and total is not None and total != known:
                raise ChecksumError(f"size mismatch for {url}: expected {known} bytes, the server announces "
                                    f"{total} bytes")
            _stream(resp, f, offset, total, _filename_from_url(url), progress)
            return total
    raise DownloadError(f"cannot download {url}: the server keeps answering with unusable ranges")


def _stream(resp, f, offset: int, total: Optional[int], desc: str, progress: bool) -> None:
    from tqdm import tqdm

    have = offset
    with tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
              file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=True) as bar:
        while True:
            try:
                block = resp.read(CHUNK_SIZE)
            except (http.client.HTTPException, OSError) as e:  # dropped connection, reset, timeout
                f.flush()
                raise _Interrupted(have, total, f"{type(e).__name__}: {e}") from None
            if not block:
                break
            f.write(block)  # a failed write (disk full) is not a network problem: it propagates
            have += len(block)
            bar.update(len(block))
    f.flush()
    if total is not None and have < total:
        raise _Interrupted(have, total, "connection closed early")


# --------------------------------------------------------------------------------------------------
# command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ofa-checkpoints list`` | ``ofa-checkpoints download NAME [--cache-dir D] [--quiet]``."""
    parser = argparse.ArgumentParser(prog="ofa-checkpoints", description="List and download published OFA checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="show the registry")
    p_list.add_argument("--json", action="store_true", help="print the full entries as JSON")
    p_dl = sub.add_parser("download", help="download NAME (a registry name or an http(s) URL) and print its path")
    p_dl.add_argument("name")
    p_dl.add_argument("--cache-dir", default=None, help="default: $OFA_CACHE or ~/.cache/ofa")
    p_dl.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.command == "list":
        if args.json:
            print(json.dumps([dataclasses.asdict(e) for e in REGISTRY.values()], indent=2))
            return 0
        width = max(len(n) for n in REGISTRY)
        for e in REGISTRY.values():
            where = e.url if e.url else "(no known download URL)"
            print(f"{e.name:<{width}}  {e.format:<10}  {e.arch:<10}  {e.task:<14}  {where}")
        return 0
    try:
        path = resolve_checkpoint(args.name, cache_dir=args.cache_dir, progress=not args.quiet)
    except (HubError, FileNotFoundError) as e:
        print(f"ofa-checkpoints: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
