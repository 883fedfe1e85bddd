import sys

from mmugather.cli import main

sys.exit(main())
