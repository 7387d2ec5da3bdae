"""The offline evaluation backend: OpenCV's shipped detectors plus geometry rules.

Detectors (all inside ``opencv-python-headless`` 4.x, nothing downloaded), run on a grey copy of at most
``ANALYSIS_PIXELS`` pixels (512², whatever the aspect ratio):

- Haar frontal faces (``frontalface_default``), kept when ``frontalface_alt2`` agrees or an eye is found inside
  (upper 60 % of the box): one cascade alone fires on round textures such as coins;
- Haar profile faces, on the image and its mirror (the cascade knows one orientation), dropped when they
  overlap a frontal face;
- Haar upper bodies (head and shoulders; only when a profile face was found) and the HOG people detector (whole
  standing people, SVM weight at least ``HOG_MIN_WEIGHT``: weaker hits are mostly textures).

Rules (pure functions, unit-tested on hand-made detections):

- *Subjects*: every face is a person; a whole-body box that contains no face centre is one more. Upper-body
  boxes only describe the shoulders of a face's person (alone, the cascade fires on too many textures).
- *Framing*: the head is about ``HEAD_PER_FACE`` face-box heights tall and starts ``HEAD_ABOVE_FACE`` of one
  above the box. The visible extent below the head top, in head heights, ends at the bottom of the person's body
  box when one ends inside the frame, else at the frame's bottom edge: under 2.3 → close_up, under 4.2 →
  upper_body, under 7.2 → three_quarter, else full_body (an adult is about eight heads tall: shoulders ~1.5,
  waist ~3, knees ~6, feet ~8). Without a face, a whole body box inside the frame is full_body; anything else is
  undetermined. Confidence grows with the distance to the nearest class boundary and never exceeds 0.8.
- *View angle*: a frontal face with both eyes is front when the eyes' midpoint sits within 12 % of the face width
  of its centre, three_quarter otherwise; a frontal face without two eyes is front (the frontal cascade
  fires up to ~30° of yaw). A profile face is side, or three_quarter when the head-and-shoulders box is more than
  2.2 face widths wide (the shoulders still face the camera). A body without any face, large enough that its face
  would have been found, is back; otherwise undetermined.
- *Collage*: a straight seam, i.e. a column (or row) where the grey level jumps by more than ``SEAM_STEP`` in at
  least ``SEAM_MIN_FRACTION`` of the rows while the columns a few pixels away do not, away from the borders; or a
  gutter, i.e. a narrow (at most 6 % of the width) band of uniform columns between busy columns. No line does not
  prove a single shot (panels can be blended), so a negative answer is as weak as the detector.

Gender, anatomy and descriptions need a model this backend does not have: they stay None.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from atelier.evaluation.base import BackendUnavailableError, CallContext
from atelier.evaluation.schemas import EvaluationProvider, EvaluationRequest, EvaluationResponse, Framing, ViewAngle

ANALYSIS_PIXELS = 512 * 512
MIN_FACE_PX = 20
SCALE_STEP = 1.15  # between detection scales: 1.1 costs ~1.5x as much and finds the same people in the test photos
HOG_MIN_WEIGHT = 1.2
HEAD_PER_FACE = 1.25
HEAD_ABOVE_FACE = 0.25
FRAMING_LIMITS: tuple[tuple[float, Framing], ...] = (
    (2.3, Framing.CLOSE_UP),
    (4.2, Framing.UPPER_BODY),
    (7.2, Framing.THREE_QUARTER),
)
MAX_RULE_CONFIDENCE = 0.8
FRONT_EYE_OFFSET = 0.12
PROFILE_BROAD_SHOULDERS = 2.2
HEADS_PER_BODY = 8.0
EDGE_MARGIN = 0.02
SEAM_STEP = 24.0
SEAM_MIN_FRACTION = 0.6
SEAM_ISOLATION = 0.4
SEAM_BORDER = 0.04
GUTTER_FLAT = 3.0  # grey-level standard deviation of a column that counts as uniform
GUTTER_MAX_WIDTH = 0.06
GUTTER_BUSY = 15.0
ABSENCE_CONFIDENCE = 0.6  # no detector fired: people can still be there (small, occluded, turned away)

_FRONTAL = "haarcascade_frontalface_default.xml"
_FRONTAL_CHECK = "haarcascade_frontalface_alt2.xml"
_PROFILE = "haarcascade_profileface.xml"
_EYE = "haarcascade_eye.xml"
_UPPER = "haarcascade_upperbody.xml"
_CASCADES = (_FRONTAL, _FRONTAL_CHECK, _PROFILE, _EYE, _UPPER)
_DETECT_LOCK = threading.Lock()  # cv2 detectors are not documented as thread-safe


@dataclass(frozen=True)
class Box:
    """An axis-aligned box, ``right``/``bottom`` exclusive."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        """Horizontal size."""
        return self.right - self.left

    @property
    def height(self) -> float:
        """Vertical size."""
        return self.bottom - self.top

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) of the middle."""
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2

    def contains(self, point: tuple[float, float]) -> bool:
        """Whether ``point`` lies inside."""
        return self.left <= point[0] < self.right and self.top <= point[1] < self.bottom

    def overlaps(self, other: Box) -> bool:
        """Whether the two boxes share any area."""
        return min(self.right, other.right) > max(self.left, other.left) and min(self.bottom, other.bottom) > max(
            self.top, other.top
        )


