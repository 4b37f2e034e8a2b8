"""A network-namespace lab for portguard: subscriber, business, gateway and internet.

Used by the integration tests, the benchmarks and `sudo make demo`; see docs/lab.md.
"""

from portguard.lab.netns import LabError
from portguard.lab.peers import SendResult
from portguard.lab.topology import Lab

__all__ = ["Lab", "LabError", "SendResult"]
