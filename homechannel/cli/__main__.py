import sys

from homechannel.cli import main

sys.exit(main())
