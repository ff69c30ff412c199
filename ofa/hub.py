"""Published OFA checkpoints by name, and a verified download cache built on ``pooch``.

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
- The transfer is ``pooch.HTTPDownloader`` (requests, tqdm progress bar on stderr) and the hashing
  ``pooch.file_hash``. What this module adds on top, and why:
  - the file is written to ``{name}.{pid}.{random}.partial`` by ``ofa.io_utils.atomic_output``, checked
    (size, sha256 or its prefix, not empty) and only then renamed into place, so a file under its final
    name is always complete and verified, has the permissions the umask gives (pooch's own temporary
    file is a ``mkstemp`` 0600 one), and a ``.partial`` left by a killed run is removed by the next one;
  - processes resolving the same file take turns on a ``filelock`` lock (``<cache>/.locks/``), so the
    ranks of a distributed run download it once instead of once each;
  - offline use: with ``OFA_OFFLINE=1`` or ``local_files_only=True`` the network is never touched;
  - every failure is one ``HubError`` line naming the URL and the cache path where a manually fetched
    copy can be placed.
  There is no resume: an interrupted download starts again from byte 0 (pooch has no Range support).
  A cached file is re-hashed at every resolve when a hash is known (about 1.4 GB/s here, so 0.5 s for
  the ~700 MB mmpretrain files, the only ones with a known hash).
- ``main(argv)`` is the ``ofa-checkpoints list | download NAME [--cache-dir D] [--offline]`` command.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import os
import re
import socket
import sys
import urllib.parse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import filelock
import pooch
import requests

from ofa.console import one_line, run_cli
from ofa.errors import UserError
from ofa.io_utils import atomic_output

__all__ = ["CheckpointEntry", "REGISTRY", "HubError", "DownloadError", "ChecksumError", "OfflineError",
           "UnknownCheckpointError", "list_checkpoints", "get_entry", "resolve_checkpoint", "default_cache_dir",
           "cache_path", "main"]

logger = logging.getLogger(__name__)

FORMATS = ("fairseq", "mmpretrain")
TIMEOUT_S = 60.0  # seconds without an answer (connect, or between two reads) before a download fails
OFFLINE_ENV = "OFA_OFFLINE"
CACHE_ENV = "OFA_CACHE"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")

_BPE_NOTE = ("needs the GPT-2 BPE folder (encoder.json, vocab.bpe, dict.txt; utils/BPE in the official repo) "
             "passed as bpe_dir")
_OFFICIAL_SRC = "OFA-Sys/OFA checkpoints.md @ c0f36d58b85490822941a8b765249f4835f62768"
_MMPRETRAIN_SRC = ("open-mmlab/mmpretrain configs/ofa/metafile.yml @ 6847d20d57689aa016b5860381312daa6e23b647 "
                   "(and configs/ofa/README.md)")
_OSS = "https://ofa-beijing.oss-cn-beijing.aliyuncs.com/checkpoints/"
_OPENMMLAB = "https://download.openmmlab.com/mmclassification/v1/ofa/"


class HubError(UserError, RuntimeError):
    """Base class of the errors raised here."""


class DownloadError(HubError):
    """The server answered with an error, the connection failed, or the file could not be saved."""


class ChecksumError(HubError):
    """A downloaded or cached file has the wrong size or sha256."""


class OfflineError(HubError):
    """Offline (``OFA_OFFLINE=1`` or ``local_files_only=True``) and the file is not in the cache."""


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
    """``$OFA_CACHE`` (``~`` expanded), else ``~/.cache/ofa``."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "ofa"))


def _offline_reason(local_files_only: bool) -> Optional[str]:
    """Why the network must not be touched (``"local_files_only=True"``, ``"OFA_OFFLINE=1"``), or None.

    ``OFA_OFFLINE`` is read at each call; a value that is neither true (1/true/yes/on) nor false
    (0/false/no/off, empty) is a ``HubError`` rather than a guess."""
    if local_files_only:
        return "local_files_only=True"
    value = os.environ.get(OFFLINE_ENV, "")
    if value.strip().lower() in _TRUE:
        return f"{OFFLINE_ENV}={value}"
    if value.strip().lower() in _FALSE:
        return None
    raise HubError(f"{OFFLINE_ENV}={value!r}: expected 1, true, yes or on (offline) or 0, false, no, off or "
                   f"unset (online)")


def _close_matches(name: str) -> List[str]:
    names = list(REGISTRY)
    lowered = {n.lower(): n for n in names}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    return [lowered[f] for f in found]


