"""The local backend's geometry rules on hand-made detections, and its seam finder on built images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from atelier.evaluation.local import (
    Box,
    Detections,
    Face,
    Subject,
    classify_framing,
    classify_view,
    collage_lines,
    framing_from_extent,
    group_subjects,
    presence_confidence,
)
from atelier.evaluation.schemas import Framing, ViewAngle

H = 1000


def face_at(top: float, size: float = 50.0, left: float = 400.0, **kwargs: object) -> Face:
    return Face(Box(left, top, left + size, top + size), **kwargs)  # type: ignore[arg-type]


def eyes_for(face: Box, shift: float = 0.0) -> tuple[Box, ...]:
    """Two eye boxes in the face's upper half, moved sideways by ``shift`` of the face width."""
    w = face.width
    y = face.top + 0.25 * face.height
    centres = (face.left + 0.3 * w + shift * w, face.left + 0.7 * w + shift * w)
    return tuple(Box(cx - 0.1 * w, y, cx + 0.1 * w, y + 0.2 * w) for cx in centres)


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        (1.5, Framing.CLOSE_UP),
        (2.29, Framing.CLOSE_UP),
        (3.0, Framing.UPPER_BODY),
        (5.5, Framing.THREE_QUARTER),
        (7.19, Framing.THREE_QUARTER),
        (7.9, Framing.FULL_BODY),
        (12.0, Framing.FULL_BODY),
    ],
)
def test_framing_from_visible_head_heights(units: float, expected: Framing) -> None:
    framing, confidence = framing_from_extent(units)
    assert framing is expected
    assert 0.45 <= confidence <= 0.8


def test_confidence_is_lowest_at_class_boundaries() -> None:
    near = framing_from_extent(4.19)[1]
    middle = framing_from_extent(5.7)[1]
    assert near < middle


@pytest.mark.parametrize(
    ("face_top", "face_size", "height", "expected"),
    [
        (600.0, 200.0, 1000, Framing.CLOSE_UP),  # head top 550, head 250 px: (1000 - 550) / 250 = 1.8 heads
        (100.0, 100.0, 500, Framing.UPPER_BODY),  # head top 75, head 125 px: (500 - 75) / 125 = 3.4 heads
    ],
)
def test_framing_of_a_face_cut_by_the_bottom_edge(
    face_top: float, face_size: float, height: int, expected: Framing
) -> None:
    framing, _ = classify_framing(Subject(face=face_at(face_top, face_size)), height)
    assert framing is expected


def test_framing_three_quarter_and_full_body_from_face_size() -> None:
    # Head height 62.5 px: 1000 px below the head top is 16 heads -> full body.
    assert classify_framing(Subject(face=face_at(100, 50)), H)[0] is Framing.FULL_BODY
    # Head height 150 px from y=75: (1000 - 75) / 150 = 6.2 heads -> three quarter (knees).
    assert classify_framing(Subject(face=face_at(100, 120)), H)[0] is Framing.THREE_QUARTER


def test_a_body_box_ending_inside_the_frame_bounds_the_extent() -> None:
    face = face_at(100, 120)  # would be three quarter down to the frame edge
    short_body = Box(350, 60, 600, 500)  # the person ends at y=500: (500-70)/150 = 2.9 heads
    assert classify_framing(Subject(face=face, body=short_body), H)[0] is Framing.UPPER_BODY
    cut_body = Box(350, 60, 600, 995)  # touches the bottom edge: not a real end
    assert classify_framing(Subject(face=face, body=cut_body), H)[0] is Framing.THREE_QUARTER


def test_body_without_face_is_full_body_only_when_wholly_inside() -> None:
    assert classify_framing(Subject(body=Box(100, 100, 300, 900)), H) == (Framing.FULL_BODY, 0.45)
    assert classify_framing(Subject(body=Box(100, 0, 300, 900)), H) == (None, None)  # head cut off
    assert classify_framing(Subject(upper=Box(100, 100, 300, 300)), H) == (None, None)


def test_profile_faces_are_less_certain() -> None:
    frontal = classify_framing(Subject(face=face_at(100, 120)), H)[1]
    profile = classify_framing(Subject(face=face_at(100, 120, profile=True)), H)[1]
    assert frontal is not None and profile is not None and profile < frontal


