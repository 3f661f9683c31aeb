"""relay.delivery.bounce: DSN composition (RFC 3464 / 6522 / 3834) and bounce suppression.

Every DSN is parsed back with the stdlib `email` package, the way a receiving MUA would.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from relay.delivery.bounce import build_dsn, is_bounce
from relay.queue.model import Outcome

MTA = "mx.example.com"
SENDER = "alice@example.org"
QID = "18C2F3A4B5D6E01000A2"
ARRIVAL = 1_700_000_000.0
NOW = ARRIVAL + 4 * 3600
BODY_MARKER = b"THE-ORIGINAL-BODY-MUST-NOT-BE-RETURNED"
ORIGINAL = (
    b"Received: from client.example.org (client.example.org [192.0.2.7])\r\n"
    b"\tby mx.example.com with ESMTPS id 18C2F3A4B5D6E01000A2\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net, carol@example.net\r\n"
    b"Subject: quarterly report\r\n"
    b"Message-ID: <abc@example.org>\r\n"
    b"\r\n"
    + BODY_MARKER
    + b"\r\nsecond body line\r\n"
)

BOB_FAILED = Outcome(
    "bob@example.net", "failed", "5.1.1", "smtp; 550 5.1.1 <bob@example.net>: no such user",
    "dns; mx1.example.net",
)
CAROL_DELAYED = Outcome("carol@example.net", "delayed", "4.4.1", "x-relay; connection refused")
DAVE_DELIVERED = Outcome(
    "dave@example.net", "delivered", "2.0.0", "smtp; 250 2.0.0 Ok: queued as 4Xyz",
    "dns; mx2.example.net",
)

RECIPIENT_FIELDS = {
    "Final-Recipient", "Action", "Status", "Remote-MTA", "Diagnostic-Code", "Will-Retry-Until",
}
TOP_FIELDS = [
    "From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "MIME-Version",
    "Content-Type",
]


def dsn(outcomes: list[Outcome] | None = None, **kw: object) -> bytes:
    args: dict[str, object] = dict(
        reporting_mta=MTA, original_sender=SENDER, queue_id=QID, arrival=ARRIVAL, now=NOW,
        outcomes=[BOB_FAILED] if outcomes is None else outcomes, original=ORIGINAL,
    )
    args.update(kw)
    return build_dsn(**args)  # type: ignore[arg-type]


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def parts(raw: bytes) -> list[email.message.Message]:
    return list(parse(raw).iter_parts())


def status_groups(raw: bytes, policy: email.policy.Policy = email.policy.default) -> list:
    """[per-message fields, per-recipient group, ...] of the delivery-status part."""
    msg = email.message_from_bytes(raw, policy=policy)
    report = msg.get_payload()[1]
    assert report.get_content_type() == "message/delivery-status"
    return report.get_payload()


def raw_field(group: email.message.Message, name: str) -> str | None:
    """A field exactly as sent, unfolded (no RFC 2047 decoding, unlike policy.default)."""
    value = group.get(name)
    return None if value is None else re.sub(r"\r?\n", "", str(value))


def decode_utf8_xtext(value: str) -> str:
    """RFC 6533 §3 EmbeddedUnicodeChar: \\x{HHHH} -> the character."""
    return re.sub(r"\\x\{([0-9A-F]{2,6})\}", lambda m: chr(int(m.group(1), 16)), value)


def assert_wire_format(raw: bytes) -> None:
    """CRLF only (no bare CR or LF) and RFC 5322 §2.1.1's 998-octet line limit."""
    assert raw.endswith(b"\r\n")
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", raw) is None
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998


# -- structure ----------------------------------------------------------------------------


def test_dsn_is_multipart_report_of_type_delivery_status():
    msg = parse(dsn())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg.get_boundary()
    assert not msg.defects


def test_dsn_has_exactly_three_parts_in_rfc6522_order():
    assert [p.get_content_type() for p in parts(dsn())] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers",
    ]


def test_dsn_uses_crlf_and_short_lines():
    assert_wire_format(dsn([BOB_FAILED, CAROL_DELAYED, DAVE_DELIVERED]))


def test_same_inputs_give_identical_bytes():
    assert dsn() == dsn()


# -- top-level header -------------------------------------------------------------------


