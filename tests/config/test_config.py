"""The XML configuration: values, defaults, and every kind of error with its line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree

from engage_listener.config.cautions import config_warnings
from engage_listener.config.load import load_config, parse_config
from engage_listener.config.model import (
    DEFAULT_STORE_PATH,
    Config,
    ListenerConfig,
    Secret,
    describe,
)
from engage_listener.config.schema import schema_path
from engage_listener.errors import ConfigError, ConfigProblem
from tests.support.paths import REPO

DEFAULT_XML = REPO / "config" / "engage-listener.xml"

SPEC_BLOCK = """\
<ImapListener ID="Default">
  <HostName>imap.gmail.com</HostName>
  <Port>993</Port>
  <UserName>soporte.engage</UserName>
  <Password>ZR9Zf9oiGhE3olsLuXgnUA==</Password>
  <UseSsl>True</UseSsl>
  <InputFolder>IMAP/New</InputFolder>
  <OutputFolder>IMAP/Done</OutputFolder>
  <ExtractAttachments>False</ExtractAttachments>
  <SyncMaxWaitTime>300</SyncMaxWaitTime>
  <SyncMaxChangesCount>10</SyncMaxChangesCount>
  <ProtocolLogFile>/var/log/engage/IMAP-%date%-%time%.log</ProtocolLogFile>
</ImapListener>
<Process ID="EIS">
  <UseImapListener>True</UseImapListener>
