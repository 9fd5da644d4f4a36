import sys

from kbank.streams.broker import main

sys.exit(main())
