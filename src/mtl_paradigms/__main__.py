import sys

from mtl_paradigms.cli import main

sys.exit(main())
