"""MailboxIndex and the Maildir conventions under it, on real files in tmp_path: UIDs in
arrival order, persistence, rebuild with a new UIDVALIDITY, flags in file names."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from relay.mda import index as index_module
from relay.mda import maildir
from relay.mda.index import INBOX_KEY, INDEX_DIR, IndexTxn, MailboxIndex
from relay.mda.maildir import MaildirStore

ADDRESS = "bob@example.org"


@pytest.fixture
def delivery(tmp_path: Path) -> MaildirStore:
    return MaildirStore(tmp_path / "mail")


@pytest.fixture
def root(delivery: MaildirStore) -> Path:
    path = delivery.path_for(ADDRESS)
    maildir.make_maildir(path, folder=False)
    return path


@pytest.fixture
def index(root: Path) -> Iterator[MailboxIndex]:
    idx = MailboxIndex.open(root)
    yield idx
    idx.release()


def entries(idx: MailboxIndex, key: bytes = INBOX_KEY) -> list[index_module.Entry]:
    with idx.reading() as r:
        st = r.folder(key)
        assert st is not None
        return r.entries(st.uidvalidity)


def age(path: Path, seconds: float = 10) -> None:
    """Backdate a directory's mtime past the scan-skipping slack."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


# ---- delivery (local delivery's side, unchanged) ---------------------------------------------


def test_deliver_writes_whole_file_into_new_with_its_size_in_the_name(
        delivery: MaildirStore) -> None:
    path = delivery.deliver(ADDRESS, b"Subject: hi\r\n\r\nbody\r\n")
    assert path.parent == delivery.path_for(ADDRESS) / "new"
    assert path.name.endswith(",S=21")
    assert path.read_bytes() == b"Subject: hi\r\n\r\nbody\r\n"
    assert os.listdir(delivery.path_for(ADDRESS) / "tmp") == []


def test_path_for_refuses_unsafe_addresses(delivery: MaildirStore) -> None:
    for bad in ("../x@example.org", "bob@..", "@example.org", "a/b@example.org"):
        with pytest.raises(ValueError):
            delivery.path_for(bad)


# ---- file names and flags --------------------------------------------------------------------


def test_flags_round_trip_through_sorted_info_letters() -> None:
    name = maildir.with_flags("123.M4P5.host,S=9", {"\\Seen", "\\Draft", "\\Deleted",
                                                     "\\Answered", "\\Flagged", "$Forwarded"})
    assert name == "123.M4P5.host,S=9:2,DFPRST"
    assert maildir.flags_of(name) == {"\\Seen", "\\Draft", "\\Deleted", "\\Answered",
                                      "\\Flagged", "$Forwarded"}


def test_keywords_never_reach_the_file_name() -> None:
    assert maildir.with_flags("m:2,", {"\\Seen", "$Junk"}) == "m:2,S"


def test_unknown_info_letters_are_kept_when_flags_change() -> None:
    # Dovecot keeps keywords as letters a-z: another tool's letters must survive our renames.
    assert maildir.with_flags("m:2,Sab", {"\\Flagged"}) == "m:2,Fab"
    assert maildir.flags_of("m:2,Sab") == {"\\Seen"}


def test_name_without_info_has_no_flags() -> None:
    assert maildir.split_info("1.M2P3.host") == ("1.M2P3.host", "")
    assert maildir.flags_of("1.M2P3.host") == frozenset()


def test_arrival_order_reads_unpadded_microseconds_numerically() -> None:
    names = ["100.M50000P1.h", "100.M7P1.h", "99.M999999P1.h", "foreign-name"]
    ordered = sorted(names, key=lambda n: maildir.arrival_key(n, mtime=100.5))
    assert ordered == ["99.M999999P1.h", "100.M7P1.h", "100.M50000P1.h", "foreign-name"]


# ---- scanning --------------------------------------------------------------------------------


def test_deliveries_get_uids_in_arrival_order_and_move_to_cur(
        delivery: MaildirStore, index: MailboxIndex, root: Path) -> None:
    paths = [delivery.deliver(ADDRESS, f"message {i}".encode()) for i in range(3)]
    st = index.refresh(INBOX_KEY, root)
    assert (st.uidnext, st.highestmodseq) == (4, 2)
    got = entries(index)
    assert [e.uid for e in got] == [1, 2, 3]
    assert [e.filename for e in got] == [p.name + ":2," for p in paths]
    assert os.listdir(root / "new") == []
    assert [(root / "cur" / e.filename).read_bytes() for e in got] == [
        b"message 0", b"message 1", b"message 2"]
    assert [e.size for e in got] == [9, 9, 9]


