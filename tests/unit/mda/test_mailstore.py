"""MailStore, Account and Folder on real Maildirs in tmp_path: what the IMAP and POP3
servers rely on (RFC 3501 mailbox semantics, UIDPLUS results, RFC 6154 defaults,
concurrent sessions and processes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import relay
from relay.mda import maildir
from relay.mda.index import INDEX_DIR
from relay.mda.maildir import MaildirStore
from relay.mda.index_schema import INBOX_KEY
from relay.mda.folder import Folder
from relay.mda.model import FolderInfo, StoreError, StoreErrorKind
from relay.mda.store import Account, MailStore
from relay.mda.views import RecentUids, View, latest_view

ADDRESS = "bob@example.org"
REPO = Path(relay.__file__).resolve().parent.parent


@pytest.fixture
def mail_root(tmp_path: Path) -> Path:
    return tmp_path / "mail"


@pytest.fixture
def store(mail_root: Path) -> Iterator[MailStore]:
    s = MailStore(mail_root)
    yield s
    s.close()


@pytest.fixture
def account(store: MailStore) -> Account:
    return store.account(ADDRESS)


Deliver = Callable[[bytes], Path]


@pytest.fixture
def deliver(mail_root: Path) -> Deliver:
    """Local delivery into bob's new/, as relay/delivery/local.py does it."""
    delivery = MaildirStore(mail_root)
    return lambda body: delivery.deliver(ADDRESS, body)


def uids(folder: Folder) -> list[int]:
    return [m.uid for m in folder.messages()]


def flags(folder: Folder) -> dict[int, frozenset[str]]:
    return {m.uid: m.flags for m in folder.messages()}


def cur_files(folder: Folder) -> list[str]:
    return sorted(os.listdir(folder.path(uids(folder)[0]).parent)) if uids(folder) else []


def kind(exc: pytest.ExceptionInfo[StoreError]) -> StoreErrorKind:
    return exc.value.kind


