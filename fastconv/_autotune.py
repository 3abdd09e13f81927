"""The ``auto`` backend: per-signature tactic selection with an in-memory and an on-disk cache.

For every op call signature (op, shapes, strides — which encode the layout and channel-slice
outs —, dtypes, device, epilogue/prologue flags) ``auto`` times the candidate tactics once on the
call's own arguments, keeps the fastest in memory and in a JSON file, and runs it from then on:

- on CUDA: ``triton`` (whose own autotuner picks its config per shape), ``cuda`` (the C++/CUDA
  kernels: CUTLASS SM90 or the direct ones) for conv2d_relu, conv1x1 and max_pool2d, and
  ``torch`` (PyTorch's kernel with fastconv's fusion around it);
- on the CPU: ``cpu`` (fastconv's C++ kernels, when the extension is built) and ``torch`` (oneDNN
  with its fused post-ops where it has them).

The cache file lives in ``$FASTCONV_CACHE_DIR`` (default ``~/.cache/fastconv``); its name hashes
the device name, the thread count (CPU), and the torch / fastconv / Triton versions, so a file is
only read back where its timings mean something. Writes are atomic (temp file + ``os.replace``)
under a thread lock and a file lock; a corrupt or unwritable file is ignored with a warning.

``FASTCONV_AUTOTUNE=0`` picks by fixed heuristics without timing. No timing happens inside
torch.compile tracing or CUDA-graph capture: there the cached choice is used, or the heuristic one
(not stored) when the signature was never tuned. A candidate kernel that raises
``NotImplementedError`` does not support the signature and is left out (recorded as such);
any other error propagates: nothing falls back silently.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from . import _backend, _ext
from ._version import __version__

# 2: the cpu candidate runs Winograd for 3x3 stride-1 float32 convs; choices made before are stale
# 3: the torch candidate runs bfloat16 CPU convs on oneDNN's bfloat16 kernel (was float32): 2-3x faster
CACHE_VERSION = 3
MAX_FILE_ENTRIES = 4096  # choices kept per tactic-cache file (per device key)
OWN_KERNELS = ("cpu", "cuda", "triton")  # fastconv's own kernel families; "torch" and "reference" are PyTorch's

Timer = Callable[[str, Callable[[], None], torch.device], float]


# ---------------------------------------------------------------------------------------------
# settings

def autotune_enabled() -> bool:
    return os.environ.get("FASTCONV_AUTOTUNE", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> str:
    env = os.environ.get("FASTCONV_CACHE_DIR")
    if env:
        return _resolve_cache_dir(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastconv")


@functools.lru_cache(maxsize=16)
def _resolve_cache_dir(env: str) -> str:
    """``~`` expanded as a shell would (a Dockerfile ENV or systemd Environment= does not), and a
    relative path made absolute once, against the working directory of its first use: the process
    keeps one cache when it changes directory later."""
    return os.path.abspath(os.path.expanduser(env))


# ---------------------------------------------------------------------------------------------
# candidates and heuristics

_candidates: Dict[Tuple[str, str], List[str]] = {}


def candidates(op: str, device: torch.device) -> List[str]:
    """The tactics ``auto`` chooses between for ``op`` on ``device``, in heuristic preference order."""
    key = (op, device.type)
    found = _candidates.get(key)
    if found is None:
        found = _candidates[key] = _find_candidates(op, device)
    return list(found)


CUDA_KERNEL_OPS = ("conv2d_relu", "conv1x1", "max_pool2d")


def _find_candidates(op: str, device: torch.device) -> List[str]:
    if device.type == "cuda":
        cands = ["triton"]
        # the C++/CUDA kernels of these ops passed the GPU suite (H200, 2026-11-28); dense_concat's
        # copy is not a tuning candidate (its Triton and CUDA kernels are the same one-pass copy)
        if op in CUDA_KERNEL_OPS and _backend.backend_status()["cuda"] == "available":
            cands.append("cuda")
        return cands + ["torch"]
    if device.type == "cpu":
        return (["cpu"] if _ext.load_error() is None else []) + ["torch"]
    return ["reference"]


def heuristic(op: str, device: torch.device) -> str:
    """The untimed choice (``FASTCONV_AUTOTUNE=0``, or an untuned signature during capture/tracing)."""
    return candidates(op, device)[0]


# ---------------------------------------------------------------------------------------------
# signatures

_device_names: Dict[Tuple[str, Optional[int]], str] = {}


def device_name(device: torch.device) -> str:
    key = (device.type, device.index)
    name = _device_names.get(key)
    if name is None:
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
        elif device.type == "cpu":
            name = _cpu_model()
        else:
            name = device.type
        _device_names[key] = name
    return name


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:
        return "none"


def device_key(device: torch.device) -> str:
    """What a tuned choice depends on besides the call: device, thread count, versions, what the
    timing measured (``timing_mode``: choices made by GPU time alone are kept apart), and on CUDA
    whether FASTCONV_CUTLASS_SM80 / FASTCONV_CUTLASS_SM90_TF32 change what the ``cuda`` candidate runs
    (on the CPU: FASTCONV_CPU_WINOGRAD=0, 2 or 4 / FASTCONV_ONEDNN_PREPACK=0 or FASTCONV_ONEDNN_BF16=0,
    the ``cpu`` / ``torch`` ones)."""
    parts = [device_name(device), f"torch {torch.__version__}", f"fastconv {__version__}"]
    if device.type == "cpu":
        parts.append(f"threads {torch.get_num_threads()}")
        # kernels switched off or forced
        for var in ("FASTCONV_CPU_WINOGRAD", "FASTCONV_ONEDNN_PREPACK", "FASTCONV_ONEDNN_BF16"):
            value = os.environ.get(var) or "1"
            if value != "1":
                parts.append(f"{var}={value}")
    else:
        parts.append(f"triton {_triton_version()}")
        sm80 = os.environ.get("FASTCONV_CUTLASS_SM80") or "0"
        if sm80 != "0":  # the cuda backend's CUTLASS 2.x kernels on or forced: another `cuda` candidate
            parts.append(f"cutlass_sm80 {sm80}")
        if (os.environ.get("FASTCONV_CUTLASS_SM90_TF32") or "0") != "0":  # the SM90 TF32 kernel on
            parts.append("cutlass_sm90_tf32")
    if current_timing() != "wall":
        parts.append(f"timing {current_timing()}")
    return " | ".join(parts)


def _describe(t) -> str:
    if t is None:
        return "-"
    if isinstance(t, torch.Tensor):
        return f"{str(t.dtype)[6:]}{list(t.shape)}s{list(t.stride())}"
    if isinstance(t, (list, tuple)):
        return "[" + ",".join(_describe(v) for v in t) + "]"
    return repr(t)


def signature(op: str, tensors: Sequence, flags: Sequence) -> str:
    """One string per call signature: the tensors' dtypes, shapes and strides, and the op's flags."""
    return f"{op}(" + ";".join(_describe(t) for t in tensors) + "|" + ",".join(_describe(f) for f in flags) + ")"


# ---------------------------------------------------------------------------------------------
# timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> Callable[[], float]:
    # wall time. (Process CPU time was tried on the CPU: OpenMP workers spinning after each parallel
    # region add a near-constant few ms per call, which swamps small kernels.)
    return time.perf_counter


def default_timer(tactic: str, fn: Callable[[], None], device: torch.device) -> float:
    """Seconds per call: the minimum over a few calls after one warm-up call (the minimum is the
    statistic least moved by other load on the machine). ``choose`` calls it in interleaved rounds."""
    clock = _clock(device)
    _sync(device)
    t0 = clock()
    fn()
    _sync(device)
    first = clock() - t0
    # a call that long is not noise-dominated, and each repeat costs the user seconds on first use
    reps = 0 if first > LONG_CALL_S else 1 if first > 0.05 else 3 if first > 0.005 else 8
    best = first
    for _ in range(reps):
        t0 = clock()
        fn()
        _sync(device)
        best = min(best, clock() - t0)
    return best


ROUNDS = 3  # the default timer runs in this many interleaved rounds (candidates alternate within each)

# A candidate call longer than this is timed once, and when every candidate is that slow, in one
# round only: huge shapes (a 46341² fp16 pool: 15 s a call) otherwise spent 2 calls × 3 rounds on
# every candidate before the user's first result (172 s instead of ~30 s).
LONG_CALL_S = 0.5

GRAPH_CALLS = 10  # calls per captured graph in gpu_time_timer


def gpu_time_timer(tactic: str, fn: Callable[[], None], device: torch.device) -> float:
    """Seconds per call of GPU time alone: ``fn`` warmed up (lazy initialization, Triton autotuning,
    cuDNN benchmarking happen there), captured GRAPH_CALLS times in one CUDA graph, the replay
    timed with CUDA events (best of 3). The right measure for a model that is replayed as a CUDA
    graph, where the host cost of a launch is paid once at capture. A tactic that cannot be
    captured is timed by ``default_timer`` instead."""
    if device.type != "cuda":
        return default_timer(tactic, fn, device)
    from ._graphs import capture  # (_graphs imports this module)

    fn()  # on the current stream first: a NotImplementedError (unsupported tactic) surfaces here
    try:
        graph, _ = capture(lambda: [fn() for _ in range(GRAPH_CALLS)], device)
    except Exception:  # e.g. a kernel path that synchronizes: time it with the host in the loop
        torch.cuda.synchronize(device)
        return default_timer(tactic, fn, device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    graph.replay()
    for _ in range(3):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / GRAPH_CALLS)
    return best


_timing = threading.local()


def current_timing() -> str:
    """"wall" (host and device, what an eager call costs) or "gpu" (device time alone)."""
    return getattr(_timing, "mode", "wall")


@contextlib.contextmanager
def timing_mode(mode: str) -> Iterator[None]:
    """On this thread: tune (and look choices up) by ``mode``'s measure. ``"gpu"`` times candidates
    with ``gpu_time_timer`` and keeps its choices under their own cache key, so they never reach
    eager calls; CUDAGraphModel(tune_by="gpu") tunes and captures inside it."""
    if mode not in ("wall", "gpu"):
        raise ValueError(f"fastconv: timing mode must be 'wall' or 'gpu', got {mode!r}")
    previous = current_timing()
    _timing.mode = mode
    try:
        yield
    finally:
        _timing.mode = previous


_timer: Timer = default_timer


@contextlib.contextmanager
def use_timer(timer: Timer) -> Iterator[Timer]:
    """Time candidates with ``timer(tactic, fn, device) -> seconds`` in this block (tests inject fakes)."""
    global _timer
    previous, _timer = _timer, timer
    try:
        yield timer
    finally:
        _timer = previous


# ---------------------------------------------------------------------------------------------
# the on-disk cache

class TacticCache:
    """Tuned choices in memory and in ``cache_dir()/tactics-<hash>.json`` (one file per device key)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._memory: Dict[Tuple[str, str], str] = {}
        self._loaded: Dict[str, bool] = {}       # path -> whether its entries are in memory
        self._warned: set = set()

    def path(self, dkey: str) -> str:
        digest = hashlib.sha1(f"v{CACHE_VERSION}|{dkey}".encode()).hexdigest()[:16]
        return os.path.join(cache_dir(), f"tactics-{digest}.json")

    def _warn(self, what: str, path: str, exc: BaseException) -> None:
        key = (what, path)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"fastconv: tactic cache {path}: {what} ({type(exc).__name__}: {exc}); "
                          "continuing with the in-memory cache", RuntimeWarning, stacklevel=4)

    def _read(self, path: str, dkey: str) -> Dict[str, str]:
        try:
            with open(path) as f:
                data = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return {}  # no file yet (or no directory: store() warns when it cannot write one)
        except (OSError, ValueError, RecursionError) as exc:  # (RecursionError: JSON nested too deep)
            self._warn("unreadable or corrupt, ignored", path, exc)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        if (not isinstance(entries, dict) or data.get("device_key") != dkey
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in entries.items())):
            self._warn("corrupt, ignored", path, ValueError("unexpected content"))
            return {}
        return entries

    def lookup(self, dkey: str, sig: str) -> Optional[str]:
        with self._lock:
            hit = self._memory.get((dkey, sig))
            if hit is not None:
                return hit
            path = self.path(dkey)
            if not self._loaded.get(path):
                self._loaded[path] = True
                for k, v in self._read(path, dkey).items():
                    self._memory.setdefault((dkey, k), v)
            return self._memory.get((dkey, sig))

    def store(self, dkey: str, sig: str, tactic: str, timings: Optional[Dict[str, float]] = None) -> None:
        """Remember ``tactic`` for ``sig`` in memory and in the device's file (merged with what
        other processes wrote; at most MAX_FILE_ENTRIES per file)."""
        global generation
        with self._lock:
            self._memory[(dkey, sig)] = tactic
            generation += 1
            path = self.path(dkey)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with _file_lock(path + ".lock"):
                    entries = self._read(path, dkey)  # merge what other processes wrote meanwhile
                    entries.pop(sig, None)
                    if len(entries) >= MAX_FILE_ENTRIES:
                        # a cache: the oldest choices go, tuned again when next met (each store reads
                        # and writes the whole file, so its size bounds the cost of every new entry)
                        entries = dict(list(entries.items())[len(entries) - MAX_FILE_ENTRIES + 1:])
                    entries[sig] = tactic
                    for k, v in entries.items():
                        self._memory.setdefault((dkey, k), v)
                    fd, tmp = tempfile.mkstemp(prefix=".tactics-", suffix=".tmp", dir=os.path.dirname(path))
                    try:
                        with os.fdopen(fd, "w") as f:
                            # entries in the order they were stored (oldest first: the first dropped)
                            json.dump({"version": CACHE_VERSION, "device_key": dkey, "entries": entries}, f,
                                      indent=0)
                        os.replace(tmp, path)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp)
                        raise
            except OSError as exc:
                self._warn("cannot be written", path, exc)

    def clear_memory(self) -> None:
        """Forget the in-memory choices (the files stay; they are read again on the next lookup)."""
        global generation
        with self._lock:
            generation += 1
            self._memory.clear()
            self._loaded.clear()
            self._warned.clear()


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: os.replace alone keeps the file whole
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# Bumped whenever a choice is stored or forgotten: the fused modules' remembered kernels
# (fastconv/_fastpath.py) are keyed by it, so they are looked up again after any change.
generation = 0
CACHE = TacticCache()