def _unknown_message(name: str) -> str:
    close = _close_matches(name)
    listing = f"`ofa-checkpoints list` shows all {len(REGISTRY)} names"
    if not close:
        return f"unknown checkpoint {name!r}: not a registry name, an http(s):// URL or an existing path ({listing})"
    alternatives = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f"unknown checkpoint {name!r}; did you mean {alternatives}? ({listing})"


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


def cache_path(url: str, cache_dir: Optional[str] = None) -> str:
    """Where the file of ``url`` is (or will be) cached: ``cache_dir`` (default ``default_cache_dir()``)
    joined with the URL's file name. Placing a manually fetched copy there makes it the cached file."""
    cache = os.path.expanduser(os.fspath(cache_dir)) if cache_dir else default_cache_dir()
    return os.path.join(cache, _filename_from_url(url))


def resolve_checkpoint(name_or_path_or_url: "str | os.PathLike[str]", cache_dir: Optional[str] = None,
                       progress: bool = True, local_files_only: bool = False) -> str:
    """Turn a registry name, an http(s) URL or a local path into a local path.

    - An existing local file or folder is returned as given (``~`` expanded); it takes precedence over
      a registry name of the same spelling. A string that looks like a path (has a separator, starts
      with ``.``/``~`` or ends in a checkpoint extension) but does not exist raises
      ``FileNotFoundError`` naming it.
    - A registry name or URL is downloaded once into ``cache_path(url, cache_dir)``; later calls return
      the cached file without network access once it passes the entry's size / sha256 checks (a cached
      file that fails them is downloaded again, and replaced only by a copy that passes).
    - ``local_files_only=True`` or ``OFA_OFFLINE=1``: never touch the network; the cached file or an
      ``OfflineError`` that says where to place a manually fetched copy.

    Raises ``UnknownCheckpointError`` (with close matches), ``FileNotFoundError``, ``OfflineError``,
    ``DownloadError`` or ``ChecksumError``; each is one line naming the URL and the cache path.
    """
    s = os.fspath(name_or_path_or_url)
    if not isinstance(s, str) or not s:
        raise UnknownCheckpointError(f"expected a checkpoint name, URL or path, got {name_or_path_or_url!r}")
    if _is_url(s):
        entry = next((e for e in REGISTRY.values() if e.url == s), None)
        return _cached_or_download(s, entry, cache_dir, progress, local_files_only)
    local = os.path.expanduser(s)
    if os.path.exists(local):
        return local
    if s in REGISTRY:
        entry = REGISTRY[s]
        if entry.url is None:
            raise HubError(f"checkpoint {s!r} has no known download URL. {entry.notes}")
        return _cached_or_download(entry.url, entry, cache_dir, progress, local_files_only)
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", s):
        raise UnknownCheckpointError(f"unsupported URL {s!r}: only http:// and https:// URLs are downloaded")
    if _looks_like_path(s):
        stem = os.path.basename(s).split(".")[0]
        hint = f" (the registry name {stem!r} would download it)" if stem in REGISTRY else ""
        raise FileNotFoundError(2, f"checkpoint path does not exist: {local}{hint}", local)
    raise UnknownCheckpointError(_unknown_message(s))


# --------------------------------------------------------------------------------------------------
# the cache


def _mismatch(path: str, entry: Optional[CheckpointEntry]) -> Optional[str]:
    """What is wrong with the file at ``path`` for ``entry`` (empty, size, sha256 or its prefix), or None."""
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty"
    if entry is None:
        return None
    if entry.size is not None and size != entry.size:
        return f"{size} bytes instead of {entry.size}"
    want_sha = (entry.sha256 or "").lower()
    want_prefix = (entry.sha256_prefix or "").lower()
    if not want_sha and not want_prefix:
        return None
    actual = pooch.file_hash(path, alg="sha256")
    if (want_sha and actual != want_sha) or (want_prefix and not actual.startswith(want_prefix)):
        return f"sha256 {actual} instead of {want_sha or want_prefix + '...'}"
    return None


def _cached_or_download(url: str, entry: Optional[CheckpointEntry], cache_dir: Optional[str], progress: bool,
                        local_files_only: bool) -> str:
    """The cached file of ``url`` when it passes ``_mismatch``; else a download, unless offline."""
    final = cache_path(url, cache_dir)
    offline = _offline_reason(local_files_only)
    if offline is not None:
        if not os.path.isfile(final):
            raise OfflineError(f"offline ({offline}): {url} is not in the cache; place a manually fetched copy "
                               f"at {final}")
        problem = _mismatch(final, entry)
        if problem is not None:
            raise ChecksumError(f"offline ({offline}): the cached {final} is not {url} ({problem}); replace it "
                                f"with a good copy")
        return final
    if os.path.isfile(final) and _mismatch(final, entry) is None:
        return final
    with _download_lock(final, url):
        if os.path.isfile(final):  # another process may have finished it while we waited
            problem = _mismatch(final, entry)
            if problem is None:
                return final
            logger.warning("the cached %s failed its check (%s); downloading it again", final, problem)
        _remove_if_present(final + ".partial")  # left by the urllib downloader this module replaced
        _download(url, final, entry, progress)
    return final


