import sys

from exfacegan.cli.main import main

sys.exit(main())
