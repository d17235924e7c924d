"""Which address of a mail is the customer, and which one gets the acknowledgement.

Web forms and some portals send from a no-reply address and put the person who wrote
in Reply-To. `CustomerFrom ReplyTo` finds (or creates) the customer by that Reply-To,
`Acknowledgement/Recipient ReplyTo` writes the acknowledgement to it.

Decisions:
- A Reply-To is used only when it is usable: an address with a domain, not a no-reply,
  daemon or null address (`mail.automatic.is_noreply_address`), and not one of the
  listener's own addresses (compared without case or +tag: a mail loop otherwise).
  Otherwise From is used, as with the default `From`.
- Such a mail's no-reply From alone does not make it automatic mail when the listener
  uses the Reply-To (either setting): the form's sender is a robot, the customer is not.
  Every other sign of automatic mail (Auto-Submitted, bounces, lists...) still counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from engage_listener.config.ack import AddressChoice
from engage_listener.mail.automatic import is_noreply_address
from engage_listener.mail.fields import recipient_key
from engage_listener.mail.parser import Address, ParsedMail

NOREPLY_REASON = "no-reply sender"  # mail.automatic's reason for a no-reply From


def usable_reply_to(mail: ParsedMail, own_addresses: Iterable[str]) -> Address | None:
    """The first Reply-To address that may be a customer and may be answered, if any."""
    own = {recipient_key(a) for a in own_addresses if a.strip()}
    for found in mail.reply_to:
        address = found.address.strip()
        if "@" not in address or not address.rpartition("@")[2]:
            continue
        if is_noreply_address(address) or recipient_key(address) in own:
            continue
        return found
    return None


def chosen_address(
    mail: ParsedMail, choice: AddressChoice, own_addresses: Iterable[str]
) -> Address | None:
    """From, or under ReplyTo a usable Reply-To (else From)."""
    if choice == "ReplyTo":
        found = usable_reply_to(mail, own_addresses)
        if found is not None:
            return found
    return mail.sender


def automatic_unless_replied_to(
    automatic: str | None,
    mail: ParsedMail,
    uses_reply_to: bool,
    own_addresses: Iterable[str],
) -> str | None:
    """`automatic`, except a no-reply From with a usable Reply-To the listener uses."""
    if automatic != NOREPLY_REASON or not uses_reply_to:
        return automatic
    return None if usable_reply_to(mail, own_addresses) is not None else automatic
