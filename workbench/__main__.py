import sys

from workbench.cli import main, quiet_libraries

quiet_libraries()
sys.exit(main())
