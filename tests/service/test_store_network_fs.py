"""The object store on a network file system, whose file locks may not be shared."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from overread.service.store import (
    INCOMING_DIR,
    ObjectStore,
    filesystem_type,
    is_network_filesystem,
)

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
nas:/export/pacs /srv/overread nfs4 rw,relatime,vers=4.2 0 0
//files/share /srv/overread/cifs cifs rw,relatime 0 0
/dev/sdb1 /srv/overread/local xfs rw 0 0
sshfs#me@host: /mnt/with\\040space fuse.sshfs rw 0 0
tmpfs /srv/overreadx tmpfs rw 0 0
auto.home /home/pacs autofs rw,fd=7,direct 0 0
nas:/export/home /home/pacs nfs4 rw,relatime 0 0
/dev/sdc1 /data/over tmpfs rw 0 0
/dev/sdc1 /data/over ext4 rw 0 0
10.0.0.1@tcp:/scratch /lustre/pacs lustre rw 0 0
10.0.0.2:6789:/ /ceph/pacs ceph rw,name=overread 0 0
gfs1:/vol /gluster/pacs glusterfs rw 0 0
pacsfs /gpfs/pacs gpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "kind", "network"),
    [
        ("/srv/overread/data/objects", "nfs4", True),
        ("/srv/overread", "nfs4", True),
        ("/srv/overread/cifs/objects", "cifs", True),
        ("/srv/overread/local/objects", "xfs", False),
        ("/mnt/with space/objects", "fuse.sshfs", True),
        ("/srv/overreadx/objects", "tmpfs", False),  # a prefix of a name is not a parent
        ("/var/lib/overread", "ext4", False),
        # Two mounts on one point: the last listed is the one in use.
        ("/home/pacs/objects", "nfs4", True),
        ("/data/over/objects", "ext4", False),
        ("/lustre/pacs/objects", "lustre", True),
        ("/ceph/pacs/objects", "ceph", True),
        ("/gluster/pacs/objects", "glusterfs", True),
        ("/gpfs/pacs/objects", "gpfs", True),
    ],
)
def test_the_file_system_of_a_path_is_that_of_its_deepest_mount(
    path: str, kind: str, network: bool
) -> None:
    assert filesystem_type(Path(path), MOUNTS) == kind
    assert is_network_filesystem(kind) is network


def test_the_file_system_of_a_real_store_is_detected(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    assert store.filesystem and store.filesystem == filesystem_type(tmp_path)
    assert store.network_filesystem is is_network_filesystem(store.filesystem)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("network", [False, True])
def test_the_sweep_removes_only_what_a_writer_shown_gone_left(
    tmp_path: Path, network: bool
) -> None:
    store = ObjectStore(tmp_path / "objects")
    store.network_filesystem = network
    store.prepare()
    incoming = store.root / INCOMING_DIR
    # Each incoming file's name says which process of which host writes it.
    arriving = store.receive()
    mine = arriving.path.name.split("@", 1)[1]
    assert arriving.path.name.startswith(f".tmp-{os.getpid()}-") and mine == store._writer
    arriving.discard()
    # A file of a writer running here, its lock free (as where locks mean nothing).
    live = incoming / f".tmp-{os.getpid()}-9-0@{mine}"
    gone = incoming / f".tmp-{_dead_pid()}-1-0@{mine}"
    elsewhere = incoming / f".tmp-{os.getpid()}-1-0@otherhost+1"
    old_elsewhere = incoming / f".tmp-{os.getpid()}-2-0@otherhost+1"
    recent_gone = incoming / f".tmp-{_dead_pid()}-2-0@{mine}"
    for path in (live, gone, elsewhere, recent_gone, old_elsewhere):
        path.write_bytes(b"half")
    for path in (live, gone, elsewhere):
        _age(path, 7200)
    _age(old_elsewhere, 2 * 86400)
    store.remove_stale_incoming()
    left = set(os.listdir(incoming))
    assert live.name in left  # its writer runs here
    assert recent_gone.name in left  # changed lately
    assert gone.name not in left and old_elsewhere.name not in left
    # Another host's file whose lock is free: on a local file system nobody else
    # writes, so the free lock shows its writer gone; on a network one it does not.
    assert (elsewhere.name in left) is network
