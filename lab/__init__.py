"""A network-namespace lab for portguard: subscriber, business, gateway and internet.

Used by the integration tests, the benchmarks and `sudo make demo`; see docs/lab.md.
"""

from lab.netns import LabError
from lab.peers import SendResult
from lab.topology import Lab

__all__ = ["Lab", "LabError", "SendResult"]