@dataclass(frozen=True)
class Face:
    """A detected face; ``eyes`` are only looked for in frontal faces."""

    box: Box
    profile: bool = False
    eyes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class Detections:
    """What the detectors found, in the coordinates of an image of ``width`` × ``height``."""

    width: int
    height: int
    faces: tuple[Face, ...] = ()
    bodies: tuple[Box, ...] = ()
    upper_bodies: tuple[Box, ...] = ()


@dataclass(frozen=True)
class Subject:
    """One person: a face and/or the body boxes that go with it."""

    face: Face | None = None
    body: Box | None = None
    upper: Box | None = None

    @property
    def size(self) -> float:
        """How prominent the person is (used to pick the main subject)."""
        heights = [box.height for box in (self.body, self.upper) if box is not None]
        if self.face is not None:
            heights.append(self.face.box.height * HEAD_PER_FACE * HEADS_PER_BODY)
        return max(heights, default=0.0)


Verdict = tuple[Framing | None, float | None]
ViewVerdict = tuple[ViewAngle | None, float | None]


# ------------------------------------------------------------------------------------------ pure rules


def group_subjects(found: Detections) -> list[Subject]:
    """People in the image, the most prominent first."""
    subjects: list[Subject] = []
    for face in found.faces:
        centre = face.box.center
        body = next((b for b in found.bodies if b.contains(centre)), None)
        upper = next((b for b in found.upper_bodies if b.contains(centre)), None)
        subjects.append(Subject(face, body, upper))
    face_centres = [face.box.center for face in found.faces]
    for body in found.bodies:
        if not any(body.contains(c) for c in face_centres):
            subjects.append(Subject(body=body))
    return sorted(subjects, key=lambda s: s.size, reverse=True)


def presence_confidence(subject: Subject) -> float:
    """How sure the detections make us that ``subject`` is a person."""
    if subject.face is not None and not subject.face.profile:
        return 0.9 if len(subject.face.eyes) >= 2 else 0.75
    if subject.face is not None:
        return 0.65
    return 0.6 if subject.body is not None else 0.5


def _rule_confidence(margin: float, base: float = 0.45, scale: float = 0.8) -> float:
    """``base`` at a class boundary, rising with the ``margin`` to it (full at ``scale``), capped."""
    return min(MAX_RULE_CONFIDENCE, base + 0.35 * min(1.0, max(0.0, margin) / scale))


def framing_from_extent(units: float) -> tuple[Framing, float]:
    """Framing for a visible extent of ``units`` head heights below the head top."""
    lower = 0.0
    for upper, framing in FRAMING_LIMITS:
        if units < upper:
            margin = min(units - lower, upper - units) if lower else upper - units
            return framing, _rule_confidence(margin)
        lower = upper
    return Framing.FULL_BODY, _rule_confidence(units - lower)


def classify_framing(subject: Subject, height: int) -> Verdict:
    """Framing of ``subject`` in an image ``height`` px tall (see the module doc)."""
    body = subject.body
    body_ends_inside = body is not None and body.bottom < height * (1 - EDGE_MARGIN)
    if subject.face is not None:
        face = subject.face.box
        head = face.height * HEAD_PER_FACE
        head_top = face.top - HEAD_ABOVE_FACE * face.height
        bottom = body.bottom if body is not None and body_ends_inside else float(height)
        framing, confidence = framing_from_extent((bottom - head_top) / head)
        return framing, confidence * (0.9 if subject.face.profile else 1.0)
    if body is not None and body_ends_inside and body.top > height * EDGE_MARGIN:
        return Framing.FULL_BODY, 0.45
    return None, None


