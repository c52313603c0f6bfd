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


def save(fig, path: str, dpi: int = 120) -> None:
    """Lays the figure out and writes it as a PNG, atomically for a regular file (a temporary file
    next to it, then renamed), directly for a device or FIFO; then says so."""
    fig.tight_layout()
    if os.path.exists(path) and not os.path.isfile(path):
        fig.savefig(path, dpi=dpi, format="png")
    else:
        tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            fig.savefig(tmp, dpi=dpi, format="png")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    print(f"wrote {path}")