def run_python(code: str, *args: str, wait: bool = True) -> subprocess.Popen[str]:
    """Another process using the same Maildir (no fork: LMDB must not cross one)."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        proc.wait(30)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return proc


# ---- delivery, sync, UIDs --------------------------------------------------------------------


def test_deliveries_appear_at_sync_with_uids_from_one(account: Account, deliver: Deliver) -> None:
    deliver(b"first")
    deliver(b"second")
    inbox = account.folder("INBOX")
    changes = inbox.sync()
    assert [m.uid for m in changes.added] == [1, 2]
    assert (changes.expunged, changes.flags, changes.uidnext) == ([], [], 3)
    assert [inbox.read(1), inbox.read(2)] == [b"first", b"second"]
    assert [m.size for m in inbox.messages()] == [5, 6]


def test_second_sync_without_changes_is_empty(account: Account, deliver: Deliver) -> None:
    deliver(b"x")
    inbox = account.folder("INBOX")
    inbox.sync()
    changes = inbox.sync()
    assert (changes.added, changes.expunged, changes.flags) == ([], [], [])
    assert changes.uidnext == 2


def test_later_delivery_is_added_with_the_next_uid(account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    inbox = account.folder("inbox")
    inbox.sync()
    deliver(b"b")
    assert [m.uid for m in inbox.sync().added] == [2]
    assert uids(inbox) == [1, 2]


def test_uids_persist_across_a_restart(mail_root: Path, deliver: Deliver) -> None:
    deliver(b"a")
    deliver(b"b")
    first = MailStore(mail_root)
    inbox = first.account(ADDRESS).folder("INBOX")
    inbox.sync()
    inbox.store([2], {"\\Seen", "$Work"}, "+")
    before = (inbox.uidvalidity, inbox.messages())
    first.close()
    second = MailStore(mail_root)
    try:
        again = second.account(ADDRESS).folder("INBOX")
        again.sync()
        assert (again.uidvalidity, again.messages()) == before
    finally:
        second.close()


def test_lost_index_is_rebuilt_with_new_uidvalidity_same_messages_and_flags(
        mail_root: Path, deliver: Deliver) -> None:
    for body in (b"a", b"b", b"c"):
        deliver(body)
    first = MailStore(mail_root)
    account = first.account(ADDRESS)
    inbox = account.folder("INBOX")
    inbox.sync()
    inbox.store([1], {"\\Seen"}, "+")
    inbox.store([3], {"\\Flagged", "\\Answered"}, "+")
    old = inbox.uidvalidity
    first.close()
    shutil.rmtree(account.path / INDEX_DIR)
    second = MailStore(mail_root)
    try:
        rebuilt = second.account(ADDRESS).folder("INBOX")
        rebuilt.sync()
        assert rebuilt.uidvalidity > old
        assert flags(rebuilt) == {1: {"\\Seen"}, 2: frozenset(),
                                  3: {"\\Flagged", "\\Answered"}}
        assert [rebuilt.read(u) for u in (1, 2, 3)] == [b"a", b"b", b"c"]
    finally:
        second.close()


def test_index_deleted_under_a_running_store_is_rebuilt_and_old_views_end(
        account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    inbox = account.folder("INBOX")
    inbox.sync()
    shutil.rmtree(account.path / INDEX_DIR)
    fresh = account.folder("INBOX")
    assert fresh.uidvalidity > inbox.uidvalidity
    assert [m.uid for m in fresh.sync().added] == [1]
    with pytest.raises(StoreError) as exc:
        inbox.sync()
    assert kind(exc) == "nonexistent"
    assert (account.path / INDEX_DIR / "data.mdb").exists()


def test_file_renamed_by_an_outside_tool_is_seen_as_a_flag_change(account: Account,
                                                                  deliver: Deliver) -> None:
    deliver(b"x")
    inbox = account.folder("INBOX")
    inbox.sync()
    path = inbox.path(1)
    os.rename(path, path.with_name(maildir.split_info(path.name)[0] + ":2,S"))  # mutt
    changes = inbox.sync()
    assert [(m.uid, m.flags) for m in changes.flags] == [(1, {"\\Seen"})]
    assert inbox.read(1) == b"x"


def test_store_acts_on_flags_an_outside_tool_changed_since_the_last_sync(
        account: Account, deliver: Deliver) -> None:
    deliver(b"x")
    inbox = account.folder("INBOX")
    inbox.sync()
    inbox.store([1], {"\\Seen", "\\Deleted"}, "+")
    path = inbox.path(1)
    os.rename(path, path.with_name(maildir.split_info(path.name)[0] + ":2,"))  # unread again
    [m] = inbox.store([1], {"\\Seen"}, "+")  # must not believe the stale index
    assert m.flags == {"\\Seen"} and inbox.path(1).name.endswith(":2,S")
    assert inbox.expunge() == []  # nor expunge what the tool undeleted


def test_file_removed_by_an_outside_tool_is_expunged(account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    deliver(b"b")
    inbox = account.folder("INBOX")
    inbox.sync()
    os.unlink(inbox.path(1))
    assert inbox.sync().expunged == [1]
    with pytest.raises(KeyError):
        inbox.read(1)


def test_read_of_a_uid_not_in_the_view_is_a_key_error(account: Account) -> None:
    inbox = account.folder("INBOX")
    inbox.sync()
    with pytest.raises(KeyError):
        inbox.path(99)


# ---- flags -----------------------------------------------------------------------------------


def test_store_renames_system_flags_into_the_file_name(account: Account, deliver: Deliver) -> None:
    deliver(b"x")
    inbox = account.folder("INBOX")
    inbox.sync()
    inbox.store([1], {"\\Seen", "\\Deleted", "\\Draft", "\\Flagged", "\\Answered"}, "+")
    assert inbox.path(1).name.endswith(":2,DFRST")
    inbox.store([1], {"\\Seen"}, "=")
    assert inbox.path(1).name.endswith(":2,S")


def test_store_modes_add_remove_replace_and_report_only_changes(account: Account,
                                                                deliver: Deliver) -> None:
    deliver(b"a")
    deliver(b"b")
    inbox = account.folder("INBOX")
    inbox.sync()
    first = inbox.store([1, 2], {"\\Seen"}, "+")
    assert [(m.uid, m.flags) for m in first] == [(1, {"\\Seen"}), (2, {"\\Seen"})]
    assert inbox.store([1, 2], {"\\Seen"}, "+") == []  # nothing changed: no new modseq
    removed = inbox.store([2], {"\\Seen", "$Later"}, "-")
    assert [(m.uid, m.flags) for m in removed] == [(2, frozenset())]
    replaced = inbox.store([1], {"$Later", "\\flagged"}, "=")
    assert [(m.uid, m.flags) for m in replaced] == [(1, {"$Later", "\\Flagged"})]
    assert flags(inbox) == {1: {"$Later", "\\Flagged"}, 2: frozenset()}


def test_every_flag_change_gets_a_higher_modseq(account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    inbox = account.folder("INBOX")
    inbox.sync()
    before = inbox.messages()[0].modseq
    [changed] = inbox.store([1], {"\\Seen"}, "+")
    assert changed.modseq > before
    assert inbox.sync().highestmodseq == changed.modseq


def test_keywords_persist_but_stay_out_of_the_file_name(mail_root: Path, deliver: Deliver) -> None:
    deliver(b"a")
    first = MailStore(mail_root)
    inbox = first.account(ADDRESS).folder("INBOX")
    inbox.sync()
    inbox.store([1], {"$Important", "NonJunk"}, "+")
    assert inbox.path(1).name.endswith(":2,")
    first.close()
    second = MailStore(mail_root)
    try:
        again = second.account(ADDRESS).folder("INBOX")
        again.sync()
        assert flags(again) == {1: {"$Important", "NonJunk"}}
    finally:
        second.close()


def test_forwarded_keyword_is_the_maildir_passed_letter(account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    inbox = account.folder("INBOX")
    inbox.sync()
    inbox.store([1], {"$forwarded"}, "+")
    assert inbox.path(1).name.endswith(":2,P")
    assert flags(inbox) == {1: {"$Forwarded"}}


def test_recent_is_ignored_and_unknown_system_flags_are_refused(account: Account,
                                                                deliver: Deliver) -> None:
    deliver(b"a")
    inbox = account.folder("INBOX")
    inbox.sync()
    assert inbox.store([1], {"\\Recent"}, "+") == []
    for bad in ("\\Bogus", "with space", "", "paren(", "nul\0"):
        with pytest.raises(StoreError) as exc:
            inbox.store([1], {bad}, "+")
        assert kind(exc) == "invalid"


# ---- append, copy, move, expunge -------------------------------------------------------------


def test_append_returns_the_uid_and_keeps_flags_and_internaldate(account: Account) -> None:
    inbox = account.folder("INBOX")
    inbox.sync()
    uid = inbox.append(b"Subject: draft\r\n\r\n", {"\\Draft", "\\Seen", "$Todo"},
                       internaldate=1_600_000_000.0)
    assert uid == 1
    assert uids(inbox) == []  # the view moves at sync (then EXISTS)
    [m] = inbox.sync().added
    assert (m.uid, m.flags, m.internaldate, m.size) == (
        1, {"\\Draft", "\\Seen", "$Todo"}, 1_600_000_000.0, 18)
    assert inbox.path(1).parent.name == "cur" and inbox.path(1).name.endswith(":2,DS")
    assert inbox.append(b"next") == 2


def test_append_leaves_nothing_in_tmp(account: Account) -> None:
    inbox = account.folder("INBOX")
    inbox.append(b"x")
    assert os.listdir(account.path / "tmp") == []


def test_copy_returns_copyuid_pairs_and_keeps_flags_date_and_bytes(account: Account,
                                                                   deliver: Deliver) -> None:
    account.create("Archive")
    archive = account.folder("Archive")
    archive.append(b"already here")
    for body in (b"a", b"b", b"c"):
        deliver(body)
    inbox = account.folder("INBOX")
    inbox.sync()
    inbox.store([1], {"\\Seen", "$Work"}, "+")
    pairs = inbox.copy([3, 1, 99], archive)
    assert pairs == [(1, 2), (3, 3)]
    archive.sync()
    src = {m.uid: m for m in inbox.messages()}
    got = {m.uid: m for m in archive.messages()}
    assert got[2].flags == {"\\Seen", "$Work"} and got[3].flags == frozenset()
    assert (got[2].internaldate, got[3].internaldate) == (src[1].internaldate,
                                                          src[3].internaldate)
    assert [archive.read(2), archive.read(3)] == [b"a", b"c"]
    assert os.stat(archive.path(2)).st_ino == os.stat(inbox.path(1)).st_ino  # hard link
    assert uids(inbox) == [1, 2, 3]


def test_copy_to_a_name_and_to_a_missing_mailbox(account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    account.create("Keep")
    inbox = account.folder("INBOX")
    inbox.sync()
    assert inbox.copy([1], "Keep") == [(1, 1)]
    with pytest.raises(StoreError) as exc:
        inbox.copy([1], "Nowhere")
    assert kind(exc) == "nonexistent"


def test_move_copies_then_expunges_the_sources(account: Account, deliver: Deliver) -> None:
    for body in (b"a", b"b", b"c"):
        deliver(body)
    inbox = account.folder("INBOX")
    other = account.folder("INBOX")
    inbox.sync()
    other.sync()
    account.create("Done")
    assert inbox.move([1, 3], "Done") == [(1, 1), (3, 2)]
    assert uids(inbox) == [2]
    assert other.sync().expunged == [1, 3]
    done = account.folder("Done")
    done.sync()
    assert [done.read(1), done.read(2)] == [b"a", b"c"]


def test_expunge_removes_only_deleted_messages(account: Account, deliver: Deliver) -> None:
    for body in (b"a", b"b", b"c", b"d"):
        deliver(body)
    inbox = account.folder("INBOX")
    inbox.sync()
    inbox.store([1, 3, 4], {"\\Deleted"}, "+")
    assert inbox.expunge([3, 4, 2]) == [3, 4]  # UID EXPUNGE
    assert inbox.expunge() == [1]
    assert uids(inbox) == [2]
    assert len(os.listdir(account.path / "cur")) == 1
    assert inbox.sync().expunged == []  # already out of this view


def test_expunged_uids_are_never_reused(account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    inbox = account.folder("INBOX")
    inbox.sync()
    inbox.store([1], {"\\Deleted"}, "+")
    inbox.expunge()
    assert inbox.append(b"b") == 2


def test_status_counts_without_moving_the_view(account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    inbox = account.folder("INBOX")
    inbox.sync()
    inbox.store([1], {"\\Seen"}, "+")
    deliver(b"bb")
    status = inbox.status()
    assert {k: status[k] for k in ("MESSAGES", "RECENT", "UIDNEXT", "UNSEEN", "SIZE")} == {
        "MESSAGES": 2, "RECENT": 2, "UIDNEXT": 3, "UNSEEN": 1, "SIZE": 3}  # none claimed
    assert status["UIDVALIDITY"] == inbox.uidvalidity
    assert status["HIGHESTMODSEQ"] >= inbox.highestmodseq
    assert uids(inbox) == [1]
    assert [m.uid for m in inbox.sync().added] == [2]


# ---- several sessions on one mailbox ---------------------------------------------------------


def test_two_sessions_see_each_others_flag_changes_and_expunges(account: Account,
                                                                deliver: Deliver) -> None:
    for body in (b"a", b"b"):
        deliver(body)
    one, two = account.folder("INBOX"), account.folder("INBOX")
    one.sync()
    two.sync()
    one.store([1], {"\\Seen"}, "+")
    changes = two.sync()
    assert [(m.uid, m.flags) for m in changes.flags] == [(1, {"\\Seen"})]
    two.store([2], {"\\Deleted"}, "+")
    assert two.expunge() == [2]
    changes = one.sync()
    assert changes.expunged == [2] and changes.flags == []
    assert uids(one) == uids(two) == [1]


def test_sessions_synced_to_one_state_share_one_view(account: Account,
                                                     deliver: Deliver) -> None:
    for body in (b"a", b"b", b"c"):
        deliver(body)
    one, two = account.folder("INBOX"), account.folder("INBOX")
    one.sync()
    two.sync()
    assert one.view_messages is two.view_messages and one.view_uids is two.view_uids
    one.store([2], {"\\Seen"}, "+")  # one's own change: a private copy until it syncs
    assert one.view_messages is not two.view_messages
    assert flags(two)[2] == frozenset() and flags(one)[2] == {"\\Seen"}
    assert one.sync().flags == []  # its own change is no news to it
    assert [m.uid for m in two.sync().flags] == [2]
    assert one.view_messages is two.view_messages and one.shared_view is two.shared_view


def test_a_session_does_not_expunge_messages_it_has_not_seen(account: Account,
                                                             deliver: Deliver) -> None:
    deliver(b"a")
    one, two = account.folder("INBOX"), account.folder("INBOX")
    one.sync()
    deliver(b"b")
    two.sync()
    two.store([2], {"\\Deleted"}, "+")
    assert one.expunge() == []  # uid 2 is not in one's view yet
    assert uids(one) == [1]


def test_deleting_the_selected_mailbox_ends_the_view(account: Account) -> None:
    account.create("Tmp")
    tmp = account.folder("Tmp")
    tmp.sync()
    account.delete("Tmp")
    with pytest.raises(StoreError) as exc:
        tmp.sync()
    assert kind(exc) == "nonexistent"
    account.create("Tmp")  # same name again: a new UIDVALIDITY, the old view stays dead
    assert account.folder("Tmp").uidvalidity != tmp.uidvalidity
    with pytest.raises(StoreError):
        tmp.append(b"x")


# ---- \Recent (RFC 3501 §2.3.2): claimed per session, never stored ------------------------------


def selecting(account: Account, claim: bool = True, name: str = "INBOX") -> Folder:
    """A Folder as IMAP SELECT (claim) or EXAMINE (look) opens it."""
    folder = account.folder(name)
    folder.track_recent(claim)
    folder.sync()
    return folder


def held(folder: Folder) -> list[int]:
    return [u for u in folder.view_uids if u in folder.recent]


def test_recent_uids_are_a_few_ranges() -> None:
    recent = RecentUids()
    assert not recent and 1 not in recent
    recent.add(3, 5)
    recent.add(5, 7)  # touching: one range
    recent.add(9, 9)  # empty: ignored
    recent.add(10, 12)
    assert recent.ranges == ((3, 7), (10, 12))
    assert [u for u in range(14) if u in recent] == [3, 4, 5, 6, 10, 11]
    assert recent.count([1, 2, 3, 6, 7, 8, 11, 13]) == 3


def test_the_first_session_to_select_holds_new_mail_as_recent(account: Account,
                                                              deliver: Deliver) -> None:
    for body in (b"a", b"b", b"c"):
        deliver(body)
    first = selecting(account)
    assert held(first) == [1, 2, 3]
    assert held(selecting(account)) == []  # a later session: already claimed
    assert held(first) == [1, 2, 3]  # the first keeps them while it has the mailbox
    assert all("\\Recent" not in m.flags for m in first.messages())  # never stored


def test_looking_claims_nothing(account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    assert held(selecting(account, claim=False)) == [1]
    assert account.folder("INBOX").status()["RECENT"] == 1
    assert held(selecting(account)) == [1]
    assert account.folder("INBOX").status()["RECENT"] == 0
    assert held(selecting(account, claim=False)) == []


def test_mail_arriving_while_selected_is_recent_for_the_first_to_sync(
        account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    a, b = selecting(account), selecting(account)
    deliver(b"b")
    deliver(b"c")
    b.sync()
    a.sync()
    assert (held(a), held(b)) == ([1], [2, 3])


def test_a_session_that_only_looks_sees_new_mail_recent_until_it_is_claimed(
        account: Account, deliver: Deliver) -> None:
    looker = selecting(account, claim=False)
    deliver(b"a")
    looker.sync()
    assert held(looker) == [1]
    selecting(account)  # claims 1
    deliver(b"b")
    looker.sync()
    assert held(looker) == [1, 2]


def test_append_is_recent_in_the_claiming_session_that_made_it(
        account: Account) -> None:
    mine, other = selecting(account), selecting(account)
    uid = mine.append(b"x")
    assert uid in mine.recent  # claimed with the append: no other session can take it
    other.sync()
    mine.sync()
    assert (held(mine), held(other)) == ([uid], [])


def test_append_and_copy_elsewhere_are_recent_for_the_next_to_select(
        account: Account, deliver: Deliver) -> None:
    deliver(b"a")
    inbox = selecting(account)
    account.create("Work")
    account.folder("Work").append(b"appended")
    inbox.copy([1], "Work")
    assert account.folder("Work").status()["RECENT"] == 2
    assert held(selecting(account, name="Work")) == [1, 2]
    assert held(selecting(account, name="Work")) == []


def test_copy_into_the_claiming_folder_itself_is_recent_there(account: Account,
                                                              deliver: Deliver) -> None:
    deliver(b"a")
    inbox, other = selecting(account), selecting(account)
    assert inbox.copy([1], inbox) == [(1, 2)]
    other.sync()
    inbox.sync()
    assert (held(inbox), held(other)) == ([1, 2], [])


def test_folders_that_do_not_track_recent_claim_nothing(account: Account,
                                                        deliver: Deliver) -> None:
    deliver(b"a")
    pop3 = account.folder("INBOX")  # POP3, STATUS, COPY targets
    pop3.sync()
    pop3.append(b"b")
    pop3.sync()
    assert not pop3.recent
    assert held(selecting(account)) == [1, 2]


CLAIMER = """
    import sys, time
    from pathlib import Path
    from relay.mda.store import MailStore
    store = MailStore(Path(sys.argv[1]))
    inbox = store.account(sys.argv[2]).folder("INBOX")
    inbox.track_recent(True)
    deadline = time.monotonic() + 30
    while len(inbox.view_uids) < int(sys.argv[3]) and time.monotonic() < deadline:
        inbox.sync()
    print(" ".join(f"{lo}:{hi}" for lo, hi in inbox.recent.ranges), flush=True)
    store.close()
