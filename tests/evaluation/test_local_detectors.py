"""The local backend's detector wiring on real photographs shipped inside scikit-image."""

from __future__ import annotations

import pytest
from PIL import Image

from atelier.evaluation.local import LocalBackend
from atelier.evaluation.schemas import EvaluationResponse, Framing, ViewAngle
from tests.evaluation.conftest import request, side_by_side, sk_image

NAMES = ("astronaut", "camera", "coffee", "coins")


@pytest.fixture(scope="module")
def results() -> dict[str, EvaluationResponse]:
    """Each photo and two collages evaluated once (detection takes about a second per image here)."""
    backend = LocalBackend()
    assert backend.unavailable_reason() is None
    images: dict[str, Image.Image] = {name: sk_image(name) for name in NAMES}
    images["collage"] = side_by_side(images["astronaut"], images["coffee"])
    images["gutter"] = side_by_side(images["astronaut"], sk_image("chelsea"), gutter=12)
    # The backend ignores the CallContext (no network, no storage).
    return {name: backend.evaluate(image, request(), None) for name, image in images.items()}  # type: ignore[arg-type]


def test_astronaut_portrait_is_one_person_front_upper_body(results: dict[str, EvaluationResponse]) -> None:
    result = results["astronaut"]
    assert result.success and result.human_detected is True and result.number_of_people == 1
    assert result.detected_framing is Framing.UPPER_BODY
    assert result.detected_view_angle is ViewAngle.FRONT
    assert result.human_presence_confidence == pytest.approx(0.9)  # a frontal face with both eyes
    assert result.collage_detected is False


def test_cameraman_is_seen_from_the_side(results: dict[str, EvaluationResponse]) -> None:
    result = results["camera"]
    assert result.human_detected is True and result.number_of_people == 1
    assert result.detected_view_angle is ViewAngle.SIDE


@pytest.mark.parametrize("name", ["coffee", "coins"])
def test_photos_without_people(results: dict[str, EvaluationResponse], name: str) -> None:
    result = results[name]
    assert result.human_detected is False and result.number_of_people == 0
    assert result.detected_framing is None and result.detected_view_angle is None
    assert result.shot_type_confidence is None


def test_fields_without_a_model_stay_null(results: dict[str, EvaluationResponse]) -> None:
    for result in results.values():
        assert result.detected_gender is None and result.gender_confidence is None
        assert result.anatomy_correct is None and result.anatomy_issues is None
        assert result.garment_description is None and result.subject_description is None


@pytest.mark.parametrize("name", ["collage", "gutter"])
def test_two_photos_put_together_are_a_collage(results: dict[str, EvaluationResponse], name: str) -> None:
    assert results[name].collage_detected is True
    assert results[name].human_detected is True


@pytest.mark.parametrize("name", NAMES)
def test_single_photos_are_not_collages(results: dict[str, EvaluationResponse], name: str) -> None:
    assert results[name].collage_detected is False