</Process>
"""


def wrap(body: str) -> bytes:
    """A whole file around body; body starts on line 2."""
    return f"<EngageIntegrationService>\n{body}</EngageIntegrationService>\n".encode()


def listener(extra: str = "", id_: str = "A", host: str = "<HostName>h</HostName>") -> str:
    """A minimal valid ImapListener (4 lines + extra lines), ending with a newline."""
    return (
        f'<ImapListener ID="{id_}">\n{host}\n<UserName>u</UserName>\n'
        f"<Password>p</Password>\n{extra}</ImapListener>\n"
    )


def parse(body: str, path: Path = Path("/etc/el/test.xml")) -> Config:
    return parse_config(wrap(body), path)


def problems(data: bytes, path: Path = Path("/etc/el/test.xml")) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, path)
    assert caught.value.problems, "a ConfigError must carry problems"
    return caught.value.problems


def problems_of(body: str) -> list[ConfigProblem]:
    return problems(wrap(body))


def where(found: list[ConfigProblem]) -> list[tuple[int, str]]:
    return [(p.line, p.element) for p in found]


# ------------------------------------------------------------------ valid files


def test_default_config_loads_with_every_value() -> None:
    config = load_config(DEFAULT_XML)
    assert config.use_imap_listener is True
    assert config.store.path == Path("/var/lib/engage-listener/engage-listener.sqlite3")
    (lst,) = config.imap_listeners
    assert lst.id == "Default"
    assert lst.host == "imap.example.com"
    assert (lst.port, lst.use_ssl) == (993, True)
    assert (lst.input_folder, lst.output_folder) == ("IMAP/New", "IMAP/Done")
    assert (lst.sync_max_wait_time, lst.sync_max_changes_count) == (60, 10)
    assert lst.extract_attachments is False
    assert lst.enabled is True
    assert lst.ca_file is None and lst.protocol_log_file is None
    assert config.enabled_listeners() == (lst,)
    assert config_warnings(config) == []


def test_default_config_validates_against_shipped_schema_with_lxml_directly() -> None:
    schema = etree.XMLSchema(etree.parse(str(schema_path())))
    assert schema.validate(etree.parse(str(DEFAULT_XML)))


def test_config_dir_has_relative_symlink_to_schema() -> None:
    link = REPO / "config" / "engage-listener.xsd"
    assert link.is_symlink()
    assert not Path(link.readlink()).is_absolute()
    assert link.resolve() == schema_path().resolve()


def test_schema_documents_every_element() -> None:
    xsd = etree.parse(str(schema_path()))
    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}
    for decl in xsd.iterfind(".//xs:element[@name]", ns):
        doc = decl.findtext("xs:annotation/xs:documentation", namespaces=ns)
        assert doc and doc.strip(), decl.get("name")


def test_spec_block_loads_exactly() -> None:
    config = parse(SPEC_BLOCK)
    (lst,) = config.imap_listeners
    assert lst == ListenerConfig(
        id="Default",
        host="imap.gmail.com",
        port=993,
        username="soporte.engage",
        password=Secret("ZR9Zf9oiGhE3olsLuXgnUA=="),
        use_ssl=True,
        input_folder="IMAP/New",
        output_folder="IMAP/Done",
        extract_attachments=False,
        sync_max_wait_time=300,
        sync_max_changes_count=10,
        protocol_log_file="/var/log/engage/IMAP-%date%-%time%.log",
        ca_file=None,
        enabled=True,
        source_line=2,
    )
    assert lst.password.reveal() == "ZR9Zf9oiGhE3olsLuXgnUA=="
    assert config.use_imap_listener is True
    assert config.store.path == DEFAULT_STORE_PATH


def test_defaults_of_a_minimal_listener() -> None:
    config = parse(listener())
    (lst,) = config.imap_listeners
    assert lst.port == 993
    assert lst.use_ssl is True
    assert lst.input_folder == "INBOX"
    assert lst.output_folder is None
    assert lst.extract_attachments is False
    assert (lst.sync_max_wait_time, lst.sync_max_changes_count) == (60, 10)
    assert lst.enabled is True
    assert config.use_imap_listener is False  # no Process block
    assert config.enabled_listeners() == ()


@pytest.mark.parametrize(
    ("extra", "port"),
    [
        ("<UseSsl>False</UseSsl>\n", 143),
        ("<UseSsl>True</UseSsl>\n", 993),
        ("", 993),
        ("<UseSsl>false</UseSsl><Port>1143</Port>\n", 1143),
    ],
)
def test_port_defaults_follow_use_ssl(extra: str, port: int) -> None:
    assert parse(listener(extra)).imap_listeners[0].port == port


@pytest.mark.parametrize("word", ["True", "true", "TRUE", "tRuE", "  True\n "])
def test_booleans_any_case_and_whitespace(word: str) -> None:
    body = listener(f"<ExtractAttachments>{word}</ExtractAttachments>\n")
    body += f"<Process><UseImapListener>{word}</UseImapListener></Process>\n"
    config = parse(body)
    assert config.imap_listeners[0].extract_attachments is True
    assert config.use_imap_listener is True


def test_text_values_are_trimmed_but_keep_inner_spaces() -> None:
    extra = "<InputFolder>\n   Sent Items  </InputFolder>\n"
    lst = parse(listener(extra, host="<HostName>  imap.x.org\n</HostName>")).imap_listeners[0]
    assert lst.host == "imap.x.org"
    assert lst.input_folder == "Sent Items"


def test_children_in_any_order_and_comments_ignored() -> None:
    body = (
        '<Store><Path>db.sqlite3</Path></Store>\n<Process ID="EIS">'
        "<UseImapListener>True</UseImapListener></Process>\n"
        '<ImapListener ID="B"><!-- a comment --><Password>p</Password>'
        "<UserName>u</UserName><HostName>imap<!-- x -->.b.org</HostName></ImapListener>\n"
    )
    config = parse(body)
    assert config.imap_listeners[0].host == "imap.b.org"
    assert config.imap_listeners[0].source_line == 4


def test_relative_store_path_is_relative_to_config_dir(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "el.xml"
    body = listener() + "<Store><Path>data/cases.sqlite3</Path></Store>\n"
    config = parse_config(wrap(body), path)
    assert config.store.path == tmp_path / "conf" / "data" / "cases.sqlite3"
    absolute = listener() + "<Store><Path>/srv/x.sqlite3</Path></Store>\n"
    assert parse_config(wrap(absolute), path).store.path == Path("/srv/x.sqlite3")


def test_ca_file_resolved_relative_to_config_dir(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = parse_config(wrap(listener("<CaFile>ca.pem</CaFile>\n")), tmp_path / "el.xml")
    assert config.imap_listeners[0].ca_file == tmp_path / "ca.pem"


def test_several_listeners_and_enabled_listeners() -> None:
    body = (
        listener(id_="A")
        + listener("<Enabled>False</Enabled>\n", id_="B")
        + "<Process><UseImapListener>True</UseImapListener></Process>\n"
    )
    config = parse(body)
    assert [lst.id for lst in config.imap_listeners] == ["A", "B"]
    assert [lst.id for lst in config.enabled_listeners()] == ["A"]


def test_warnings() -> None:
    body = (
        listener(id_="A")
        + listener("<UseSsl>False</UseSsl>\n<OutputFolder>Done</OutputFolder>\n", id_="B")
        + listener("<Enabled>False</Enabled>\n", id_="C")
    )
    warnings = config_warnings(parse(body))
    assert "IMAP listening is off: Process/UseImapListener is not True" in warnings
    assert "listener A: no OutputFolder, processed mail will be DELETED" in warnings
    assert any(w.startswith("listener B: UseSsl is False") for w in warnings)
    assert "listener C: disabled (Enabled is False)" in warnings
    assert not any("listener C: no OutputFolder" in w for w in warnings)


# ------------------------------------------------------------------ secrets


def test_secret_never_shown() -> None:
    config = parse(SPEC_BLOCK)
    secret = "ZR9Zf9oiGhE3olsLuXgnUA=="
    lst = config.imap_listeners[0]
    for text in (repr(config), str(config), repr(lst), str(lst), f"{lst.password}"):
        assert secret not in text
    assert str(lst.password) == "***"
    assert "***" in repr(lst.password)


def test_describe_one_line_without_password() -> None:
    lst = parse(SPEC_BLOCK).imap_listeners[0]
    line = describe(lst)
    assert line.startswith(
        "Default: imap.gmail.com:993 TLS user=soporte.engage IMAP/New -> IMAP/Done (move), "
        "batch 10 mails or 300 s,"
    )
    assert line.endswith("enabled")
    assert "\n" not in line
    assert "ZR9Zf9oiGhE3olsLuXgnUA==" not in line
    minimal = describe(parse(listener("<UseSsl>False</UseSsl>\n")).imap_listeners[0])
    assert minimal == "A: h:143 plain user=u INBOX -> (delete), batch 10 mails or 60 s, enabled"


# ------------------------------------------------------------------ errors


def test_problem_format_names_file_line_element() -> None:
    (problem,) = problems_of(listener("<Foo>1</Foo>\n"))
    assert str(problem).startswith("/etc/el/test.xml:6: Foo: unknown element 'Foo'")
    assert "expected one of HostName, Port, UserName" in problem.message
    assert "{" not in problem.message


def test_unknown_element_in_root_and_namespaced_element() -> None:
    found = problems_of(listener() + '<Bar/>\n<x:Q xmlns:x="urn:q"/>\n')
    assert where(found) == [(7, "Bar"), (8, "Q")]
    assert all("unknown element" in p.message for p in found)
    assert "urn:q" not in str(found[1])


@pytest.mark.parametrize(
    ("extra", "element", "words"),
    [
        ("<SyncMaxWaitTime>59</SyncMaxWaitTime>", "SyncMaxWaitTime", "below the minimum 60"),
        ("<SyncMaxWaitTime>601</SyncMaxWaitTime>", "SyncMaxWaitTime", "above the maximum 600"),
        (
            "<SyncMaxChangesCount>0</SyncMaxChangesCount>",
            "SyncMaxChangesCount",
            "below the minimum 1",
        ),
        ("<Port>0</Port>", "Port", "below the minimum 1"),
        ("<Port>65536</Port>", "Port", "above the maximum 65535"),
        ("<Port>imap</Port>", "Port", "'imap' is not valid"),
        ("<SyncMaxWaitTime>1.5</SyncMaxWaitTime>", "SyncMaxWaitTime", "'1.5' is not valid"),
        ("<UseSsl>yes</UseSsl>", "UseSsl", "'yes' is not True or False"),
        ("<Enabled>1</Enabled>", "Enabled", "'1' is not True or False"),
        ("<InputFolder>  </InputFolder>", "InputFolder", "must not be empty"),
        ("<ProtocolLogFile/>", "ProtocolLogFile", "must not be empty"),
    ],
)
def test_bad_values_reported_with_line_and_element(extra: str, element: str, words: str) -> None:
    (problem,) = problems_of(listener(extra + "\n"))
    assert (problem.line, problem.element) == (6, element)
    assert words in problem.message


def test_bad_boolean_in_process() -> None:
    body = listener() + "<Process>\n<UseImapListener>yes</UseImapListener>\n</Process>\n"
    (problem,) = problems_of(body)
    assert (problem.line, problem.element) == (8, "UseImapListener")
    assert problem.message == "'yes' is not True or False"


def test_duplicate_ids_reported_at_second_listener() -> None:
    found = problems_of(listener(id_="A") + listener(id_="B") + listener(id_=" A "))
    assert where(found) == [(12, "ImapListener")]
    assert "duplicate ID 'A'" in found[0].message


def test_missing_and_empty_id() -> None:
    body = "<ImapListener>\n<HostName>h</HostName><UserName>u</UserName><Password>p</Password>\n"
    body += "</ImapListener>\n" + listener(id_="")
    found = problems_of(body)
    assert where(found) == [(2, "ImapListener"), (5, "ImapListener")]
    assert "attribute 'ID' is required" in found[0].message
    assert "attribute 'ID' must not be empty" in found[1].message


def test_missing_hostname_names_what_is_missing() -> None:
    (problem,) = problems_of(listener(host=""))
    assert (problem.line, problem.element) == (2, "ImapListener")
    assert problem.message == "missing required element(s): HostName"


def test_empty_hostname() -> None:
    (problem,) = problems_of(listener(host="<HostName> </HostName>"))
    assert (problem.line, problem.element) == (3, "HostName")
    assert "must not be empty" in problem.message


def test_repeated_element() -> None:
    (problem,) = problems_of(listener("<HostName>other</HostName>\n"))
    assert (problem.line, problem.element) == (6, "HostName")
    assert "more than once" in problem.message


def test_no_listener_at_all() -> None:
    (problem,) = problems(b"<EngageIntegrationService>\n<Process/>\n</EngageIntegrationService>")
    assert (problem.line, problem.element) == (1, "EngageIntegrationService")
    assert "ImapListener" in problem.message


def test_two_process_blocks() -> None:
    (problem,) = problems_of(listener() + "<Process/>\n<Process/>\n")
    assert (problem.line, problem.element) == (8, "Process")


def test_wrong_root() -> None:
    (problem,) = problems(b"<Config/>")
    assert (problem.line, problem.element) == (1, "Config")
    assert "EngageIntegrationService" in problem.message


def test_unknown_attribute_and_stray_text() -> None:
    found = problems_of(
        '<ImapListener ID="A" Colour="red">oops\n<HostName>h</HostName>'
        "<UserName>u</UserName><Password>p</Password></ImapListener>\n"
    )
    assert where(found) == [(2, "ImapListener"), (2, "ImapListener")]
    messages = " | ".join(p.message for p in found)
    assert "unknown attribute 'Colour'" in messages
    assert "text is not allowed" in messages


@pytest.mark.parametrize("folder", ["IMAP/New", "inbox"])
def test_input_equal_to_output_folder(folder: str) -> None:
    source = "" if folder == "inbox" else f"<InputFolder>{folder}</InputFolder>\n"
    (problem,) = problems_of(listener(f"{source}<OutputFolder>{folder}</OutputFolder>\n"))
    assert problem.element == "OutputFolder"
    assert problem.line == (6 if folder == "inbox" else 7)
    assert "same as InputFolder" in problem.message


def test_missing_ca_file(tmp_path: Path) -> None:
    found = problems(wrap(listener("<CaFile>missing.pem</CaFile>\n")), tmp_path / "el.xml")
    assert where(found) == [(6, "CaFile")]
    assert str(tmp_path / "missing.pem") in found[0].message
    assert "does not exist" in found[0].message


def test_ca_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    found = problems(wrap(listener("<CaFile>certs</CaFile>\n")), tmp_path / "el.xml")
    assert where(found) == [(6, "CaFile")]
    assert found[0].message == f"CA file {tmp_path / 'certs'} is a directory"


def test_several_problems_reported_at_once() -> None:
    body = (
        listener("<Foo/>\n<SyncMaxWaitTime>59</SyncMaxWaitTime>\n<UseSsl>yes</UseSsl>\n")  # 2..9
        + listener("<SyncMaxChangesCount>0</SyncMaxChangesCount>\n", id_="A")  # 10..15
        + listener("<InputFolder>X</InputFolder>\n<OutputFolder>X</OutputFolder>\n", id_="C")
        + "<Process><UseImapListener>maybe</UseImapListener></Process>\n"  # 23
    )
    found = problems_of(body)
    assert where(found) == [
        (6, "Foo"),
        (7, "SyncMaxWaitTime"),
        (8, "UseSsl"),
        (10, "ImapListener"),
        (14, "SyncMaxChangesCount"),
        (21, "OutputFolder"),
        (23, "UseImapListener"),
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config(wrap(body), Path("/etc/el/test.xml"))
    assert len(str(caught.value).splitlines()) == 7


def test_malformed_xml_reports_syntax_errors_with_lines() -> None:
    found = problems(b"<EngageIntegrationService>\n<ImapListener ID='A'>\n</Imap>\n")
    assert found[0].line == 3
    assert found[0].element == "xml"
    assert "malformed XML" in found[0].message
    assert all(p.element == "xml" for p in found)


def test_empty_file() -> None:
    (problem,) = problems(b"")
    assert (problem.line, problem.element) == (1, "xml")


def test_billion_laughs_refused() -> None:
    lol = (
        b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
        + b"".join(
            b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
            for i in range(1, 10)
        )
        + b"]>\n<EngageIntegrationService>&lol9;</EngageIntegrationService>\n"
    )
    found = problems(lol)
    assert (found[0].line, found[0].element) == (2, "DOCTYPE")
    assert "a DOCTYPE is not allowed" in found[0].message
    assert all("lollol" not in str(p) for p in found)


def test_external_entity_never_read(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("TOP-SECRET-CONTENT")
    data = (
        f'<?xml version="1.0"?>\n\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "file://{secret_file}">]>\n'
        + "<EngageIntegrationService>\n"
        + listener(host="<HostName>&xxe;</HostName>")
        + "</EngageIntegrationService>\n"
    ).encode()
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path / "el.xml")
    assert "TOP-SECRET-CONTENT" not in str(caught.value)
    assert where(caught.value.problems) == [(3, "DOCTYPE")]


def test_plain_doctype_refused() -> None:
    data = b"<!DOCTYPE EngageIntegrationService>\n" + wrap(listener())
    assert where(problems(data)) == [(1, "DOCTYPE")]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.xml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.element) == (0, "-")
    assert re.match(rf"{re.escape(str(tmp_path))}/nope.xml:0: -: cannot read", str(problem))


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert where(caught.value.problems) == [(0, "-")]


# ------------------------------------------------------------------ hardening elements

_ACK = (
    "<Acknowledgement>\n<Smtp><HostName>smtp.example.org</HostName>{smtp}</Smtp>\n"
    "<FromAddress>soporte@example.org</FromAddress>\n{extra}</Acknowledgement>\n"
)


def test_hardening_elements_have_safe_defaults() -> None:
    lst = parse(listener()).listeners[0]
    assert lst.allow_plaintext_login is False
    assert lst.max_message_size == 157_286_400
    assert lst.follow_ups_from == "Participants"
    assert lst.protocol_log_keep_days == 14
    ack = parse(listener(_ACK.format(smtp="", extra=""))).listeners[0].acknowledgement
    assert ack is not None
    assert (ack.max_per_hour, ack.max_per_recipient_per_hour) == (200, 3)
    assert ack.require_authenticated is None and ack.smtp.allow_plaintext_login is False


def test_hardening_elements_are_read() -> None:
    extra = (
        "<AllowPlaintextLogin>True</AllowPlaintextLogin>\n<MaxMessageSize>1000</MaxMessageSize>\n"
        "<FollowUpsFrom>Anyone</FollowUpsFrom>\n<ProtocolLogKeepDays>3</ProtocolLogKeepDays>\n"
        + _ACK.format(
            smtp="<Security>None</Security><UserName>u</UserName><Password>p</Password>"
            "<AllowPlaintextLogin>True</AllowPlaintextLogin>",
            extra="<MaxPerHour>7</MaxPerHour>\n"
            '<RequireAuthenticated AuthServId="MX.Example.org">True</RequireAuthenticated>\n',
        )
    )
    lst = parse(listener(extra)).listeners[0]
    assert lst.allow_plaintext_login and lst.max_message_size == 1000
    assert (lst.follow_ups_from, lst.protocol_log_keep_days) == ("Anyone", 3)
    assert lst.acknowledgement is not None
    assert lst.acknowledgement.max_per_hour == 7
    assert lst.acknowledgement.require_authenticated == "mx.example.org"
    assert lst.acknowledgement.smtp.allow_plaintext_login


def test_check_config_warns_of_every_cleartext_login_setting() -> None:
    body = listener(
        "<UseSsl>False</UseSsl>\n<AllowPlaintextLogin>True</AllowPlaintextLogin>\n"
        + _ACK.format(
            smtp="<Security>None</Security><UserName>u</UserName><Password>p</Password>"
            "<AllowPlaintextLogin>True</AllowPlaintextLogin>",
            extra="",
        )
    )
    warnings = config_warnings(parse(body))
    assert any("A: AllowPlaintextLogin is True, credentials may be sent" in w for w in warnings)
    assert any("A: Smtp AllowPlaintextLogin is True" in w for w in warnings)
    plain = config_warnings(parse(listener("<UseSsl>False</UseSsl>\n")))
    assert any("must offer STARTTLS (login is refused without it)" in w for w in plain)


def test_smtp_security_none_with_a_username_needs_allow_plaintext_login() -> None:
    smtp = "<Security>None</Security><UserName>u</UserName><Password>p</Password>"
    found = problems_of(listener(_ACK.format(smtp=smtp, extra="")))
    assert [p.element for p in found] == ["Acknowledgement"]
    assert "would send the login in clear" in found[0].message
    relay = "<Security>None</Security>"  # no login: nothing secret to send
    assert parse(listener(_ACK.format(smtp=relay, extra=""))).listeners


def test_require_authenticated_needs_the_servers_authserv_id() -> None:
    extra = "<RequireAuthenticated>True</RequireAuthenticated>\n"
    found = problems_of(listener(_ACK.format(smtp="", extra=extra)))
    assert "needs AuthServId" in found[0].message


def test_protocol_log_path_relative_to_the_config_and_windows_paths_refused(
    tmp_path: Path,
) -> None:
    cfg = parse(
        listener("<ProtocolLogFile>logs/%listener%.log</ProtocolLogFile>\n"), tmp_path / "el.xml"
    )
    assert cfg.listeners[0].protocol_log_file == str(tmp_path / "logs" / "%listener%.log")
    found = problems_of(listener("<ProtocolLogFile>C:\\Logs\\imap.log</ProtocolLogFile>\n"))
    assert where(found) == [(6, "ProtocolLogFile")]
    assert "Windows path" in found[0].message