"""


def test_two_processes_never_claim_the_same_message(mail_root: Path, account: Account,
                                                    deliver: Deliver) -> None:
    count = 40
    inbox = account.folder("INBOX")  # the folder exists before the child looks
    proc = run_python(CLAIMER, str(mail_root), ADDRESS, str(count), wait=False)
    inbox.track_recent(True)
    for i in range(count):
        deliver(b"message %d" % i)
        if i % 4 == 3:  # give the child's tight loop a chance at the others
            inbox.sync()
        time.sleep(0.005)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    inbox.sync()
    theirs = {u for part in out.split() for u in range(*map(int, part.split(":")))}
    mine = set(held(inbox))
    assert not mine & theirs
    assert mine | theirs == set(range(1, count + 1))


# ---- folders ---------------------------------------------------------------------------------


def test_new_account_has_inbox_only(account: Account) -> None:
    assert account.folders() == [FolderInfo("INBOX", None, False, False)]


def test_ensure_defaults_creates_and_subscribes_special_use_folders(account: Account) -> None:
    account.ensure_defaults()
    assert account.folders() == [
        FolderInfo("INBOX", None, True, False),
        FolderInfo("Drafts", "\\Drafts", True, False),
        FolderInfo("Junk", "\\Junk", True, False),
        FolderInfo("Sent", "\\Sent", True, False),
        FolderInfo("Trash", "\\Trash", True, False),
    ]
    assert (account.path / ".Sent" / "maildirfolder").exists()


def test_ensure_defaults_runs_once_so_deleted_defaults_stay_deleted(account: Account) -> None:
    account.ensure_defaults()
    account.delete("Junk")
    account.ensure_defaults()
    assert "Junk" not in [f.name for f in account.folders()]


def test_create_makes_superiors_and_lists_children(account: Account) -> None:
    account.create("Work/Projects/2024")
    assert [(f.name, f.has_children) for f in account.folders()] == [
        ("INBOX", False), ("Work", True), ("Work/Projects", True),
        ("Work/Projects/2024", False)]
    assert (account.path / ".Work.Projects.2024" / "cur").is_dir()
    assert account.folder("Work/Projects").sync().added == []


def test_names_with_dots_and_non_ascii_map_to_escaped_directories(account: Account) -> None:
    account.create("v1.2")
    account.create("Entwürfe/a&b")
    assert {".v1\\2e2", ".Entw&APw-rfe", ".Entw&APw-rfe.a&-b"} <= set(os.listdir(account.path))
    assert [f.name for f in account.folders()] == ["INBOX", "Entwürfe", "Entwürfe/a&b", "v1.2"]
    account.folder("v1.2").append(b"x")


def test_create_refuses_bad_names(account: Account) -> None:
    for bad in ("", "/", "..", "a/..", ".", "/lead", "trail/", "a//b", "tab\there", "star*",
                "per%cent", "x" * 300):
        with pytest.raises(StoreError) as exc:
            account.create(bad)
        assert kind(exc) == "invalid", bad
    assert [f.name for f in account.folders()] == ["INBOX"]


def test_create_refuses_existing_names_and_inbox(account: Account) -> None:
    account.create("Stuff")
    for name in ("Stuff", "INBOX", "inbox"):
        with pytest.raises(StoreError) as exc:
            account.create(name)
        assert kind(exc) == "exists"


def test_inbox_children_live_beside_the_root(account: Account) -> None:
    account.create("inbox/Lists")
    assert [(f.name, f.has_children) for f in account.folders()] == [
        ("INBOX", True), ("INBOX/Lists", False)]
    assert (account.path / ".INBOX.Lists").is_dir()


def test_folder_of_unknown_or_invalid_name_is_nonexistent(account: Account) -> None:
    for name in ("Nope", "..", ""):
        with pytest.raises(StoreError) as exc:
            account.folder(name)
        assert kind(exc) == "nonexistent"


def test_delete_refuses_inbox_missing_and_parents(account: Account) -> None:
    account.create("A/B")
    for name, why in (("INBOX", "inbox"), ("Missing", "nonexistent"), ("A", "has_children")):
        with pytest.raises(StoreError) as exc:
            account.delete(name)
        assert kind(exc) == why
    account.delete("A/B")
    account.delete("A")
    assert [f.name for f in account.folders()] == ["INBOX"]
    assert [d for d in os.listdir(account.path / "tmp")] == []


def test_rename_moves_inferiors_and_keeps_their_uids(account: Account) -> None:
    account.create("Old/Child")
    child = account.folder("Old/Child")
    child.append(b"kept")
    uidvalidity = child.uidvalidity
    account.rename("Old", "New/Name")
    assert [f.name for f in account.folders()] == ["INBOX", "New", "New/Name", "New/Name/Child"]
    moved = account.folder("New/Name/Child")
    moved.sync()
    assert moved.uidvalidity == uidvalidity
    assert (uids(moved), moved.read(1)) == ([1], b"kept")
    with pytest.raises(StoreError):
        child.sync()


def test_rename_refusals(account: Account) -> None:
    account.create("A")
    account.create("B")
    cases = (("Missing", "C", "nonexistent"), ("A", "B", "exists"), ("A", "INBOX", "exists"),
             ("A", "A/Sub", "invalid"), ("A", "bad/", "invalid"))
    for old, new, why in cases:
        with pytest.raises(StoreError) as exc:
            account.rename(old, new)
        assert kind(exc) == why, (old, new)


def test_renaming_inbox_moves_its_messages_and_leaves_it_empty(account: Account,
                                                               deliver: Deliver) -> None:
    deliver(b"a")
    deliver(b"b")
    account.create("INBOX/Child")
    inbox = account.folder("INBOX")
    inbox.sync()
    inbox.store([2], {"\\Flagged", "$Keep"}, "+")
    account.rename("INBOX", "Old Mail")
    assert [f.name for f in account.folders()] == ["INBOX", "INBOX/Child", "Old Mail"]
    old = account.folder("Old Mail")
    old.sync()
    assert flags(old) == {1: frozenset(), 2: {"\\Flagged", "$Keep"}}
    assert [old.read(1), old.read(2)] == [b"a", b"b"]
    assert inbox.sync().expunged == [1, 2]
    assert account.folder("INBOX").status()["MESSAGES"] == 0


# ---- subscriptions ---------------------------------------------------------------------------


def test_subscribe_and_unsubscribe(account: Account) -> None:
    account.create("Lists")
    account.subscribe("Lists", True)
    account.subscribe("inbox", True)
    assert [(f.name, f.subscribed) for f in account.folders()] == [
        ("INBOX", True), ("Lists", True)]
    account.subscribe("Lists", False)
    assert account.subscriptions() == ["INBOX"]


def test_subscriptions_may_name_missing_mailboxes_and_survive_delete(account: Account) -> None:
    account.subscribe("Someday", True)
    account.create("Gone")
    account.subscribe("Gone", True)
    account.delete("Gone")  # RFC 3501 §6.3.6: the server must not drop it by itself
    assert account.subscriptions() == ["Gone", "Someday"]
    with pytest.raises(StoreError) as exc:
        account.subscribe("bad/", True)
    assert kind(exc) == "invalid"


def test_subscriptions_follow_a_rename_and_survive_a_lost_index(account: Account) -> None:
    account.create("P/Q")
    account.subscribe("P", True)
    account.subscribe("P/Q", True)
    account.rename("P", "R")
    assert account.subscriptions() == ["R", "R/Q"]
    shutil.rmtree(account.path / INDEX_DIR, ignore_errors=True)
    assert account.subscriptions() == ["R", "R/Q"]


# ---- POP3 maildrop lock ----------------------------------------------------------------------


def test_pop3_lock_excludes_a_second_session(account: Account) -> None:
    with account.lock_pop3() as first:
        with account.lock_pop3() as second:
            assert (first, second) == (True, False)
    with account.lock_pop3() as again:
        assert again is True


POP3_LOCK_HOLDER = """
    import sys, time
    from pathlib import Path
    from relay.mda.store import MailStore
    store = MailStore(Path(sys.argv[1]))
    with store.account(sys.argv[2]).lock_pop3() as held:
        print(held, flush=True)
        if held:
            sys.stdin.readline()
