"""Addresses between text and bytes: the C library's inet_pton and inet_ntop.

These pure conversions are the only names the core takes from the socket module, and only
through this module (tests/unit/test_core_purity.py allows exactly these names here): they
parse a million-entry list file several times faster than ``ipaddress``.
"""

from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

__all__ = ["AF_INET", "AF_INET6", "inet_ntop", "inet_pton"]
