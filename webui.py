"""Start the Workbench web app: python webui.py [--host 127.0.0.1] [--port 7860] [--auth user:pass] [--share]

Beyond loopback (``--host 0.0.0.0``) or with ``--share`` it refuses to start without ``--auth``, unless
``--insecure-no-auth`` says that a proxy in front of it authenticates.
"""

import sys

from workbench.cli import main, quiet_libraries

if __name__ == "__main__":
    quiet_libraries()
    sys.exit(main(["webui", *sys.argv[1:]]))
