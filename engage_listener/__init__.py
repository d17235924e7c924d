"""engage-listener: customer email to CRM cases, exactly once."""

__version__ = "0.1.0"
