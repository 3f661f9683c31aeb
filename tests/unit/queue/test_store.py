"""QueueStore in tmp_path: the durable record of every message we answered 250 for."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from relay.queue.model import Envelope, MessageState, QueueIdFactory, Recipient, RecipientState
from relay.queue.store import QueueFull, QueueStore

MiB = 1 << 20


def envelope(queue_id: str, size: int = 0, sender: str = "alice@example.org") -> Envelope:
    return Envelope(id=queue_id, sender=sender,
                    recipients=[Recipient("bob@example.test"), Recipient("carol@example.net")],
                    arrival=1_700_000_000.5, size=size, client="192.0.2.7")


# ---- enqueue / get / delete / envelopes / len --------------------------------------------------


def test_enqueued_message_is_returned_by_get(queue_store: QueueStore) -> None:
    env = envelope("A1", size=5)
    queue_store.enqueue([(env, b"hello")])
    assert queue_store.get("A1") == (env, b"hello")


def test_envelope_round_trips_every_field(queue_store: QueueStore) -> None:
    env = Envelope(
        id="A2", sender="", recipients=[
            Recipient("bob@example.test", RecipientState.DELIVERED),
            Recipient("josé@exämple.test", RecipientState.PENDING, "451 4.4.1 later"),
        ],
        arrival=1.25, size=7, smtputf8=True, client="2001:db8::1",
        state=MessageState.DEFERRED, attempts=3, next_attempt=99.5, last_error="timeout",
        extra={"k": "v"})
    queue_store.enqueue([(env, b"\x00\xffbody")])
    assert queue_store.get("A2") == (env, b"\x00\xffbody")


def test_get_of_unknown_id_is_none(queue_store: QueueStore) -> None:
    assert queue_store.get("NOPE") is None


def test_empty_body_is_kept(queue_store: QueueStore) -> None:
    queue_store.enqueue([(envelope("E"), b"")])
    assert queue_store.get("E") == (envelope("E"), b"")


def test_len_counts_messages(queue_store: QueueStore) -> None:
    assert len(queue_store) == 0
    queue_store.enqueue([(envelope(f"M{i}"), b"x") for i in range(3)])
    assert len(queue_store) == 3


def test_delete_removes_envelope_and_body(queue_store: QueueStore) -> None:
    queue_store.enqueue([(envelope("D1"), b"x"), (envelope("D2"), b"y")])
    assert queue_store.delete("D1") is True
    assert queue_store.get("D1") is None
    assert queue_store.get("D2") == (envelope("D2"), b"y")
    assert len(queue_store) == 1


def test_delete_of_unknown_id_is_false(queue_store: QueueStore) -> None:
    assert queue_store.delete("NOPE") is False


def test_envelopes_lists_every_message_in_id_order(queue_store: QueueStore) -> None:
    queue_store.enqueue([(envelope("C"), b"3"), (envelope("A"), b"1")])
    queue_store.enqueue([(envelope("B"), b"2")])
    assert [e.id for e in queue_store.envelopes()] == ["A", "B", "C"]


def test_update_replaces_the_envelope_and_keeps_the_body(queue_store: QueueStore) -> None:
    env = envelope("U")
    queue_store.enqueue([(env, b"body")])
    env.state = MessageState.HOLD
    env.attempts = 2
    queue_store.update(env)
    assert queue_store.get("U") == (env, b"body")
    assert queue_store.state_counts(now=1e9) == {"active": 0, "deferred": 0, "hold": 1}


def test_state_counts_read_the_schedule_not_the_envelopes(queue_store: QueueStore) -> None:
    now = 1_000_000.0
    due = [envelope(f"NEW{i}") for i in range(2)]  # next_attempt 0: due
    waiting = envelope("LATER")
    waiting.state, waiting.next_attempt = MessageState.DEFERRED, now + 60
    retry_due = envelope("RETRY")
    retry_due.state, retry_due.next_attempt = MessageState.DEFERRED, now - 1
    held = envelope("HELD")
    held.state = MessageState.HOLD
    queue_store.enqueue([(e, b"x") for e in [*due, waiting, retry_due, held]])
    # A deferred message whose retry time has come is active again (Postfix's qmgr moves
    # it to the active queue); one still waiting is deferred; a held one is neither.
    assert queue_store.state_counts(now) == {"active": 3, "deferred": 1, "hold": 1}
    assert queue_store.state_counts(now + 61) == {"active": 4, "deferred": 0, "hold": 1}
    queue_store.delete("LATER")
    assert queue_store.state_counts(now) == {"active": 3, "deferred": 0, "hold": 1}


def test_duplicate_id_is_refused_and_original_kept(queue_store: QueueStore) -> None:
    queue_store.enqueue([(envelope("DUP"), b"first")])
    with pytest.raises(KeyError):
        queue_store.enqueue([(envelope("DUP", sender="mallory@example.org"), b"second")])
    assert queue_store.get("DUP") == (envelope("DUP"), b"first")


def test_batch_with_a_duplicate_writes_nothing(queue_store: QueueStore) -> None:
    queue_store.enqueue([(envelope("OLD"), b"x")])
    with pytest.raises(KeyError):
        queue_store.enqueue([(envelope("NEW"), b"y"), (envelope("OLD"), b"z")])
    assert queue_store.get("NEW") is None
    assert len(queue_store) == 1


def test_messages_survive_reopening(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", map_size=MiB)
    store.enqueue([(envelope("P"), b"persist")])
    store.close()
    again = QueueStore(tmp_path / "q", map_size=MiB)
    try:
        assert again.get("P") == (envelope("P"), b"persist")
    finally:
        again.close()


def test_readonly_store_sees_committed_messages(tmp_path: Path) -> None:
    writer = QueueStore(tmp_path / "q", map_size=MiB)
    writer.enqueue([(envelope("R"), b"ro")])
    writer.close()
    reader = QueueStore(tmp_path / "q", map_size=MiB, readonly=True)
    try:
        assert reader.get("R") == (envelope("R"), b"ro")
        assert len(reader) == 1
    finally:
        reader.close()


# ---- map growth and QueueFull ------------------------------------------------------------------


def test_map_grows_to_fit_a_message_larger_than_the_map(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", map_size=MiB, max_map_size=64 * MiB)
    try:
        before = store.env.info()["map_size"]
        body = bytes(range(256)) * (3 * MiB // 256)
        store.enqueue([(envelope("BIG", size=len(body)), body)])
        assert store.get("BIG") == (envelope("BIG", size=len(body)), body)
        assert store.env.info()["map_size"] > before
        assert store.env.info()["map_size"] <= 64 * MiB
    finally:
        store.close()


def test_queue_full_at_max_map_size_keeps_committed_messages(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", map_size=MiB, max_map_size=2 * MiB)
    try:
        store.enqueue([(envelope("KEEP1"), b"one"), (envelope("KEEP2"), b"two")])
        with pytest.raises(QueueFull):
            store.enqueue([(envelope("HUGE"), b"h" * (3 * MiB))])
        assert store.get("HUGE") is None
        assert store.get("KEEP1") == (envelope("KEEP1"), b"one")
        assert store.get("KEEP2") == (envelope("KEEP2"), b"two")
        assert len(store) == 2
        store.enqueue([(envelope("AFTER"), b"small")])  # still usable
        assert store.get("AFTER") == (envelope("AFTER"), b"small")
    finally:
        store.close()


def test_queue_full_batch_writes_nothing(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q", map_size=MiB, max_map_size=MiB)
    try:
        with pytest.raises(QueueFull):
            store.enqueue([(envelope("S"), b"s"), (envelope("H"), b"h" * (2 * MiB))])
        assert store.get("S") is None
        assert len(store) == 0
    finally:
        store.close()


# ---- stateful: the store against a dict ---------------------------------------------------------


class QueueAgainstDict(RuleBasedStateMachine):
    """Enqueue, delete and reopen in any order; the store always equals the model."""

    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="relay-store-"))
        self.store = QueueStore(self.dir / "q", map_size=MiB, max_map_size=16 * MiB)
        self.model: dict[str, bytes] = {}
        self.next_id = 0

    def _new_id(self) -> str:
        self.next_id += 1
        return f"{self.next_id:08X}"

    @rule(target=ids, bodies=st.lists(st.binary(max_size=3000), min_size=1, max_size=4))
    def enqueue(self, bodies: list[bytes]):  # type: ignore[no-untyped-def]
        batch = [(envelope(self._new_id(), size=len(b)), b) for b in bodies]
        self.store.enqueue(batch)
        for env, body in batch:
            self.model[env.id] = body
        return batch[0][0].id

    @rule(queue_id=ids, body=st.binary(max_size=50))
    def enqueue_duplicate_is_refused(self, queue_id: str, body: bytes) -> None:
        # `ids` holds only live ids (delete consumes them); the invariant then proves
        # the refused batch, fresh message included, left no trace.
        with pytest.raises(KeyError):
            self.store.enqueue([(envelope(self._new_id()), b"fresh"), (envelope(queue_id), body)])

    @rule(queue_id=consumes(ids))
    def delete(self, queue_id: str) -> None:
        assert self.store.delete(queue_id) is True
        del self.model[queue_id]

    @rule()
    def delete_unknown(self) -> None:
        assert self.store.delete("FFFFFFFFFF") is False

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = QueueStore(self.dir / "q", map_size=MiB, max_map_size=16 * MiB)

    @invariant()
    def every_committed_id_present_once_with_its_body(self) -> None:
        listed = [e.id for e in self.store.envelopes()]
        assert sorted(listed) == sorted(self.model)
        assert len(listed) == len(set(listed)) == len(self.store)
        for queue_id, body in self.model.items():
            got = self.store.get(queue_id)
            assert got is not None and got[1] == body

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


QueueAgainstDict.TestCase.settings = settings(
    max_examples=60, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_store_matches_dict_model = QueueAgainstDict.TestCase


# ---- QueueIdFactory ------------------------------------------------------------------------------


def test_queue_ids_are_unique_and_sorted_in_creation_order() -> None:
    factory = QueueIdFactory(worker=3)
    ids = [factory.next() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert [i.encode() for i in ids] == sorted(i.encode() for i in ids)


def test_queue_ids_of_two_workers_never_collide() -> None:
    a, b = QueueIdFactory(worker=1), QueueIdFactory(worker=2)
    ids = [f.next() for _ in range(5000) for f in (a, b)]
    assert len(set(ids)) == len(ids)


def test_queue_id_is_20_uppercase_hex_digits_naming_the_worker() -> None:
    queue_id = QueueIdFactory(worker=0xAB).next()
    assert len(queue_id) == 20
    assert all(c in "0123456789ABCDEF" for c in queue_id)
    assert queue_id[13:15] == "AB"


@pytest.mark.parametrize("worker", [-1, 256])
def test_worker_index_out_of_range_is_refused(worker: int) -> None:
    with pytest.raises(ValueError):
        QueueIdFactory(worker)
