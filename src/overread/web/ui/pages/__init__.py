"""The UI's pages, one module each, every one a module-level router.

Every page calls the Python functions behind it (``overread.triage``, the job queue,
``overread.audit``) directly rather than the REST routes, declares its permission
with :func:`~overread.web.ui.guard.page`, and audits what it showed.
"""

from __future__ import annotations

from overread.web.ui.pages import (
    alerts,
    audit,
    compare,
    jobs,
    login,
    monitoring,
    review,
    study,
    viewer,
    worklist,
)

#: The pages' routers, in the order they are matched.
ROUTERS = (
    login.router,
    worklist.router,
    study.router,
    review.router,
    compare.router,
    viewer.router,
    alerts.router,
    monitoring.router,
    jobs.router,
    audit.router,
)

__all__ = ["ROUTERS"]
