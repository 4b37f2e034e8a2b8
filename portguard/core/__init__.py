"""The pure core: bytes, text and `now` in; packets, flows, decisions and event records out.

No module here performs I/O or imports a module that does (tests/unit/test_core_purity.py):
reading files and resolving names come in as functions (see io/policyfiles.py, io/dns.py).
"""
