"""What the plotting scripts in tools/ share: matplotlib (headless), or one error line saying how
to install it instead of a traceback."""
import os
import sys


def pyplot(script: str):
    """matplotlib.pyplot with the Agg backend; exits with one `error:` line when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        why = (str(e).splitlines() or ["cannot import it"])[0]
        sys.exit(f"error: {os.path.basename(script)} needs matplotlib ({why}); install it with "
                 "`pip install matplotlib` or `bash tools/setup.sh --python`")
    return plt
