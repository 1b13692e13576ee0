"""Monitoring in the running service: what is kept per study, the periodic run and the
daily summary.

:mod:`overread.monitoring` decides (drift, prevalence, performance) and is pure; this
package feeds it from what the gateway stores: :mod:`.store` keeps one
:class:`~overread.monitoring.StudyObservation` per analysed image at inference time,
:mod:`.run` replays the stored observations and reader feedback through the monitors
and routes each new alert to the triage alert channels and the audit log,
:mod:`.summary` builds the daily summary and :mod:`.plots` its charts.
:mod:`.settings` is the ``[service.monitoring]`` table (kept free of the database
layer so the typed configuration can name it).
"""
