"""Where frames come from: video files, image folders, cameras, network streams, GStreamer.

Every source gives the same thing, a :class:`Frame`: ``rgb`` ``(H, W, 3) uint8`` RGB at the
source's own resolution, the source id, the frame index (0, 1, 2, ... per source, counting on across
reconnects and loops) and a timestamp in seconds. A frame that could not be decoded (a corrupt
image in a folder) still comes out, with ``rgb=None`` and the reason in ``problem``, so that the
stream reports it as "not inspected" instead of skipping it silently.

Kinds of source and how :func:`parse_source_spec` tells them apart:

==============  ===============================================  =========================
kind            spec                                             timestamp
==============  ===============================================  =========================
``folder``      an existing directory (images in sorted order)   Unix time when read
``image``       an existing image file                           Unix time when read
``video``       any other existing file (decoded by FFmpeg)      position in the file
``camera``      ``0``, ``1``, ... or ``/dev/videoN`` (V4L2)       Unix time when grabbed
``url``         ``rtsp://``, ``rtsps://``, ``http(s)://``, ...   Unix time when grabbed
``gstreamer``   a pipeline with ``!`` ending in ``appsink``      Unix time when grabbed
==============  ===============================================  =========================

A spec may start with ``ID=`` to name the source (``left=rtsp://10.0.0.5/stream``); otherwise the
id comes from the spec (file stem, ``camera0``, ``stream``, ``gstreamer``).

Files (``folder``, ``image``, ``video``) are *paced by the reader*: nothing is lost when the
consumer is slow. Cameras and streams are *live*: frames arrive at the camera's rate, and a
disconnect is retried with exponential backoff (see :class:`ReconnectPolicy`); each disconnect,
retry and reconnect is reported as a :class:`SourceNote`.

GStreamer needs an OpenCV built with it. PyPI's ``opencv-python(-headless)`` wheels are not; on a
Jetson the JetPack system OpenCV is (see :func:`gstreamer_available` and the README).
"""

from __future__ import annotations

import abc
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol, Sequence

import cv2
import numpy as np

from fmabs_edge.errors import CorruptImageError, DataError, UsageError
from fmabs_edge.runtime.preprocess import IMAGE_EXTENSIONS, convert_to_rgb8, load_image

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("folder", "image", "video", "camera", "url", "gstreamer")
#: Kinds that only the streaming mode of ``fmabs-edge run`` handles (folders and images also
#: work in the folder mode).
STREAM_KINDS = ("video", "camera", "url", "gstreamer")
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")

_ID_PREFIX = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)=(.+)$", re.DOTALL)
_DEVICE = re.compile(r"^/dev/video(\d+)$")
_JETSON_GSTREAMER_HINT = (
    "PyPI's opencv-python wheels are built without GStreamer. On a Jetson, use JetPack's system "
    "OpenCV (built with GStreamer): create the venv with 'python3 -m venv --system-site-packages', "
    "then 'pip uninstall opencv-python opencv-python-headless' inside it so that 'import cv2' finds "
    '/usr/lib/python3/dist-packages/cv2. Check with: python -c "import cv2; '
    'print(cv2.getBuildInformation())" | grep GStreamer'
)


@dataclass
class Frame:
    """One frame of one source.

    ``rgb`` is ``(H, W, 3) uint8`` RGB at the source's resolution, or None when the frame could not
    be decoded (``problem`` says why; such a frame is reported "not inspected", never scored).
    ``timestamp`` is in seconds (see the module table); ``captured_monotonic`` is
    :func:`time.monotonic` when the frame was read, the start of its latency.
    """

    rgb: np.ndarray | None
    source_id: str
    index: int
    timestamp: float
    problem: str = ""
    captured_monotonic: float = field(default_factory=time.monotonic)