def test_internaldate_is_the_file_mtime(delivery: MaildirStore, index: MailboxIndex,
                                        root: Path) -> None:
    path = delivery.deliver(ADDRESS, b"x")
    os.utime(path, (1_000_000_000.25, 1_000_000_000.25))
    index.refresh(INBOX_KEY, root)
    assert entries(index)[0].internaldate == 1_000_000_000.25


def test_outside_rename_changes_system_flags_and_keeps_keywords(
        delivery: MaildirStore, index: MailboxIndex, root: Path) -> None:
    delivery.deliver(ADDRESS, b"x")
    index.refresh(INBOX_KEY, root)
    e = entries(index)[0]
    with index.writing() as w:
        w.update(INBOX_KEY, e, e.filename, {"$Important"})
    os.rename(root / "cur" / e.filename, root / "cur" / (e.base + ":2,RS"))  # like mutt
    index.refresh(INBOX_KEY, root)
    after = entries(index)[0]
    assert after.flags == {"\\Seen", "\\Answered", "$Important"}
    assert after.filename == e.base + ":2,RS"
    assert after.modseq > e.modseq


def test_outside_unlink_expunges_and_the_uid_is_never_reused(
        delivery: MaildirStore, index: MailboxIndex, root: Path) -> None:
    delivery.deliver(ADDRESS, b"a")
    delivery.deliver(ADDRESS, b"b")
    index.refresh(INBOX_KEY, root)
    os.unlink(root / "cur" / entries(index)[1].filename)
    index.refresh(INBOX_KEY, root)
    assert [e.uid for e in entries(index)] == [1]
    delivery.deliver(ADDRESS, b"c")
    st = index.refresh(INBOX_KEY, root)
    assert [e.uid for e in entries(index)] == [1, 3]
    assert st.uidnext == 4


def test_dot_files_in_cur_are_not_messages(index: MailboxIndex, root: Path) -> None:
    (root / "cur" / ".hidden").write_bytes(b"not mail")
    index.refresh(INBOX_KEY, root)
    assert entries(index) == []