def test_header_fields_from_to_subject_auto_submitted():
    msg = parse(dsn())
    assert msg["From"] == f"Mail Delivery System <MAILER-DAEMON@{MTA}>"
    assert msg["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{MTA}"
    assert msg["To"].addresses[0].addr_spec == SENDER
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"  # RFC 3834 §5
    assert msg["MIME-Version"] == "1.0"


def test_header_has_each_field_once_in_order():
    msg = parse(dsn())
    assert [k for k in msg.keys() if k != "Content-Transfer-Encoding"] == TOP_FIELDS


def test_date_is_now():
    assert parse(dsn())["Date"].datetime.timestamp() == NOW


def test_message_id_is_at_reporting_mta_by_default():
    assert str(parse(dsn())["Message-ID"]).endswith(f"@{MTA}>")


def test_message_id_domain_can_be_overridden():
    mid = str(parse(dsn(message_id_domain="example.com"))["Message-ID"])
    assert re.fullmatch(r"<[^@<>]+@example\.com>", mid)


def test_message_id_differs_by_queue_id_time_and_kind():
    ids = {
        str(parse(raw)["Message-ID"])
        for raw in (
            dsn(), dsn(queue_id="OTHER"), dsn(now=NOW + 1), dsn(now=NOW + 0.000001),
            dsn([CAROL_DELAYED], kind="delay"),
        )
    }
    assert len(ids) == 5


def test_ascii_dsn_has_no_8bit_transfer_encoding():
    raw = dsn()
    assert raw.isascii()
    assert "Content-Transfer-Encoding" not in parse(raw)


# -- human-readable part --------------------------------------------------------------------


def test_text_part_explains_failure_postfix_style():
    text = parts(dsn())[0].get_content()
    assert f"This is the mail system at host {MTA}." in text
    assert "your message could not be delivered" in " ".join(text.split())
    assert "<bob@example.net>: host mx1.example.net said: 550 5.1.1" in " ".join(text.split())


def test_text_part_names_every_recipient():
    raw = dsn([BOB_FAILED, CAROL_DELAYED, DAVE_DELIVERED])
    text = " ".join(parts(raw)[0].get_content().split())
    assert "<bob@example.net>:" in text
    assert "<carol@example.net>: connection refused" in text
    assert "<dave@example.net>:" in text


# -- delivery-status part (RFC 3464) --------------------------------------------------------


def test_per_message_fields():
    fields = status_groups(dsn())[0]
    assert fields["Reporting-MTA"] == f"dns; {MTA}"
    assert fields["X-Relay-Queue-ID"] == QID
    assert parsedate_to_datetime(fields["Arrival-Date"]).timestamp() == ARRIVAL
    assert fields["X-Relay-Sender"] == f"rfc822; {SENDER}"


def test_recipient_group_matches_outcome():
    group = status_groups(dsn())[1]
    assert group["Final-Recipient"] == "rfc822; bob@example.net"
    assert group["Action"] == "failed"
    assert group["Status"] == "5.1.1"
    assert group["Remote-MTA"] == "dns; mx1.example.net"
    assert group["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: no such user"


def test_remote_mta_absent_when_outcome_has_none():
    group = status_groups(dsn([CAROL_DELAYED]))[1]
    assert "Remote-MTA" not in group


def test_diagnostic_code_absent_when_outcome_has_none():
    group = status_groups(dsn([Outcome("bob@example.net", "failed", "5.0.0", "")]))[1]
    assert "Diagnostic-Code" not in group


def test_our_own_diagnostic_keeps_its_x_relay_type():
    group = status_groups(dsn([CAROL_DELAYED]))[1]
    assert group["Diagnostic-Code"] == "x-relay; connection refused"


def test_untyped_diagnostic_is_given_x_relay_type():
    outcome = Outcome("bob@example.net", "failed", "5.4.4", "Host or domain name not found")
    group = status_groups(dsn([outcome]))[1]
    assert group["Diagnostic-Code"] == "x-relay; Host or domain name not found"


def test_unregistered_diagnostic_type_is_wrapped_as_x_relay():
    outcome = Outcome("bob@example.net", "failed", "5.0.0", "bogus; whatever")
    group = status_groups(dsn([outcome]))[1]
    assert group["Diagnostic-Code"] == "x-relay; bogus; whatever"


def test_bare_remote_host_gets_dns_type():
    outcome = Outcome("bob@example.net", "failed", "5.7.1", "smtp; 554 5.7.1 no", "mx9.example.net")
    assert status_groups(dsn([outcome]))[1]["Remote-MTA"] == "dns; mx9.example.net"


def test_several_recipients_with_mixed_outcomes_in_order():
    outcomes = [BOB_FAILED, CAROL_DELAYED, DAVE_DELIVERED]
    groups = status_groups(dsn(outcomes))
    assert len(groups) == 1 + len(outcomes)
    for outcome, group in zip(outcomes, groups[1:]):
        assert group["Final-Recipient"] == f"rfc822; {outcome.recipient}"
        assert group["Action"] == outcome.action
        assert group["Status"] == outcome.status
        assert set(group.keys()) <= RECIPIENT_FIELDS
    assert groups[3]["Remote-MTA"] == "dns; mx2.example.net"


def test_invalid_status_falls_back_to_the_action_class():
    outcomes = [
        Outcome("a@example.net", "failed", "550", "smtp; 550 no"),
        Outcome("b@example.net", "delayed", "4.4", "x-relay; timeout"),
        Outcome("c@example.net", "delivered", "", ""),
    ]
    assert [g["Status"] for g in status_groups(dsn(outcomes))[1:]] == ["5.0.0", "4.0.0", "2.0.0"]


def test_long_diagnostic_is_folded_and_unfolds_to_the_original():
    reply = "smtp; 550 5.7.1 " + " ".join(f"word{i}" for i in range(400))
    raw = dsn([Outcome("bob@example.net", "failed", "5.7.1", reply)])
    assert_wire_format(raw)
    assert status_groups(raw)[1]["Diagnostic-Code"] == reply


def test_unbroken_huge_diagnostic_still_respects_line_limit():
    raw = dsn([Outcome("bob@example.net", "failed", "5.7.1", "smtp; 550 " + "x" * 5000)])
    assert_wire_format(raw)
    assert status_groups(raw)[1]["Action"] == "failed"


def test_delivery_status_part_is_7bit():
    outcome = Outcome(
        "bob@example.net", "failed", "5.1.1", "smtp; 550 Empfänger unbekannt", "dns; mx",
    )
    raw = dsn([outcome])
    report = raw.split(b"message/delivery-status\r\n", 1)[1].split(b"\r\n--=_", 1)[0]
    assert report.isascii()
    assert decode_utf8_xtext(status_groups(raw)[1]["Diagnostic-Code"]) == (
        "smtp; 550 Empfänger unbekannt"
    )


# -- header injection ---------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    "smtp; 550 no\r\nX-Injected: yes",
    "smtp; 550 no\nX-Injected: yes",
    "smtp; 550 no\rX-Injected: yes",
    "smtp; 550 no\r\n\r\nFinal-Recipient: rfc822; evil@example.net",
    "x-relay; a\r\n--=_relay_boundary\r\nContent-Type: text/html\r\n\r\n<b>hi</b>",
])
def test_line_breaks_in_diagnostic_create_no_field(payload):
    outcome = Outcome("bob@example.net", "failed", "5.1.1", payload, "dns; mx\r\nX-Host: 1")
    raw = dsn([outcome])
    assert_wire_format(raw)
    assert len(parts(raw)) == 3
    groups = status_groups(raw)
    assert len(groups) == 2
    assert set(groups[1].keys()) == {
        "Final-Recipient", "Action", "Status", "Remote-MTA", "Diagnostic-Code",
    }
    assert groups[1]["Diagnostic-Code"] == " ".join(payload.split())
    assert groups[1]["Remote-MTA"] == "dns; mx X-Host: 1"


