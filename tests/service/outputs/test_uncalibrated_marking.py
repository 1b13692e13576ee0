"""An uncalibrated onboarded model says so: in the stored result, the SR and the study page."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from overread.results import ModelRef, Prediction
from overread.service.db import Database, Result
from overread.service.outputs import summary_text
from overread.service.outputs.sr import UNCALIBRATED_NOTE
from overread.web.ui.views import _latest_summary, _model_calibrated

from .conftest import make_prediction


def _uncalibrated(prediction: Prediction) -> Prediction:
    prediction.model = ModelRef("vendor", "2.1", "ab" * 32, calibrated=False)
    return prediction


def test_model_identity_keeps_the_mark_only_when_uncalibrated() -> None:
    plain = ModelRef("cxr-default", "1.1.0", "3f" * 32)
    assert "calibrated" not in plain.to_summary_dict()  # stored results stay as they were
    marked = ModelRef("vendor", "2.1", "ab" * 32, calibrated=False)
    assert marked.to_summary_dict()["calibrated"] is False
    assert ModelRef.from_dict(marked.to_summary_dict()).calibrated is False
    assert ModelRef.from_dict(plain.to_summary_dict()).calibrated is True


def test_sr_text_names_an_uncalibrated_model_as_such() -> None:
    text = summary_text(_uncalibrated(make_prediction(with_heatmaps=False)))
    assert text.startswith(f"AI second read (vendor 2.1{UNCALIBRATED_NOTE})")
    assert UNCALIBRATED_NOTE not in summary_text(make_prediction(with_heatmaps=False))


def test_study_page_reads_the_mark_from_the_stored_result(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'ui.db'}")
    stored = {
        "vendor": _uncalibrated(make_prediction(with_heatmaps=False)),
        "cxr-default": make_prediction(with_heatmaps=False),
    }
    with database.session() as session:
        for n, (name, prediction) in enumerate(stored.items()):
            session.add(
                Result(
                    job_id=n + 1,
                    study_instance_uid="1.2.3",
                    model_name=name,
                    model_version=prediction.model.version,
                    summary={"instances": [prediction.to_summary_dict()]},
                    artifacts=[],
                )
            )
    with database.session() as session:
        for name, prediction in stored.items():
            item = SimpleNamespace(
                study_instance_uid="1.2.3", model_name=name, model_version=prediction.model.version
            )
            summary = _latest_summary(session, item)  # type: ignore[arg-type]
            assert _model_calibrated(summary) is (name == "cxr-default")
    database.dispose()