def clear_cache() -> None:
    """Forget the tuned choices held in memory (tests; after changing FASTCONV_CACHE_DIR)."""
    CACHE.clear_memory()
    _candidates.clear()


# ---------------------------------------------------------------------------------------------
# selection

_tune_lock = threading.Lock()


def _reset_locks_in_child() -> None:
    """A process forked while another thread held a lock (tuning, writing the cache) inherits it
    held, by a thread that does not exist in the child: its first tuning call would wait forever
    (a DataLoader worker started while the main thread tuned). Fresh locks in the child."""
    global _tune_lock
    _tune_lock = threading.Lock()
    CACHE._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)


def _timing_forbidden(device: torch.device) -> bool:
    if torch.compiler.is_compiling():
        return True
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return True
    return False


def choose(op: str, device: torch.device, sig: str, run: Callable[[str], None]) -> str:
    """The tactic for this call: cached, else timed (``run(tactic)`` runs one candidate on the
    call's arguments, writing the call's out), else the heuristic one."""
    cands = candidates(op, device)
    if len(cands) == 1:
        return cands[0]
    dkey = device_key(device)
    hit = CACHE.lookup(dkey, sig)
    if hit is not None and hit in cands:
        return hit
    if not autotune_enabled():
        return heuristic(op, device)
    listing = getattr(_listing_state, "rec", None)
    if listing is not None:
        listing.untuned.add(sig)
        return heuristic(op, device)
    if _timing_forbidden(device):
        return heuristic(op, device)  # not stored: the next eager call tunes it
    with _tune_lock:  # one tuning at a time: concurrent timings would disturb each other
        hit = CACHE.lookup(dkey, sig)
        if hit is not None and hit in cands:
            return hit
        timer = _timer
        if timer is default_timer and current_timing() == "gpu":
            timer = gpu_time_timer
        rounds = ROUNDS if timer is default_timer else 1  # other timers are asked once per tactic
        _timing_state.active = True  # (kernel_stats counts the chosen tactic's run, not the candidates')
        try:
            timings = _time_candidates(cands, rounds, timer, run, device)
        finally:
            _timing_state.active = False
        if not timings:
            raise RuntimeError(f"fastconv.{op}: no tactic supports {sig} (tried {cands})")
        best = min(timings, key=timings.get)
        CACHE.store(dkey, sig, best, timings)
        for p in list(getattr(_progress_state, "bars", ())):  # this thread's tune() calls only
            p.tuned(sig, timings, best)
        return best


