"""The machine a benchmark ran on, and its memory while it ran.

:func:`machine_info` returns flat fields (``machine_*``, ``version_*``, ``jetson_*``) that every
benchmark record carries, so a row read alone still says where it was measured.
:class:`MemorySampler` reads the peak host RSS and, where there is a GPU, its memory:

- a discrete NVIDIA GPU through NVML (``pynvml``, when importable; else ``nvidia-smi``, slower,
  so callers sample it once per block): memory in use on device 0;
- a Jetson through ``/proc/meminfo`` (``MemTotal - MemAvailable``): its GPU shares the system
  memory, which NVML does not report there.

On a Jetson the power mode (``nvpmodel -q``) and whether the clocks are locked
(``jetson_clocks --show``) are recorded too, since either changes latency several-fold.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

MIB = float(1 << 20)

#: Distributions whose versions every record carries (``version_<name>``; "" when absent).
VERSIONED_PACKAGES = {
    "fmabs_edge": ("fmabs-edge",),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "opencv": ("opencv-python-headless", "opencv-python"),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
}

_TEGRA_MARKERS = (Path("/etc/nv_tegra_release"), Path("/sys/module/tegra_fuse"))


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (Tegra) board."""
    if any(marker.exists() for marker in _TEGRA_MARKERS):
        return True
    return "jetson" in _device_tree_model().lower()


def _device_tree_model() -> str:
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return ""


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Model", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, flags=re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def _package_version(candidates: tuple[str, ...]) -> str:
    for name in candidates:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def _command_output(command: list[str], timeout_s: float = 5.0) -> str | None:
    """stdout+stderr of a system command, or None when it is missing or fails."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.SubprocessError) as err:
        logger.debug("%s failed: %s", command[0], err)
        return None
    if done.returncode != 0:
        logger.debug("%s exited %d: %s", command[0], done.returncode, done.stderr.strip())
        return None
    return (done.stdout + done.stderr).strip()


def jetson_power_mode() -> str:
    """The power mode from ``nvpmodel -q`` (for example ``"MAXN (0)"``); "" where unknown."""
    text = _command_output(["nvpmodel", "-q"])
    if not text:
        return ""
    name = re.search(r"Power Mode:\s*(\S.*)", text)
    number = re.search(r"^\s*(\d+)\s*$", text, flags=re.MULTILINE)
    if name and number:
        return f"{name.group(1).strip()} ({number.group(1)})"
    return name.group(1).strip() if name else text.splitlines()[0]


def parse_clocks_locked(text: str) -> bool | None:
    """Whether every clock in ``jetson_clocks --show`` output runs at a fixed frequency.

    A clock is locked when its ``MinFreq`` equals its ``MaxFreq``; None when the text lists none.
    """
    pairs = re.findall(r"MinFreq=(\d+).*?MaxFreq=(\d+)", text)
    if not pairs:
        return None
    return all(low == high for low, high in pairs)


def jetson_clocks_locked() -> bool | None:
    """True/False from ``jetson_clocks --show``; None where the command is absent or fails."""
    text = _command_output(["jetson_clocks", "--show"])
    return parse_clocks_locked(text) if text else None


def _nvml_gpu_names() -> list[str]:
    nvml = _import_nvml()
    if nvml is None:
        return []
    try:
        nvml.nvmlInit()
        names = []
        for index in range(nvml.nvmlDeviceGetCount()):
            name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names
    except Exception as err:  # pynvml raises NVMLError subclasses; no GPU is not an error here
        logger.debug("NVML unavailable: %s", err)
        return []


def _nvidia_smi_gpu_names() -> list[str]:
    text = _command_output(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return [line.strip() for line in text.splitlines() if line.strip()] if text else []


def _import_nvml() -> Any | None:
    try:
        import pynvml  # noqa: PLC0415 - optional, GPU machines only
    except ImportError:
        return None
    return pynvml


def gpu_name() -> str:
    """The GPU(s) of this machine ("" when none is found); a Jetson is named by its board."""
    if is_jetson():
        return _device_tree_model() or "NVIDIA Jetson"
    names = _nvml_gpu_names() or _nvidia_smi_gpu_names()
    return "; ".join(names)


def machine_info() -> dict[str, Any]:
    """Flat facts about this machine and its libraries, for every benchmark record."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "machine_cpu_model": _cpu_model(),
        "machine_cpu_cores_logical": os.cpu_count() or 0,
        "machine_cpu_cores_physical": psutil.cpu_count(logical=False) or 0,
        "machine_cpu_cores_usable": usable,
        "machine_memory_mb": round(psutil.virtual_memory().total / MIB, 1),
        "machine_gpu": gpu_name(),
        "machine_os": platform.platform(),
        "version_python": platform.python_version(),
    }
    for field, candidates in VERSIONED_PACKAGES.items():
        info[f"version_{field}"] = _package_version(candidates)
    jetson = is_jetson()
    info["jetson_power_mode"] = jetson_power_mode() if jetson else ""
    info["jetson_clocks_locked"] = jetson_clocks_locked() if jetson else None
    return info


def _meminfo_used_mb() -> float | None:
    """System memory in use, ``MemTotal - MemAvailable``, from /proc/meminfo."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    values = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, flags=re.MULTILINE))
    if "MemTotal" not in values or "MemAvailable" not in values:
        return None
    return (int(values["MemTotal"]) - int(values["MemAvailable"])) / 1024.0


def _nvidia_smi_used_mb() -> float | None:
    """Memory in use on GPU 0 from nvidia-smi (MiB), where NVML's Python binding is absent."""
    text = _command_output(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
    )
    try:
        return float(text.splitlines()[0]) if text else None
    except ValueError:
        return None


class MemorySampler:
    """Samples host RSS and GPU memory on demand; callers keep the peaks per record.

    ``gpu_source`` says what the GPU figure is: ``"nvml device"`` (memory in use on device 0, by
    every process: per-process figures are often hidden inside containers), ``"nvidia-smi device"``
    (the same, read through nvidia-smi),
    ``"meminfo (Jetson shared memory)"`` (system memory in use on a Jetson, whose GPU shares it) or
    ``""`` (no GPU found: the GPU figure is None).
    """

    def __init__(self, gpu: bool = True) -> None:
        self._process = psutil.Process()
        self._nvml: Any | None = None
        self._handle: Any | None = None
        self.gpu_source = ""
        if not gpu:
            return
        if is_jetson():
            self.gpu_source = "meminfo (Jetson shared memory)"
            return
        nvml = _import_nvml()
        if nvml is None:
            if _nvidia_smi_used_mb() is not None:
                self.gpu_source = "nvidia-smi device"
            return
        try:
            nvml.nvmlInit()
            self._handle = nvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = nvml
            self.gpu_source = "nvml device"
        except Exception as err:  # NVMLError: no driver or no device
            logger.debug("NVML unavailable, no GPU memory figures: %s", err)

    def rss_mb(self) -> float:
        """Resident set size of this process in MiB."""
        return self._process.memory_info().rss / MIB

    def gpu_mb(self) -> float | None:
        """GPU memory in MiB as described by :attr:`gpu_source`; None without a GPU."""
        if self.gpu_source.startswith("meminfo"):
            return _meminfo_used_mb()
        if self.gpu_source.startswith("nvidia-smi"):
            return _nvidia_smi_used_mb()
        if self._nvml is None:
            return None
        try:
            return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / MIB
        except Exception as err:  # NVMLError
            logger.debug("NVML memory query failed: %s", err)
            return None