def test_line_breaks_in_sender_and_recipient_create_no_field():
    raw = dsn(
        [Outcome("bob@example.net\r\nBcc: victim@example.com", "failed", "5.1.1", "x")],
        original_sender="alice@example.org\r\nBcc: victim@example.com",
    )
    assert_wire_format(raw)
    assert "Bcc" not in parse(raw)
    assert set(status_groups(raw)[1].keys()) <= RECIPIENT_FIELDS


def test_boundary_is_changed_when_the_content_contains_it():
    first = parse(dsn()).get_boundary()
    original = b"Subject: --" + first.encode() + b"\r\n--" + first.encode() + b"--\r\n\r\nbody\r\n"
    raw = dsn(original=original)
    assert parse(raw).get_boundary() != first
    assert [p.get_content_type() for p in parts(raw)][-1] == "text/rfc822-headers"
    assert parts(raw)[2].get_content().startswith("Subject: --" + first)


# -- returned header section (RFC 6522 §3) ------------------------------------------------


def test_original_headers_returned_and_body_withheld():
    raw = dsn()
    returned = parts(raw)[2].get_payload(decode=True)
    assert returned == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert BODY_MARKER not in raw
    assert b"second body line" not in raw


def test_bare_lf_original_headers_are_returned_with_crlf():
    raw = dsn(original=b"From: a@example.org\nSubject: lf\n\nbody " + BODY_MARKER + b"\n")
    assert_wire_format(raw)
    assert BODY_MARKER not in raw
    assert "Subject: lf" in parts(raw)[2].get_content()


