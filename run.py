"""``python run.py [flags]``: the same program as ``python webui/webui_server.py [flags]``."""
import sys

from webui.webui_server import main

if __name__ == "__main__":
    sys.exit(main())
