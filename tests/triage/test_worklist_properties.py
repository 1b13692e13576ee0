"""Property: the database's worklist pages and filters agree with a plain Python sort."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from overread.service.db import Database
from overread.triage import StudyContext, TriageConfig, query_worklist, upsert_study

from .conftest import NOW, F

CONFIG = TriageConfig()

studies = st.lists(
    st.tuples(
        st.sampled_from(["Pneumothorax", "Edema", "Atelectasis", "No Finding"]),
        st.sampled_from([0.0, 0.3, 0.6, 0.95]),  # few values: ties happen
        st.sampled_from(["ED", "ICU", "outpatient"]),
        st.integers(0, 3),  # hours waited: ties happen
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(studies, st.integers(1, 5), st.sampled_from([None, "ED"]), st.sampled_from([None, True]))
def test_pages_and_filters_match_python(
    rows: list[tuple[str, float, str, int]],
    limit: int,
    department: str | None,
    critical: bool | None,
) -> None:
    db = Database("sqlite://")
    try:
        with db.session() as session:
            for i, (label, p, dept, hours) in enumerate(rows):
                context = StudyContext(dept, 50, NOW - timedelta(hours=hours))
                upsert_study(session, f"1.{i}", [F(label, p)], context, CONFIG, now=NOW)
        with db.session() as session:
            everything = query_worklist(session, limit=1000).items
            expected = sorted(
                everything, key=lambda r: (-r.priority, -r.score, r.received_at, r.id)
            )
            assert [r.id for r in everything] == [r.id for r in expected]
            wanted = [
                r.study_instance_uid
                for r in expected
                if (department is None or r.department == department)
                and (critical is None or r.has_critical == critical)
            ]
            paged: list[str] = []
            offset = 0
            while True:
                page = query_worklist(
                    session,
                    limit=limit,
                    offset=offset,
                    department=department,
                    has_critical=critical,
                )
                assert page.total == len(wanted)
                if not page.items:
                    break
                paged += [r.study_instance_uid for r in page.items]
                offset += limit
            assert paged == wanted
    finally:
        db.dispose()
