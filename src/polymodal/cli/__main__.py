import sys

from polymodal.cli.main import main

sys.exit(main())
