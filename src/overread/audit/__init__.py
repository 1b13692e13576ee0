"""The tamper-evident audit trail.

Every action that touches patient data or the system's configuration is recorded as
an event in one append-only hash chain (``audit_events``): each record's SHA-256
covers its fields and the previous record's hash. :func:`record_event` appends in
the caller's transaction; :func:`verify_chain` recomputes the chain and names the
first broken record; :func:`write_checkpoint` anchors the head in an HMAC-signed
file outside the database so truncation and wholesale rewriting are caught too.
"""

from overread.audit.actions import AuditAction
from overread.audit.chain import (
    AuditRecord,
    BreakReason,
    VerifyResult,
    canonical_json,
    event_hash,
    iter_records,
    record_event,
    verify_chain,
)
from overread.audit.checkpoint import (
    AutoCheckpointer,
    Checkpoint,
    checkpoint_dir,
    checkpoint_now,
    latest_checkpoint,
    load_checkpoint_key,
    load_checkpoints,
    missing_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from overread.audit.export import export_events, parse_time, select_records
from overread.audit.schema import AuditChainHead, AuditEvent, create_tables
from overread.audit.signing import (
    CheckpointSigner,
    Ed25519Signer,
    HmacSigner,
    ed25519_available,
    load_checkpoint_signer,
    load_verification_ring,
    retired_keys_dir,
    rotate_checkpoint_key,
)

__all__ = [
    "AuditAction",
    "AuditChainHead",
    "AuditEvent",
    "AuditRecord",
    "AutoCheckpointer",
    "BreakReason",
    "Checkpoint",
    "CheckpointSigner",
    "Ed25519Signer",
    "HmacSigner",
    "VerifyResult",
    "canonical_json",
    "checkpoint_dir",
    "checkpoint_now",
    "create_tables",
    "ed25519_available",
    "event_hash",
    "export_events",
    "iter_records",
    "latest_checkpoint",
    "load_checkpoint_key",
    "load_checkpoint_signer",
    "load_checkpoints",
    "load_verification_ring",
    "missing_checkpoints",
    "parse_time",
    "read_checkpoint",
    "record_event",
    "retired_keys_dir",
    "rotate_checkpoint_key",
    "select_records",
    "verify_chain",
    "write_checkpoint",
]
