"""``python -m webui users ...`` manages accounts (:mod:`webui.users_cli`); ``python -m webui [flags]``
serves, as ``python run.py [flags]`` does."""
import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["users"]:
        from webui.users_cli import main as users

        sys.exit(users(sys.argv[2:]))
    from webui.webui_server import main

    sys.exit(main())