def _time_candidates(cands: Sequence[str], rounds: int, timer, run: Callable[[str], None],
                     device: torch.device) -> Dict[str, float]:
    """Each tactic's best time over ``rounds`` interleaved rounds, order reversed every other round
    (a burst of other load on the machine then hits every candidate rather than one); a tactic
    that raises NotImplementedError does not support the signature and is left out."""
    timings: Dict[str, float] = {}
    unsupported: set = set()
    for r in range(rounds):
        order = cands if r % 2 == 0 else cands[::-1]
        for tactic in order:
            if tactic in unsupported:
                continue
            try:
                t = float(timer(tactic, lambda t=tactic: run(t), device))
            except NotImplementedError:
                unsupported.add(tactic)
                continue
            timings[tactic] = min(t, timings.get(tactic, t))
        if rounds > 1 and timings and min(timings.values()) > LONG_CALL_S:  # (a timer asked once: as asked)
            # every candidate is slow: no more rounds, which would cost seconds per candidate; but
            # the round's first call also paid the one-time costs (first touch of the output's
            # pages: 0.06-0.17 s of a 0.35 s pool), so that candidate is timed once more
            first = next((c for c in order if c in timings), None)
            if first is not None:
                timings[first] = min(timings[first], float(timer(first, lambda t=first: run(t), device)))
            break
    return timings


