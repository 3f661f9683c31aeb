"""MailboxIndex and the Maildir conventions under it, on real files in tmp_path: UIDs in
arrival order, persistence, rebuild with a new UIDVALIDITY, flags in file names."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from relay.mda import index as index_module
from relay.mda import index_schema, index_txn, maildir
from relay.mda.index import INDEX_DIR, MailboxIndex
from relay.mda.index_schema import INBOX_KEY, Entry
from relay.mda.index_txn import IndexTxn
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


def entries(idx: MailboxIndex, key: bytes = INBOX_KEY) -> list[Entry]:
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
        delivery: MaildirStore, index: MailboxIndex, root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two changes within one timestamp tick leave the mtime alone: a directory that no scan
    # has settled (by running MTIME_SLACK_NS after its mtime) is scanned again, at most
    # every RESCAN_NS (Dovecot's delayed refresh).
    index.refresh(INBOX_KEY, root)
    mtime = os.stat(root / "new").st_mtime_ns
    delivery.deliver(ADDRESS, b"x")
    os.utime(root / "new", ns=(mtime, mtime))
    os.utime(root / "cur", ns=(mtime, mtime))
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + index_txn.RESCAN_NS)
    assert index.refresh(INBOX_KEY, root).uidnext == 2


def test_our_own_renames_in_cur_cost_no_rescan(
        delivery: MaildirStore, index: MailboxIndex, root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    delivery.deliver(ADDRESS, b"x")
    index.refresh(INBOX_KEY, root)
    index.refresh(INBOX_KEY, root)  # the move out of new/ changed both directories
    [e] = entries(index)

    def no_scan(self: IndexTxn, key: bytes, path: Path) -> None:
        raise AssertionError("rescanned after our own rename")

    monkeypatch.setattr(IndexTxn, "scan", no_scan)
    with index.writing() as w:
        w.refresh(INBOX_KEY, root)
        name = maildir.with_flags(e.filename, {"\\Seen"})
        os.rename(root / "cur" / e.filename, root / "cur" / name)
        w.update(INBOX_KEY, e, name, {"\\Seen"})
        w.adopt_cur_mtime(INBOX_KEY, root)
    assert index.refresh(INBOX_KEY, root).highestmodseq == e.modseq + 1


def test_an_unsettled_directory_is_rescanned_once_the_delay_has_passed(
        delivery: MaildirStore, index: MailboxIndex, root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An outside rename in the same tick as our own: the mtime we adopted hides it, the
    # delayed rescan finds it.
    delivery.deliver(ADDRESS, b"x")
    index.refresh(INBOX_KEY, root)
    [e] = entries(index)
    with index.writing() as w:
        name = maildir.with_flags(e.filename, {"\\Seen"})
        os.rename(root / "cur" / e.filename, root / "cur" / name)
        w.update(INBOX_KEY, e, name, {"\\Seen"})
        w.adopt_cur_mtime(INBOX_KEY, root)
    mtime = os.stat(root / "cur").st_mtime_ns
    os.rename(root / "cur" / name, root / "cur" / maildir.with_flags(name, {"\\Flagged"}))
    os.utime(root / "cur", ns=(mtime, mtime))
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + index_txn.RESCAN_NS)
    index.refresh(INBOX_KEY, root)
    assert [x.flags for x in entries(index)] == [{"\\Flagged"}]


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


# ---- changes since a MODSEQ, the header cache ------------------------------------------------


def test_changes_since_a_modseq_are_one_key_range(delivery: MaildirStore, index: MailboxIndex,
                                                  root: Path) -> None:
    for body in (b"a", b"b", b"c"):
        delivery.deliver(ADDRESS, body)
    st = index.refresh(INBOX_KEY, root)
    one, two, three = entries(index)
    with index.writing() as w:
        w.update(INBOX_KEY, two, two.filename, {"$Work"})
    with index.writing() as w:
        w.remove(INBOX_KEY, 3)
    with index.reading() as r:
        changed, gone = r.changes_since(st.uidvalidity, st.highestmodseq)
        assert [(e.uid, e.flags) for e in changed] == [(2, {"$Work"})] and gone == [3]
        changed, gone = r.changes_since(st.uidvalidity, 0)
        assert [e.uid for e in changed] == [1, 2] and gone == [3]
        later = r.folder(INBOX_KEY)
        assert later is not None
        assert r.changes_since(st.uidvalidity, later.highestmodseq) == ([], [])


def test_header_cache_entries_go_with_their_message_and_folder(
        delivery: MaildirStore, index: MailboxIndex, root: Path) -> None:
    delivery.deliver(ADDRESS, b"a")
    delivery.deliver(ADDRESS, b"b")
    st = index.refresh(INBOX_KEY, root)
    with index.writing() as w:
        w.put_header(st.uidvalidity, 1, b"Subject: a\r\n\r\n")
        w.put_header(st.uidvalidity, 2, b"Subject: b\r\n\r\n")
    with index.writing() as w:
        w.remove(INBOX_KEY, 1)
    with index.reading() as r:
        assert r.header(st.uidvalidity, 1) is None
        assert r.header(st.uidvalidity, 2) == b"Subject: b\r\n\r\n"
    with index.writing() as w:
        w.drop_folder(INBOX_KEY)
    with index.reading() as r:
        assert r.header(st.uidvalidity, 2) is None


def test_a_schema_1_index_is_upgraded_keeping_its_uids(delivery: MaildirStore,
                                                       root: Path) -> None:
    for body in (b"a", b"b"):
        delivery.deliver(ADDRESS, body)
    idx = MailboxIndex.open(root)
    st = idx.refresh(INBOX_KEY, root)
    # Turn it back into what schema 1 wrote: 32-byte folder records, no MODSEQ index.
    with idx.writing() as w:
        txn = w._txn
        txn.put(b"version", b"1", db=idx.meta_db)
        txn.put(INBOX_KEY, index_schema.FOLDER_V1.pack(
            st.uidvalidity, st.uidnext, st.highestmodseq, st.new_mtime, st.cur_mtime),
            db=idx.folders_db)
        txn.drop(idx.modseq_db, delete=False)
        w.changed = True
    idx.release()
    again = MailboxIndex.open(root)
    try:
        st2 = again.refresh(INBOX_KEY, root)
        assert (st2.uidvalidity, st2.uidnext) == (st.uidvalidity, st.uidnext)
        with again.reading() as r:
            assert [e.uid for e in r.changes_since(st.uidvalidity, 0)[0]] == [1, 2]
    finally:
        again.release()


# ---- durability: what is flushed, the marker of unflushed commits ------------------------------


class CountingEnv:
    """An lmdb.Environment that counts explicit flushes."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.syncs = 0

    def sync(self, force: bool = False) -> None:
        self.syncs += 1
        self.env.sync(force)

    def __getattr__(self, name: str) -> object:
        return getattr(self.env, name)