@dataclass
class SourceNote:
    """Something that happened to a source besides a frame (reported in the event stream).

    ``kind``: ``"disconnected"``, ``"reconnect_failed"``, ``"reconnected"``, ``"ended"`` or
    ``"failed"``. ``attempt`` counts reconnect attempts since the last good frame;
    ``retry_in_s`` is the wait before the next attempt (None when no retry follows).
    """

    source_id: str
    kind: str
    message: str
    attempt: int = 0
    retry_in_s: float | None = None
    at_unix: float = field(default_factory=time.time)


@dataclass
class ReconnectPolicy:
    """Exponential backoff for live sources: wait ``initial_s``, then times ``factor`` up to
    ``max_s``, at most ``max_attempts`` times in a row (None: until the run is stopped)."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    max_attempts: int | None = None

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (1-based)."""
        return min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))


class Capture(Protocol):
    """The part of :class:`cv2.VideoCapture` a source uses (tests pass fakes)."""

    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


class Source(abc.ABC):
    """A stream of :class:`Frame` objects from one camera, file or folder.

    Use: ``source.open()`` (raises :class:`~fmabs_edge.errors.DataError` when the source cannot
    be used at all), iterate ``source.frames()``, then ``source.close()`` (or use ``with``).
    ``request_stop()`` may be called from another thread: the iterator ends at the next frame or
    interrupts a reconnect wait. ``notify`` receives :class:`SourceNote` objects (default: log).
    """

    kind: ClassVar[str] = ""
    #: True when frames arrive at the camera's pace and are lost if not taken in time.
    live: ClassVar[bool] = False

    def __init__(self, spec: str, source_id: str) -> None:
        self.spec = spec
        self.source_id = source_id
        self.notify: Callable[[SourceNote], None] | None = None
        self._stop = threading.Event()

    @property
    def fps(self) -> float | None:
        """Nominal frame rate, where the source knows one."""
        return None

    def open(self) -> None:
        """Check that the source can be read; raise DataError with the cause otherwise."""

    @abc.abstractmethod
    def frames(self) -> Iterator[Frame]:
        """Yield frames in order until the source ends or :meth:`request_stop` is called."""

    def close(self) -> None:
        """Release the device or file."""

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def report(
        self, kind: str, message: str, attempt: int = 0, retry_in_s: float | None = None
    ) -> None:
        """Log a note and pass it to :attr:`notify`."""
        note = SourceNote(self.source_id, kind, message, attempt, retry_in_s)
        level = logging.INFO if kind in ("ended", "reconnected") else logging.WARNING
        logger.log(level, "%s: %s", self.source_id, message)
        if self.notify is not None:
            self.notify(note)

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"source": self.source_id, "kind": self.kind, "spec": self.spec, "live": self.live}


# ----------------------------------------------------------------------------------------------
# files


class ImageFolderSource(Source):
    """Image files in order (a folder's images sorted by name, or an explicit list).

    Every file is decoded by :func:`fmabs_edge.runtime.preprocess.load_image`; a file it rejects
    becomes a frame with ``rgb=None`` and the reason. ``loop=True`` starts over at the end (for
    soak tests); frame indices keep counting.
    """

    kind = "folder"

    def __init__(
        self, spec: str, source_id: str, paths: Sequence[Path] | None = None, loop: bool = False
    ):
        super().__init__(spec, source_id)
        self._paths = list(paths) if paths is not None else None
        self.loop = loop

    def open(self) -> None:
        if self._paths is None:
            from fmabs_edge.data import list_images

            self._paths = list_images(self.spec)
        if not self._paths:
            raise DataError(f"{self.source_id}: no images in {self.spec}.")

    def frames(self) -> Iterator[Frame]:
        self.open()
        index = 0
        while not self.stopping:
            for path in self._paths or []:
                if self.stopping:
                    return
                try:
                    rgb, problem = load_image(path).rgb, ""
                except CorruptImageError as err:
                    rgb, problem = None, str(err)
                yield Frame(rgb, self.source_id, index, time.time(), problem)
                index += 1
            if not self.loop:
                break
        self.report("ended", f"{index} images read")