def final_tactic(op: str, device: torch.device, sig_tensors: Sequence, sig_flags: Sequence) -> Optional[str]:
    """The tactic every later call with this signature will run, or None while ``auto`` has yet
    to tune it (its choice then depends on timing, capture or tracing state). For remembering a
    kernel after a full call (fastconv/_fastpath.py)."""
    if _backend.current_backend() != "auto":
        return _backend.resolve(device, op)
    cands = candidates(op, device)
    if len(cands) == 1:
        return cands[0]
    hit = CACHE.lookup(device_key(device), signature(op, sig_tensors, sig_flags))
    if hit is not None and hit in cands:
        return hit
    return None if autotune_enabled() else heuristic(op, device)


# ---------------------------------------------------------------------------------------------
# dispatch: what every op's _run calls

_stats_state = threading.local()  # .collectors: this thread's active kernel_stats() (backend choice is per thread too)


def collectors() -> List["KernelStats"]:
    return getattr(_stats_state, "collectors", None) or []


_timing_state = threading.local()  # .active: this thread is timing candidate tactics (choose)


def count_copy(nbytes: int) -> None:
    """A ``torch`` tactic's extra copy of its result into ``out`` (reported by KernelStats)."""
    if getattr(_timing_state, "active", False):
        return
    for c in collectors():
        c.copied_bytes += nbytes


