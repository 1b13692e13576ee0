"""The vocabulary of audited actions.

A closed vocabulary (rather than free text) lets a compliance officer ask "who
viewed this study" or "every failed login last week" with one equality filter, and
lets reports count actions reliably. New kinds of action are added here.
"""

from __future__ import annotations

import enum


class AuditAction(enum.StrEnum):
    """What an audited event records."""

    RECEIVE = "receive"
    RECEIVE_REFUSED = "receive-refused"
    ASSOCIATION_REFUSED = "association-refused"
    #: A C-FIND answered from the stored data (it discloses patient data).
    QUERY = "query"
    #: A C-FIND or C-MOVE refused to a calling AE title not allowed to query.
    QUERY_REFUSED = "query-refused"
    INFERENCE = "inference"
    DEAD_LETTER = "dead-letter"
    VIEW = "view"
    EXPORT = "export"
    SEND = "send"
    FEEDBACK = "feedback"
    ALERT = "alert"
    LOGIN_SUCCESS = "login-success"
    LOGIN_FAILURE = "login-failure"
    LOGOUT = "logout"
    ACCESS_DENIED = "access-denied"
    TOKEN_ISSUED = "token-issued"
    CONFIG_CHANGE = "config-change"
    MODEL_CHANGE = "model-change"
    #: A reader had a study the input gate refused analysed anyway.
    GATE_OVERRIDE = "gate-override"
    #: A route that requires review held a result: nothing is exported until a reader acts.
    REVIEW_HOLD = "review-hold"
    #: A reader verified a result as it is (held, or already sent: then superseded).
    REVIEW_ACCEPT = "review-accept"
    #: A reader verified a result with changed findings or a note.
    REVIEW_EDIT = "review-edit"
    #: A reader rejected a held result: nothing is sent.
    REVIEW_REJECT = "review-reject"
    #: A held result waited past its route's review time-out (an alert is raised).
    REVIEW_OVERDUE = "review-overdue"
    #: A held result was released unverified after its time-out (a route setting).
    REVIEW_RELEASE = "review-release"
    #: A reviewed or released result was read again (its study grew): the new read
    #: starts unreviewed (held again where its route requires review).
    REVIEW_REOPEN = "review-reopen"
    #: A reader's correction withdrew a SEG that had been sent: a rejection note (KOS,
    #: IHE IOCM "Rejected for Quality Reasons") listing it goes to the same destinations.
    REVIEW_WITHDRAW = "review-withdraw"
    USER_CHANGE = "user-change"
    AUDIT_EXPORT = "audit-export"
    AUDIT_CHECKPOINT = "audit-checkpoint"
    #: A candidate model version went into shadow or canary beside an alias's active one.
    ROLLOUT_START = "rollout-start"
    #: A candidate became the alias's active version (with the release gate's evidence).
    ROLLOUT_PROMOTE = "rollout-promote"
    #: A shadow or canary was ended without promotion (by hand or automatically).
    ROLLOUT_ROLLBACK = "rollout-rollback"
    #: Jobs of a rolled-back candidate cancelled, their studies sent to the active version.
    ROLLOUT_REROUTE = "rollout-reroute"
    #: A model's kill switch was engaged or released (its exports held or let go).
    KILL_SWITCH = "kill-switch"
    #: A candidate was judged on the registered test cohorts before promotion.
    RELEASE_GATE = "release-gate"
    #: A labelled cohort was registered (with its files' hashes) for the release gate.
    COHORT_REGISTERED = "cohort-registered"
    #: The retention policy deleted a study's images, results or finished jobs.
    RETENTION_DELETE = "retention-delete"
    #: Monitoring raised an alert (drift, prevalence, performance) and routed it.
    MONITORING_ALERT = "monitoring-alert"


__all__ = ["AuditAction"]