"""


def test_pop3_lock_excludes_another_process(mail_root: Path, account: Account) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(POP3_LOCK_HOLDER), str(mail_root), ADDRESS],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        with account.lock_pop3() as held:
            assert held is False
    finally:
        holder.communicate("done\n", timeout=30)
    with account.lock_pop3() as held:
        assert held is True


# ---- other processes -------------------------------------------------------------------------


DELIVERER = """
    import sys, time
    from pathlib import Path
    from relay.mda.maildir import MaildirStore
    store = MaildirStore(Path(sys.argv[1]))
    for i in range(int(sys.argv[3])):
        store.deliver(sys.argv[2], f"message {i}".encode())
        time.sleep(0.002)
"""


def test_deliveries_from_another_process_while_syncing_get_uids_in_arrival_order(
        mail_root: Path, account: Account) -> None:
    inbox = account.folder("INBOX")
    inbox.sync()
    count = 40
    proc = run_python(DELIVERER, str(mail_root), ADDRESS, str(count), wait=False)
    deadline = time.monotonic() + 30
    while len(inbox.messages()) < count and time.monotonic() < deadline:
        inbox.sync()
        time.sleep(0.005)
    proc.wait(30)
    assert proc.returncode == 0
    assert uids(inbox) == list(range(1, count + 1))
    assert [inbox.read(u) for u in uids(inbox)] == [f"message {i}".encode()
                                                    for i in range(count)]


APPENDER = """
    import sys
    from pathlib import Path
    from relay.mda.store import MailStore
    store = MailStore(Path(sys.argv[1]))
    inbox = store.account(sys.argv[2]).folder("INBOX")
    for i in range(int(sys.argv[3])):
        uid = inbox.append(f"child {i}".encode(), {"\\\\Seen"})
        inbox.sync()
        if inbox.messages():
            inbox.store([inbox.messages()[-1].uid], {"$child"}, "+")
        print(uid, flush=True)
    store.close()