class _CaptureSource(Source):
    """A source read through an OpenCV-style capture (``cv2.VideoCapture`` or a test fake)."""

    def __init__(
        self, spec: str, source_id: str, opener: Callable[[], Capture] | None = None
    ) -> None:
        super().__init__(spec, source_id)
        self._opener = opener or self._default_opener
        self._capture: Capture | None = None

    def _default_opener(self) -> Capture:
        raise NotImplementedError

    @property
    def fps(self) -> float | None:
        if self._capture is None:
            return None
        value = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        return value if 0.0 < value < 1000.0 else None

    def _try_open(self) -> Capture | None:
        try:
            capture = self._opener()
        except cv2.error as err:
            logger.debug("%s: open raised %s", self.source_id, err)
            return None
        if capture is None or not capture.isOpened():
            if capture is not None:
                capture.release()
            return None
        return capture

    def _to_rgb(self, bgr: np.ndarray) -> np.ndarray:
        return convert_to_rgb8(bgr, Path(self.source_id)).rgb

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class VideoFileSource(_CaptureSource):
    """A video file decoded by OpenCV (FFmpeg backend); ``loop=True`` replays it without end.

    An unreadable file (missing, not a video, a codec OpenCV lacks, no decodable frame) raises
    DataError at :meth:`open`.
    """

    kind = "video"

    def __init__(
        self,
        spec: str,
        source_id: str,
        loop: bool = False,
        opener: Callable[[], Capture] | None = None,
    ) -> None:
        super().__init__(spec, source_id, opener)
        self.loop = loop
        self._first: np.ndarray | None = None
        self._fps: float | None = None

    def _default_opener(self) -> Capture:
        backend = cv2.CAP_FFMPEG if _has_backend("FFMPEG") else cv2.CAP_ANY
        return cv2.VideoCapture(self.spec, backend)

    @property
    def fps(self) -> float | None:
        return self._fps

    def open(self) -> None:
        if self._capture is not None:
            return
        path = Path(self.spec)
        if not path.is_file():
            raise DataError(f"{self.source_id}: video file not found: {path}.")
        capture = self._try_open()
        ok, first = capture.read() if capture is not None else (False, None)
        if not ok or first is None:
            if capture is not None:
                capture.release()
            raise DataError(
                f"{self.source_id}: cannot read {path} as a video: OpenCV opened no stream or decoded "
                "no frame. Likely causes: (1) not a video file or a truncated one, (2) a codec this "
                f"OpenCV build lacks (FFmpeg: {'yes' if _has_backend('FFMPEG') else 'no'}). Check it "
                "with 'ffprobe FILE', or re-encode it: ffmpeg -i FILE -c:v mjpeg out.avi."
            )
        self._capture, self._first = capture, first
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if 0.0 < fps < 1000.0 else None

    def frames(self) -> Iterator[Frame]:
        self.open()
        index, expected = 0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        while not self.stopping:
            read_this_pass = 0
            while not self.stopping:
                if self._first is not None:
                    ok, bgr, self._first = True, self._first, None
                else:
                    ok, bgr = self._capture.read()
                if not ok or bgr is None:
                    break
                timestamp = index / self._fps if self._fps else float(index)
                yield Frame(self._to_rgb(bgr), self.source_id, index, timestamp)
                index += 1
                read_this_pass += 1
            if expected and 0 < read_this_pass < expected and not self.stopping:
                logger.warning(
                    "%s: decoded %d of the %d frames the container announces (truncated file?)",
                    self.source_id,
                    read_this_pass,
                    expected,
                )
            if not self.loop or read_this_pass == 0 or self.stopping:
                break
            self.close()
            self._capture = self._try_open()
            if self._capture is None:
                self.report("failed", f"could not reopen {self.spec} to loop it")
                return
        self.report("ended", f"{index} frames read")


# ----------------------------------------------------------------------------------------------
# live sources


