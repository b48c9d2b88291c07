import sys

from linkage.cli.main import main

sys.exit(main())
