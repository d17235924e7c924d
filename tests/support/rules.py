"""The rules of issue 18 point 5, exactly as the issue writes them, shared by the rules tests."""

from __future__ import annotations

# The example of issue 18, point 5, exactly as written there.
ISSUE_EXAMPLE = """\
<Rules>
  <Rule Name="Facturas">
    <Match Field="To" Contains="facturacion@"/>
    <Match Field="Subject" Regex="(?i)factura|nota fiscal"/>
    <SetInbox>Facturacion</SetInbox><SetPriority>2</SetPriority><AddTag>billing</AddTag>
  </Rule>
  <Rule Name="Spam"><Match Header="X-Spam-Flag" Equals="YES"/><Discard/></Rule>
  <Rule Name="Banned"><Match Field="From" Domain="spammer.example"/><Quarantine Reason="banned"/></Rule>
</Rules>
"""  # noqa: E501 - the issue's example, verbatim