@pytest.fixture
def counting(delivery: MaildirStore, index: MailboxIndex, root: Path) -> Iterator[CountingEnv]:
    """One delivered, indexed message; the index's flushes counted from here on."""
    if index_module.boot_id() is None:
        pytest.skip("no boot id: every commit is synced")
    delivery.deliver(ADDRESS, b"a")
    index.refresh(INBOX_KEY, root)
    env = CountingEnv(index.env)
    index.env = env  # type: ignore[assignment]
    yield env
    index.env = env.env


def test_flag_changes_are_not_flushed_but_keywords_and_uids_are(
        counting: CountingEnv, index: MailboxIndex, root: Path) -> None:
    [e] = entries(index)
    with index.writing() as w:
        e = w.update(INBOX_KEY, e, maildir.with_flags(e.filename, {"\\Seen"}), {"\\Seen"})
    assert counting.syncs == 0
    assert (root / INDEX_DIR / index_module.UNSYNCED_MARKER).exists()
    with index.writing() as w:
        w.update(INBOX_KEY, e, e.filename, {"\\Seen", "$Work"})
    assert counting.syncs == 1
    with index.writing() as w:
        w.add(INBOX_KEY, "x:2,", (), 1, 0.0)
    assert counting.syncs == 2


def test_the_marker_goes_once_the_index_is_quiet(
        delivery: MaildirStore, index: MailboxIndex, root: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if index_module.boot_id() is None:
        pytest.skip("no boot id: every commit is synced")
    monkeypatch.setattr(index_module, "QUIET_SECONDS", 0.05)
    delivery.deliver(ADDRESS, b"a")
    index.refresh(INBOX_KEY, root)
    marker = root / INDEX_DIR / index_module.UNSYNCED_MARKER
    assert marker.exists()
    deadline = time.monotonic() + 10
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not marker.exists()


def test_a_marker_from_another_boot_gets_the_index_rebuilt(delivery: MaildirStore,
                                                           root: Path) -> None:
    if index_module.boot_id() is None:
        pytest.skip("no boot id: every commit is synced")
    delivery.deliver(ADDRESS, b"a")

    def crashed_elsewhere(index_dir: Path) -> None:  # a system crash with unflushed commits
        (index_dir / index_module.UNSYNCED_MARKER).write_text("another-boot\n")

    old, new, got = rebuild_after(root, crashed_elsewhere)
    assert new > old and got == [(1, frozenset())]


def test_a_marker_from_this_boot_is_trusted(delivery: MaildirStore, root: Path) -> None:
    # A process that died (not the system) loses nothing: the page cache survives it.
    delivery.deliver(ADDRESS, b"a")

    def process_died(index_dir: Path) -> None:
        (index_dir / index_module.UNSYNCED_MARKER).write_text(
            f"{index_module.boot_id()}\n")

    old, new, got = rebuild_after(root, process_died)
    assert new == old and got == [(1, frozenset())]


# ---- \Recent: the first-recent watermark (RFC 3501 §2.3.2, Dovecot's first_recent_uid) ------


def test_a_new_index_makes_what_is_in_new_recent_and_claims_it_once(
        delivery: MaildirStore, index: MailboxIndex, root: Path) -> None:
    for body in (b"a", b"b", b"c"):
        delivery.deliver(ADDRESS, body)
    st = index.refresh(INBOX_KEY, root)
    assert (st.first_recent, st.uidnext) == (1, 4)
    with index.writing() as w:
        assert w.claim_recent(INBOX_KEY, 4) == (1, 4)
    with index.writing() as w:
        assert w.claim_recent(INBOX_KEY, 4) == (4, 4)  # nothing left for a second session
    delivery.deliver(ADDRESS, b"d")
    assert index.refresh(INBOX_KEY, root).first_recent == 4
    with index.writing() as w:
        assert w.claim_recent(INBOX_KEY, 99) == (4, 5)  # never beyond UIDNEXT
    assert index.state(INBOX_KEY).first_recent == 5  # type: ignore[union-attr]


def test_a_claim_stops_where_asked(delivery: MaildirStore, index: MailboxIndex,
                                   root: Path) -> None:
    for body in (b"a", b"b", b"c"):
        delivery.deliver(ADDRESS, body)
    index.refresh(INBOX_KEY, root)
    with index.writing() as w:
        assert w.claim_recent(INBOX_KEY, 3) == (1, 3)
        assert w.claim_recent(INBOX_KEY, 4) == (3, 4)


def test_a_first_scan_numbers_cur_before_new_and_only_new_is_recent(
        delivery: MaildirStore, index: MailboxIndex, root: Path) -> None:
    read = delivery.deliver(ADDRESS, b"later, but already read by mutt")
    unread = delivery.deliver(ADDRESS, b"still in new/")
    os.rename(read, root / "cur" / (read.name + ":2,S"))  # an older one, moved by a MUA
    st = index.refresh(INBOX_KEY, root)
    got = entries(index)
    assert [(e.uid, e.base) for e in got] == [(1, read.name), (2, unread.name)]
    assert st.first_recent == 2


def test_a_rebuilt_index_of_files_all_in_cur_has_nothing_recent(
        delivery: MaildirStore, root: Path) -> None:
    seed(delivery, root)  # both messages scanned into cur/ by the lost index
    shutil.rmtree(root / INDEX_DIR)
    idx = MailboxIndex.open(root)
    try:
        st = idx.refresh(INBOX_KEY, root)
        assert (st.first_recent, st.uidnext) == (3, 3)
    finally:
        idx.release()


def test_a_new_folder_makes_everything_it_gets_recent(index: MailboxIndex) -> None:
    with index.writing() as w:
        st = w.create_folder(b".Work")
    assert st.first_recent == 1 == st.uidnext


def test_a_schema_2_index_is_upgraded_with_nothing_recent(delivery: MaildirStore,
                                                          root: Path) -> None:
    for body in (b"a", b"b"):
        delivery.deliver(ADDRESS, body)
    idx = MailboxIndex.open(root)
    st = idx.refresh(INBOX_KEY, root)
    assert st.first_recent == 1
    with idx.writing() as w:  # what schema 2 wrote: no watermark
        w._txn.put(b"version", b"2", db=idx.meta_db)
        w._txn.put(INBOX_KEY, index_schema.FOLDER_V2.pack(
            st.uidvalidity, st.uidnext, st.highestmodseq, st.new_mtime, st.cur_mtime,
            st.scan_ns, st.expunge_floor), db=idx.folders_db)
        w.changed = True
    idx.release()
    delivery.deliver(ADDRESS, b"c")
    again = MailboxIndex.open(root)
    try:
        st2 = again.refresh(INBOX_KEY, root)
        assert (st2.uidvalidity, st2.uidnext, st2.first_recent) == (st.uidvalidity, 4, 3)
        with again.reading() as r:
            assert bytes(r._txn.get(b"version", db=again.meta_db)) == index_schema.SCHEMA_VERSION
    finally:
        again.release()


def test_a_claim_is_not_flushed(counting: CountingEnv, index: MailboxIndex) -> None:
    with index.writing() as w:
        assert w.claim_recent(INBOX_KEY, 2) == (1, 2)
    assert counting.syncs == 0  # lost in a crash, it only makes the message recent again