def classify_view(subject: Subject) -> ViewVerdict:
    """View angle of ``subject`` from its face and shoulder geometry (see the module doc)."""
    face = subject.face
    if face is None:
        body = subject.body
        if body is not None and body.height / HEADS_PER_BODY / HEAD_PER_FACE >= 2 * MIN_FACE_PX:
            return ViewAngle.BACK, 0.4
        return None, None
    if face.profile:
        if subject.upper is not None and subject.upper.width / face.box.width > PROFILE_BROAD_SHOULDERS:
            return ViewAngle.THREE_QUARTER, 0.45
        return ViewAngle.SIDE, 0.55
    if len(face.eyes) < 2:
        return ViewAngle.FRONT, 0.5
    left, right = sorted(face.eyes[:2], key=lambda e: e.center[0])
    midpoint = (left.center[0] + right.center[0]) / 2
    offset = abs(midpoint - face.box.center[0]) / face.box.width
    if offset <= FRONT_EYE_OFFSET:
        return ViewAngle.FRONT, _rule_confidence(FRONT_EYE_OFFSET - offset, base=0.55, scale=FRONT_EYE_OFFSET)
    return ViewAngle.THREE_QUARTER, _rule_confidence(offset - FRONT_EYE_OFFSET, scale=FRONT_EYE_OFFSET)


def seam_positions(gray: NDArray[np.float32]) -> list[int]:
    """Columns of ``gray`` (H × W) holding a straight, full-height seam (see the module doc)."""
    width = gray.shape[1]
    if width < 16 or gray.shape[0] < 16:
        return []
    # Central differences: a seam softened over two pixels by resampling still shows as one step.
    steps = np.abs(gray[:, 2:] - gray[:, :-2]) > SEAM_STEP
    fraction = steps.mean(axis=0)
    found: list[int] = []
    for index in np.flatnonzero(fraction >= SEAM_MIN_FRACTION):
        x = int(index) + 1
        if not SEAM_BORDER * width <= x <= (1 - SEAM_BORDER) * width:
            continue
        around = np.concatenate([fraction[max(0, index - 6) : max(0, index - 2)], fraction[index + 3 : index + 7]])
        if around.size and fraction[index] - float(around.max()) < SEAM_ISOLATION:
            continue
        if not found or x - found[-1] > 2:
            found.append(x)
    return found


def gutter_positions(gray: NDArray[np.float32]) -> list[int]:
    """Columns where a narrow, uniform, full-height band separates busy content on both sides."""
    width = gray.shape[1]
    spread = gray.std(axis=0)
    flat = np.concatenate([[False], spread < GUTTER_FLAT, [False]])
    edges = np.flatnonzero(np.diff(flat.astype(np.int8)))
    found: list[int] = []
    for start, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        inside = SEAM_BORDER * width <= start and end <= (1 - SEAM_BORDER) * width
        if not inside or end - start > GUTTER_MAX_WIDTH * width:
            continue
        before, after = spread[max(0, start - 3) : start], spread[end : end + 3]
        if before.size and after.size and min(float(before.max()), float(after.max())) > GUTTER_BUSY:
            found.append((start + end) // 2)
    return found


def collage_lines(gray: NDArray[np.float32]) -> int:
    """Number of straight seams and gutters, vertical and horizontal."""
    turned = np.ascontiguousarray(gray.T)
    return sum(len(find(g)) for g in (gray, turned) for find in (seam_positions, gutter_positions))


# ------------------------------------------------------------------------------------------ detector wiring


@lru_cache(maxsize=len(_CASCADES))
def _cascade(name: str) -> cv2.CascadeClassifier:
    path = str(importlib.import_module("cv2.data").haarcascades) + name  # cv2's stubs do not declare cv2.data
    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():
        raise BackendUnavailableError(f"OpenCV Haar cascade {name} could not be loaded from {path}")
    return classifier


@lru_cache(maxsize=1)
def _hog() -> cv2.HOGDescriptor:
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32))
    return hog


def _boxes(found: object, dx: float = 0.0, dy: float = 0.0) -> list[Box]:
    rects = np.asarray(found, dtype=np.float64).reshape(-1, 4)
    return [Box(x + dx, y + dy, x + dx + w, y + dy + h) for x, y, w, h in rects.tolist()]


def _detect(name: str, gray: NDArray[np.uint8], min_px: int, neighbours: int = 5) -> list[Box]:
    found = _cascade(name).detectMultiScale(
        gray, scaleFactor=SCALE_STEP, minNeighbors=neighbours, minSize=(min_px, min_px)
    )
    return _boxes(found)