def dispatch(op: str, device: torch.device, kernels: Dict[str, Callable], args: tuple, sig_tensors: Sequence,
             sig_flags: Sequence, flops: Callable[[], int] = lambda: 0) -> str:
    """Run ``op`` with ``args`` on the current backend's kernel (tuned per signature under
    ``auto``); returns the tactic that ran."""
    if _backend.current_backend() == "auto":
        sig = signature(op, sig_tensors, sig_flags)
        backend = choose(op, device, sig, lambda t: kernels[t](*args))
    else:
        backend = _backend.resolve(device, op)
    kernels[backend](*args)
    active = collectors()
    if active:
        n = flops()
        for c in active:
            c.add(op, backend, n)
    return backend


class KernelStats:
    """Calls and conv FLOPs per (op, tactic) while active (``with fastconv.kernel_stats() as s``)."""

    def __init__(self) -> None:
        self.calls: Dict[Tuple[str, str], int] = {}
        self.flops: Dict[Tuple[str, str], int] = {}
        self.copied_bytes = 0  # extra copies of torch-tactic results into out
        self._lock = threading.Lock()

    def add(self, op: str, tactic: str, flops: int) -> None:
        with self._lock:
            self.calls[(op, tactic)] = self.calls.get((op, tactic), 0) + 1
            self.flops[(op, tactic)] = self.flops.get((op, tactic), 0) + flops

    def conv_flops(self, own: Optional[bool] = None) -> int:
        return sum(v for (op, t), v in self.flops.items()
                   if own is None or (t in OWN_KERNELS) == own)

    def own_fraction(self) -> float:
        """Fraction of conv FLOPs that ran on fastconv's own kernels (cpu / cuda / triton)."""
        total = self.conv_flops()
        return self.conv_flops(own=True) / total if total else 0.0


