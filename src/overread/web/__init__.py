"""The HTTP side of the gateway: REST API, DICOMweb and the web UI on one FastAPI app.

:func:`overread.web.app.create_app` builds the application for a running
:class:`~overread.web.context.RunningService`, which the gateway
(:mod:`overread.gateway`) hands in; every route except ``/health`` requires
credentials (``overread.security``). The REST API lives in ``overread.web.api``,
the browser UI in ``overread.web.ui``; both receive one :class:`WebContext`.
"""

from overread.web.context import WebContext

__all__ = ["WebContext"]
