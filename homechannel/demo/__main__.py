import sys

from homechannel.demo import main

sys.exit(main())
