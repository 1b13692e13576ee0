"""A model run's warnings (e.g. the CT lung mask's airway share) reach the stored result
and the study page, not only the log."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from overread.service.db import Database, Result
from overread.web.ui.views import _latest_summary, _model_warnings

from .conftest import make_prediction

WARNING = "the large airways found are 28.9% of the lung and airways (expected under 10.0%)"


def test_the_study_page_reads_the_warnings_from_the_stored_result(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'ui.db'}")
    prediction = make_prediction(with_heatmaps=False)
    prediction.warnings.append(WARNING)
    plain = make_prediction(with_heatmaps=False)
    with database.session() as session:
        for n, (name, stored) in enumerate((("ct", prediction), ("cxr", plain))):
            session.add(
                Result(
                    job_id=n + 1,
                    study_instance_uid="1.2.3",
                    model_name=name,
                    model_version=stored.model.version,
                    summary={"instances": [stored.to_summary_dict(), stored.to_summary_dict()]},
                    artifacts=[],
                )
            )
    with database.session() as session:
        for name, stored in (("ct", prediction), ("cxr", plain)):
            item = SimpleNamespace(
                study_instance_uid="1.2.3", model_name=name, model_version=stored.model.version
            )
            summary = _latest_summary(session, item)  # type: ignore[arg-type]
            assert _model_warnings(summary) == ([WARNING] if name == "ct" else [])
    database.dispose()