@contextlib.contextmanager
def _download_lock(final: str, url: str):
    """Hold ``<cache>/.locks/<file>.lock`` (creating the cache folder), so that one process downloads
    ``final`` while the others wait for it."""
    folder = os.path.join(os.path.dirname(final), ".locks")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot download {url}: cannot create the cache folder ({one_line(e)}); set "
                            f"{CACHE_ENV} or --cache-dir to a writable folder") from e
    lock = filelock.FileLock(os.path.join(folder, os.path.basename(final) + ".lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info("waiting for another process downloading %s", final)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _download(url: str, final: str, entry: Optional[CheckpointEntry], progress: bool) -> None:
    """Download ``url`` with ``pooch.HTTPDownloader`` into a temporary file beside ``final``
    (``atomic_output``: umask permissions, stale ones of killed runs removed), check it, then rename
    it to ``final``; on any failure nothing is left and a one-line ``HubError`` is raised."""
    place = f"a manually fetched copy can be placed at {final}"
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=TIMEOUT_S, chunk_size=1 << 16)
    logger.info("downloading %s to %s", url, final)
    try:
        with atomic_output(final) as tmp:
            downloader(url, tmp, None)
            if os.path.getsize(tmp) == 0:
                raise DownloadError(f"cannot download {url}: the server sent an empty file; {place}")
            problem = _mismatch(tmp, entry)
            if problem is not None:
                raise ChecksumError(f"checksum mismatch for {url}: {problem}; the download was discarded; {place}")
    except requests.RequestException as e:
        raise DownloadError(f"cannot download {url}: {_network_reason(url, e)}; {place}") from e
    except OSError as e:  # the cache folder: full disk, permissions
        raise DownloadError(f"cannot save {url} as {final}: {one_line(e)}") from e


def _network_reason(url: str, error: "requests.RequestException") -> str:
    """A short reason for a failed request: the HTTP status, the unresolvable host, the socket error."""
    response = getattr(error, "response", None)
    if isinstance(error, requests.HTTPError) and response is not None:
        return f"HTTP {response.status_code} {response.reason or ''}".rstrip()
    if isinstance(error, requests.Timeout):
        return f"no answer within {TIMEOUT_S:g} s"
    cause = _root_os_error(error)
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve host {urllib.parse.urlparse(url).hostname!r} ({cause.strerror})"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "the connection broke before the whole file arrived"
    if cause is not None:
        return cause.strerror
    return one_line(error)


def _root_os_error(error: BaseException) -> Optional[OSError]:
    """The innermost ``OSError`` with an errno and message behind ``error`` (through urllib3's
    ``reason`` attributes and exception chaining), or None."""
    found, seen, todo = None, set(), [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None and e.strerror:
            found = e
        todo.extend(x for x in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                    if isinstance(x, BaseException))
    return found


def _remove_if_present(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------------------------
# command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ofa-checkpoints list [--json]`` | ``ofa-checkpoints download NAME [--cache-dir D] [--quiet]
    [--offline]``; a mistake (unknown name, no network, offline and not cached) is one line and exit
    status 2 (``run_cli``)."""
    return run_cli("ofa-checkpoints", _main, argv)


def _main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="ofa-checkpoints", description="List and download published OFA checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="show the registry")
    p_list.add_argument("--json", action="store_true", help="print the full entries as JSON")
    p_dl = sub.add_parser("download", help="download NAME (a registry name or an http(s) URL) and print its path")
    p_dl.add_argument("name")
    p_dl.add_argument("--cache-dir", default=None, help=f"default: ${CACHE_ENV} or ~/.cache/ofa")
    p_dl.add_argument("--quiet", action="store_true", help="no progress bar")
    p_dl.add_argument("--offline", action="store_true",
                      help=f"never use the network: print the cached file or say where to place it "
                           f"(also {OFFLINE_ENV}=1)")
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
    print(resolve_checkpoint(args.name, cache_dir=args.cache_dir, progress=not args.quiet,
                             local_files_only=args.offline))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