def test_view_front_when_eyes_are_centred() -> None:
    face = face_at(100, 100)
    view, confidence = classify_view(Subject(face=Face(face.box, eyes=eyes_for(face.box))))
    assert view is ViewAngle.FRONT and confidence is not None and confidence >= 0.7


def test_view_three_quarter_when_eyes_sit_off_centre() -> None:
    face = face_at(100, 100)
    view, _ = classify_view(Subject(face=Face(face.box, eyes=eyes_for(face.box, shift=0.2))))
    assert view is ViewAngle.THREE_QUARTER


def test_view_from_profile_faces_and_shoulders() -> None:
    profile = face_at(100, 100, profile=True)
    assert classify_view(Subject(face=profile))[0] is ViewAngle.SIDE
    narrow = Box(380, 100, 530, 300)  # 1.5 face widths: the shoulders are turned too
    assert classify_view(Subject(face=profile, upper=narrow))[0] is ViewAngle.SIDE
    broad = Box(300, 100, 600, 300)  # 3 face widths: the torso faces the camera
    assert classify_view(Subject(face=profile, upper=broad))[0] is ViewAngle.THREE_QUARTER


def test_view_back_only_for_a_body_large_enough_to_show_its_face() -> None:
    assert classify_view(Subject(body=Box(100, 100, 300, 900)))[0] is ViewAngle.BACK
    assert classify_view(Subject(body=Box(100, 100, 130, 300))) == (None, None)
    assert classify_view(Subject(face=face_at(100, 100)))[0] is ViewAngle.FRONT  # no eyes: frontal cascade only


def test_subjects_merge_a_face_with_its_body_and_count_others() -> None:
    face = face_at(100, 60, left=200)
    found = Detections(
        1000,
        1000,
        faces=(face,),
        bodies=(Box(150, 80, 320, 900), Box(600, 100, 760, 900)),
        upper_bodies=(Box(170, 90, 300, 300), Box(800, 50, 900, 200)),
    )
    subjects = group_subjects(found)
    assert len(subjects) == 2  # the face's person, the faceless body; a lone upper body is not a person
    main = subjects[0]
    assert main.face == face and main.body == Box(150, 80, 320, 900) and main.upper == Box(170, 90, 300, 300)
    assert subjects[1] == Subject(body=Box(600, 100, 760, 900))


def test_presence_confidence_ranks_the_evidence() -> None:
    box = Box(0, 0, 100, 100)
    with_eyes = presence_confidence(Subject(face=Face(box, eyes=eyes_for(box))))
    frontal = presence_confidence(Subject(face=Face(box)))
    profile = presence_confidence(Subject(face=Face(box, profile=True)))
    body = presence_confidence(Subject(body=box))
    assert with_eyes > frontal > profile > body


def _noise(height: int, width: int, seed: int) -> NDArray[np.float32]:
    """A smooth random picture (no straight edges): coarse noise upsampled with cubic interpolation."""
    coarse = np.random.default_rng(seed).normal(128, 30, (height // 10, width // 10)).astype(np.float32)
    return np.asarray(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), dtype=np.float32)


def test_straight_seam_between_two_panels_is_found() -> None:
    left, right = _noise(200, 150, 1) - 40, _noise(200, 150, 2) + 40
    assert collage_lines(np.concatenate([left, right], axis=1)) >= 1
    assert collage_lines(np.concatenate([left, right], axis=0)) >= 1  # stacked: a horizontal seam


def test_gutter_between_panels_is_found() -> None:
    left, right = _noise(200, 150, 1), _noise(200, 150, 2)
    gutter = np.full((200, 6), 255.0, dtype=np.float32)
    assert collage_lines(np.concatenate([left, gutter, right], axis=1)) >= 1


def test_no_seam_in_one_continuous_picture_or_at_its_border() -> None:
    assert collage_lines(_noise(200, 300, 3)) == 0
    framed = _noise(200, 300, 4)
    framed[:, :4] = 255.0  # a border line at the edge is not a seam between panels
    assert collage_lines(framed) == 0
    # A diagonal edge spans the picture but is not straight along a row or column.
    yy, xx = np.mgrid[0:200, 0:300]
    assert collage_lines(np.where(xx > yy + 50, 200.0, 60.0).astype(np.float32)) == 0
