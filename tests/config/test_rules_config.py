"""The Rules block in the XML: loading into the model, and every check-config error
with its file, line and element."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from engage_listener.config.load import parse_config
from engage_listener.config.model import (
    AddTag,
    Config,
    Discard,
    MatchConfig,
    NoAcknowledgement,
    Quarantine,
    RuleConfig,
    SetInbox,
    SetPriority,
    SetProcess,
    Stop,
    describe,
)
from engage_listener.config.rules import PatternError, compile_pattern
from engage_listener.config.schema import schema_path
from engage_listener.errors import ConfigError, ConfigProblem
from tests.support.rules import ISSUE_EXAMPLE

FILE = Path("/etc/el/rules.xml")


def config_with(rules: str, kind: str = "ImapListener") -> bytes:
    """A file whose Rules block starts on line 3."""
    return (
        "<EngageIntegrationService>\n"
        f'<{kind} ID="A"><HostName>h</HostName><UserName>u</UserName><Password>p</Password>\n'
        f"{rules}</{kind}>\n</EngageIntegrationService>\n"
    ).encode()


def load(rules: str, kind: str = "ImapListener") -> Config:
    return parse_config(config_with(rules, kind), FILE)


def problems(rules: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load(rules)
    assert all(p.file == str(FILE) for p in caught.value.problems)
    return caught.value.problems


def rule(body: str, name: str = "R") -> str:
    """One rule in a Rules block; the Rule is on line 4."""
    return f'<Rules>\n<Rule Name="{name}">{body}</Rule>\n</Rules>\n'


def only(found: list[ConfigProblem]) -> tuple[int, str, str]:
    assert len(found) == 1, found
    return found[0].line, found[0].element, found[0].message


# ------------------------------------------------------------------ loading


def test_the_issue_example_loads_exactly() -> None:
    (listener,) = load(ISSUE_EXAMPLE).listeners
    assert listener.rules == (
        RuleConfig(
            "Facturas",
            (
                MatchConfig("Contains", "facturacion@", field="To", source_line=5),
                MatchConfig("Regex", "(?i)factura|nota fiscal", field="Subject", source_line=6),
            ),
            (SetInbox("Facturacion"), SetPriority(2), AddTag("billing")),
            source_line=4,
        ),
        RuleConfig(
            "Spam",
            (MatchConfig("Equals", "YES", header="X-Spam-Flag", source_line=9),),
            (Discard(),),
            source_line=9,
        ),
        RuleConfig(
            "Banned",
            (MatchConfig("Domain", "spammer.example", field="From", source_line=10),),
            (Quarantine("banned"),),
            source_line=10,
        ),
    )


def test_the_issue_example_validates_against_the_shipped_schema_directly() -> None:
    schema = etree.XMLSchema(etree.parse(str(schema_path())))
    assert schema.validate(etree.fromstring(config_with(ISSUE_EXAMPLE)))


def test_check_config_line_counts_the_rules() -> None:
    (listener,) = load(ISSUE_EXAMPLE).listeners
    assert "3 rule(s)," in describe(listener)
    assert "rule" not in describe(load("").listeners[0])


def test_a_pop3_listener_takes_rules_too() -> None:
    (listener,) = load(ISSUE_EXAMPLE, kind="Pop3Listener").listeners
    assert listener.protocol == "pop3"
    assert [r.name for r in listener.rules] == ["Facturas", "Spam", "Banned"]


def test_no_rules_block_means_no_rules_and_an_empty_block_is_allowed() -> None:
    assert load("").listeners[0].rules == ()
    assert load("<Rules/>\n").listeners[0].rules == ()


def test_every_action_and_attribute_loads_in_document_order() -> None:
    body = (
        '<AddTag>a</AddTag><Match Header="x-mailer" Exists="False"/>'
        '<Match Field="Body" Contains=" Urgent " CaseSensitive="TRUE"/>'
        "<SetProcess> Reclamos </SetProcess><SetInbox>I</SetInbox><SetPriority>-3</SetPriority>"
        "<AddTag>b</AddTag><AddTag>a</AddTag><NoAcknowledgement/><Quarantine/><Stop/>"
    )
    (loaded,) = load(rule(body, "Everything")).listeners[0].rules
    assert loaded.matches == (
        MatchConfig("Exists", "false", header="x-mailer", source_line=4),
        MatchConfig("Contains", " Urgent ", field="Body", case_sensitive=True, source_line=4),
    )
    assert loaded.actions == (
        AddTag("a"),
        SetProcess("Reclamos"),
        SetInbox("I"),
        SetPriority(-3),
        AddTag("b"),
        AddTag("a"),
        NoAcknowledgement(),
        Quarantine("rule Everything"),  # the default reason names the rule
        Stop(),
    )


def test_every_field_and_operator_is_accepted() -> None:
    matches = "".join(
        f'<Match Field="{field}" {op}="{value}"/>'
        for field in ("From", "To", "Cc")
        for op, value in (
            ("Contains", "x"),
            ("Equals", "a@b.c"),
            ("Regex", "^a"),
            ("Domain", "b.c"),
            ("Exists", "true"),
        )
    ) + "".join(
        f'<Match Field="{field}" {op}="{value}"/>'
        for field in ("Subject", "Body")
        for op, value in (("Contains", "x"), ("Equals", ""), ("Regex", "x"), ("Exists", "false"))
    )
    (loaded,) = load(rule(matches + "<Stop/>")).listeners[0].rules
    assert len(loaded.matches) == 23


# ------------------------------------------------------------------ errors


def test_an_unknown_field_names_the_allowed_ones() -> None:
    line, element, message = only(problems(rule('<Match Field="Sender" Contains="x"/><Stop/>')))
    assert (line, element) == (4, "Match")
    assert "'Sender' is not valid" in message
    assert "'From', 'To', 'Cc', 'Subject', 'Body'" in message


@pytest.mark.parametrize(
    ("attributes", "said"),
    [
        ('Field="To"', "no operator; give exactly one of Contains, Equals, Regex, Domain, Exists"),
        ('Field="To" Contains="a" Equals="b"', "2 operators (Contains, Equals); give exactly one"),
        ('Header="X-A" Exists="true" Regex="a"', "2 operators (Regex, Exists)"),
        ('Contains="a"', "give Field (From, To, Cc, Subject, Body) or Header"),
        ('Field="To" Header="X-A" Contains="a"', "give Field or Header, not both"),
        ('Header="X A" Contains="a"', "Header 'X A' is not a header name"),
        ('Header="X:A" Contains="a"', "Header 'X:A' is not a header name"),
        ('Field="Subject" Contains=""', "Contains is empty"),
        ('Field="Subject" Regex=" "', "Regex is empty"),
    ],
)
def test_a_match_needs_one_field_and_exactly_one_operator(attributes: str, said: str) -> None:
    line, element, message = only(problems(rule(f"<Match {attributes}/><Stop/>")))
    assert (line, element) == (4, "Match")
    assert said in message


def test_a_regex_that_does_not_compile_is_an_error() -> None:
    line, element, message = only(problems(rule('<Match Field="Subject" Regex="(a"/><Stop/>')))
    assert (line, element) == (4, "Match")
    assert message.startswith("regular expression does not compile: missing )")


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(\w)\1", "invalid escape sequence: \\1"),  # a backreference
        ("factura(?=s)", "invalid perl operator: (?="),  # lookahead
        ("(?&lt;!nota )fiscal", "invalid perl operator: (?<!"),  # lookbehind
        ("(?P&lt;a&gt;x)(?P=a)", "invalid perl operator: (?P"),  # a named backreference
    ],
)
def test_a_regex_re2_cannot_run_is_an_error_saying_why(pattern: str, reason: str) -> None:
    found = problems(rule(f'<Match Field="Subject" Regex="{pattern}"/><Stop/>'))
    line, element, message = only(found)
    assert (line, element) == (4, "Match")
    assert "the linear-time engine (RE2) cannot run" in message
    assert reason in message
    assert "backreferences and lookaround are not supported" in message


@pytest.mark.parametrize(
    ("attributes", "said"),
    [
        ('Field="From" Domain="@spammer.example"', "must be a bare domain such as example.org"),
        ('Field="From" Domain="a@spammer.example"', "(no @, no leading dot"),
        ('Field="To" Domain=".spammer.example"', "subdomains match too"),
        ('Field="Cc" Domain=" "', "Domain is empty"),
        ('Field="Subject" Domain="x.org"', "Domain applies to From, To, Cc or a Header, not to"),
        ('Field="Body" Domain="x.org"', "not to Body"),
    ],
)
def test_domain_must_be_bare_and_on_addresses(attributes: str, said: str) -> None:
    line, element, message = only(problems(rule(f"<Match {attributes}/><Stop/>")))
    assert (line, element) == (4, "Match")
    assert said in message


def test_domain_on_a_header_is_allowed() -> None:
    (loaded,) = load(rule('<Match Header="Reply-To" Domain="x.org"/><Stop/>')).listeners[0].rules
    assert loaded.matches[0].header == "Reply-To"


def test_a_rule_with_no_action_or_no_match_is_an_error() -> None:
    found = problems(
        '<Rules>\n<Rule Name="Idle"><Match Field="To" Contains="a"/></Rule>\n'
        '<Rule Name="Blind"><SetInbox>I</SetInbox></Rule>\n</Rules>\n'
    )
    assert [(p.line, p.element, p.message) for p in found] == [
        (
            4,
            "Rule",
            "rule 'Idle' has no action; give one or more of SetProcess, SetInbox, "
            "SetPriority, AddTag, NoAcknowledgement, Discard, Quarantine, Stop",
        ),
        (5, "Rule", "rule 'Blind' has no Match; give one or more"),
    ]


def test_duplicate_rule_names_are_an_error_even_in_another_case() -> None:
    found = problems(
        '<Rules>\n<Rule Name="Spam"><Match Field="To" Contains="a"/><Stop/></Rule>\n'
        '<Rule Name="spam"><Match Field="To" Contains="b"/><Stop/></Rule>\n</Rules>\n'
    )
    assert only(found) == (5, "Rule", "duplicate rule name 'spam' (first on line 4)")


def test_the_same_name_in_two_listeners_is_fine() -> None:
    block = rule('<Match Field="To" Contains="a"/><Stop/>', "Spam")
    data = config_with(block).replace(
        b"</EngageIntegrationService>",
        b'<Pop3Listener ID="B"><HostName>h</HostName><UserName>u</UserName>'
        b"<Password>p</Password>" + block.encode() + b"</Pop3Listener></EngageIntegrationService>",
    )
    config = parse_config(data, FILE)
    assert [len(c.rules) for c in config.listeners] == [1, 1]


def test_single_actions_at_most_once_and_not_discard_with_quarantine() -> None:
    found = problems(
        rule(
            '<Match Field="To" Contains="a"/><SetInbox>A</SetInbox><SetInbox>B</SetInbox>'
            '<Discard/><Quarantine Reason="x"/><AddTag>t</AddTag><AddTag>u</AddTag>'
        )
    )
    assert [(p.line, p.element, p.message) for p in found] == [
        (4, "Rule", "rule 'R' has 2 SetInbox elements; give at most one"),
        (4, "Rule", "rule 'R' has both Discard and Quarantine; give one"),
    ]


def test_schema_errors_inside_rules_name_line_and_element() -> None:
    found = problems(
        "<Rules>\n"
        '<Rule Name="A"><Match Field="To" Contains="a"/><SetPriority>high</SetPriority></Rule>\n'
        '<Rule><Match Field="To" Contains="a"/><Stop/></Rule>\n'
        '<Rule Name="C"><Match Field="To" Exists="maybe"/><Route>x</Route><Stop/></Rule>\n'
        "</Rules>\n"
    )
    got = {(p.line, p.element): p.message for p in found}
    assert "'high' is not valid; expected a whole number" in got[(4, "SetPriority")]
    assert got[(5, "Rule")] == "attribute 'Name' is required"
    assert "'maybe' is not True or False" in got[(6, "Match")]
    assert got[(6, "Route")].startswith("unknown element 'Route'; expected one of Match, ")


def test_all_problems_of_a_file_come_at_once_sorted_by_line() -> None:
    found = problems(
        "<Rules>\n"
        '<Rule Name="A"><Match Field="To" Regex="(x)\\1"/><Stop/></Rule>\n'
        '<Rule Name="B"><Match Field="From" Domain="@b.org"/><Stop/></Rule>\n'
        '<Rule Name="C"><Match Field="Subject"/></Rule>\n'
        "</Rules>\n"
    )
    assert [p.line for p in found] == [4, 5, 6, 6]
    assert all(str(p).startswith(f"{FILE}:") for p in found)


# ------------------------------------------------------------------ the engine's patterns


def test_re2_honours_inline_flags_and_folds_unicode_case() -> None:
    assert compile_pattern("(?i)FACTURA").search("una factura") is not None
    assert compile_pattern("FACTURA").search("una factura") is not None  # default: folded
    assert compile_pattern("FACTURA", case_sensitive=True).search("una factura") is None
    assert compile_pattern("(?i)FACTURA", case_sensitive=True).search("factura") is not None
    assert compile_pattern("(?-i)FACTURA").search("factura") is None
    assert compile_pattern("ÉCOLE").search("une école") is not None
    assert compile_pattern("(?s)a.b").search("a\nb") is not None
    assert compile_pattern("a.b").search("a\nb") is None
    assert compile_pattern("(?m)^b$").search("a\nb\nc") is not None


def test_re2_classes_are_ascii_but_unicode_properties_work() -> None:
    """Documented in config.rules: \\w is ASCII in RE2, \\p{L} is any letter."""
    word = compile_pattern(r"^\w+$")
    assert word.search("ecole") is not None
    assert word.search("école") is None
    assert compile_pattern(r"^\p{L}+$").search("école") is not None


def test_compile_pattern_raises_pattern_error() -> None:
    with pytest.raises(PatternError, match="does not compile"):
        compile_pattern("[")
    with pytest.raises(PatternError, match="RE2"):
        compile_pattern("(?<=a)b")