def test_unchanged_directories_are_not_rescanned(
        delivery: MaildirStore, index: MailboxIndex, root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    delivery.deliver(ADDRESS, b"x")
    index.refresh(INBOX_KEY, root)
    age(root / "new")
    age(root / "cur")
    index.refresh(INBOX_KEY, root)  # records the aged mtimes

    def no_scan(self: IndexTxn, key: bytes, path: Path) -> None:
        raise AssertionError("scanned an unchanged folder")

    monkeypatch.setattr(IndexTxn, "scan", no_scan)
    assert index.refresh(INBOX_KEY, root).uidnext == 2


def test_a_recently_changed_directory_is_rescanned_even_with_the_same_mtime(
        delivery: MaildirStore, index: MailboxIndex, root: Path) -> None:
    # Two changes within one timestamp tick leave the mtime alone: the slack catches them.
    index.refresh(INBOX_KEY, root)
    mtime = os.stat(root / "new").st_mtime_ns
    delivery.deliver(ADDRESS, b"x")
    os.utime(root / "new", ns=(mtime, mtime))
    os.utime(root / "cur", ns=(mtime, mtime))
    assert index.refresh(INBOX_KEY, root).uidnext == 2


def test_a_first_scan_too_big_for_the_map_grows_it_and_retries(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MailboxIndex, "INITIAL_MAP", 128 << 10)
    for i in range(1500):
        (root / "cur" / f"{i}.M0P1.{'h' * 100}:2,S").write_bytes(b"x")
    idx = MailboxIndex.open(root)
    try:
        assert idx.refresh(INBOX_KEY, root).uidnext == 1501
    finally:
        idx.release()


def test_missing_folder_directory_raises_file_not_found(index: MailboxIndex,
                                                         root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        index.refresh(b".Gone", root / ".Gone")


# ---- persistence and rebuild -----------------------------------------------------------------


def test_uids_and_keywords_survive_reopening(delivery: MaildirStore, root: Path) -> None:
    delivery.deliver(ADDRESS, b"a")
    idx = MailboxIndex.open(root)
    st = idx.refresh(INBOX_KEY, root)
    e = entries(idx)[0]
    with idx.writing() as w:
        w.update(INBOX_KEY, e, e.filename, {"$Label1"})
    idx.release()
    again = MailboxIndex.open(root)
    try:
        assert again is not idx
        assert again.refresh(INBOX_KEY, root).uidvalidity == st.uidvalidity
        assert [(x.uid, x.flags) for x in entries(again)] == [(1, {"$Label1"})]
    finally:
        again.release()


def test_open_shares_one_environment_per_process(root: Path) -> None:
    first = MailboxIndex.open(root)
    second = MailboxIndex.open(root)
    assert first is second
    first.release()
    assert second.state(INBOX_KEY) is None  # still open: one release left
    second.release()


def rebuild_after(root: Path, damage: Callable[[Path], object]
                  ) -> tuple[int, int, list[tuple[int, frozenset[str]]]]:
    """(old uidvalidity, new uidvalidity, new (uid, flags)) around `damage(index_dir)`."""
    idx = MailboxIndex.open(root)
    old = idx.refresh(INBOX_KEY, root).uidvalidity
    idx.release()
    damage(root / INDEX_DIR)
    idx = MailboxIndex.open(root)
    try:
        new = idx.refresh(INBOX_KEY, root).uidvalidity
        return old, new, [(e.uid, e.flags) for e in entries(idx)]
    finally:
        idx.release()


def seed(delivery: MaildirStore, root: Path) -> None:
    for body in (b"one", b"two"):
        delivery.deliver(ADDRESS, body)
    idx = MailboxIndex.open(root)
    idx.refresh(INBOX_KEY, root)
    name = entries(idx)[1].filename
    idx.release()
    os.rename(root / "cur" / name, root / "cur" / maildir.with_flags(name, {"\\Flagged"}))


def test_deleted_index_is_rebuilt_with_a_new_uidvalidity(delivery: MaildirStore,
                                                          root: Path) -> None:
    seed(delivery, root)
    old, new, got = rebuild_after(root, shutil.rmtree)
    assert new > old  # even within the same second: relay-uidvalidity remembers
    assert got == [(1, frozenset()), (2, {"\\Flagged"})]


def test_corrupt_index_is_rebuilt(delivery: MaildirStore, root: Path) -> None:
    seed(delivery, root)

    def scribble(path: Path) -> None:
        (path / "data.mdb").write_bytes(b"\x00garbage" * 1024)

    old, new, got = rebuild_after(root, scribble)
    assert new > old
    assert got == [(1, frozenset()), (2, {"\\Flagged"})]


def test_index_of_another_schema_version_is_rebuilt(delivery: MaildirStore,
                                                    root: Path) -> None:
    seed(delivery, root)

    def other_version(path: Path) -> None:
        env = lmdb.open(str(path), max_dbs=4)
        with env.begin(write=True) as txn:
            txn.put(b"version", b"999", db=env.open_db(b"meta", txn=txn))
        env.close()

    old, new, got = rebuild_after(root, other_version)
    assert new > old
    assert [uid for uid, _ in got] == [1, 2]


def test_uidvalidity_is_never_reissued_even_when_everything_is_lost_but_the_maildir(
        root: Path) -> None:
    seen = []
    for _ in range(3):
        idx = MailboxIndex.open(root)
        with idx.writing() as w:
            seen += [w.create_folder(b".A").uidvalidity, w.create_folder(b".B").uidvalidity]
        idx.release()
        shutil.rmtree(root / INDEX_DIR)
    assert len(set(seen)) == len(seen) and seen == sorted(seen)


def test_drop_folder_forgets_its_messages(delivery: MaildirStore, index: MailboxIndex,
                                          root: Path) -> None:
    delivery.deliver(ADDRESS, b"x")
    st = index.refresh(INBOX_KEY, root)
    with index.writing() as w:
        w.drop_folder(INBOX_KEY)
    with index.reading() as r:
        assert r.folder(INBOX_KEY) is None
        assert r.entries(st.uidvalidity) == []


def test_map_grows_before_it_fills(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MailboxIndex, "INITIAL_MAP", 256 << 10)
    idx = MailboxIndex.open(root)
    try:
        with idx.writing() as w:
            w.create_folder(INBOX_KEY)
        for batch in range(100):
            with idx.writing() as w:
                for i in range(20):
                    w.add(INBOX_KEY, f"{batch}.{i}.{'x' * 150}:2,", {"$k"}, 1, 0.0)
        assert len(entries(idx)) == 2000
        assert idx.env.info()["map_size"] > 256 << 10
    finally:
        idx.release()