class LiveSource(_CaptureSource):
    """A camera (V4L2 index or device), a network stream (RTSP/HTTP/...) or a GStreamer pipeline.

    A failed read closes the capture, reports ``disconnected`` and reopens it with the backoff of
    ``reconnect``; every failed attempt is reported (``reconnect_failed``) and so is success.
    When ``reconnect.max_attempts`` is reached the source reports ``failed`` and ends; the other
    sources of a stream keep running. ``opener`` (tests) replaces the OpenCV capture.
    """

    live = True

    def __init__(
        self,
        spec: str,
        source_id: str,
        kind: str,
        reconnect: ReconnectPolicy | None = None,
        opener: Callable[[], Capture] | None = None,
        timeout_ms: int = 5000,
    ) -> None:
        if kind not in ("camera", "url", "gstreamer"):
            raise UsageError(f"LiveSource kind must be camera, url or gstreamer, got '{kind}'.")
        self.kind = kind
        self.reconnect = reconnect or ReconnectPolicy()
        self.timeout_ms = timeout_ms
        super().__init__(spec, source_id, opener)

    def _default_opener(self) -> Capture:
        if self.kind == "camera":
            match = _DEVICE.match(self.spec)
            index = int(match.group(1)) if match else int(self.spec)
            backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            return cv2.VideoCapture(index, backend)
        if self.kind == "gstreamer":
            return cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            self.timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            self.timeout_ms,
        ]
        return cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params)

    def open(self) -> None:
        if self._capture is not None:
            return
        if self.kind == "gstreamer":
            check_gstreamer_pipeline(self.spec)
        self._capture = self._try_open()
        if self._capture is None:
            causes = {
                "camera": "no such device, the device is busy (another program holds it), or no "
                "permission (add the user to the 'video' group)",
                "url": "the host is unreachable, the path or credentials are wrong, or the stream's "
                "codec is missing from this OpenCV build",
                "gstreamer": "an element is missing (gst-inspect-1.0 NAME) or the caps do not "
                "negotiate; test the pipeline with gst-launch-1.0 and a fakesink",
            }[self.kind]
            raise DataError(
                f"{self.source_id}: cannot open {self.kind} '{self.spec}'. Likely causes: {causes}."
            )

    def frames(self) -> Iterator[Frame]:
        self.open()
        index = 0
        while not self.stopping:
            ok, bgr = self._capture.read() if self._capture is not None else (False, None)
            if ok and bgr is not None:
                yield Frame(self._to_rgb(bgr), self.source_id, index, time.time())
                index += 1
            elif not self.stopping and not self._reconnect(index):
                if not self.stopping:
                    return  # given up; _reconnect reported "failed"
        self.report("ended", f"{index} frames read")

    def _reconnect(self, next_index: int) -> bool:
        """Close the capture and reopen it with backoff; False when the source is given up."""
        self.close()
        policy = self.reconnect
        self.report(
            "disconnected",
            f"read failed after frame {next_index - 1}; reconnecting",
            retry_in_s=policy.delay_s(1),
        )
        attempt = 0
        while not self.stopping:
            attempt += 1
            if policy.max_attempts is not None and attempt > policy.max_attempts:
                self.report(
                    "failed", f"gave up after {policy.max_attempts} reconnect attempts", attempt - 1
                )
                return False
            if self._stop.wait(policy.delay_s(attempt)):
                return False
            self._capture = self._try_open()
            if self._capture is not None:
                self.report("reconnected", f"reconnected on attempt {attempt}", attempt)
                return True
            last = policy.max_attempts is not None and attempt >= policy.max_attempts
            self.report(
                "reconnect_failed",
                f"reconnect attempt {attempt} failed",
                attempt,
                retry_in_s=None if last else policy.delay_s(attempt + 1),
            )
        return False