"""


def test_two_processes_appending_and_syncing_never_share_a_uid(
        mail_root: Path, account: Account, deliver: Deliver) -> None:
    count = 25
    proc = run_python(APPENDER, str(mail_root), ADDRESS, str(count), wait=False)
    inbox = account.folder("INBOX")
    mine = []
    for i in range(count):
        mine.append(inbox.append(f"parent {i}".encode()))
        deliver(f"delivered {i}".encode())
        inbox.sync()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    theirs = [int(line) for line in out.split()]
    assert len(set(mine) | set(theirs)) == 2 * count
    assert mine == sorted(mine) and theirs == sorted(theirs)
    inbox.sync()
    bodies = {inbox.read(m.uid) for m in inbox.messages()}
    assert len(inbox.messages()) == 3 * count
    assert bodies == ({f"parent {i}".encode() for i in range(count)}
                      | {f"child {i}".encode() for i in range(count)}
                      | {f"delivered {i}".encode() for i in range(count)})


# ---- stateful: the store against a dict model ----------------------------------------------

FLAG = st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft",
                        "$Forwarded", "$Label1", "Work"])
LETTER_FLAGS = frozenset(maildir.LETTER_OF_FLAG)


class MailboxAgainstDict(RuleBasedStateMachine):
    """Two sessions, local delivery and a mutt-like tool on one INBOX, in any order, with
    restarts. Invariants: UIDs strictly increasing, never reused within the UIDVALIDITY;
    each view shows exactly what the model says it should; every message's bytes intact."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="relay-mda-"))
        self.delivery = MaildirStore(self.dir)
        self._open()
        self.uidvalidity = self.main.uidvalidity
        self.model: dict[int, frozenset[str]] = {}  # the mailbox now: uid -> flags
        self.bodies: dict[int, bytes] = {}  # every uid ever numbered
        self.seen: dict[int, frozenset[str]] = {}  # what `main` shows (moves at its sync)
        self.pending: list[bytes] = []  # delivered; numbered by the next scan
        self.archive: dict[int, tuple[bytes, frozenset[str]]] = {}

    def _open(self) -> None:
        self.store = MailStore(self.dir)
        account = self.store.account(ADDRESS)
        if not (account.path / ".Archive").exists():
            account.create("Archive")
        self.main = account.folder("INBOX")
        self.other = account.folder("INBOX")

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _number(self, uid: int, body: bytes) -> None:
        # Deliveries are numbered by whichever scan runs first (a STORE's, an EXPUNGE's),
        # so the model learns their UIDs late: it can check reuse, not order, here.
        assert uid not in self.bodies
        self.bodies[uid] = body

    def _choose(self, data: st.DataObject, pool: Iterable[int]) -> list[int]:
        return sorted(data.draw(st.sets(st.sampled_from(sorted(pool)), min_size=1)))

    @staticmethod
    def _apply(old: frozenset[str], flags: set[str], mode: str) -> frozenset[str]:
        return old | flags if mode == "+" else old - flags if mode == "-" else frozenset(flags)

    # ---- the selected session -------------------------------------------------------------

    @rule(body=st.binary(max_size=200), flags=st.sets(FLAG, max_size=3))
    def append(self, body: bytes, flags: set[str]) -> None:
        uid = self.main.append(body, flags)
        assert not self.bodies or uid > max(self.bodies)  # above every UID known so far
        self.bodies[uid] = body
        self.model[uid] = frozenset(flags)

    @precondition(lambda self: self.seen)
    @rule(data=st.data(), flags=st.sets(FLAG, max_size=3), mode=st.sampled_from("+-="))
    def store_flags(self, data: st.DataObject, flags: set[str], mode: str) -> None:
        chosen = self._choose(data, self.seen)
        expect = {}
        for uid in chosen:
            if uid in self.model:
                new = self._apply(self.model[uid], flags, mode)
                if new != self.model[uid]:
                    expect[uid] = self.seen[uid] = self.model[uid] = new
        assert {m.uid: m.flags for m in self.main.store(chosen, flags, mode)} == expect

    @rule(data=st.data(), subset=st.booleans())
    def expunge(self, data: st.DataObject, subset: bool) -> None:
        chosen = self._choose(data, self.seen) if subset and self.seen else None
        pool = self.seen if chosen is None else chosen
        expect = sorted(u for u in pool if "\\Deleted" in self.model.get(u, ()))
        assert self.main.expunge(chosen) == expect
        for uid in expect:
            del self.model[uid], self.seen[uid]

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def move_to_archive(self, data: st.DataObject) -> None:
        chosen = self._choose(data, self.seen)
        pairs = self.main.move(chosen, "Archive")
        assert [src for src, _ in pairs] == [u for u in chosen if u in self.model]
        for src, dst in pairs:
            assert dst not in self.archive and all(dst > u for u in self.archive)
            self.archive[dst] = (self.bodies[src], self.model.pop(src))
            del self.seen[src]

    @rule()
    def sync(self) -> None:
        changes = self.main.sync()
        added = [m.uid for m in changes.added]
        fresh = [u for u in added if u not in self.model]
        assert len(fresh) == len(self.pending) and fresh == sorted(fresh)
        for uid, body in zip(fresh, self.pending, strict=True):
            self._number(uid, body)
            self.model[uid] = frozenset()
        self.pending.clear()
        assert added == sorted(set(self.model) - set(self.seen))
        assert changes.expunged == sorted(set(self.seen) - set(self.model))
        changed = {m.uid for m in changes.flags}
        differ = {u for u in self.seen if u in self.model and self.seen[u] != self.model[u]}
        assert differ <= changed <= set(self.seen) & set(self.model)
        self.seen = dict(self.model)

    @rule()
    def restart(self) -> None:
        self.store.close()
        self._open()
        assert self.main.uidvalidity == self.uidvalidity
        self.seen = {}
        self.sync()

    # ---- everyone else ------------------------------------------------------------------------

    @rule(body=st.binary(max_size=200))
    def deliver(self, body: bytes) -> None:
        self.delivery.deliver(ADDRESS, body)
        self.pending.append(body)

    @precondition(lambda self: not self.pending and self.model)
    @rule(data=st.data(), flags=st.sets(FLAG, max_size=3), mode=st.sampled_from("+-="))
    def other_session_stores(self, data: st.DataObject, flags: set[str], mode: str) -> None:
        self.other.sync()
        for uid in self._choose(data, self.model):
            self.model[uid] = self._apply(self.model[uid], flags, mode)
            self.other.store([uid], flags, mode)

    @precondition(lambda self: not self.pending)
    @rule()
    def other_session_expunges(self) -> None:
        self.other.sync()
        expect = sorted(u for u, f in self.model.items() if "\\Deleted" in f)
        assert self.other.expunge() == expect
        for uid in expect:
            del self.model[uid]

    @precondition(lambda self: not self.pending and self.model)
    @rule(data=st.data(), letters=st.sets(st.sampled_from("DFPRST")))
    def mutt_renames(self, data: st.DataObject, letters: set[str]) -> None:
        self.other.sync()
        [uid] = data.draw(st.sampled_from(sorted(self.model))),
        path = self.other.path(uid)
        os.rename(path, path.with_name(maildir.split_info(path.name)[0] + ":2,"
                                       + "".join(sorted(letters))))
        self.model[uid] = ((self.model[uid] - LETTER_FLAGS)
                           | {maildir.FLAG_OF_LETTER[c] for c in letters})

    @precondition(lambda self: not self.pending)
    @rule()
    def other_session_agrees(self) -> None:
        self.other.sync()
        assert {m.uid: m.flags for m in self.other.messages()} == self.model

    # ---- invariants ---------------------------------------------------------------------------

    @invariant()
    def main_view_matches_model(self) -> None:
        assert {m.uid: m.flags for m in self.main.messages()} == self.seen
        assert [m.uid for m in self.main.messages()] == sorted(self.seen)
        for uid in self.seen:
            if uid in self.model:
                assert self.main.read(uid) == self.bodies[uid]
            else:
                with pytest.raises(KeyError):
                    self.main.read(uid)

    @invariant()
    def shared_view_matches_a_full_rebuild(self) -> None:
        # Views are brought up to date from the index's changes since their MODSEQ; they
        # must say exactly what reading the whole index says.
        account = self.store.account(ADDRESS)
        view = latest_view(account.index, INBOX_KEY, account.path)
        with account.index.reading() as r:
            st = r.folder(INBOX_KEY)
            assert st is not None
            full = View.build(st, r.entries(st.uidvalidity))
        assert view.uids == full.uids and view.msgs == full.msgs
        assert sorted(zip(view.mod_seqs, view.mod_uids)) == sorted(zip(full.mod_seqs,
                                                                       full.mod_uids))
        assert list(view.mod_seqs) == sorted(view.mod_seqs)
        assert full.keywords <= view.keywords
        assert view.first_unseen() == full.first_unseen()
        assert (view.uidnext, view.highestmodseq) == (full.uidnext, full.highestmodseq)

    @invariant()
    def archive_matches_model(self) -> None:
        archive = self.store.account(ADDRESS).folder("Archive")
        archive.sync()
        assert {m.uid: (archive.read(m.uid), m.flags) for m in archive.messages()} == self.archive


MailboxAgainstDict.TestCase.settings = settings(
    max_examples=100, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_mailbox_against_dict = MailboxAgainstDict.TestCase
