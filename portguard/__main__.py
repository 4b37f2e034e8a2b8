import sys

from portguard.cli import main

sys.exit(main())