# ----------------------------------------------------------------------------------------------
# spec parsing


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string: its ``kind`` (one of :data:`SOURCE_KINDS`), ``target`` and id."""

    kind: str
    target: str
    source_id: str


def _has_backend(name: str) -> bool:
    """Whether this OpenCV build lists the video I/O backend ``name`` as YES."""
    for line in cv2.getBuildInformation().splitlines():
        stripped = line.strip()
        if stripped.startswith(f"{name}:"):
            return stripped.split(":", 1)[1].strip().upper().startswith("YES")
    return False


def gstreamer_available() -> bool:
    """True when this OpenCV was built with GStreamer (PyPI wheels are not; JetPack's is)."""
    return _has_backend("GStreamer")


def check_gstreamer_pipeline(pipeline: str) -> None:
    """Raise UsageError when GStreamer is missing from OpenCV or the pipeline has no appsink."""
    if not gstreamer_available():
        raise UsageError(
            f"GStreamer source '{pipeline}' needs an OpenCV built with GStreamer. {_JETSON_GSTREAMER_HINT}"
        )
    if "appsink" not in pipeline:
        raise UsageError(
            f"GStreamer pipeline '{pipeline}' must end in an appsink that gives BGR frames, e.g. "
            "'... ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=1 max-buffers=2'."
        )


def parse_source_spec(spec: str) -> SourceSpec:
    """Tell what kind of source ``spec`` is (see the module docstring); raise UsageError if none."""
    text = spec.strip()
    source_id = ""
    match = _ID_PREFIX.match(text)
    if match and not Path(text).exists():
        source_id, text = match.group(1), match.group(2).strip()
    if not text:
        raise UsageError(f"Empty source in '{spec}'.")

    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in URL_SCHEMES:
        return SourceSpec("url", text, source_id or "stream")
    if text.isdigit():
        return SourceSpec("camera", text, source_id or f"camera{int(text)}")
    device = _DEVICE.match(text)
    if device:
        return SourceSpec("camera", text, source_id or f"camera{device.group(1)}")

    path = Path(text)
    if path.is_dir():
        return SourceSpec("folder", text, source_id or (path.resolve().name or "folder"))
    if path.is_file():
        kind = "image" if path.suffix.lower() in IMAGE_EXTENSIONS else "video"
        return SourceSpec(kind, text, source_id or path.stem)
    if "!" in text and ("appsink" in text or " " in text):
        return SourceSpec("gstreamer", text, source_id or "gstreamer")
    if scheme:
        raise UsageError(
            f"Unsupported stream scheme '{scheme}://' in '{spec}'; use one of {URL_SCHEMES}."
        )
    raise UsageError(
        f"Source '{spec}' is not an existing file or folder, a camera index (0, /dev/video0), a URL "
        f"({', '.join(s + '://' for s in URL_SCHEMES[:4])}...) or a GStreamer pipeline ending in appsink."
    )


def open_source(
    spec: str | SourceSpec,
    source_id: str | None = None,
    loop: bool = False,
    reconnect: ReconnectPolicy | None = None,
) -> Source:
    """Build (not yet open) the source a spec string names; ``source_id`` overrides its id."""
    parsed = spec if isinstance(spec, SourceSpec) else parse_source_spec(spec)
    sid = source_id or parsed.source_id
    if parsed.kind == "folder":
        return ImageFolderSource(parsed.target, sid, loop=loop)
    if parsed.kind == "image":
        return ImageFolderSource(parsed.target, sid, paths=[Path(parsed.target)], loop=loop)
    if parsed.kind == "video":
        return VideoFileSource(parsed.target, sid, loop=loop)
    return LiveSource(parsed.target, sid, parsed.kind, reconnect=reconnect)


def open_sources(
    specs: Sequence[str], loop: bool = False, reconnect: ReconnectPolicy | None = None
) -> list[Source]:
    """Build sources for several specs, making their ids unique (``name``, ``name-2``, ...)."""
    sources: list[Source] = []
    seen: dict[str, int] = {}
    for spec in specs:
        parsed = parse_source_spec(spec)
        count = seen.get(parsed.source_id, 0) + 1
        seen[parsed.source_id] = count
        sid = parsed.source_id if count == 1 else f"{parsed.source_id}-{count}"
        sources.append(open_source(parsed, sid, loop=loop, reconnect=reconnect))
    return sources


def is_stream_spec(spec: str) -> bool:
    """True for specs only the streaming mode handles (video, camera, URL, GStreamer)."""
    try:
        return parse_source_spec(spec).kind in STREAM_KINDS
    except UsageError:
        return False