def test_original_without_body_is_all_header():
    raw = dsn(original=b"From: a@example.org\r\nSubject: no body\r\n")
    assert "Subject: no body" in parts(raw)[2].get_content()


def test_original_with_empty_header_section_returns_empty_part():
    raw = dsn(original=b"\r\n" + BODY_MARKER + b"\r\n")
    assert BODY_MARKER not in raw
    assert parts(raw)[2].get_content() == ""


def test_non_ascii_original_headers_are_kept_8bit():
    header = "Subject: Grüße aus Köln".encode()
    raw = dsn(original=header + b"\r\n\r\nbody\r\n")
    assert header in raw  # unchanged octets
    assert parts(raw)[2]["Content-Transfer-Encoding"] == "8bit"
    assert parse(raw)["Content-Transfer-Encoding"] == "8bit"


def test_over_long_original_header_line_is_folded():
    long_value = b" ".join(b"tok%d" % i for i in range(600))
    raw = dsn(original=b"X-Long: " + long_value + b"\r\nX-Solid: " + b"y" * 3000 + b"\r\n\r\nb\r\n")
    assert_wire_format(raw)
    returned = parts(raw)[2].get_content()
    assert returned.count("X-Long:") == 1 and returned.count("X-Solid:") == 1


# -- delay notices ----------------------------------------------------------------------------


def test_delay_notice_subject_action_and_retry_time():
    retry_until = ARRIVAL + 5 * 86400
    raw = dsn([CAROL_DELAYED], kind="delay", retry_until=retry_until)
    msg = parse(raw)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    group = status_groups(raw)[1]
    assert group["Action"] == "delayed"
    assert group["Status"] == "4.4.1"
    assert parsedate_to_datetime(group["Will-Retry-Until"]).timestamp() == retry_until
    text = " ".join(parts(raw)[0].get_content().split())
    assert "THIS IS A WARNING ONLY" in text
    assert "will keep trying until" in text
    assert "could not be delivered for 4.0 hours" in text


def test_delay_notice_without_retry_time_has_no_will_retry_until():
    group = status_groups(dsn([CAROL_DELAYED], kind="delay"))[1]
    assert group["Action"] == "delayed"
    assert "Will-Retry-Until" not in group


# -- SMTPUTF8 (RFC 6533) --------------------------------------------------------------------


def test_non_ascii_recipient_uses_utf8_address_type_in_xtext_form():
    outcome = Outcome("jürgen+tag@bücher.example", "failed", "5.1.1", "smtp; 550 5.1.1 unknown")
    raw = dsn([outcome])
    final = status_groups(raw)[1]["Final-Recipient"]
    assert final.startswith("utf-8; ")
    assert final.isascii()
    assert "\\x{2B}" in final  # "+" is not a QCHAR
    assert decode_utf8_xtext(final.removeprefix("utf-8; ")) == outcome.recipient
    assert "<jürgen+tag@bücher.example>" in parts(raw)[0].get_content()
    assert parts(raw)[0].get_content_charset() == "utf-8"


def test_non_ascii_sender_is_addressed_in_utf8():
    raw = dsn(original_sender="José@example.org")
    # RFC 6532 UTF-8 header (the stdlib parser reads 8-bit headers as surrogates: check bytes).
    assert "To: <José@example.org>\r\n".encode() in raw
    assert status_groups(raw)[0]["X-Relay-Sender"] == "utf-8; Jos\\x{E9}@example.org"


# -- double-bounce suppression and argument checks -----------------------------------------


@pytest.mark.parametrize("sender, expected", [
    ("", True), ("<>", True), ("alice@example.org", False), ("MAILER-DAEMON@example.org", False),
])
def test_is_bounce_only_for_the_null_reverse_path(sender, expected):
    assert is_bounce(sender) is expected


def test_a_bounce_is_never_bounced():
    with pytest.raises(ValueError, match="never bounce a bounce"):
        dsn(original_sender="")


@pytest.mark.parametrize("kw", [
    {"kind": "warning"},
    {"outcomes": []},
    {"outcomes": [Outcome("a@example.net", "bounced", "5.0.0", "")]},
    {"reporting_mta": "mx example.com"},
    {"reporting_mta": "mx.example.com\r\nBcc: x@example.com"},
    {"message_id_domain": "bad>domain"},
])
def test_invalid_arguments_are_rejected(kw):
    with pytest.raises(ValueError):
        dsn(**kw)


