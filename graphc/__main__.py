import sys

try:
    from .cli import run
except KeyboardInterrupt:       # Ctrl-C before graphc has started: nothing was written
    sys.stderr.write("graphc: interrupted; no output was written\n")
    sys.exit(130)

run()