def _eyes(gray: NDArray[np.uint8], face: Box) -> tuple[Box, ...]:
    top, left = int(face.top), int(face.left)
    region = np.ascontiguousarray(gray[top : top + int(face.height * 0.6), left : int(face.right)])
    found = _cascade(_EYE).detectMultiScale(region, scaleFactor=1.1, minNeighbors=5)
    eyes = sorted(_boxes(found, left, top), key=lambda e: e.width * e.height, reverse=True)
    return tuple(eyes[:2])


def _faces(gray: NDArray[np.uint8]) -> list[Face]:
    width = gray.shape[1]
    checks = _detect(_FRONTAL_CHECK, gray, MIN_FACE_PX)
    faces: list[Face] = []
    for box in _detect(_FRONTAL, gray, MIN_FACE_PX):
        eyes = _eyes(gray, box)
        if eyes or any(box.overlaps(check) for check in checks):
            faces.append(Face(box, eyes=eyes))
    mirrored = np.ascontiguousarray(gray[:, ::-1])
    profiles = _detect(_PROFILE, gray, MIN_FACE_PX) + [
        Box(width - b.right, b.top, width - b.left, b.bottom) for b in _detect(_PROFILE, mirrored, MIN_FACE_PX)
    ]
    for box in profiles:
        if not any(box.overlaps(kept.box) for kept in faces):
            faces.append(Face(box, profile=True))
    return faces


def _bodies(gray: NDArray[np.uint8]) -> list[Box]:
    if gray.shape[0] < 128 or gray.shape[1] < 64:  # smaller than the HOG window
        return []
    rects, weights = _hog().detectMultiScale(gray, winStride=(8, 8), padding=(8, 8), scale=1.05)
    strong = [
        r for r, w in zip(np.asarray(rects).reshape(-1, 4), np.ravel(weights), strict=True) if w >= HOG_MIN_WEIGHT
    ]
    return _boxes(strong)


def detect(gray: NDArray[np.uint8]) -> Detections:
    """Run every detector on a grey image (the cascades on its equalised copy, HOG as it is)."""
    equalised = np.asarray(cv2.equalizeHist(gray), dtype=np.uint8)
    with _DETECT_LOCK:
        faces = _faces(equalised)
        # Shoulders only matter for the view angle of profile faces (see classify_view).
        profiles = any(face.profile for face in faces)
        uppers = _detect(_UPPER, equalised, 2 * MIN_FACE_PX, neighbours=4) if profiles else []
        bodies = _bodies(gray)
    return Detections(gray.shape[1], gray.shape[0], tuple(faces), tuple(bodies), tuple(uppers))


def analysis_gray(image: Image.Image) -> NDArray[np.uint8]:
    """A grey copy of at most ``ANALYSIS_PIXELS`` pixels (bounded work whatever the aspect ratio)."""
    gray = image.convert("L")
    scale = min(1.0, (ANALYSIS_PIXELS / (gray.width * gray.height)) ** 0.5)
    if scale < 1.0:
        gray = gray.resize(
            (max(1, round(gray.width * scale)), max(1, round(gray.height * scale))), Image.Resampling.BOX
        )
    return np.ascontiguousarray(np.asarray(gray, dtype=np.uint8))


# ------------------------------------------------------------------------------------------ backend


def _shot_confidence(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


class LocalBackend:
    """Offline evaluation with OpenCV detectors; fields it cannot determine stay None."""

    def __init__(self) -> None:
        self.provider = EvaluationProvider.LOCAL

    def unavailable_reason(self) -> str | None:
        """None when every cascade file loads."""
        try:
            for name in _CASCADES:
                _cascade(name)
        except BackendUnavailableError as exc:
            return exc.message
        return None

    def evaluate(self, image: Image.Image, request: EvaluationRequest, call: CallContext) -> EvaluationResponse:
        """Detect people, then derive presence, count, framing, view angle and collage seams."""
        gray = analysis_gray(image)
        found = detect(gray)
        subjects = group_subjects(found)
        main = subjects[0] if subjects else None
        framing, framing_conf = classify_framing(main, found.height) if main else (None, None)
        view, view_conf = classify_view(main) if main else (None, None)
        presence = max((presence_confidence(s) for s in subjects), default=ABSENCE_CONFIDENCE)
        return EvaluationResponse(
            success=True,
            detected_framing=framing,
            detected_view_angle=view,
            shot_type_confidence=_shot_confidence(framing_conf, view_conf),
            human_detected=bool(subjects),
            number_of_people=len(subjects),
            human_presence_confidence=presence,
            collage_detected=collage_lines(gray.astype(np.float32)) > 0,
        )