# -- property: whatever the outcomes, the DSN parses and carries exactly them -------------

hostile_text = st.one_of(
    st.text(max_size=120),
    st.text(alphabet="\r\n\t :;-abcXY=?<>\\\x00\x7f\u00e9\u4e2d", max_size=120),
    st.sampled_from([
        "\r\nX-Injected: yes", "\nBcc: victim@example.com", "\r\n\r\nAction: delivered",
        "\r\n--=_relay_", "\r\n.\r\n", "=?utf-8?q?hi?=",
    ]),
)
diagnostics = st.builds(
    lambda prefix, text: prefix + text,
    st.sampled_from(["", "smtp; ", "x-relay; ", "X-Other; ", "bogus; ", "smtp;"]),
    hostile_text,
)
addresses = st.one_of(
    st.emails().map(str),
    st.builds(lambda l, d: f"{l}@{d}", st.text(min_size=1, max_size=30), st.text(max_size=30)),
)
outcomes_st = st.builds(
    Outcome,
    recipient=addresses,
    action=st.sampled_from(["failed", "delayed", "delivered", "relayed", "expanded"]),
    status=st.one_of(
        st.from_regex(r"\A[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z"), st.text(max_size=8),
    ),
    diagnostic=diagnostics,
    remote_mta=st.one_of(st.just(""), st.just("dns; mx1.example.net"), hostile_text),
)
originals = st.builds(
    lambda head, sep, body: head + sep + body,
    st.binary(max_size=400) | st.text(max_size=200).map(lambda s: s.encode("utf-8")),
    st.sampled_from([b"\r\n\r\n", b"\n\n", b""]),
    st.just(BODY_MARKER),
)


def _normalised(value: str) -> str:
    return re.sub(r"[\x00-\x20\x7f]+", " ", value).strip()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    outcomes=st.lists(outcomes_st, min_size=1, max_size=5),
    original=originals,
    kind=st.sampled_from(["failure", "delay"]),
    sender=addresses.filter(lambda s: s.strip() not in ("", "<>")),
    retry=st.none() | st.floats(ARRIVAL, ARRIVAL + 10 * 86400),
)
@example(
    outcomes=[Outcome("a@b", "failed", "5.0.0", "smtp; 550 x\r\nX-Injected: 1", "dns; h\r\nX: y")],
    original=b"Subject: x\r\n\r\n" + BODY_MARKER, kind="failure", sender="s@example.org",
    retry=None,
)
def test_any_outcomes_give_a_parseable_dsn(outcomes, original, kind, sender, retry):
    raw = build_dsn(
        reporting_mta=MTA, original_sender=sender, queue_id=QID, arrival=ARRIVAL, now=NOW,
        outcomes=outcomes, original=original, kind=kind, retry_until=retry,
    )
    assert_wire_format(raw)

    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [k for k in msg.keys() if k != "Content-Transfer-Encoding"] == TOP_FIELDS
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers",
    ]

    groups = status_groups(raw, email.policy.compat32)
    assert len(groups) == 1 + len(outcomes)
    assert set(groups[0].keys()) == {
        "Reporting-MTA", "Arrival-Date", "X-Relay-Queue-ID", "X-Relay-Sender",
    }
    for outcome, group in zip(outcomes, groups[1:]):
        assert set(group.keys()) <= RECIPIENT_FIELDS
        assert [k for k in group.keys() if k in ("Final-Recipient", "Action", "Status")] == [
            "Final-Recipient", "Action", "Status",
        ]
        assert raw_field(group, "Action") == outcome.action
        status = raw_field(group, "Status")
        assert re.fullmatch(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", status)
        if re.fullmatch(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", outcome.status.strip()):
            assert status == outcome.status.strip()
        final = raw_field(group, "Final-Recipient")
        address = _normalised(outcome.recipient)
        if address.isascii():
            assert final == f"rfc822; {address}".rstrip()
        else:
            assert decode_utf8_xtext(final.removeprefix("utf-8; ")) == address
        assert ("Remote-MTA" in group) == bool(_normalised(outcome.remote_mta))
        assert ("Diagnostic-Code" in group) == bool(_normalised(outcome.diagnostic))

    header_end = re.search(rb"\r?\n\r?\n", original)
    if original.startswith((b"\r\n", b"\n")) or (
        header_end is not None and header_end.end() <= original.rindex(BODY_MARKER)
    ):
        assert BODY_MARKER not in raw
