import sys

from streams.broker import main

sys.exit(main())