@contextlib.contextmanager
def kernel_stats() -> Iterator[KernelStats]:
    """Counts this thread's op calls while active (as use_backend, per thread); they take the
    full op path meanwhile."""
    stats = KernelStats()
    active = _stats_state.__dict__.setdefault("collectors", [])
    active.append(stats)
    try:
        yield stats
    finally:
        active.remove(stats)


# ---------------------------------------------------------------------------------------------
# tuning a whole model, with a progress line

class _Progress:
    """Counts the signatures tune() tunes; with a stream, a progress line for each."""

    def __init__(self, total: int, stream) -> None:
        self.total, self.done, self.stream, self.t0 = total, 0, stream, time.perf_counter()

    def tuned(self, sig: str, timings: Dict[str, float], best: str) -> None:
        self.done += 1
        if self.stream is None:
            return
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        times = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in timings.items())
        msg = (f"fastconv.tune [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
               f"{time.perf_counter() - self.t0:.0f}s  {sig.split('(')[0]}: {times} -> {best}")
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.stream.write(("\r\033[K" if tty else "") + msg + ("" if tty else "\n"))
        self.stream.flush()


_progress_state = threading.local()  # .bars: the progress counters of this thread's tune() calls
_listing_state = threading.local()


class _Recorder:
    def __init__(self) -> None:
        self.untuned: set = set()


def tune(model: torch.nn.Module, example_input, *, progress: bool = True, stream=None) -> Dict[str, int]:
    """Tune every fastconv op signature of ``model(example_input)`` now (under ``auto``), with a
    progress line on stderr. Returns ``{"signatures": n, "tuned": k}``: n signatures had no cached
    choice yet and k of them were timed now (both 0 when everything was tuned before); later calls
    with inputs of that shape find every choice cached (in memory and on disk)."""
    stream = sys.stderr if stream is None else stream
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    # tuning runs the forward twice: a model in train mode would update its BatchNorm statistics
    # (and step counters) twice, so its buffers are put back afterwards
    saved = ([(b, b.clone()) for b in model.buffers()] if any(m.training for m in model.modules())
             else [])
    try:
        return _tune(model, inputs, progress, stream)
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _tune(model: torch.nn.Module, inputs: tuple, progress: bool, stream) -> Dict[str, int]:
    with torch.inference_mode(), _backend.use_backend("auto"):
        with _listing() as found:  # a first pass lists the untuned signatures (heuristic tactics, no timing)
            model(*inputs)
        total = len(found.untuned)
        bar = _Progress(total, stream if progress else None)  # counts either way ("tuned" was 0 without progress)
        bars = _progress_state.__dict__.setdefault("bars", [])
        bars.append(bar)
        try:
            model(*inputs)
        finally:
            bars.remove(bar)
            if progress and total and getattr(stream, "isatty", lambda: False)():
                stream.write("\n")
    return {"signatures": total, "tuned": bar.done}


@contextlib.contextmanager
def _listing() -> Iterator[_Recorder]:
    """On this thread: untuned signatures are recorded and run their heuristic tactic, untimed."""
    rec = _Recorder()
    previous = getattr(_listing_state, "rec", None)
    _listing_state.rec = rec
    try:
        yield rec
    finally:
        _listing_state.rec = previous
