"""portguard: SMTP-port policy enforcement for Linux gateways."""

__version__ = "0.1.0"
