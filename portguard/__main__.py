import sys

from portguard.cli.main import main

sys.exit(main())
