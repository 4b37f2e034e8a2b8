"""The lab's fixed addresses: documentation ranges and the shared range 100.64.0.0/10 only.

```
 sub (subscriber)          biz (business)
  sub0 100.64.10.10/24      biz0 203.0.113.10/24
       |                         |
  gw-sub 100.64.10.1/24     gw-biz 203.0.113.1/24
  +-------------------- gw (portguard) --------------------+
                   gw-wan 192.0.2.1/24
                        |
                   net0 192.0.2.2/24   net (the internet), servers on its lo:
                                       MX .25, smarthost .26, submission .27 of 198.51.100.0/24
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class DualStack:
    """One host address in both families."""

    v4: str
    v6: str

    def family(self, version: int) -> str:
        if version not in (4, 6):
            raise ValueError(f"IP version must be 4 or 6, not {version}")
        return self.v4 if version == 4 else self.v6


# Namespace roles, in creation order.
ROLES: Final = ("sub", "biz", "gw", "net")

# Interface names (inside their namespaces; nothing is ever created in the root namespace).
SUB_IF: Final = "sub0"
BIZ_IF: Final = "biz0"
GW_SUB_IF: Final = "gw-sub"
GW_BIZ_IF: Final = "gw-biz"
GW_WAN_IF: Final = "gw-wan"  # what the daemon config's [network] wan names
NET_IF: Final = "net0"
SERVER_IF: Final = "lo"  # holds the server addresses in `net` (no dummy module needed)

# Hosts.
SUBSCRIBER: Final = DualStack("100.64.10.10", "2001:db8:64:10::10")
BUSINESS: Final = DualStack("203.0.113.10", "2001:db8:b12::10")
INTERNET: Final = DualStack("192.0.2.2", "2001:db8:ffff::2")  # net0, the internet's router

# Gateway interfaces (also the hosts' default routers).
GW_SUB: Final = DualStack("100.64.10.1", "2001:db8:64:10::1")
GW_BIZ: Final = DualStack("203.0.113.1", "2001:db8:b12::1")
GW_WAN: Final = DualStack("192.0.2.1", "2001:db8:ffff::1")

# Servers in `net`.
MX: Final = DualStack("198.51.100.25", "2001:db8:25::25")  # an external mail exchanger
SMARTHOST: Final = DualStack("198.51.100.26", "2001:db8:25::26")  # the ISP's relay
SUBMISSION: Final = DualStack("198.51.100.27", "2001:db8:25::27")  # a submission server
SERVERS: Final = (MX, SMARTHOST, SUBMISSION)
SERVER_NET: Final = DualStack("198.51.100.0/24", "2001:db8:25::/64")

# Prefix lengths of the links.
LINK_PREFIX: Final = DualStack("24", "64")

# SMTP ports the servers listen on.
PORT_SMTP: Final = 25
PORT_SUBMISSION: Final = 587  # STARTTLS (RFC 6409)
PORT_SUBMISSIONS: Final = 465  # implicit TLS (RFC 8314)
PORT_UNHOOKED: Final = 2525  # plain SMTP on a port portguard does not hook
SERVER_PORTS: Final = (PORT_SMTP, PORT_SUBMISSION, PORT_SUBMISSIONS, PORT_UNHOOKED)

# The address each namespace's clients send from (bound explicitly, so events are predictable).
CLIENT_ADDRESS: Final = {"sub": SUBSCRIBER, "biz": BUSINESS, "net": INTERNET, "gw": GW_WAN}
